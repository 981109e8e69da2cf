"""The CDC stream: `/data/<Object>ChangeEvent` over CometD, applied in micro-batches.

    CometD session --receive--> bounded queue --MicroBatcher--> parse --> ChangeSink.apply
                                (reader waits when full)                       |
                                        replay id per channel committed  <-----+  (after apply)

- Resumes from the replay id stored per channel (`sync_state` `replay:<channel>` =
  `{"replay_id": N}`), written with a journaled majority only after `apply` returned.
- A channel with no usable replay id (first start, or `400` replay id too old) is subscribed
  with -1 (new events) and closed over by a poll: catch-up poll, subscribe, closing poll, then
  consume; events the poll already covered are skipped (`Watermark.covers`).
- Echoes (our client name in `changeOrigin`) go to the sink flagged `is_echo`; offsets advance.
- GAP_* events: one `Id IN (...)` query per object per batch, applied as UPSERTs (source GAP).
- GAP_OVERFLOW: poll the object from the event's commit time.
- Network loss, `403::Unknown client`, a 401 a fresh token did not cure: close, back off with
  jitter, reopen from the committed replay ids (redelivered events are dropped by replay id).
- `403::Organization total events daily limit exceeded`: tell the governor; `run` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from listener.events import GapRequest, OverflowRequest, channel_object, parse_message
from listener.metrics import METRICS
from listener.sources._sfstream_compat import (
    NEW_EVENTS,
    CommittedReplayIds,
    DeliveryLimitError,
    ReplayIdInvalidError,
    StreamSession,
    TokenSource,
)
from listener.sources.batching import CommitPolicy, MicroBatcher
from reconciler.errors import RetriableError
from reconciler.pacing import Backoff
from reconciler.ports import ChangeSink, RejectedEvent, SalesforceChange, StateStore
from reconciler.soql import floor_second
from reconciler.store.state_keys import replay_key, watermark_key
from reconciler.watermark import Watermark
from settings import Settings

log = structlog.get_logger(__name__)

# When the stream hands over to the poller, the poller re-reads this much before the last
# applied commit: SystemModstamp and commitTimestamp are close but not guaranteed equal.
HANDOVER_MARGIN = timedelta(seconds=2)


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

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamOptions:
        return cls(client_name=settings.salesforce.client_name, api_version=settings.salesforce.api_version,
                   batch_size=settings.sync.batch_size, batch_wait_ms=settings.sync.batch_wait_ms)


class CatchUp(Protocol):
    """What the stream needs of a poller: catch-up and closing polls, gap and overflow reads,
    and the watermark it hands over to (implemented by `listener.sources.polling.Poller`)."""

    async def run_once(self, objects: Sequence[str] | None = None) -> Any: ...

    async def poll_since(self, sobject: str, since: datetime) -> int: ...

    async def fetch_by_ids(self, sobject: str, ids: Iterable[str]) -> list[SalesforceChange]: ...

    async def watermark(self, sobject: str) -> Watermark: ...


class Session(Protocol):
    async def open(self, channels: Sequence[str]) -> None: ...

    async def receive(self) -> dict[str, Any] | RejectedEvent: ...

    async def close(self) -> None: ...


class EventsExhausted(Protocol):
    def events_exhausted(self) -> None: ...


@dataclass
class _Batch:
    """What one micro-batch turned into."""

    changes: list[SalesforceChange] = field(default_factory=list)
    rejected: list[RejectedEvent] = field(default_factory=list)
    gaps: dict[str, set[str]] = field(default_factory=dict)
    overflows: list[OverflowRequest] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    committed_at: dict[str, datetime] = field(default_factory=dict)


class CdcStream:
    """Runs the stream until `stop` is set or the CDC allocation is spent (a `Source`)."""

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
    ) -> None:
        self._sf = sf
        self._store = store
        self._sink = sink
        self._catch_up = catch_up
        self.objects = list(objects)
        self.options = options
        self._governor = governor
        self._session_factory = session_factory or self._default_session
        self._applied: dict[str, int] = {}        # highest replay id applied, per channel
        self._poll_marks: dict[str, Watermark] = {}  # what a poll covered, per object
        self._last_commit: dict[str, datetime] = {}  # newest applied commit time, per object
        self._closing_poll: set[str] = set()
        self._pending: dict[str, int] = {}        # applied, not yet committed, per channel
        self._replay: CommittedReplayIds | None = None
        self._queue: asyncio.Queue[dict[str, Any] | RejectedEvent] | None = None
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
            "replay_ids": dict(self._applied),
            "queue_depth": self._queue.qsize() if self._queue else 0,
        }

    def resume_after_poll(self, marks: dict[str, Watermark]) -> None:
        """Skip replayed events the poller already applied (handover poll -> stream)."""
        self._poll_marks.update(marks)

    def resume_from(self, marks: dict[str, Watermark]) -> None:
        self.resume_after_poll(marks)

    async def handover_marks(self) -> dict[str, Watermark]:
        """The stream leaves its marks in `sync_state` (watermarks before its last applied
        commit, written when `run` ends); the next source reads them from there."""
        return {}

    async def run(self, stop: asyncio.Event) -> None:
        self.running = True
        try:
            replay = CommittedReplayIds(await self._load_replay_ids())
            self._replay = replay
            await self._sessions(replay, stop)
        finally:
            self.running = False
            self.connected = False
            await self._checkpoint_watermarks()

    # -- sessions ----------------------------------------------------------------------------

    async def _sessions(self, replay: CommittedReplayIds, stop: asyncio.Event) -> None:
        backoff = Backoff(base=0.5, cap=30.0)  # full jitter (reconciler.pacing)
        while not stop.is_set():
            session = self._session_factory(replay)
            failure: Exception | None = None
            # A channel with no committed replay id is subscribed with -1: poll around it.
            self._closing_poll.update(o for o in self.objects if channel_for(o) not in replay.committed_ids)
            try:
                await session.open(self.channels)
                self.connected = True
                log.info("stream_connected", channels=self.channels, replay_ids=replay.committed_ids)
                await self._close_over_with_poll()
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
        await self._poll(objects)
        for channel in channels:
            replay.override(channel, NEW_EVENTS)
        self._closing_poll.update(objects)

    async def _close_over_with_poll(self) -> None:
        """After subscribing with -1: poll what changed before the subscription took effect.

        The poller's signpost excludes the current second, so the poll waits for the next
        second boundary: then every change before the subscription is below the signpost.
        """
        if self._closing_poll:
            objects = sorted(self._closing_poll)
            await asyncio.sleep(1.0 - time.time() % 1.0 + 0.01)
            await self._poll(objects)
            self._closing_poll.clear()

    async def _poll(self, objects: Sequence[str]) -> None:
        await self._catch_up.run_once(objects)
        for sobject in objects:
            self._poll_marks[sobject] = await self._catch_up.watermark(sobject)

    # -- consuming ---------------------------------------------------------------------------

    async def _consume(self, session: Session, stop: asyncio.Event) -> None:
        """Read into a bounded queue and apply batches until `stop` or an error."""
        options = self.options
        queue: asyncio.Queue[dict[str, Any] | RejectedEvent] = asyncio.Queue(maxsize=options.batch_size * 2)
        self._queue = queue
        batcher = MicroBatcher(queue, max_items=options.batch_size, max_wait=options.batch_wait_ms / 1000)
        reader = asyncio.create_task(self._read(session, queue))
        stopping = asyncio.create_task(stop.wait())
        policy = CommitPolicy(max_pending=options.commit_every, max_seconds=1.0)
        try:
            while True:
                taking = asyncio.create_task(batcher.next_batch())
                done, _ = await asyncio.wait({taking, reader, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if taking not in done:
                    # Items already taken are dropped: uncommitted, they are redelivered later.
                    taking.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await taking
                    await self._commit_offsets()  # what was applied stays applied
                    if reader in done:
                        reader.result()  # raises the reader's error
                    return
                # The batch in flight is finished even if we are cancelled meanwhile.
                await asyncio.shield(self._process(taking.result(), policy))
                METRICS.set("sfsync_queue_depth", queue.qsize(), queue="inbound")
        finally:
            for task in (reader, stopping):
                task.cancel()
            await asyncio.gather(reader, stopping, return_exceptions=True)
            self._queue = None

    async def _read(self, session: Session, queue: asyncio.Queue[dict[str, Any] | RejectedEvent]) -> None:
        while True:
            await queue.put(await session.receive())  # waits when full: back-pressure

    async def _process(self, messages: list[dict[str, Any] | RejectedEvent], policy: CommitPolicy) -> None:
        batch = self._sort(messages)
        changes = batch.changes
        if batch.gaps:
            changes = changes + await self._fetch_gaps(batch.gaps)
        if changes:
            await self._sink.apply(changes)
        if batch.rejected:
            await self._sink.reject(batch.rejected)
            METRICS.inc("sfsync_events_failed_total", len(batch.rejected), object="unknown")
        for overflow in batch.overflows:
            log.info("stream_overflow_poll", object=overflow.sobject, since=overflow.since.isoformat())
            await self._catch_up.poll_since(overflow.sobject, overflow.since)
        for channel, replay_id in batch.offsets.items():
            self._pending[channel] = max(replay_id, self._pending.get(channel, -1))
            self._applied[channel] = max(replay_id, self._applied.get(channel, -1))
        for sobject, at in batch.committed_at.items():
            self._last_commit[sobject] = max(at, self._last_commit.get(sobject, at))
        policy.applied(len(messages))
        if policy.due():
            await self._commit_offsets()
            policy.committed()
        self._note_lag(batch)

    def _sort(self, messages: list[dict[str, Any] | RejectedEvent]) -> _Batch:
        batch = _Batch()
        objects = set(self.objects)
        for message in messages:
            if isinstance(message, RejectedEvent):
                batch.rejected.append(message)
                continue
            channel = str(message.get("channel", ""))
            parsed = parse_message(message, client_name=self.options.client_name, objects=objects)
            replay_id = parsed.replay_id if not isinstance(parsed, list) else _first_replay(parsed)
            if replay_id is not None:
                if replay_id <= self._applied.get(channel, -1):
                    continue  # redelivered after a reconnect: already applied
                batch.offsets[channel] = max(replay_id, batch.offsets.get(channel, -1))
            self._dispatch(parsed, batch)
        return batch

    def _dispatch(self, parsed: Any, batch: _Batch) -> None:
        if isinstance(parsed, RejectedEvent):
            log.warning("stream_event_rejected", reason=parsed.reason, channel=parsed.channel,
                        replay_id=parsed.replay_id)
            batch.rejected.append(parsed)
        elif isinstance(parsed, GapRequest):
            METRICS.inc("sfsync_events_received_total", object=parsed.sobject)
            batch.gaps.setdefault(parsed.sobject, set()).update(parsed.record_ids)
            self._saw_commit(batch, parsed.sobject, parsed.committed_at)
        elif isinstance(parsed, OverflowRequest):
            METRICS.inc("sfsync_events_received_total", object=parsed.sobject)
            batch.overflows.append(parsed)
            self._saw_commit(batch, parsed.sobject, parsed.since)
        else:
            for change in parsed:
                METRICS.inc("sfsync_events_received_total", object=change.sobject)
                self._saw_commit(batch, change.sobject, change.changed_at)
                if not self._covered_by_poll(change):
                    batch.changes.append(change)

    @staticmethod
    def _saw_commit(batch: _Batch, sobject: str, at: datetime) -> None:
        previous = batch.committed_at.get(sobject)
        if previous is None or at > previous:
            batch.committed_at[sobject] = at

    def _covered_by_poll(self, change: SalesforceChange) -> bool:
        mark = self._poll_marks.get(change.sobject)
        return mark is not None and mark.covers(change.sf_id, floor_second(change.changed_at))

    async def _fetch_gaps(self, gaps: dict[str, set[str]]) -> list[SalesforceChange]:
        fetched: list[SalesforceChange] = []
        for sobject, ids in gaps.items():
            log.info("stream_gap_fetch", object=sobject, records=len(ids))
            fetched.extend(await self._catch_up.fetch_by_ids(sobject, sorted(ids)))
        return fetched

    async def _commit_offsets(self) -> None:
        """Durably store the replay ids of applied events (journaled majority, in the store)."""
        for channel, replay_id in sorted(self._pending.items()):
            await self._store.save_state(replay_key(channel), {"replay_id": replay_id})
            if self._replay is not None:
                self._replay.commit(channel, replay_id)
            del self._pending[channel]

    def _note_lag(self, batch: _Batch) -> None:
        """`sfsync_replay_lag_seconds` (this is its only writer): seconds from the newest
        Salesforce commit in the batch just applied (`commitTimestamp`, or the record's
        `LastModifiedDate`) to the moment its apply finished -- how far the stream runs behind
        Salesforce. Not updated while no events arrive, nor while polling."""
        if batch.committed_at:
            newest = max(batch.committed_at.values())
            METRICS.set("sfsync_replay_lag_seconds", max(time.time() - newest.timestamp(), 0.0))

    # -- offsets -----------------------------------------------------------------------------

    async def _load_replay_ids(self) -> dict[str, int]:
        ids: dict[str, int] = {}
        for channel in self.channels:
            state = await self._store.load_state(replay_key(channel))
            value = state.get("replay_id") if state else None
            if isinstance(value, int) and value >= 0:
                ids[channel] = value
                self._applied[channel] = value
        return ids

    async def _checkpoint_watermarks(self) -> None:
        """Hand over to the poller: its watermark need not reach back before the stream's work."""
        for sobject, committed in self._last_commit.items():
            ts = floor_second(committed - HANDOVER_MARGIN)
            try:
                current = await self._catch_up.watermark(sobject)
                if current.ts is None or ts > current.ts:
                    await self._store.save_state(watermark_key(sobject), Watermark(ts).to_state())
            except RetriableError as exc:
                log.warning("stream_watermark_checkpoint_failed", object=sobject, error=str(exc))


def _first_replay(changes: list[SalesforceChange]) -> int | None:
    return changes[0].replay_id if changes else None
