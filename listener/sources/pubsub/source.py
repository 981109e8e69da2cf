"""The CDC stream over Salesforce's Pub/Sub API (gRPC, Avro, pull-based flow control): a `Source`.

    Subscribe stream per channel --FetchResponse--> ChannelReader --BatchIntake--> decode --> sort_batch
      ^ FetchRequest(num_requested)                                                              |
      +----- ask again for as many as were applied <---- replay ids committed <---- apply_batch

It behaves like the CometD stream (`listener.sources.cometd`), behind the same protocol, and
shares its pieces: `intake.BatchIntake` (micro-batches, bounded stop), `cdc_batch.sort_batch` and
`apply_batch` (echoes, GAP_* and GAP_OVERFLOW, poison, poll-covered skip, lag metric),
`handover.PollHandover` (catch-up and closing polls, watermarks left for the poller) and
`replay_offsets.PubSubOffsets`. Its own parts: `subscriptions` (subscribe, flow control,
keepalives, Avro decoding) and the session loop here.

- Resumes with `ReplayPreset.CUSTOM` after the replay id stored per channel (`sync_state`
  `pubsub_replay:<channel>` = `{"replay_id": <bytes>}`: Salesforce's opaque bytes, stored as
  they came), written with a journaled majority only after `apply` returned. A channel with no
  stored replay id subscribes `LATEST` and is closed over by a poll, as with CometD, and polled
  once more at the subscription's first response (nothing else shows the server holds it).
- The server's invalid/expired replay id error: poll from the watermark, subscribe `LATEST`,
  poll again (the CometD stream's resync path).
- Poison (undecodable, or refused by `parse_message`): a failed log naming the replay id (hex);
  the offset moves past it.
- Auth metadata (`accesstoken`, `instanceurl`, `tenantid`) comes from the REST client's token;
  `UNAUTHENTICATED` re-authenticates through it and reconnects (backoff from the second in a row).
- The daily event allocation spent: tell the governor; `run` returns.
- Stopping and fencing as CometD's (issue 11): a batch in flight at stop gets `stop_deadline`,
  then is cancelled, nothing is written after; with `fence`, offset and watermark writes carry
  the leader term's fence and a refused one (`FencedError`) ends `run`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from listener.events import channel_object
from listener.sources.base import DeliveryLimitError, ReplayIdInvalidError, TokenSource, term_fence
from listener.sources.batching import CommitPolicy
from listener.sources.cdc_batch import apply_batch, sort_batch
from listener.sources.cometd import LATEST_AHEAD, CatchUp, EventsExhausted, channel_for
from listener.sources.handover import PollHandover
from listener.sources.intake import BatchIntake
from listener.sources.pubsub._wire import Endpoint, PubSubAuthError, PubSubConnection
from listener.sources.pubsub.subscriptions import (
    ChannelReader,
    Connection,
    EventDecoder,
    Item,
    Subscription,
    Subscriptions,
)
from listener.sources.replay_offsets import PubSubOffsets
from reconciler.errors import FencedError, RetriableError
from reconciler.pacing import Backoff
from reconciler.ports import ChangeSink, StateStore
from reconciler.store import Fence
from reconciler.watermark import Watermark
from settings import Settings

log = structlog.get_logger(__name__)

DEFAULT_ENDPOINT = "api.pubsub.salesforce.com:7443"


@dataclass(frozen=True)
class PubSubOptions:
    """Who we are, where the API is, and how events are batched, committed and stopped."""

    client_name: str                # `client=<name>` in changeOrigin marks our own echoes
    endpoint: str = DEFAULT_ENDPOINT
    batch_size: int = 200           # events per micro-batch, and per FetchRequest
    batch_wait_ms: int = 20         # how long a batch waits for more events after its first
    commit_every: int = 1           # events applied per replay id commit (`CommitPolicy`)
    subscribe_settle: float = 0.25  # seconds a LATEST subscription gets to take effect before the poll
    read_ahead: int = 2             # batches in flight per channel (requested one batch at a time)
    stop_deadline: float = 5.0      # seconds a batch in flight may finish after stop (< lease TTL/2)

    @classmethod
    def from_settings(cls, settings: Settings) -> PubSubOptions:
        return cls(client_name=settings.salesforce.client_name, endpoint=settings.salesforce.pubsub_endpoint,
                   batch_size=settings.sync.batch_size, batch_wait_ms=settings.sync.batch_wait_ms,
                   stop_deadline=min(5.0, settings.sync.lease_seconds / 4))


class PubSubStream:
    """Runs Pub/Sub subscriptions until `stop` is set or the event allocation is spent (a `Source`)."""

    name = "stream"

    def __init__(
        self,
        *,
        sf: TokenSource,
        store: StateStore,
        sink: ChangeSink,
        catch_up: CatchUp,
        objects: Sequence[str],
        options: PubSubOptions,
        governor: EventsExhausted | None = None,
        connect: Callable[[], Connection] | None = None,
        fence: Callable[[], Fence | None] | None = None,
    ) -> None:
        self._sf = sf
        self._sink = sink
        self._catch_up = catch_up
        self._fence = fence
        self.objects = list(objects)
        self.options = options
        self._governor = governor
        self._connect = connect or (lambda: PubSubConnection(Endpoint.parse(options.endpoint), sf))
        self._offsets = PubSubOffsets(store, self.channels)
        self._handover = PollHandover(catch_up, store)
        self._decoder = EventDecoder()
        self._subscriptions = Subscriptions(batch_size=options.batch_size, read_ahead=options.read_ahead,
                                            decoder=self._decoder)
        self._intake: BatchIntake[Item] | None = None
        self._backoff = Backoff(base=0.5, cap=30.0)  # full jitter (reconciler.pacing)
        self._auth_failures = 0  # UNAUTHENTICATED in a row, with no batch applied between
        self._unconfirmed: set[str] = set()  # subscribed LATEST, not yet answered: objects
        self.connected = False
        self.ready = False
        self.running = False

    # -- public ------------------------------------------------------------------------------

    @property
    def channels(self) -> list[str]:
        return [channel_for(o) for o in self.objects]

    def status(self) -> dict[str, Any]:
        return {
            "api": "pubsub",
            "running": self.running,
            "connected": self.connected,
            "ready": self.ready,
            "replay_ids": {c: r.hex() for c, r in self._offsets.applied_ids.items()},
            "requested": dict(self._subscriptions.outstanding),
            "queue_depth": self._intake.queue_depth if self._intake else 0,
        }

    def resume_from(self, marks: dict[str, Watermark]) -> None:
        """Skip replayed events the poller already applied (handover poll -> stream)."""
        self._handover.resume_after_poll(marks)

    async def handover_marks(self) -> dict[str, Watermark]:
        """Like the CometD stream: watermarks before the last applied commit, left in `sync_state`."""
        return {}

    async def run(self, stop: asyncio.Event) -> None:
        term = term_fence(self._fence, "stream")
        self._offsets.fence = self._handover.fence = term
        self.running = True
        finished = False
        try:
            await self._offsets.load()
            await self._sessions(stop)
            finished = True
        except FencedError as exc:
            log.warning("stream_fenced", api="pubsub", error=str(exc), term=term.term if term else None)
            raise
        finally:
            self.running = False
            self.connected = self.ready = False
        if finished:  # not after a cancellation or a refused write: nothing written past the term
            await self._handover.checkpoint_watermarks()

    # -- sessions ----------------------------------------------------------------------------

    async def _sessions(self, stop: asyncio.Event) -> None:
        self._backoff.reset()
        self._auth_failures = 0
        while not stop.is_set():
            failure = await self._session(stop)
            if isinstance(failure, DeliveryLimitError):
                log.warning("stream_events_exhausted", api="pubsub", error=str(failure))
                if self._governor is not None:
                    self._governor.events_exhausted()
                return
            if failure is not None:
                await self._recover(failure, stop)

    async def _session(self, stop: asyncio.Event) -> Exception | None:
        """One connection: subscribe, close over with a poll if owed, consume; its error, if any."""
        connection = self._connect()
        after = self._offsets.applied_ids
        self._unconfirmed = {o for o in self.objects if channel_for(o) not in after}
        self._handover.owe_closing_poll(self._unconfirmed)
        try:
            readers = await self._subscriptions.open(connection, self.channels, after)
            self.connected = True
            log.info("stream_connected", api="pubsub", channels=self.channels,
                     replay_ids={c: r.hex() for c, r in after.items()})
            if self._handover.closing_poll_owed:
                await asyncio.sleep(self.options.subscribe_settle)  # the LATEST subscription takes hold
            await self._handover.close_over_with_poll()
            self.ready = True
            await self._consume(connection, readers, stop)
        except (RetriableError, DeliveryLimitError) as exc:
            return exc
        finally:
            self.connected = self.ready = False
            await self._subscriptions.close(connection)
        return None

    async def _recover(self, failure: Exception, stop: asyncio.Event) -> None:
        if isinstance(failure, ReplayIdInvalidError):
            await self._resync(failure)
        elif isinstance(failure, PubSubAuthError):
            self._auth_failures += 1
            log.info("stream_reauthenticate", api="pubsub", attempt=self._auth_failures)
            await self._sf.reauthenticate()
            if self._auth_failures > 1:
                await self._backoff.wait(stop)
        else:
            log.warning("stream_reconnect", api="pubsub", error=str(failure),
                        error_type=type(failure).__name__)
            await self._backoff.wait(stop)

    async def _resync(self, error: ReplayIdInvalidError) -> None:
        """Replay id unusable: poll from the watermark, then subscribe LATEST (and poll again)."""
        channels = [error.channel] if error.channel in self.channels else self.channels
        objects = [o for c in channels if (o := channel_object(c))]
        log.warning("stream_resync", api="pubsub", channels=channels, reason=str(error))
        await self._handover.poll(objects)
        for channel in channels:
            self._offsets.forget(channel)
        self._handover.owe_closing_poll(objects)

    # -- consuming ---------------------------------------------------------------------------

    async def _consume(self, connection: Connection, readers: list[ChannelReader],
                       stop: asyncio.Event) -> None:
        """Apply batches from every subscription until `stop` or an error (`BatchIntake`)."""
        options = self.options
        policy = CommitPolicy(max_pending=options.commit_every, max_seconds=1.0)

        async def process(items: list[Item]) -> None:
            await self._process(connection, items, policy)

        self._intake = BatchIntake(readers, process, self._offsets.commit,
                                   batch_size=options.batch_size, batch_wait=options.batch_wait_ms / 1000,
                                   stop_deadline=options.stop_deadline)
        try:
            await self._intake.run(stop)
        finally:
            self._intake = None

    async def _process(self, connection: Connection, items: list[Item], policy: CommitPolicy) -> None:
        await self._confirm_latest(items)
        messages = [await self._decoder.decode(connection, i) for i in items if i.event is not None]
        batch = sort_batch(messages, client_name=self.options.client_name, objects=set(self.objects),
                           already_applied=_never, covered=self._handover.covers,
                           latest=datetime.now(UTC) + LATEST_AHEAD)
        await apply_batch(batch, sink=self._sink, catch_up=self._catch_up)
        self._offsets.applied({i.channel: i.replay_id for i in items})  # a channel's items come in order
        self._handover.saw_commits(batch.committed_at)
        self._auth_failures = 0  # a batch applied: the session works, count afresh
        self._backoff.reset()
        policy.applied(len(items))
        if policy.due():
            await self._offsets.commit()
            policy.committed()
        await self._subscriptions.ask_for_more(items)


    async def _confirm_latest(self, items: list[Item]) -> None:
        """A LATEST subscription holds from when the server acts on it, which the client cannot
        see (the settle only makes it likely before the closing poll); its first response proves
        it. Poll those objects again then, before the events: a change made between the closing
        poll and that moment is neither delivered nor polled otherwise."""
        answered = {o for i in items if (o := channel_object(i.channel)) in self._unconfirmed}
        if answered:
            self._unconfirmed -= answered
            self._handover.owe_closing_poll(answered)
            await self._handover.close_over_with_poll()


def _never(channel: str, replay_id: int) -> bool:
    """Pub/Sub replay ids are opaque: a redelivered event cannot be recognised (nor is one
    expected: a session resumes after the last applied id)."""
    return False


__all__ = ["DEFAULT_ENDPOINT", "Connection", "PubSubOptions", "PubSubStream", "Subscription"]
