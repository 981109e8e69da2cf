"""Makes `aiosfstream-ng` 0.7.5 (on `aiocometd_ng`) safe to use, and translates its errors.

What this module works around, and how:

- Auth: `TokenAuthenticator` takes the bearer token from our one `SalesforceClient` (no second
  OAuth flow); after a `401::Authentication invalid` it re-authenticates through that client.
- The CometD URL: the library hard-codes API 45.0; `_VersionedClient.get_cometd_url` uses ours.
- `connection_timeout` is passed as 0 (disabled): the library's `_wait_connection_timeout`
  calls `asyncio.wait_for(..., loop=...)`, a TypeError on Python 3.10+. `StreamSession`
  watches the transport itself: CONNECTING for longer than `stall_timeout` -> RetriableError.
- While the server is down the transport retries every second forever; the caller closes the
  session on `RetriableError` and reopens it after a `reconciler.pacing.Backoff` delay
  (exponential, full jitter).
- Closing cancels the transport's connect task, whose done-callback then raises a spurious
  CancelledError into the loop's exception handler; the callback is detached before closing.
- The client is built inside a running coroutine (`StreamSession.open`): its constructor
  calls `asyncio.get_event_loop()`.
- Replay ids: `CommittedReplayIds` (MANUAL policy) only ever hands the server replay ids the
  stream has committed after `apply`, so a library-driven re-subscribe never skips events.
- Server errors arrive on meta channels, often inside the transport's own reconnect loop where
  nobody sees them; `_ErrorWatch` reads every incoming payload and surfaces them.
- A message the replay extension cannot date raises `ReplayError` from `receive()`; it is
  returned as a `RejectedEvent` so the stream logs it and keeps consuming.

Every aiocometd/aiosfstream exception is translated here into `reconciler.errors`:

    StreamSession errors (all SyncError)
    ├── SessionExpiredError            401 that a fresh token did not cure
    ├── UnknownClientError             403::Unknown client (server forgot us: re-handshake)
    ├── ReplayIdInvalidError           400 on /meta/subscribe (replay id too old / invalid)
    ├── DeliveryLimitError             403::Organization total events daily limit exceeded
    ├── RetriableError                 network loss, stalled transport, any other server error
    └── FatalError                     subscription refused for another reason
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import structlog
from aiocometd_ng.constants import ConnectionType, TransportState
from aiocometd_ng.exceptions import AiocometdException
from aiocometd_ng.extensions import Extension
from aiosfstream_ng.auth import AuthenticatorBase
from aiosfstream_ng.client import Client, ReplayMarkerStoragePolicy
from aiosfstream_ng.exceptions import ReplayError, ServerError
from aiosfstream_ng.replay import ReplayMarker, ReplayMarkerStorage

from listener.sources.base import DeliveryLimitError, ReplayIdInvalidError, TokenSource
from reconciler.errors import (
    FatalError,
    RetriableError,
    SessionExpiredError,
    SyncError,
)
from reconciler.ports import RejectedEvent

log = structlog.get_logger(__name__)

NEW_EVENTS = -1
ALL_EVENTS = -2


class UnknownClientError(RetriableError):
    """The server no longer knows our CometD client id (it restarted): handshake again."""


def classify_server_error(channel: str, error: str | None) -> SyncError:
    """Map a Bayeux error (`<code>:<args>:<message>`) on `channel` to our exception."""
    text = error or "unsuccessful response"
    code = text[:3] if text[:3].isdigit() else ""
    lowered = text.lower()
    if code == "401":
        return SessionExpiredError(f"CometD {channel}: {text}")
    if code == "403" and "unknown client" in lowered:
        return UnknownClientError(f"CometD {channel}: {text}")
    if code == "403" and "limit" in lowered:
        return DeliveryLimitError(f"CometD {channel}: {text}")
    if channel == "/meta/subscribe" and code == "400" and "replay" in lowered:
        return ReplayIdInvalidError(f"CometD {channel}: {text}", None)
    if channel == "/meta/subscribe" and code in ("400", "403", "404"):
        return FatalError(f"CometD {channel}: {text}")
    return RetriableError(f"CometD {channel}: {text}")


def translate(exc: BaseException) -> SyncError:
    """One aiocometd/aiosfstream exception -> our error tree."""
    if isinstance(exc, SyncError):
        return exc
    if isinstance(exc, ServerError) or (
        isinstance(exc, AiocometdException) and hasattr(exc, "response")
    ):
        response = getattr(exc, "response", None) or {}
        channel = str(response.get("channel", "")) if isinstance(response, dict) else ""
        err = response.get("error") if isinstance(response, dict) else None
        return classify_server_error(channel, err if isinstance(err, str) else str(exc))
    return RetriableError(f"CometD transport: {exc}")


class TokenAuthenticator(AuthenticatorBase):
    """Bearer token from our `SalesforceClient`; re-authenticates through it after a 401."""

    def __init__(self, source: TokenSource) -> None:
        super().__init__()
        self._source = source
        self._saw_401 = False

    async def _authenticate(self) -> tuple[int, dict[str, Any]]:
        if self._saw_401:
            self._saw_401 = False
            log.info("stream_reauthenticate")
            token = await self._source.reauthenticate()
        else:
            token = await self._source.access_token()
        return 200, {"access_token": token, "token_type": "Bearer",
                     "instance_url": self._source.instance_url}

    async def incoming(self, payload: list[dict[str, Any]], headers: Any = None) -> None:
        # The transport calls `authenticate()` right after it sees a 401/403 reply; only a 401
        # means the token is bad (403 is an unknown client or a limit, not an auth problem).
        for message in payload:
            if _auth_failure(message):
                self._saw_401 = True


def _auth_failure(message: dict[str, Any]) -> bool:
    """A 401, or a handshake denied because of one (`ext.sfdc.failureReason` = `401::...`)."""
    error = message.get("error")
    ext = message.get("ext")
    sfdc = ext.get("sfdc") if isinstance(ext, dict) else None
    reason = sfdc.get("failureReason") if isinstance(sfdc, dict) else None
    return any(isinstance(text, str) and text.startswith("401") for text in (error, reason))


class _ErrorWatch(Extension):
    """Sees every incoming payload; remembers the first server error worth surfacing."""

    def __init__(self) -> None:
        self.error: SyncError | None = None
        self.raised = asyncio.Event()
        self._auth_failures = 0

    async def outgoing(self, payload: list[dict[str, Any]], headers: dict[str, str]) -> None:
        return None

    async def incoming(self, payload: list[dict[str, Any]], headers: Any = None) -> None:
        for message in payload:
            channel = str(message.get("channel", ""))
            if not channel.startswith("/meta/") or message.get("successful", True):
                if channel == "/meta/connect":
                    self._auth_failures = 0
                continue
            error = classify_server_error(channel, message.get("error"))
            if _auth_failure(message):
                error = SessionExpiredError(f"CometD {channel}: {message.get('error')}")
            if isinstance(error, SessionExpiredError):
                # The transport re-authenticates and resends once; only a repeat is an error.
                self._auth_failures += 1
                if self._auth_failures < 3:
                    continue
            if isinstance(error, ReplayIdInvalidError):
                error.channel = message.get("subscription")
            if self.error is None:
                self.error = error
                self.raised.set()


class CommittedReplayIds(ReplayMarkerStorage):
    """Replay ids the server is asked to resume from: only ids committed after apply.

    `override(channel, -1)` makes the next subscribe start from new events (after a resync).
    """

    def __init__(self, committed: dict[str, int] | None = None, *, default: int = NEW_EVENTS) -> None:
        super().__init__()
        self.committed_ids: dict[str, int] = dict(committed or {})
        self.overrides: dict[str, int] = {}
        self.default = default

    def commit(self, channel: str, replay_id: int) -> None:
        self.committed_ids[channel] = replay_id
        self.overrides.pop(channel, None)

    def override(self, channel: str, replay_id: int) -> None:
        self.overrides[channel] = replay_id

    def subscribes_new(self, channel: str) -> bool:
        """Will the next subscribe of `channel` ask for new events only (-1)? An override stays
        until an event of the channel is committed, so a reconnect before then does too."""
        return self.overrides.get(channel, self.committed_ids.get(channel, self.default)) == NEW_EVENTS

    async def get_replay_id(self, subscription: str) -> int:
        if subscription in self.overrides:
            return self.overrides[subscription]
        return self.committed_ids.get(subscription, self.default)

    async def get_replay_marker(self, subscription: str) -> ReplayMarker | None:
        replay_id = self.committed_ids.get(subscription)
        return None if replay_id is None else ReplayMarker(date="", replay_id=replay_id)

    async def set_replay_marker(self, subscription: str, replay_marker: ReplayMarker) -> None:
        # MANUAL policy: the stream commits via `commit()` once the batch is applied.
        return None


class _VersionedClient(Client):
    """`aiosfstream_ng.Client` with the CometD URL of our API version, not 45.0."""

    def __init__(self, authenticator: AuthenticatorBase, *, api_version: str, **kwargs: Any) -> None:
        self._api_version = api_version
        super().__init__(authenticator, **kwargs)

    # An instance method on purpose: `Client.open` calls `self.get_cometd_url(...)`.
    def get_cometd_url(self, instance_url: str) -> str:  # type: ignore[override]
        return f"{instance_url.rstrip('/')}/cometd/{self._api_version}"


class StreamSession:
    """One CometD session: open + subscribe, receive (with errors surfaced), close.

    Single use: after any error, close it and open a new one (after a backoff delay).
    """

    def __init__(
        self,
        source: TokenSource,
        *,
        api_version: str,
        replay_ids: CommittedReplayIds,
        stall_timeout: float = 5.0,
        max_pending: int = 1000,
    ) -> None:
        self._source = source
        self._api_version = api_version
        self.replay_ids = replay_ids
        self._stall_timeout = stall_timeout
        self._max_pending = max_pending
        self._watch: _ErrorWatch | None = None
        self._client: _VersionedClient | None = None

    async def open(self, channels: Sequence[str]) -> None:
        self._watch = _ErrorWatch()
        self._client = _VersionedClient(
            TokenAuthenticator(self._source),
            api_version=self._api_version,
            replay=self.replay_ids,
            replay_storage_policy=ReplayMarkerStoragePolicy.MANUAL,
            connection_timeout=0,  # disabled: see the module docstring
            max_pending_count=self._max_pending,
        )
        assert self._client.extensions is not None  # holds the replay storage
        self._client.extensions.append(self._watch)
        self._client._connection_types = [ConnectionType.LONG_POLLING]
        try:
            await asyncio.wait_for(self._client.open(), self._stall_timeout * 2)
            for channel in channels:
                await self._subscribe(channel)
        except TimeoutError as exc:
            raise RetriableError("CometD handshake timed out") from exc
        except (AiocometdException, OSError) as exc:
            raise translate(exc) from exc

    async def _subscribe(self, channel: str) -> None:
        assert self._client is not None
        try:
            await asyncio.wait_for(self._client.subscribe(channel), self._stall_timeout * 2)
        except ServerError as exc:
            error = translate(exc)
            if isinstance(error, ReplayIdInvalidError):
                error.channel = channel
            raise error from exc

    async def receive(self) -> dict[str, Any] | RejectedEvent:
        """The next event message; raises our errors. Fast path when messages are queued."""
        client, watch = self._require()
        if watch.error is not None:
            raise watch.error
        try:
            if client.has_pending_messages:
                message: dict[str, Any] = await client.receive()
                return message
            return await self._receive_racing(client, watch)
        except ReplayError as exc:
            return RejectedEvent(reason=f"undated message: {exc}", raw={})
        except AiocometdException as exc:
            raise translate(exc) from exc

    async def _receive_racing(self, client: _VersionedClient, watch: _ErrorWatch) -> dict[str, Any]:
        receive = asyncio.ensure_future(client.receive())
        raised = asyncio.ensure_future(watch.raised.wait())
        stalled = asyncio.ensure_future(self._stalled())
        try:
            done, _ = await asyncio.wait({receive, raised, stalled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (receive, raised, stalled):
                if not task.done():
                    task.cancel()
        if receive in done:
            message: dict[str, Any] = receive.result()
            return message
        if stalled in done:
            stalled.result()
        assert watch.error is not None
        raise watch.error

    async def _stalled(self) -> None:
        """Raise when the transport has been reconnecting for longer than `stall_timeout`."""
        client, _ = self._require()
        transport = client._transport
        if transport is None:
            raise RetriableError("CometD transport is gone")
        while True:
            await transport.wait_for_state(TransportState.CONNECTING)
            try:
                await asyncio.wait_for(
                    transport.wait_for_state(TransportState.CONNECTED), self._stall_timeout
                )
            except TimeoutError:
                raise RetriableError("CometD connection lost") from None

    async def close(self) -> None:
        """Disconnect within a few seconds, whatever state the server is in."""
        client = self._client
        if client is None:
            return
        self._client = None
        transport = client._transport
        task = getattr(transport, "_connect_task", None)
        if transport is not None and task is not None and not task.done():
            # Detached so the cancelled task does not log a spurious CancelledError.
            task.remove_done_callback(getattr(transport, "_connect_done"))  # noqa: B009
        try:
            await asyncio.wait_for(client.close(), 3.0)
        except (TimeoutError, AiocometdException, OSError) as exc:
            log.info("stream_close_forced", error=str(exc) or type(exc).__name__)
            session = client._http_session
            if session is not None and not session.closed:
                await session.close()

    @property
    def pending(self) -> int:
        return self._client.pending_count if self._client is not None else 0

    def _require(self) -> tuple[_VersionedClient, _ErrorWatch]:
        if self._client is None or self._watch is None:
            raise RuntimeError("StreamSession is not open")
        return self._client, self._watch
