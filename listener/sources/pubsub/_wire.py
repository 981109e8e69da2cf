"""The gRPC boundary of the Pub/Sub source: channel, auth metadata, calls, and error translation.

Every `grpc` exception is translated here into `reconciler.errors`, by status code and the
`error-code` trailer Salesforce adds (never by message text):

    PubSub call errors (all SyncError)
    ├── PubSubAuthError          UNAUTHENTICATED: re-authenticate through the REST client, reconnect
    ├── ReplayIdInvalidError     the replay id is invalid or expired (`...replayid...` error code)
    ├── DeliveryLimitError       RESOURCE_EXHAUSTED on a limit: the daily event allocation is spent
    ├── FatalError               PERMISSION_DENIED, NOT_FOUND (no such topic), UNIMPLEMENTED
    └── RetriableError           anything else (UNAVAILABLE, network loss, server restart, ...)
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from listener.sources.base import DeliveryLimitError, ReplayIdInvalidError, TokenSource
from listener.sources.pubsub._proto import pubsub_api_pb2 as pb
from listener.sources.pubsub._proto import pubsub_api_pb2_grpc as pb_grpc
from reconciler.errors import FatalError, RetriableError, SessionExpiredError, SyncError

ERROR_CODE_TRAILER = "error-code"
# Salesforce's `error-code` for a replay id it cannot resume from (too old, or not one of its own).
REPLAY_ID_CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
# Keep one HTTP/2 connection alive through idle minutes (Salesforce sends keepalives every 270 s).
_CHANNEL_OPTIONS = (("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000),
                    ("grpc.max_receive_message_length", 32 * 1024 * 1024))


class PubSubAuthError(SessionExpiredError):
    """UNAUTHENTICATED: the access token was refused."""


@dataclass(frozen=True)
class Endpoint:
    """Where the Pub/Sub API listens. `host:port` uses TLS unless the host is a loopback address
    (the emulator); `http://host:port` forces plaintext and `https://host:port` TLS."""

    target: str
    tls: bool

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        value = text.strip()
        for scheme, tls in (("http://", False), ("https://", True)):
            if value.startswith(scheme):
                return cls(value[len(scheme):].rstrip("/"), tls)
        return cls(value, not _is_loopback(value.rpartition(":")[0] or value))


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tenant_id(access_token: str) -> str:
    """The org id a Salesforce access token starts with (`00D...!...`): the `tenantid` header."""
    org, sep, _ = access_token.partition("!")
    return org if sep and org.startswith("00D") else ""


def translate(exc: BaseException, channel: str | None = None) -> SyncError:
    """One gRPC exception -> our error tree."""
    if isinstance(exc, SyncError):
        return exc
    if not isinstance(exc, grpc.aio.AioRpcError):
        return RetriableError(f"Pub/Sub transport: {type(exc).__name__}: {exc}")
    code = exc.code()
    error_code = _trailer(exc, ERROR_CODE_TRAILER)
    text = f"Pub/Sub {code.name}: {exc.details() or ''} ({error_code or 'no error code'})"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return PubSubAuthError(text)
    if "replayid" in error_code:
        return ReplayIdInvalidError(text, channel)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit" in error_code:
        return DeliveryLimitError(text)
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED):
        return FatalError(text)
    return RetriableError(text)


def _trailer(exc: grpc.aio.AioRpcError, key: str) -> str:
    for item in exc.trailing_metadata() or ():
        k, v = item[0], item[1]
        if k == key:
            return v.decode() if isinstance(v, bytes) else str(v)
    return ""


class PubSubConnection:
    """One gRPC channel to the Pub/Sub API, with the auth metadata every call carries."""

    def __init__(self, endpoint: Endpoint, tokens: TokenSource) -> None:
        self.endpoint = endpoint
        self._tokens = tokens
        if endpoint.tls:
            self._channel = grpc.aio.secure_channel(endpoint.target, grpc.ssl_channel_credentials(),
                                                    options=_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.insecure_channel(endpoint.target, options=_CHANNEL_OPTIONS)
        self._stub: Any = pb_grpc.PubSubStub(self._channel)  # type: ignore[no-untyped-call]

    async def metadata(self) -> Sequence[tuple[str, str]]:
        token = await self._tokens.access_token()
        return (("accesstoken", token), ("instanceurl", self._tokens.instance_url),
                ("tenantid", tenant_id(token)))

    async def get_topic(self, topic: str) -> Any:
        try:
            return await self._stub.GetTopic(pb.TopicRequest(topic_name=topic),
                                             metadata=await self.metadata(), timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, topic) from exc

    async def get_schema(self, schema_id: str) -> Any:
        try:
            return await self._stub.GetSchema(pb.SchemaRequest(schema_id=schema_id),
                                              metadata=await self.metadata(), timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from exc

    async def subscribe(self, topic: str, first: Any) -> Subscription:
        call = self._stub.Subscribe(metadata=await self.metadata())
        subscription = Subscription(topic, call)
        await subscription.request(first)
        return subscription

    async def close(self) -> None:
        await self._channel.close(grace=None)


class Subscription:
    """One Subscribe stream: FetchRequests out, FetchResponses in (errors translated)."""

    def __init__(self, topic: str, call: Any) -> None:
        self.topic = topic
        self._call = call

    async def request(self, fetch: Any) -> None:
        try:
            await self._call.write(fetch)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, self.topic) from exc
        except (grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            # the stream has already ended (closed by us, or by the server: "RPC already
            # finished"); `read` reports why
            raise RetriableError(f"Pub/Sub stream of {self.topic} closed: {exc}") from exc

    async def read(self) -> Any:
        """The next FetchResponse; raises when the stream ends."""
        try:
            response = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, self.topic) from exc
        if response is grpc.aio.EOF:
            raise RetriableError(f"Pub/Sub stream of {self.topic} ended by the server")
        return response

    def cancel(self) -> None:
        self._call.cancel()


def fetch_request(topic: str, count: int, replay_id: bytes | None = None) -> Any:
    """The first FetchRequest of a stream: CUSTOM after `replay_id`, else LATEST."""
    if replay_id:
        return pb.FetchRequest(topic_name=topic, replay_preset=pb.CUSTOM, replay_id=replay_id,
                               num_requested=count)
    return pb.FetchRequest(topic_name=topic, replay_preset=pb.LATEST, num_requested=count)


def more(count: int) -> Any:
    """A later FetchRequest: room for `count` more events (the topic may be omitted)."""
    return pb.FetchRequest(num_requested=count)


__all__ = ["DeliveryLimitError", "Endpoint", "PubSubAuthError", "PubSubConnection", "ReplayIdInvalidError",
           "Subscription", "TokenSource", "fetch_request", "more", "tenant_id", "translate"]
