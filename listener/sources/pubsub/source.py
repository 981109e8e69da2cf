"""The CDC stream over Salesforce's Pub/Sub API (gRPC, Avro, pull-based flow control): a `Source`.

    Subscribe stream per channel --FetchResponse--> queue --MicroBatcher--> Avro decode --> parse
      ^ FetchRequest(num_requested)                                                          |
      +----- ask again for as many as were applied <---- replay ids committed <---- ChangeSink.apply

It behaves like the CometD stream (`listener.sources.cometd`), behind the same protocol:

- One `Subscribe` stream per channel (`/data/LeadChangeEvent`, ...). Each FetchRequest asks for at
  most one batch: the first two together (`read_ahead`) let the next batch arrive while one is
  applied, as CometD's two-batch queue does; after a batch is applied, each channel asks for as
  many events as it delivered in it, so at most `read_ahead` batches per channel are ever in
  flight or queued.
- Resumes with `ReplayPreset.CUSTOM` after the replay id stored per channel (`sync_state`
  `pubsub_replay:<channel>` = `{"replay_id": <bytes>}`: Salesforce's opaque bytes, stored as
  they came), written with a journaled majority only after `apply` returned. A channel with no
  stored replay id subscribes `LATEST` and is closed over by a poll, as with CometD.
- The server's invalid/expired replay id error: poll from the watermark, subscribe `LATEST`,
  poll again (the CometD stream's resync path).
- Keepalives (no events, the latest replay id) advance the stored offset of an idle channel, so a
  quiet channel's replay id does not age out of the retention window.
- Schemas come from `GetTopic`/`GetSchema`, cached by schema id. Payloads are decoded by
  `listener.sources.pubsub.avro` into CometD's JSON shape and parsed by `listener.events`, so
  echoes (`changeOrigin` naming our client), GAP_* and GAP_OVERFLOW events, and malformed events
  are handled exactly as on CometD. An undecodable payload is a rejected (failed) event.
- Auth metadata (`accesstoken`, `instanceurl`, `tenantid`) comes from the REST client's token;
  `UNAUTHENTICATED` re-authenticates through it and reconnects.
- The daily event allocation spent: tell the governor; `run` returns.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import structlog

from listener.events import GapRequest, OverflowRequest, channel_object, parse_message
from listener.metrics import METRICS
from listener.sources.batching import CommitPolicy, MicroBatcher
from listener.sources.cometd import HANDOVER_MARGIN, CatchUp, EventsExhausted, channel_for
from listener.sources.pubsub._wire import (
    DeliveryLimitError,
    Endpoint,
    PubSubAuthError,
    PubSubConnection,
    ReplayIdInvalidError,
    TokenSource,
    fetch_request,
    more,
)
from listener.sources.pubsub.avro import AvroDecodeError, EventSchema, decode_payload, to_cometd_payload
from reconciler.errors import FatalError, RetriableError
from reconciler.pacing import Backoff
from reconciler.ports import ChangeSink, RejectedEvent, SalesforceChange, StateStore
from reconciler.soql import floor_second
from reconciler.store.state_keys import pubsub_replay_key, watermark_key
from reconciler.watermark import Watermark
from settings import Settings

log = structlog.get_logger(__name__)

DEFAULT_ENDPOINT = "api.pubsub.salesforce.com:7443"


@dataclass(frozen=True)
class PubSubOptions:
    """Who we are, where the API is, and how events are batched and committed."""

    client_name: str                # `client=<name>` in changeOrigin marks our own echoes
    endpoint: str = DEFAULT_ENDPOINT
    batch_size: int = 200           # events per micro-batch, and per FetchRequest
    batch_wait_ms: int = 20         # how long a batch waits for more events after its first
    commit_every: int = 1           # events applied per replay id commit (`CommitPolicy`)
    subscribe_settle: float = 0.25  # seconds a LATEST subscription gets to take effect before the poll
    read_ahead: int = 2             # batches in flight per channel (requested one batch at a time)

    @classmethod
    def from_settings(cls, settings: Settings) -> PubSubOptions:
        return cls(client_name=settings.salesforce.client_name, endpoint=settings.salesforce.pubsub_endpoint,
                   batch_size=settings.sync.batch_size, batch_wait_ms=settings.sync.batch_wait_ms)


class Subscription(Protocol):
    topic: str

    async def request(self, fetch: Any) -> None: ...

    async def read(self) -> Any: ...

    def cancel(self) -> None: ...


class Connection(Protocol):
    """What the source needs of `PubSubConnection` (a fake in unit tests)."""

    async def get_topic(self, topic: str) -> Any: ...

    async def get_schema(self, schema_id: str) -> Any: ...

    async def subscribe(self, topic: str, first: Any) -> Subscription: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class _Item:
    """One delivered event, or a keepalive (`event` None) of an idle channel."""

    channel: str
    replay_id: bytes
    event: Any | None = None


@dataclass
class _Batch:
    changes: list[SalesforceChange] = field(default_factory=list)
    rejected: list[RejectedEvent] = field(default_factory=list)
    gaps: dict[str, set[str]] = field(default_factory=dict)
    overflows: list[OverflowRequest] = field(default_factory=list)
    offsets: dict[str, bytes] = field(default_factory=dict)
    delivered: Counter[str] = field(default_factory=Counter)
    committed_at: dict[str, datetime] = field(default_factory=dict)


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
    ) -> None:
        self._sf = sf
        self._store = store
        self._sink = sink
        self._catch_up = catch_up
        self.objects = list(objects)
        self.options = options
        self._governor = governor
        self._connect = connect or (lambda: PubSubConnection(Endpoint.parse(options.endpoint), sf))
        self._schemas: dict[str, EventSchema] = {}    # by schema id
        self._position: dict[str, bytes] = {}         # replay id applied (or stored), per channel
        self._pending: dict[str, bytes] = {}          # applied, not yet committed, per channel
        self._outstanding: dict[str, int] = {}        # requested, not yet delivered, per channel
        self._subscriptions: dict[str, Subscription] = {}
        self._poll_marks: dict[str, Watermark] = {}
        self._last_commit: dict[str, datetime] = {}
        self._closing_poll: set[str] = set()
        self._queue: asyncio.Queue[_Item] | None = None
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
            "replay_ids": {c: r.hex() for c, r in self._position.items()},
            "requested": dict(self._outstanding),
            "queue_depth": self._queue.qsize() if self._queue else 0,
        }

    def resume_from(self, marks: dict[str, Watermark]) -> None:
        """Skip replayed events the poller already applied (handover poll -> stream)."""
        self._poll_marks.update(marks)

    async def handover_marks(self) -> dict[str, Watermark]:
        """Like the CometD stream: watermarks before the last applied commit, left in `sync_state`."""
        return {}

    async def run(self, stop: asyncio.Event) -> None:
        self.running = True
        try:
            self._position = await self._load_replay_ids()
            await self._sessions(stop)
        finally:
            self.running = False
            self.connected = self.ready = False
            await self._checkpoint_watermarks()

    # -- sessions ----------------------------------------------------------------------------

    async def _sessions(self, stop: asyncio.Event) -> None:
        backoff = Backoff(base=0.5, cap=30.0)
        auth_failures = 0

        def flowing() -> None:  # a batch applied: the session works, start counting afresh
            nonlocal auth_failures
            auth_failures = 0
            backoff.reset()

        while not stop.is_set():
            connection = self._connect()
            failure: Exception | None = None
            self._closing_poll.update(o for o in self.objects if channel_for(o) not in self._position)
            try:
                await self._subscribe_all(connection)
                self.connected = True
                log.info("stream_connected", api="pubsub", channels=self.channels,
                         replay_ids={c: r.hex() for c, r in self._position.items()})
                await self._close_over_with_poll()
                self.ready = True
                await self._consume(connection, stop, on_first_batch=flowing)
            except (RetriableError, DeliveryLimitError) as exc:
                failure = exc
            finally:
                self.connected = self.ready = False
                await self._close(connection)
            if isinstance(failure, DeliveryLimitError):
                log.warning("stream_events_exhausted", api="pubsub", error=str(failure))
                if self._governor is not None:
                    self._governor.events_exhausted()
                return
            if isinstance(failure, ReplayIdInvalidError):
                await self._resync(failure)
            elif isinstance(failure, PubSubAuthError):
                auth_failures += 1
                log.info("stream_reauthenticate", api="pubsub", attempt=auth_failures)
                await self._sf.reauthenticate()
                if auth_failures > 1:
                    await backoff.wait(stop)
            elif failure is not None:
                log.warning("stream_reconnect", api="pubsub", error=str(failure),
                            error_type=type(failure).__name__)
                await backoff.wait(stop)

    async def _subscribe_all(self, connection: Connection) -> None:
        self._subscriptions = {}
        for channel in self.channels:
            topic = await connection.get_topic(channel)
            if not topic.can_subscribe:
                raise FatalError(f"Pub/Sub topic {channel}: this user may not subscribe to it")
            if topic.schema_id:
                with contextlib.suppress(AvroDecodeError):  # its events are rejected one by one
                    await self._schema(connection, topic.schema_id)
            first = fetch_request(channel, self.options.batch_size, self._position.get(channel))
            subscription = self._subscriptions[channel] = await connection.subscribe(channel, first)
            for _ in range(self.options.read_ahead - 1):
                await subscription.request(more(self.options.batch_size))
            self._outstanding[channel] = self.options.batch_size * max(self.options.read_ahead, 1)

    async def _close(self, connection: Connection) -> None:
        for subscription in self._subscriptions.values():
            subscription.cancel()
        self._subscriptions = {}
        self._outstanding = {}
        with contextlib.suppress(RetriableError):
            await connection.close()

    async def _resync(self, error: ReplayIdInvalidError) -> None:
        """Replay id unusable: poll from the watermark, then subscribe LATEST (and poll again)."""
        channels = [error.channel] if error.channel in self.channels else self.channels
        objects = [o for c in channels if (o := channel_object(c))]
        log.warning("stream_resync", api="pubsub", channels=channels, reason=str(error))
        await self._poll(objects)
        for channel in channels:
            self._position.pop(channel, None)
            self._pending.pop(channel, None)
        self._closing_poll.update(objects)

    async def _close_over_with_poll(self) -> None:
        """After subscribing LATEST: poll what changed before the subscription took effect (the
        poll's signpost excludes the current second, so it waits for the next second boundary)."""
        if self._closing_poll:
            objects = sorted(self._closing_poll)
            await asyncio.sleep(self.options.subscribe_settle)
            await asyncio.sleep(1.0 - time.time() % 1.0 + 0.01)
            await self._poll(objects)
            self._closing_poll.clear()

    async def _poll(self, objects: Sequence[str]) -> None:
        await self._catch_up.run_once(objects)
        for sobject in objects:
            self._poll_marks[sobject] = await self._catch_up.watermark(sobject)

    # -- consuming ---------------------------------------------------------------------------

    async def _consume(self, connection: Connection, stop: asyncio.Event,
                       on_first_batch: Callable[[], None]) -> None:
        """Read every subscription into one queue and apply batches until `stop` or an error.
        Flow control bounds the queue: at most `batch_size` requested per channel."""
        options = self.options
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._queue = queue
        batcher = MicroBatcher(queue, max_items=options.batch_size, max_wait=options.batch_wait_ms / 1000)
        readers = {asyncio.create_task(self._read(s, queue)) for s in self._subscriptions.values()}
        stopping = asyncio.create_task(stop.wait())
        policy = CommitPolicy(max_pending=options.commit_every, max_seconds=1.0)
        first = True
        try:
            while True:
                taking = asyncio.create_task(batcher.next_batch())
                done, _ = await asyncio.wait({taking, stopping, *readers},
                                             return_when=asyncio.FIRST_COMPLETED)
                if taking not in done:
                    taking.cancel()  # items taken are dropped: uncommitted, they come again
                    with contextlib.suppress(asyncio.CancelledError):
                        await taking
                    await self._commit_offsets()
                    for reader in readers & done:
                        reader.result()  # raises the reader's error
                    return
                await asyncio.shield(self._process(connection, taking.result(), policy))
                if first:
                    on_first_batch()
                    first = False
                METRICS.set("sfsync_queue_depth", queue.qsize(), queue="inbound")
        finally:
            for task in (*readers, stopping):
                task.cancel()
            await asyncio.gather(*readers, stopping, return_exceptions=True)
            self._queue = None

    async def _read(self, subscription: Subscription, queue: asyncio.Queue[_Item]) -> None:
        channel = subscription.topic
        while True:
            response = await subscription.read()
            if response.events:
                self._outstanding[channel] = max(self._outstanding.get(channel, 0) - len(response.events), 0)
                for event in response.events:
                    queue.put_nowait(_Item(channel, bytes(event.replay_id), event))
            elif response.latest_replay_id and self._outstanding.get(channel, 0) > 0:
                # A keepalive while we had room for events: the server has nothing before it.
                queue.put_nowait(_Item(channel, bytes(response.latest_replay_id)))

    async def _process(self, connection: Connection, items: list[_Item], policy: CommitPolicy) -> None:
        batch = _Batch()
        for item in items:
            batch.offsets[item.channel] = item.replay_id  # items of one channel arrive in order
            if item.event is None:
                continue
            batch.delivered[item.channel] += 1
            message = await self._decode(connection, item)
            if isinstance(message, RejectedEvent):
                log.warning("stream_event_rejected", api="pubsub", reason=message.reason,
                            channel=item.channel)
                batch.rejected.append(message)
            else:
                self._dispatch(parse_message(message, client_name=self.options.client_name,
                                             objects=set(self.objects)), batch)
        await self._apply(batch)
        for channel, replay_id in batch.offsets.items():
            if self._position.get(channel) != replay_id:
                self._pending[channel] = self._position[channel] = replay_id
        for sobject, at in batch.committed_at.items():
            self._last_commit[sobject] = max(at, self._last_commit.get(sobject, at))
        policy.applied(len(items))
        if policy.due():
            await self._commit_offsets()
            policy.committed()
        await self._ask_for_more(batch.delivered)
        _note_lag(batch)

    async def _apply(self, batch: _Batch) -> None:
        changes = batch.changes
        for sobject, ids in batch.gaps.items():
            log.info("stream_gap_fetch", object=sobject, records=len(ids))
            changes = changes + await self._catch_up.fetch_by_ids(sobject, sorted(ids))
        if changes:
            await self._sink.apply(changes)
        if batch.rejected:
            await self._sink.reject(batch.rejected)
            METRICS.inc("sfsync_events_failed_total", len(batch.rejected), object="unknown")
        for overflow in batch.overflows:
            log.info("stream_overflow_poll", object=overflow.sobject, since=overflow.since.isoformat())
            await self._catch_up.poll_since(overflow.sobject, overflow.since)

    async def _ask_for_more(self, delivered: Counter[str]) -> None:
        """Flow control: room for as many events as each channel delivered in the batch applied."""
        for channel, count in delivered.items():
            subscription = self._subscriptions.get(channel)
            if subscription is None:
                continue
            try:
                await subscription.request(more(count))
            except RetriableError as exc:  # the stream ended; its reader reports why
                log.info("stream_fetch_request_failed", api="pubsub", channel=channel, error=str(exc))
                continue
            self._outstanding[channel] = self._outstanding.get(channel, 0) + count

    async def _decode(self, connection: Connection, item: _Item) -> dict[str, Any] | RejectedEvent:
        event = item.event.event  # type: ignore[union-attr]
        raw = {"channel": item.channel, "schema_id": event.schema_id, "replay_id": item.replay_id.hex(),
               "payload_base64": base64.b64encode(event.payload).decode()}
        try:
            schema = await self._schema(connection, event.schema_id)
            payload = to_cometd_payload(decode_payload(event.payload, schema), schema)
        except (AvroDecodeError, FatalError) as exc:
            return RejectedEvent(reason=f"undecodable Pub/Sub event: {exc}", raw=raw, channel=item.channel)
        return {"channel": item.channel, "pubsubReplayId": item.replay_id.hex(),
                "data": {"schema": event.schema_id, "payload": payload}}

    async def _schema(self, connection: Connection, schema_id: str) -> EventSchema:
        schema = self._schemas.get(schema_id)
        if schema is None:
            info = await connection.get_schema(schema_id)
            schema = self._schemas[schema_id] = EventSchema.parse(schema_id, info.schema_json)
            log.info("pubsub_schema_loaded", schema_id=schema_id, fields=len(schema.fields))
        return schema

    def _dispatch(self, parsed: Any, batch: _Batch) -> None:
        if isinstance(parsed, RejectedEvent):
            log.warning("stream_event_rejected", api="pubsub", reason=parsed.reason, channel=parsed.channel)
            batch.rejected.append(parsed)
        elif isinstance(parsed, GapRequest):
            METRICS.inc("sfsync_events_received_total", object=parsed.sobject)
            batch.gaps.setdefault(parsed.sobject, set()).update(parsed.record_ids)
            _saw_commit(batch, parsed.sobject, parsed.committed_at)
        elif isinstance(parsed, OverflowRequest):
            METRICS.inc("sfsync_events_received_total", object=parsed.sobject)
            batch.overflows.append(parsed)
            _saw_commit(batch, parsed.sobject, parsed.since)
        else:
            for change in parsed:
                METRICS.inc("sfsync_events_received_total", object=change.sobject)
                _saw_commit(batch, change.sobject, change.changed_at)
                if not self._covered_by_poll(change):
                    batch.changes.append(change)

    def _covered_by_poll(self, change: SalesforceChange) -> bool:
        mark = self._poll_marks.get(change.sobject)
        return mark is not None and mark.covers(change.sf_id, floor_second(change.changed_at))

    # -- offsets -----------------------------------------------------------------------------

    async def _commit_offsets(self) -> None:
        """Durably store the replay ids of applied events (journaled majority, in the store)."""
        for channel, replay_id in sorted(self._pending.items()):
            await self._store.save_state(pubsub_replay_key(channel), {"replay_id": replay_id})
            del self._pending[channel]

    async def _load_replay_ids(self) -> dict[str, bytes]:
        ids: dict[str, bytes] = {}
        for channel in self.channels:
            state = await self._store.load_state(pubsub_replay_key(channel))
            value = state.get("replay_id") if state else None
            if isinstance(value, bytes) and value:
                ids[channel] = bytes(value)
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


def _saw_commit(batch: _Batch, sobject: str, at: datetime) -> None:
    previous = batch.committed_at.get(sobject)
    if previous is None or at > previous:
        batch.committed_at[sobject] = at


def _note_lag(batch: _Batch) -> None:
    """`sfsync_replay_lag_seconds`: from the newest commit in the batch to its apply (as CometD's)."""
    if batch.committed_at:
        newest = max(batch.committed_at.values())
        METRICS.set("sfsync_replay_lag_seconds", max(time.time() - newest.timestamp(), 0.0))


__all__ = ["DEFAULT_ENDPOINT", "Connection", "PubSubOptions", "PubSubStream", "Subscription"]
