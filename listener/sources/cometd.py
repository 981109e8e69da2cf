"""The CDC stream: `/data/<Object>ChangeEvent` over CometD, applied in micro-batches.

    CometD session --receive--> bounded queue --MicroBatcher--> parse --> ChangeSink.apply
                    (`intake.BatchIntake`; reader waits when full)             |
                                        replay id per channel committed  <-----+  (after apply)

- Resumes from the replay id stored per channel (`sync_state` `replay:<channel>` =
  `{"replay_id": N}`), written with a journaled majority only after `apply` returned.
- A channel with no usable replay id (first start, or `400` replay id too old) is subscribed
  with -1 (new events) and closed over by a poll: catch-up poll, subscribe, closing poll, then
  consume; events the poll already covered are skipped (`Watermark.covers`).
- Pieces: `cdc_batch.sort_batch` (messages -> changes, gaps, overflows, offsets),
  `replay_offsets.ReplayOffsets` (applied / pending / committed replay ids),
  `handover.PollHandover` (catch-up and closing polls, watermarks left for the poller).
- Echoes (our client name in `changeOrigin`) go to the sink flagged `is_echo`; offsets advance.
- GAP_* events: one `Id IN (...)` query per object per batch, applied as UPSERTs (source GAP).
- GAP_OVERFLOW: poll the object from the event's commit time.
- Network loss, `403::Unknown client`, a 401 a fresh token did not cure: close, back off with
  jitter, reopen from the committed replay ids (redelivered events are dropped by replay id); a
  channel with none committed since a resync subscribes with -1 again, closed over by a poll.
- `403::Organization total events daily limit exceeded`: tell the governor; `run` returns.
- Stopping (issue 11 item 4): `stop` set while a batch is in flight waits for it up to
  `stop_deadline`, then cancels it (its offsets are not committed: it is redelivered); a
  cancelled `run` cancels its batch too. Nothing runs detached once `run` has returned.
- Fencing: with `fence` (returns the leader term's `Fence`, read once when `run` starts),
  every offset and watermark write is conditional on that term still holding the lease; a
  refused write (`FencedError`) ends `run` (logged `stream_fenced`), and nothing more is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from listener.events import channel_object
from listener.sources._sfstream_compat import NEW_EVENTS, CommittedReplayIds, StreamSession
from listener.sources.base import DeliveryLimitError, ReplayIdInvalidError, TokenSource, term_fence
from listener.sources.batching import CommitPolicy
from listener.sources.cdc_batch import Message, apply_batch, sort_batch
from listener.sources.handover import HANDOVER_MARGIN, CatchUp, PollHandover
from listener.sources.intake import BatchIntake
from listener.sources.replay_offsets import ReplayOffsets
from reconciler.errors import FencedError, RetriableError
from reconciler.pacing import Backoff
from reconciler.ports import ChangeSink, RejectedEvent, StateStore
from reconciler.store import Fence
from reconciler.watermark import Watermark
from settings import Settings

log = structlog.get_logger(__name__)

# An event dated more than this after now is rejected: it would push watermarks into the future.
LATEST_AHEAD = timedelta(days=1)

def channel_for(sobject: str) -> str:
    return f"/data/{sobject}ChangeEvent"


@dataclass(frozen=True)
class StreamOptions:
    """The stream's tuning: who we are, and how events are batched, committed and watched."""

    client_name: str                # `client=<name>` in changeOrigin marks our own echoes
    api_version: str                # the CometD endpoint's version (`/cometd/62.0`)
    batch_size: int = 500           # events per micro-batch (the queue holds two batches)
    batch_wait_ms: int = 20         # how long a batch waits for more events after its first
    stall_timeout: float = 5.0      # seconds the transport may reconnect before we reopen
    commit_every: int = 1           # events applied per replay id commit (`CommitPolicy`)
    stop_deadline: float = 5.0      # seconds a batch in flight may finish after stop (< lease TTL/2)

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamOptions:
        return cls(client_name=settings.salesforce.client_name, api_version=settings.salesforce.api_version,
                   batch_size=settings.sync.batch_size, batch_wait_ms=settings.sync.batch_wait_ms,
                   stop_deadline=min(5.0, settings.sync.lease_seconds / 4))


class Session(Protocol):
    async def open(self, channels: Sequence[str]) -> None: ...

    async def receive(self) -> dict[str, Any] | RejectedEvent: ...

    async def close(self) -> None: ...


class EventsExhausted(Protocol):
    def events_exhausted(self) -> None: ...


