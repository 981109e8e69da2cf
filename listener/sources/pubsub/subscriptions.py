"""The Pub/Sub source's subscriptions on one connection: subscribe, read, flow control, decode.

    Subscribe stream per channel --FetchResponse--> ChannelReader.receive (one `Item` at a time)
      ^ FetchRequest(num_requested)                       |  (a `Receiver` of `intake.BatchIntake`)
      +---- ask_for_more(as many as each channel delivered in the batch applied)

- Each FetchRequest asks for at most one batch: the first `read_ahead` together let the next batch
  arrive while one is applied (as CometD's two-batch queue does); after a batch is applied each
  channel asks for as many events as it delivered in it, so at most `read_ahead` batches per
  channel are ever in flight or queued.
- A keepalive (no events, the latest replay id) while the channel had room for events means the
  server has nothing before it: it becomes an `Item` without an event, which moves the channel's
  stored offset, so a quiet channel's replay id does not age out of the retention window.
- `EventDecoder`: schemas from `GetSchema`, cached by schema id; payloads decoded by
  `listener.sources.pubsub.avro` into CometD's JSON shape (for `cdc_batch.sort_batch`). An
  undecodable payload is a `RejectedEvent` naming its replay id (hex).
"""

from __future__ import annotations

import base64
import contextlib
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from listener.sources.cdc_batch import Message
from listener.sources.pubsub._wire import fetch_request, more
from listener.sources.pubsub.avro import AvroDecodeError, EventSchema, decode_payload, to_cometd_payload
from reconciler.errors import FatalError, RetriableError
from reconciler.ports import RejectedEvent

log = structlog.get_logger(__name__)


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
class Item:
    """One delivered event, or a keepalive (`event` None) of an idle channel."""

    channel: str
    replay_id: bytes
    event: Any | None = None


class ChannelReader:
    """One subscription as a `Receiver`: its events one at a time, and useful keepalives."""

    def __init__(self, subscription: Subscription, outstanding: dict[str, int]) -> None:
        self._subscription = subscription
        self._outstanding = outstanding  # shared with `Subscriptions`: requested, not delivered
        self._buffer: deque[Item] = deque()

    async def receive(self) -> Item:
        channel = self._subscription.topic
        while not self._buffer:
            response = await self._subscription.read()
            if response.events:
                self._outstanding[channel] = max(self._outstanding.get(channel, 0) - len(response.events), 0)
                self._buffer.extend(Item(channel, bytes(e.replay_id), e) for e in response.events)
            elif response.latest_replay_id and self._outstanding.get(channel, 0) > 0:
                self._buffer.append(Item(channel, bytes(response.latest_replay_id)))
        return self._buffer.popleft()


class EventDecoder:
    """Avro payloads -> CometD-shaped messages, with the schemas cached by id."""

    def __init__(self) -> None:
        self._schemas: dict[str, EventSchema] = {}

    async def schema(self, connection: Connection, schema_id: str) -> EventSchema:
        schema = self._schemas.get(schema_id)
        if schema is None:
            info = await connection.get_schema(schema_id)
            schema = self._schemas[schema_id] = EventSchema.parse(schema_id, info.schema_json)
            log.info("pubsub_schema_loaded", schema_id=schema_id, fields=len(schema.fields))
        return schema

    async def decode(self, connection: Connection, item: Item) -> Message:
        event = item.event.event  # type: ignore[union-attr]
        replay_hex = item.replay_id.hex()
        try:
            schema = await self.schema(connection, event.schema_id)
            payload = to_cometd_payload(decode_payload(event.payload, schema), schema)
        except RetriableError:
            raise  # the schema could not be fetched: reconnect, the event comes again
        except Exception as exc:  # bad input never escapes (issue 11): a date out of range, say
            log.warning("stream_event_rejected", api="pubsub", reason=str(exc), channel=item.channel,
                        replay_id=replay_hex)
            raw = {"channel": item.channel, "schema_id": event.schema_id, "pubsubReplayId": replay_hex,
                   "payload_base64": base64.b64encode(event.payload).decode()}
            return RejectedEvent(reason=f"undecodable Pub/Sub event: {exc}", raw=raw, channel=item.channel,
                                 replay_id=replay_hex)
        return {"channel": item.channel, "pubsubReplayId": replay_hex,
                "data": {"schema": event.schema_id, "payload": payload}}


class Subscriptions:
    """The subscriptions of one connection and their flow control."""

    def __init__(self, *, batch_size: int, read_ahead: int, decoder: EventDecoder) -> None:
        self._batch_size = batch_size
        self._read_ahead = max(read_ahead, 1)
        self._decoder = decoder
        self._open: dict[str, Subscription] = {}
        self.outstanding: dict[str, int] = {}  # requested, not yet delivered, per channel

    async def open(self, connection: Connection, channels: Sequence[str],
                   after: Mapping[str, bytes]) -> list[ChannelReader]:
        """Subscribe each channel (CUSTOM after its replay id in `after`, else LATEST)."""
        self._open = {}
        for channel in channels:
            topic = await connection.get_topic(channel)
            if not topic.can_subscribe:
                raise FatalError(f"Pub/Sub topic {channel}: this user may not subscribe to it")
            if topic.schema_id:
                with contextlib.suppress(AvroDecodeError):  # its events are rejected one by one
                    await self._decoder.schema(connection, topic.schema_id)
            first = fetch_request(channel, self._batch_size, after.get(channel))
            subscription = self._open[channel] = await connection.subscribe(channel, first)
            for _ in range(self._read_ahead - 1):
                await subscription.request(more(self._batch_size))
            self.outstanding[channel] = self._batch_size * self._read_ahead
        return [ChannelReader(s, self.outstanding) for s in self._open.values()]

    async def ask_for_more(self, items: Sequence[Item]) -> None:
        """Room for as many events as each channel delivered in the batch applied."""
        for channel, count in Counter(i.channel for i in items if i.event is not None).items():
            subscription = self._open.get(channel)
            if subscription is None:
                continue
            try:
                await subscription.request(more(count))
            except RetriableError as exc:  # the stream ended; its reader reports why
                log.info("stream_fetch_request_failed", api="pubsub", channel=channel, error=str(exc))
                continue
            self.outstanding[channel] = self.outstanding.get(channel, 0) + count

    async def close(self, connection: Connection) -> None:
        for subscription in self._open.values():
            subscription.cancel()
        self._open = {}
        self.outstanding.clear()
        with contextlib.suppress(RetriableError):
            await connection.close()


__all__ = ["ChannelReader", "Connection", "EventDecoder", "Item", "Subscription", "Subscriptions"]
