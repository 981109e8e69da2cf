"""The Pub/Sub API of the emulated org: Salesforce's `eventbus.v1.PubSub` gRPC service.

Started beside the HTTP app (`python -m emulator --pubsub-port P`; `start_pubsub` in tests) on
the same event loop, over the same change-event bus as CometD: the same events, in the same
order, with the same replay ids (as 8 opaque bytes), Avro-encoded (`emulator.pubsub_avro`).

- Auth: every call needs the metadata `accesstoken` (a token the org issued, not expired),
  `instanceurl` and `tenantid` (the org id); otherwise `UNAUTHENTICATED` with the `error-code`
  trailer `sfdc.platform.eventbus.grpc.service.auth.error`. A Subscribe stream re-checks the
  token on each FetchRequest, so an expired token ends it with `UNAUTHENTICATED`.
- `GetTopic` (`/data/<Object>ChangeEvent` for Lead, Contact, Account) and `GetSchema` (by id).
- `Subscribe`: the first FetchRequest names the topic and the start (`LATEST`, `EARLIEST`, or
  `CUSTOM` after a replay id). A replay id the bus no longer retains (or not one of ours) fails
  with `INVALID_ARGUMENT` and `sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted`.
  Flow control: events are sent only against requested capacity (the sum of `num_requested`),
  never more, at most `max_events_per_response` per FetchResponse; with nothing to send for
  `keepalive_seconds` (270, as Salesforce) an empty FetchResponse carries the latest replay id.
- The daily delivered-events allocation spent: `RESOURCE_EXHAUSTED`
  (`sfdc.platform.eventbus.grpc.subscription.limit.exceeded`).
- Fault injection (`emulator.pubsub_control`): drop every open stream (`UNAVAILABLE`), set the
  keepalive, the per-response cap, and hold new subscriptions (a busy server that places a new
  subscription's cursor only when released, long after its first FetchRequest arrived); tokens,
  GAP/overflow/poison events and pausing delivery go through the existing control routes (they
  act on the shared token store and bus).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import structlog
from aiohttp import web

from emulator._pubsub_proto import pubsub_api_pb2 as pb
from emulator._pubsub_proto import pubsub_api_pb2_grpc as pb_grpc
from emulator.cdc import channel_for, delivered_on
from emulator.pubsub_avro import (
    CDC_OBJECTS,
    decode_replay_id,
    encode_event,
    encode_replay_id,
    object_schema,
    schema_by_id,
)
from emulator.pubsub_control import add_pubsub_control_routes
from emulator.tokens import ORG_ID

if TYPE_CHECKING:
    from emulator.state import EmulatorState

log = structlog.get_logger(__name__)

ERROR_AUTH = "sfdc.platform.eventbus.grpc.service.auth.error"
ERROR_REPLAY_ID = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
ERROR_TOPIC = "sfdc.platform.eventbus.grpc.service.topic.not.found"
ERROR_SCHEMA = "sfdc.platform.eventbus.grpc.service.schema.not.found"
ERROR_LIMIT = "sfdc.platform.eventbus.grpc.subscription.limit.exceeded"
ERROR_DROPPED = "sfdc.platform.eventbus.grpc.service.unavailable"
KEEPALIVE_SECONDS = 270.0
MAX_EVENTS_PER_RESPONSE = 100
PUBSUB_KEY: web.AppKey[PubSubService] = web.AppKey("pubsub")
TOPICS = {channel_for(entity): entity for entity in CDC_OBJECTS}


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, error_code: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.error_code = error_code


@dataclass(eq=False)
class _Stream:
    """One open Subscribe stream."""

    topic: str
    cursor: int                 # replay id the stream has delivered or scanned up to
    token: str
    requested: int = 0          # capacity the client granted and has not been used yet
    granted_total: int = 0
    delivered_total: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    failure: _Abort | None = None


class PubSubService(pb_grpc.PubSubServicer):
    """The `eventbus.v1.PubSub` servicer over the org's bus and token store."""

    def __init__(self, state: EmulatorState) -> None:
        self._state = state
        self.keepalive_seconds = KEEPALIVE_SECONDS
        self._subscribes_released = asyncio.Event()  # cleared: new subscriptions wait (a slow server)
        self._subscribes_released.set()
        self.max_events_per_response = MAX_EVENTS_PER_RESPONSE
        self.streams: set[_Stream] = set()
        self.delivered = 0
        self.largest_response = 0
        self.overdelivered = 0     # events sent beyond requested capacity: must stay 0
        self.errors: dict[str, int] = {}
        self.subscribes: list[dict[str, Any]] = []   # first FetchRequest of each stream (tests)
        self._server: grpc.aio.Server | None = None
        state.bus.add_listener(self._wake_all)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        server = grpc.aio.server()
        pb_grpc.add_PubSubServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        bound: int = server.add_insecure_port(f"{host}:{port}")
        await server.start()
        self._server = server
        log.info("pubsub_listening", host=host, port=bound)
        return bound

    async def stop(self) -> None:
        self.drop_streams()
        if self._server is not None:
            await self._server.stop(grace=0.5)
            self._server = None

    # -- unary calls ---------------------------------------------------------------------------

    async def GetTopic(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self._authenticate(context)
            self._entity(request.topic_name)
        except _Abort as abort:
            await self._abort(context, abort)
        entity = TOPICS[request.topic_name]
        return pb.TopicInfo(topic_name=request.topic_name, tenant_guid=ORG_ID, can_publish=False,
                            can_subscribe=True, schema_id=object_schema(entity).schema_id, rpc_id=_rpc_id())

    async def GetSchema(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self._authenticate(context)
            schema = schema_by_id(request.schema_id)
            if schema is None:
                raise _Abort(grpc.StatusCode.NOT_FOUND, f"no schema {request.schema_id}", ERROR_SCHEMA)
        except _Abort as abort:
            await self._abort(context, abort)
            raise  # `abort` raised already
        return pb.SchemaInfo(schema_json=schema.schema_json, schema_id=schema.schema_id, rpc_id=_rpc_id())

    async def Publish(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._abort(context, _Abort(grpc.StatusCode.PERMISSION_DENIED,
                                          "change events cannot be published", "sfdc.platform.eventbus"
                                          ".grpc.service.publish.denied"))

    # -- Subscribe -----------------------------------------------------------------------------

    async def Subscribe(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        stream: _Stream | None = None
        reader: asyncio.Task[None] | None = None
        try:
            token = self._authenticate(context)
            first = await context.read()
            if first is grpc.aio.EOF:
                return
            await self._subscribes_released.wait()
            stream = self._open(first, token)
            self.streams.add(stream)
            self._grant(stream, first.num_requested)
            reader = asyncio.create_task(self._read_requests(context, stream))
            await self._deliver(context, stream)
        except _Abort as abort:
            await self._abort(context, abort)
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
            if stream is not None:
                self.streams.discard(stream)

    def _open(self, first: Any, token: str) -> _Stream:
        entity = self._entity(first.topic_name)
        bus = self._state.bus
        preset = first.replay_preset
        self.subscribes.append({"topic": first.topic_name, "replay_preset": pb.ReplayPreset.Name(preset),
                                "replay_id": bytes(first.replay_id), "num_requested": first.num_requested})
        if preset == pb.EARLIEST:
            cursor = 0
        elif preset == pb.CUSTOM:
            replay_id = decode_replay_id(bytes(first.replay_id))
            if replay_id is None or not bus.is_valid_replay_id(replay_id):
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                             f"The Replay ID validation failed: {bytes(first.replay_id).hex()}",
                             ERROR_REPLAY_ID)
            cursor = replay_id
        else:
            cursor = bus.last_replay_id
        log.info("pubsub_subscribed", topic=first.topic_name, entity=entity, cursor=cursor,
                 preset=pb.ReplayPreset.Name(preset))
        return _Stream(first.topic_name, cursor, token)

    async def _read_requests(self, context: grpc.aio.ServicerContext, stream: _Stream) -> None:
        while True:
            request = await context.read()
            if request is grpc.aio.EOF:
                return
            if request.topic_name and request.topic_name != stream.topic:
                stream.failure = _Abort(grpc.StatusCode.INVALID_ARGUMENT, "topic_name cannot change", "")
            elif not self._state.tokens.validate(stream.token):
                stream.failure = _Abort(grpc.StatusCode.UNAUTHENTICATED, "session expired", ERROR_AUTH)
            else:
                self._grant(stream, request.num_requested)
            stream.wake.set()

    def _grant(self, stream: _Stream, count: int) -> None:
        if count > 0:
            stream.requested += count
            stream.granted_total += count

    async def _deliver(self, context: grpc.aio.ServicerContext, stream: _Stream) -> None:
        bus = self._state.bus
        limits = self._state.limits
        while True:
            if stream.failure is not None:
                raise stream.failure
            if limits.events_used >= limits.events_max:
                raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "delivered events limit exceeded",
                             ERROR_LIMIT)
            if stream.requested > 0 and not bus.paused:
                budget = min(stream.requested, self.max_events_per_response,
                             limits.events_max - limits.events_used)
                events, scanned = bus.events_after(stream.cursor, stream.topic, budget)
                if events:
                    await self._send(context, stream, events, scanned)
                    continue
                stream.cursor = max(stream.cursor, scanned)
            stream.wake.clear()
            try:
                await asyncio.wait_for(stream.wake.wait(), self.keepalive_seconds)
            except TimeoutError:
                keepalive = pb.FetchResponse(latest_replay_id=encode_replay_id(stream.cursor),
                                             rpc_id=_rpc_id(), pending_num_requested=stream.requested)
                await context.write(keepalive)

    async def _send(self, context: grpc.aio.ServicerContext, stream: _Stream, events: list[Any],
                    scanned: int) -> None:
        if not self._state.limits.count_delivered_events(len(events)):
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "delivered events limit exceeded", ERROR_LIMIT)
        entity = TOPICS[stream.topic]
        consumer = []
        for event in events:
            if not delivered_on(stream.topic, event.channel):
                continue
            schema_id, payload = encode_event(entity, event.data)
            consumer.append(pb.ConsumerEvent(
                event=pb.ProducerEvent(id=secrets.token_hex(8), schema_id=schema_id, payload=payload),
                replay_id=encode_replay_id(event.replay_id)))
        if len(consumer) > stream.requested:
            self.overdelivered += len(consumer) - stream.requested
        stream.requested -= len(consumer)
        stream.delivered_total += len(consumer)
        stream.cursor = scanned
        self.delivered += len(consumer)
        self.largest_response = max(self.largest_response, len(consumer))
        await context.write(pb.FetchResponse(events=consumer, latest_replay_id=encode_replay_id(scanned),
                                             rpc_id=_rpc_id(), pending_num_requested=stream.requested))

    # -- helpers -------------------------------------------------------------------------------

    def _authenticate(self, context: grpc.aio.ServicerContext) -> str:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        token = metadata.get("accesstoken", "")
        tenant = metadata.get("tenantid", "")
        if not token or not self._state.tokens.validate(token):
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, "invalid or expired access token", ERROR_AUTH)
        if not metadata.get("instanceurl") or tenant not in (ORG_ID, ORG_ID[:15]):
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED,
                         "instanceurl and tenantid (the org id) are required", ERROR_AUTH)
        return token

    @staticmethod
    def _entity(topic: str) -> str:
        entity = TOPICS.get(topic)
        if entity is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"topic {topic} does not exist", ERROR_TOPIC)
        return entity

    async def _abort(self, context: grpc.aio.ServicerContext, abort: _Abort) -> None:
        self.errors[abort.code.name] = self.errors.get(abort.code.name, 0) + 1
        log.info("pubsub_error", code=abort.code.name, details=abort.details, error_code=abort.error_code)
        trailers = (("error-code", abort.error_code),) if abort.error_code else ()
        await context.abort(abort.code, abort.details, trailing_metadata=trailers)

    def _wake_all(self) -> None:
        for stream in list(self.streams):
            stream.wake.set()

    # -- fault injection -----------------------------------------------------------------------

    def drop_streams(self) -> int:
        """End every open Subscribe stream with UNAVAILABLE (a network blip, a server restart)."""
        for stream in self.streams:
            stream.failure = _Abort(grpc.StatusCode.UNAVAILABLE, "stream dropped", ERROR_DROPPED)
            stream.wake.set()
        log.info("pubsub_streams_dropped", streams=len(self.streams))
        return len(self.streams)

    @property
    def subscribes_held(self) -> bool:
        return not self._subscribes_released.is_set()

    @subscribes_held.setter
    def subscribes_held(self, held: bool) -> None:
        if held:
            self._subscribes_released.clear()
        else:
            self._subscribes_released.set()

    def stats(self) -> dict[str, Any]:
        return {
            "streams": len(self.streams),
            "topics": sorted({s.topic for s in self.streams}),
            "requested": {s.topic: s.requested for s in self.streams},
            "delivered": self.delivered,
            "largest_response": self.largest_response,
            "overdelivered": self.overdelivered,
            "keepalive_seconds": self.keepalive_seconds,
            "subscribes_held": self.subscribes_held,
            "max_events_per_response": self.max_events_per_response,
            "errors": dict(self.errors),
        }


def _rpc_id() -> str:
    return secrets.token_hex(8)


def add_pubsub(app: web.Application, state: EmulatorState) -> PubSubService:
    """Create the Pub/Sub service (served once `start_pubsub` binds a port) and its control routes."""
    service = PubSubService(state)
    app[PUBSUB_KEY] = service
    if state.config.control_enabled:
        add_pubsub_control_routes(app, service)

    async def stop(_: web.Application) -> None:
        await service.stop()

    app.on_shutdown.append(stop)
    return service


async def start_pubsub(app: web.Application, host: str, port: int) -> int:
    """Serve the Pub/Sub API on `host:port` (0: any free port); returns the bound port."""
    return await app[PUBSUB_KEY].start(host, port)