class CdcStream:
    """Runs the stream until `stop` is set or the CDC allocation is spent (a `Source`).

    The session loop and the batch loop live here; the pieces with their own reason to change
    are `sort_batch` (messages -> changes, gaps, offsets), `ReplayOffsets` (replay id
    bookkeeping and commit) and `PollHandover` (catch-up and closing polls, watermarks left).
    """

    name = "stream"

    def __init__(
        self,
        *,
        sf: TokenSource,
        store: StateStore,
        sink: ChangeSink,
        catch_up: CatchUp,
        objects: Sequence[str],
        options: StreamOptions,
        governor: EventsExhausted | None = None,
        session_factory: Callable[[CommittedReplayIds], Session] | None = None,
        fence: Callable[[], Fence | None] | None = None,
    ) -> None:
        self._sf = sf
        self._fence = fence
        self._sink = sink
        self._catch_up = catch_up
        self.objects = list(objects)
        self.options = options
        self._governor = governor
        self._session_factory = session_factory or self._default_session
        self._offsets = ReplayOffsets(store, self.channels)
        self._handover = PollHandover(catch_up, store)
        self._intake: BatchIntake[Message] | None = None
        self.connected = False
        self.ready = False  # connected, and any closing poll done: events flow
        self.running = False

    # -- public ------------------------------------------------------------------------------

    @property
    def channels(self) -> list[str]:
        return [channel_for(o) for o in self.objects]

    def status(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "connected": self.connected,
            "ready": self.ready,
            "replay_ids": self._offsets.applied_ids,
            "queue_depth": self._intake.queue_depth if self._intake else 0,
        }

    def resume_after_poll(self, marks: dict[str, Watermark]) -> None:
        """Skip replayed events the poller already applied (handover poll -> stream)."""
        self._handover.resume_after_poll(marks)

    def resume_from(self, marks: dict[str, Watermark]) -> None:
        self.resume_after_poll(marks)

    async def handover_marks(self) -> dict[str, Watermark]:
        """The stream leaves its marks in `sync_state` (watermarks before its last applied
        commit, written when `run` ends); the next source reads them from there."""
        return {}

    async def run(self, stop: asyncio.Event) -> None:
        term = term_fence(self._fence, "stream")
        self._offsets.fence = self._handover.fence = term
        self.running = True
        finished = False
        try:
            await self._sessions(await self._offsets.load(), stop)
            finished = True
        except FencedError as exc:
            log.warning("stream_fenced", error=str(exc), term=term.term if term else None)
            raise
        finally:
            self.running = False
            self.connected = False
        if finished:  # not after a cancellation or a refused write: nothing written past the term
            await self._handover.checkpoint_watermarks()

    # -- sessions ----------------------------------------------------------------------------

    async def _sessions(self, replay: CommittedReplayIds, stop: asyncio.Event) -> None:
        backoff = Backoff(base=0.5, cap=30.0)  # full jitter (reconciler.pacing)
        while not stop.is_set():
            session = self._session_factory(replay)
            failure: Exception | None = None
            # A channel subscribed with -1 (no committed replay id, or none since a resync, on a
            # reconnect too) is closed over by a poll: what was published before it is not replayed.
            unreplayable = [o for o in self.objects if replay.subscribes_new(channel_for(o))]
            self._handover.owe_closing_poll(unreplayable)
            try:
                await session.open(self.channels)
                self.connected = True
                log.info("stream_connected", channels=self.channels, replay_ids=replay.committed_ids)
                await self._handover.close_over_with_poll()
                self.ready = True
                backoff.reset()
                await self._consume(session, stop)
            except (RetriableError, DeliveryLimitError) as exc:
                failure = exc
            finally:
                self.connected = self.ready = False
                await session.close()
            if isinstance(failure, DeliveryLimitError):
                log.warning("stream_events_exhausted", error=str(failure))
                if self._governor is not None:
                    self._governor.events_exhausted()
                return
            if isinstance(failure, ReplayIdInvalidError):
                await self._resync(replay, failure)
            elif failure is not None:
                log.warning("stream_reconnect", error=str(failure), error_type=type(failure).__name__)
                await backoff.wait(stop)

    def _default_session(self, replay: CommittedReplayIds) -> Session:
        options = self.options
        return StreamSession(self._sf, api_version=options.api_version, replay_ids=replay,
                             stall_timeout=options.stall_timeout,
                             max_pending=max(options.batch_size * 2, 100))

    async def _resync(self, replay: CommittedReplayIds, error: ReplayIdInvalidError) -> None:
        """Replay id unusable: poll from the watermark, then subscribe with -1 (and poll again)."""
        channels = [error.channel] if error.channel in self.channels else self.channels
        objects = [o for c in channels if (o := channel_object(c))]
        log.warning("stream_resync", channels=channels, reason=str(error))
        await self._handover.poll(objects)
        for channel in channels:
            replay.override(channel, NEW_EVENTS)
        self._handover.owe_closing_poll(objects)

    # -- consuming ---------------------------------------------------------------------------

    async def _consume(self, session: Session, stop: asyncio.Event) -> None:
        """Apply batches from the session until `stop` or an error (`BatchIntake`)."""
        options = self.options
        policy = CommitPolicy(max_pending=options.commit_every, max_seconds=1.0)

        async def process(messages: list[Message]) -> None:
            await self._process(messages, policy)

        self._intake = BatchIntake([session], process, self._offsets.commit,
                                   batch_size=options.batch_size, batch_wait=options.batch_wait_ms / 1000,
                                   stop_deadline=options.stop_deadline)
        try:
            await self._intake.run(stop)
        finally:
            self._intake = None

    async def _process(self, messages: list[Message], policy: CommitPolicy) -> None:
        batch = sort_batch(messages, client_name=self.options.client_name, objects=set(self.objects),
                           already_applied=self._offsets.is_applied, covered=self._handover.covers,
                           latest=datetime.now(UTC) + LATEST_AHEAD)
        await apply_batch(batch, sink=self._sink, catch_up=self._catch_up)
        self._offsets.applied(batch.offsets)
        self._handover.saw_commits(batch.committed_at)
        policy.applied(len(messages))
        if policy.due():
            await self._offsets.commit()
            policy.committed()


__all__ = ["HANDOVER_MARGIN", "CatchUp", "CdcStream", "Session", "StreamOptions", "channel_for"]
