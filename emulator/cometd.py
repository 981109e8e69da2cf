"""The Streaming API of the emulated org: a CometD (Bayeux 1.0) long-polling server.

Served at ``/cometd/{version}`` for any API version from 37.0, like Salesforce.
Only the long-polling transport is offered, as on Salesforce. Replies and error
texts follow Salesforce's documentation:

- handshake with a bad or missing token: ``403::Handshake denied`` with
  ``ext.sfdc.failureReason`` ``401::Authentication invalid``, advice ``none``;
- any other request with a bad token: ``401::Authentication invalid``, advice
  ``none`` (``401::Request requires authentication`` when no token was sent);
- a clientId the server does not know (expired, or lost in a restart):
  ``403::Unknown client``, advice ``handshake``;
- an invalid replay id on subscribe: ``400::The replayId {N} you provided was
  invalid.  Please provide a valid ID, -2 to replay all events, or -1 to replay
  only new events.``;
- the daily delivered-events allocation spent: ``403::Organization total events
  daily limit exceeded`` on connect and subscribe.

Each client keeps one cursor (a replay id) per subscription into the bus's
retained log; nothing is queued per client, so a slow client costs no memory.
Fault injection lives under ``/_emulator/streaming/`` (``emulator.streaming_control``).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import structlog
from aiohttp import web

from emulator.cdc import ChangeEventBus, RetainedEvent

if TYPE_CHECKING:
    from emulator.state import EmulatorState

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT_MS = 110_000
MAX_EVENTS_PER_RESPONSE = 500
# Salesforce forgets a client that has not reconnected within 40 s of a reply;
# the emulator is more lenient so a paused debugger does not lose its session.
CLIENT_EXPIRY_SECONDS = 120.0
LONG_POLLING = "long-polling"
MIN_API_VERSION = 37.0

ERROR_AUTH_REQUIRED = "401::Request requires authentication"
ERROR_AUTH_INVALID = "401::Authentication invalid"
ERROR_HANDSHAKE_DENIED = "403::Handshake denied"
ERROR_UNKNOWN_CLIENT = "403::Unknown client"
ERROR_EVENTS_LIMIT = "403::Organization total events daily limit exceeded"

_VERSION = re.compile(r"^\d{2,3}\.\d$")
_ADVICE_NONE = {"reconnect": "none", "interval": 0}
_ADVICE_HANDSHAKE = {"reconnect": "handshake", "interval": 0}

Message = dict[str, Any]


def invalid_replay_id_error(replay_id: object) -> str:
    """Salesforce's subscribe error for a replay id outside the retention window (its wording, two spaces)."""
    return (
        f"400::The replayId {{{replay_id}}} you provided was invalid.  Please provide a valid ID, "
        "-2 to replay all events, or -1 to replay only new events."
    )


class _ConnectionDropped(Exception):
    """The open connect must end without a reply (fault injection or shutdown)."""


@dataclass
class BayeuxClient:
    """Server-side session of one handshaken client."""

    client_id: str
    last_seen: float
    subscriptions: dict[str, int] = field(default_factory=dict)  # channel -> last replay id seen
    connected: bool = False  # its first connect has been answered
    waiter: asyncio.Event | None = None
    connect_generation: int = 0


@dataclass
class _Session:
    client: BayeuxClient | None = None
    error: Message | None = None


class CometdServer:
    """Bayeux endpoint over the org's ``ChangeEventBus``."""

    def __init__(self, state: EmulatorState, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> None:
        self._state = state
        self.timeout_ms = timeout_ms
        self.clients: dict[str, BayeuxClient] = {}
        self.delivered = 0
        self.errors: Counter[str] = Counter()
        self._drop_epoch = 0
        self.bus.add_listener(self._wake_all)

    @property
    def bus(self) -> ChangeEventBus:
        return self._state.bus

    # -- HTTP entry point ----------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response([{"successful": False, "error": "400::Invalid JSON"}], status=400)
        messages = body if isinstance(body, list) else [body]
        if not messages or not all(
            isinstance(m, dict) and isinstance(m.get("channel"), str) for m in messages
        ):
            return web.json_response([{"successful": False, "error": "400::Invalid message"}], status=400)
        version_error = _version_error(request.match_info["version"])
        if version_error is not None:
            return web.json_response([_error(m, version_error) for m in messages], status=400)
        token = _bearer_token(request)
        connect: Message | None = None
        fragments: list[str] = []
        for message in messages:
            if message["channel"] == "/meta/connect":
                connect = message  # answered last: it may wait for events
            else:
                fragments.append(json.dumps(self._dispatch(message, token)))
        if connect is not None:
            try:
                reply, events = await self._connect(connect, token)
            except _ConnectionDropped:
                _abort(request)
            fragments = [json.dumps(reply), *fragments, *events]
        return web.Response(text="[" + ",".join(fragments) + "]", content_type="application/json")

    def _dispatch(self, message: Message, token: str | None) -> Message:
        channel = message["channel"]
        if channel == "/meta/handshake":
            return self._handshake(message, token)
        if channel == "/meta/subscribe":
            return self._subscribe(message, token)
        if channel == "/meta/unsubscribe":
            return self._unsubscribe(message, token)
        if channel == "/meta/disconnect":
            return self._disconnect(message, token)
        # Salesforce does not accept publishing over CometD.
        return self._fail(message, "403::Publish denied")

    # -- meta channels -------------------------------------------------------

    def _handshake(self, message: Message, token: str | None) -> Message:
        if token is None or not self._state.tokens.validate(token):
            reason = ERROR_AUTH_REQUIRED if token is None else ERROR_AUTH_INVALID
            reply = self._fail(message, ERROR_HANDSHAKE_DENIED, advice={"reconnect": "none"})
            reply["ext"] = {"sfdc": {"failureReason": reason}}
            return reply
        offered = message.get("supportedConnectionTypes") or [LONG_POLLING]
        if LONG_POLLING not in offered:
            return self._fail(message, f"400::Invalid connection type {{{','.join(map(str, offered))}}}")
        self._expire_idle_clients()
        client = BayeuxClient(client_id=_new_client_id(), last_seen=time.monotonic())
        self.clients[client.client_id] = client
        log.info("cometd_handshake", client_id=client.client_id, clients=len(self.clients))
        return {
            **_reply(message, client.client_id),
            "version": "1.0",
            "minimumVersion": "1.0",
            "supportedConnectionTypes": [LONG_POLLING],
            "advice": self._retry_advice(),
            "ext": {"replay": True, "payload.format": True},
        }

    def _subscribe(self, message: Message, token: str | None) -> Message:
        session = self._session(message, token)
        if session.client is None:
            return _with_subscription(session.error or {}, message)
        client = session.client
        subscription = message.get("subscription")
        if not isinstance(subscription, str) or not subscription:
            return self._fail(message, "400::Channel name not specified")
        if not subscription.startswith("/"):
            error = "400::Channel subscriptions must start with a leading '/'"
            return self._fail(message, error, subscription)
        if not self.bus.channel_exists(subscription):
            error = f"400::The channel you requested to subscribe to does not exist {{{subscription}}}"
            return self._fail(message, error, subscription)
        if self._events_exhausted():
            return self._fail(message, ERROR_EVENTS_LIMIT, subscription)
        requested = _requested_replay_id(message, subscription)
        cursor = self._replay_cursor(requested)
        if cursor is None:
            return self._fail(message, invalid_replay_id_error(requested), subscription)
        client.subscriptions[subscription] = cursor
        log.info("cometd_subscribed", client_id=client.client_id, channel=subscription, replay_id=cursor)
        self._wake(client)  # replayed events go out on the open connect, if any
        return {**_reply(message, client.client_id), "subscription": subscription}

    def _replay_cursor(self, requested: object) -> int | None:
        """Where a new subscription starts reading; None for an invalid replay id."""
        if isinstance(requested, str) and requested.lstrip("-").isdigit():
            requested = int(requested)
        if not isinstance(requested, int) or isinstance(requested, bool):
            return None
        if requested == -1:
            return self.bus.last_replay_id
        if requested == -2:
            return 0
        return requested if self.bus.is_valid_replay_id(requested) else None

    def _unsubscribe(self, message: Message, token: str | None) -> Message:
        session = self._session(message, token)
        if session.client is None:
            return _with_subscription(session.error or {}, message)
        subscription = message.get("subscription")
        session.client.subscriptions.pop(str(subscription), None)
        return {**_reply(message, session.client.client_id), "subscription": subscription}

    def _disconnect(self, message: Message, token: str | None) -> Message:
        session = self._session(message, token)
        if session.client is None:
            return session.error or {}
        client = self.clients.pop(session.client.client_id)
        self._wake(client)
        log.info("cometd_disconnected", client_id=client.client_id)
        return _reply(message, client.client_id)

    async def _connect(self, message: Message, token: str | None) -> tuple[Message, list[str]]:
        session = self._session(message, token)
        if session.client is None:
            return session.error or {}, []
        client = session.client
        connection_type = message.get("connectionType", LONG_POLLING)
        if connection_type != LONG_POLLING:
            return self._fail(message, f"400::Invalid connection type {{{connection_type}}}"), []
        client.connect_generation += 1
        generation = client.connect_generation
        self._wake(client)  # a newer connect replaces an older one still open
        first = not client.connected
        client.connected = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (0 if first else self.timeout_ms / 1000)
        epoch = self._drop_epoch
        while True:
            if self._events_exhausted():
                return self._fail(message, ERROR_EVENTS_LIMIT, advice=dict(_ADVICE_NONE)), []
            events = self._collect(client)
            if events is None:
                return self._fail(message, ERROR_EVENTS_LIMIT, advice=dict(_ADVICE_NONE)), []
            remaining = deadline - loop.time()
            if events or remaining <= 0 or generation != client.connect_generation:
                break
            await self._wait(client, remaining)
            if epoch != self._drop_epoch:
                raise _ConnectionDropped
            if client.client_id not in self.clients:  # it disconnected meanwhile
                return {**_reply(message, client.client_id), "advice": {"reconnect": "none"}}, []
            if token is None or not self._state.tokens.validate(token):
                return self._fail(message, ERROR_AUTH_INVALID, advice=dict(_ADVICE_NONE)), []
        client.last_seen = time.monotonic()
        return {**_reply(message, client.client_id), "advice": self._retry_advice()}, events

    # -- helpers -------------------------------------------------------------

    def _session(self, message: Message, token: str | None) -> _Session:
        if token is None:
            return _Session(error=self._fail(message, ERROR_AUTH_REQUIRED, advice=dict(_ADVICE_NONE)))
        if not self._state.tokens.validate(token):
            return _Session(error=self._fail(message, ERROR_AUTH_INVALID, advice=dict(_ADVICE_NONE)))
        client = self.clients.get(str(message.get("clientId")))
        if client is None:
            return _Session(error=self._fail(message, ERROR_UNKNOWN_CLIENT, advice=dict(_ADVICE_HANDSHAKE)))
        client.last_seen = time.monotonic()
        return _Session(client=client)

    def _collect(self, client: BayeuxClient) -> list[str] | None:
        """Encoded event messages due to ``client``; None when the events allocation refuses them."""
        if self.bus.paused:
            return []
        limits = self._state.limits
        # Deliver no more than the allocation has left, so the limit bites at the exact event.
        budget = min(MAX_EVENTS_PER_RESPONSE, limits.events_max - limits.events_used)
        picked: list[tuple[str, RetainedEvent]] = []
        cursors: dict[str, int] = {}
        for channel, cursor in client.subscriptions.items():
            if budget <= 0:
                break
            events, scanned = self.bus.events_after(cursor, channel, budget)
            picked.extend((channel, event) for event in events)
            cursors[channel] = scanned
            budget -= len(events)
        if picked and not limits.count_delivered_events(len(picked)):
            return None
        client.subscriptions.update(cursors)
        self.delivered += len(picked)
        picked.sort(key=lambda item: item[1].replay_id)
        return [f'{{"channel":{json.dumps(channel)},"data":{event.data_json}}}' for channel, event in picked]

    def _events_exhausted(self) -> bool:
        return not self._state.limits.count_delivered_events(0)

    async def _wait(self, client: BayeuxClient, seconds: float) -> None:
        waiter = asyncio.Event()
        client.waiter = waiter
        try:
            await asyncio.wait_for(waiter.wait(), seconds)
        except TimeoutError:
            pass
        finally:
            if client.waiter is waiter:
                client.waiter = None

    def _wake(self, client: BayeuxClient) -> None:
        if client.waiter is not None:
            client.waiter.set()

    def _wake_all(self) -> None:
        for client in list(self.clients.values()):
            self._wake(client)

    def _retry_advice(self) -> Message:
        return {"interval": 0, "timeout": self.timeout_ms, "reconnect": "retry"}

    def _fail(
        self, message: Message, error: str, subscription: str | None = None, advice: Message | None = None
    ) -> Message:
        self.errors[error.split("{", 1)[0].strip()] += 1  # replay ids and channels vary; count the kind
        reply = _error(message, error)
        if subscription is not None:
            reply["subscription"] = subscription
        if advice is not None:
            reply["advice"] = advice
        log.info("cometd_error", channel=message.get("channel"), error=error)
        return reply

    def _expire_idle_clients(self) -> None:
        horizon = time.monotonic() - CLIENT_EXPIRY_SECONDS
        for client_id, client in list(self.clients.items()):
            if client.waiter is None and client.last_seen < horizon:
                del self.clients[client_id]

    # -- fault injection -----------------------------------------------------

    def drop_connections(self) -> int:
        """End every open connect abruptly (a network blip); clients stay known."""
        open_connects = sum(1 for client in self.clients.values() if client.waiter is not None)
        self._drop_epoch += 1
        self._wake_all()
        log.info("cometd_connections_dropped", open_connects=open_connects)
        return open_connects

    def forget_clients(self) -> int:
        """Lose every client session, as a server restart does; open connects drop too."""
        forgotten = len(self.clients)
        self.drop_connections()
        self.clients.clear()
        log.info("cometd_clients_forgotten", clients=forgotten)
        return forgotten

    def stats(self) -> Message:
        return {
            "clients": len(self.clients),
            "open_connects": sum(1 for client in self.clients.values() if client.waiter is not None),
            "subscriptions": sorted({ch for client in self.clients.values() for ch in client.subscriptions}),
            "delivered": self.delivered,
            "paused": self.bus.paused,
            "retained": self.bus.retained_count,
            "last_replay_id": self.bus.last_replay_id,
            "timeout_ms": self.timeout_ms,
            "errors": dict(self.errors),
        }


def _reply(message: Message, client_id: str) -> Message:
    reply: Message = {"channel": message["channel"], "clientId": client_id, "successful": True}
    if "id" in message:
        reply["id"] = message["id"]
    return reply


def _error(message: Message, error: str) -> Message:
    reply: Message = {"channel": message.get("channel"), "successful": False, "error": error}
    for key in ("id", "clientId"):
        if key in message:
            reply[key] = message[key]
    return reply


def _requested_replay_id(message: Message, subscription: str) -> object:
    """``ext.replay[subscription]`` of a subscribe; -1 (new events only) when absent, as on Salesforce."""
    ext = message.get("ext")
    replay = ext.get("replay") if isinstance(ext, dict) else None
    return replay.get(subscription, -1) if isinstance(replay, dict) else -1


def _with_subscription(reply: Message, message: Message) -> Message:
    if "subscription" in message:
        reply["subscription"] = message["subscription"]
    return reply


def _version_error(version: str) -> str | None:
    if not _VERSION.match(version):
        return "400::API version in the URI is mandatory. URI format: '/cometd/62.0'"
    if float(version) < MIN_API_VERSION:
        return "400::Unsupported API version. Only API versions '37.0' and later are supported."
    return None


def _bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() in ("bearer", "oauth") and token.strip():
        return token.strip()
    return None


def _new_client_id() -> str:
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(27))


def _abort(request: web.Request) -> NoReturn:
    # Closing the socket mid-request is what a dropped network looks like to
    # the client; cancelling ends the handler without aiohttp writing a reply.
    if request.transport is not None:
        request.transport.close()
    raise asyncio.CancelledError


# -- routes -------------------------------------------------------------------


def add_cometd_routes(app: web.Application, state: EmulatorState) -> CometdServer:
    """Serve ``/cometd/{version}``; the server is returned for the streaming control routes
    (``emulator.streaming_control``, wired by ``emulator.app``)."""
    server = CometdServer(state)
    state.cometd = server
    app.router.add_post("/cometd/{version}", server.handle)

    async def end_open_connects(_: web.Application) -> None:
        server.drop_connections()  # long polls would otherwise hold shutdown for the full timeout

    app.on_shutdown.append(end_open_connects)
    return server
