"""The Salesforce REST client: query, describe, get, sObject Collections, conditional updates
(`/composite` subrequests with `If-Unmodified-Since`), limits.

Implements `reconciler.ports.SalesforceApi`. Every call, OAuth included, goes through one
`HttpTransport` (`listener.salesforce.http`): by default an aiohttp session with a bounded
connection pool, or the transport a caller passes (tests: a handler function, as httpx's
`MockTransport`). Errors are translated in `_transport`.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import structlog

from listener.salesforce._transport import RetryPolicy, Transport
from listener.salesforce.auth import Authenticator
from listener.salesforce.http import AiohttpTransport, HttpTransport
from listener.salesforce.usage import ApiUsage
from reconciler.errors import FatalError, OutcomeUnknownError, RetriableError
from reconciler.ports import PRECONDITION_FAILED, RecordError, RecordResult, ResendGuard
from settings import SalesforceSettings

log = structlog.get_logger(__name__)

COLLECTION_LIMIT = 200  # records per composite/sobjects call
COMPOSITE_LIMIT = 25  # subrequests per /composite call


class ClientState(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class SalesforceClient:
    """Async context manager; authenticates on first use.

    `calls_made` counts REST calls sent (retries included, OAuth not).
    """

    def __init__(
        self,
        settings: SalesforceSettings,
        *,
        on_usage: Callable[[ApiUsage], None] | None = None,
        max_connections: int = 8,
        timeout: float = 60,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008  (frozen dataclass: a safe default)
        transport: HttpTransport | None = None,
    ) -> None:
        """`transport` replaces the default aiohttp one (`max_connections` and `timeout` are
        the default's); the client closes whichever it uses."""
        self._settings = settings
        self._on_usage = on_usage
        self._max_connections, self._timeout = max_connections, timeout
        self._retry = retry
        self._state = ClientState.UNOPENED
        self._given_http = transport
        self._http: HttpTransport | None = None
        self._auth: Authenticator | None = None
        self._transport: Transport | None = None
        self._describes: dict[str, dict[str, Any]] = {}
        self._base = f"/services/data/v{settings.api_version}"

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is not ClientState.UNOPENED:
            raise RuntimeError(f"SalesforceClient cannot be opened when {self._state.value}")
        self._http = self._given_http or AiohttpTransport(
            max_connections=self._max_connections, timeout=self._timeout)
        self._auth = Authenticator(self._http, self._settings)
        self._transport = Transport(
            self._http, self._auth, client_name=self._settings.client_name,
            retry=self._retry, on_usage=self._on_usage,
        )
        self._state = ClientState.OPEN
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._state is ClientState.OPEN and self._http is not None:
            await self._http.aclose()
        self._state = ClientState.CLOSED

    @property
    def state(self) -> ClientState:
        return self._state

    def _open(self) -> tuple[Authenticator, Transport]:
        if self._state is not ClientState.OPEN or self._auth is None or self._transport is None:
            raise RuntimeError(f"SalesforceClient is {self._state.value}, not open")
        return self._auth, self._transport

    # -- auth --------------------------------------------------------------------------------

    @property
    def instance_url(self) -> str:
        """The org's instance URL; known once authenticated (after the first call)."""
        auth, _ = self._open()
        if auth.current is None:
            raise RuntimeError("instance_url is known only after authentication")
        return auth.current.instance_url

    @property
    def calls_made(self) -> int:
        return self._transport.calls_made if self._transport is not None else 0

    async def access_token(self) -> str:
        """The current bearer token (authenticating on first use); used by the CometD stream."""
        auth, _ = self._open()
        token, _ = await auth.token()
        return token

    async def user_id(self) -> str | None:
        """The authenticated (integration) user's id, from the token answer's identity URL
        (authenticating on first use); None when the answer had none."""
        auth, _ = self._open()
        await auth.token()
        return auth.current.user_id if auth.current is not None else None

    async def reauthenticate(self) -> str:
        """Force a new token (e.g. after the stream's handshake was refused)."""
        auth, _ = self._open()
        stale = auth.current.access_token.get_secret_value() if auth.current else None
        token, _ = await auth.renew(stale)
        return token

    # -- reads -------------------------------------------------------------------------------

    async def query(
        self, soql: str, *, include_deleted: bool = False
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield pages of records (`attributes` removed), following `nextRecordsUrl`."""
        _, transport = self._open()
        endpoint = "queryAll" if include_deleted else "query"
        page = await transport.request("GET", f"{self._base}/{endpoint}", params={"q": soql})
        while True:
            records = [_strip_attributes(r) for r in (page or {}).get("records", [])]
            if records:
                yield records
            next_url = (page or {}).get("nextRecordsUrl")
            if not next_url or page.get("done", True):
                return
            page = await transport.request("GET", str(next_url))

    async def describe(self, sobject: str) -> dict[str, Any]:
        """`sobjects/<Object>/describe`, cached per object for the client's life."""
        cached = self._describes.get(sobject)
        if cached is None:
            _, transport = self._open()
            cached = await transport.request("GET", f"{self._base}/sobjects/{_name(sobject)}/describe")
            if not isinstance(cached, dict):
                raise FatalError(f"describe {sobject}: unexpected response")
            self._describes[sobject] = cached
        return cached

    async def field_writability(self, sobject: str) -> dict[str, bool]:
        """Field name -> whether we may write it (updateable and not calculated)."""
        described = await self.describe(sobject)
        return {
            str(f["name"]): bool(f.get("updateable")) and not bool(f.get("calculated"))
            for f in described.get("fields", [])
        }

    async def get(self, sobject: str, sf_id: str, fields: Sequence[str]) -> dict[str, Any] | None:
        """One record's fields, or None when it does not exist (or was deleted)."""
        _, transport = self._open()
        params = {"fields": ",".join(fields)} if fields else None
        record = await transport.request(
            "GET", f"{self._base}/sobjects/{_name(sobject)}/{_name(sf_id)}", params=params,
            not_found_ok=True,
        )
        return _strip_attributes(record) if isinstance(record, dict) else None

    async def limits(self) -> dict[str, Any]:
        _, transport = self._open()
        body = await transport.request("GET", f"{self._base}/limits")
        return body if isinstance(body, dict) else {}

    # -- writes ------------------------------------------------------------------------------

    async def create(self, sobject: str, records: Sequence[dict[str, Any]], *,
                     before_resend: ResendGuard | None = None) -> list[RecordResult]:
        """POST composite/sobjects in chunks of 200; results by position (failed creates carry no id).

        Never retried once it may have been applied: `OutcomeUnknownError` when a chunk's response
        was lost, or when a later chunk fails after earlier ones created records (their ids would
        be lost with the exception, so re-sending everything would duplicate them).
        `before_resend` (every write) runs before each send after the first: a retry, a
        re-authentication, the next chunk.
        """
        _, transport = self._open()
        return await _collections(transport, self._base, "POST", sobject, records, before_resend)

    async def update(self, sobject: str, records: Sequence[dict[str, Any]], *,
                     before_resend: ResendGuard | None = None) -> list[RecordResult]:
        """PATCH composite/sobjects in chunks of 200; every record needs its `Id`."""
        if any(not r.get("Id") for r in records):
            raise ValueError("update needs an Id in every record")
        _, transport = self._open()
        return await _collections(transport, self._base, "PATCH", sobject, records, before_resend)

    async def update_if_unmodified(
        self, sobject: str, records: Sequence[tuple[dict[str, Any], datetime]], *,
        before_resend: ResendGuard | None = None,
    ) -> list[RecordResult]:
        """PATCH each record (with its `Id`) only if Salesforce has not modified it after the
        datetime given with it (`If-Unmodified-Since`, whole seconds): `/composite` subrequests,
        25 a call (one API call each). A record modified since answers `precondition_failed`
        (nothing written); other failures are its errors, as `update`'s."""
        if any(not r.get("Id") for r, _ in records):
            raise ValueError("update needs an Id in every record")
        _, transport = self._open()
        results: list[RecordResult] = []
        for start in range(0, len(records), COMPOSITE_LIMIT):
            if start and before_resend is not None:
                await before_resend()
            results.extend(await _conditional_chunk(transport, self._base, sobject,
                                                    records[start : start + COMPOSITE_LIMIT], before_resend))
        return results

    async def delete(self, sobject: str, sf_id: str) -> None:
        """Delete one record; a record that is already gone counts as deleted."""
        _, transport = self._open()
        await transport.request(
            "DELETE", f"{self._base}/sobjects/{_name(sobject)}/{_name(sf_id)}", not_found_ok=True
        )


async def _collections(
    transport: Transport, base: str, method: str, sobject: str, records: Sequence[dict[str, Any]],
    before_resend: ResendGuard | None,
) -> list[RecordResult]:
    results: list[RecordResult] = []
    for start in range(0, len(records), COLLECTION_LIMIT):
        if start and before_resend is not None:
            await before_resend()
        chunk = records[start : start + COLLECTION_LIMIT]
        body = {
            "allOrNone": False,
            "records": [{"attributes": {"type": sobject}, **r} for r in chunk],
        }
        try:
            answer = await transport.request(method, f"{base}/composite/sobjects", body=body,
                                             before_resend=before_resend)
        except RetriableError as exc:
            if method != "POST" or not results or isinstance(exc, OutcomeUnknownError):
                raise
            raise OutcomeUnknownError(
                f"POST composite/sobjects {sobject}: {start} records created before: {exc}"
            ) from exc
        if not isinstance(answer, list) or len(answer) != len(chunk):
            raise FatalError(
                f"{method} composite/sobjects {sobject}: expected {len(chunk)} results, "
                f"got {len(answer) if isinstance(answer, list) else type(answer).__name__}"
            )
        results.extend(_record_result(item) for item in answer)
    return results


async def _conditional_chunk(
    transport: Transport, base: str, sobject: str, chunk: Sequence[tuple[dict[str, Any], datetime]],
    before_resend: ResendGuard | None,
) -> list[RecordResult]:
    """One `/composite` call: a PATCH subrequest per record, with its own `If-Unmodified-Since`
    (`allOrNone` false: each record is written, or not, on its own)."""
    subrequests = [
        {
            "method": "PATCH",
            "url": f"{base}/sobjects/{_name(sobject)}/{_name(str(record['Id']))}",
            "referenceId": f"r{index}",
            "body": {k: v for k, v in record.items() if k != "Id"},
            "httpHeaders": {"If-Unmodified-Since": http_date(since)},
        }
        for index, (record, since) in enumerate(chunk)
    ]
    answer = await transport.request("POST", f"{base}/composite", before_resend=before_resend,
                                     body={"allOrNone": False, "compositeRequest": subrequests})
    found = answer.get("compositeResponse") if isinstance(answer, dict) else None
    by_reference = {str(a.get("referenceId")): a for a in found or [] if isinstance(a, dict)}
    if len(by_reference) != len(chunk) or any(f"r{i}" not in by_reference for i in range(len(chunk))):
        raise FatalError(f"POST composite {sobject}: expected {len(chunk)} subrequest results, got "
                         f"{len(found) if isinstance(found, list) else type(answer).__name__}")
    return [_subrequest_result(by_reference[f"r{i}"], str(record["Id"]))
            for i, (record, _) in enumerate(chunk)]


def _subrequest_result(answer: dict[str, Any], sf_id: str) -> RecordResult:
    """A PATCH subrequest's answer: 2xx written; 412 the record changed since (decided on the
    status, as Salesforce documents it, not on the body); else the errors its body lists."""
    status = int(answer.get("httpStatusCode") or 0)
    if 200 <= status < 300:
        return RecordResult(success=True, id=sf_id)
    if status == 412:
        return RecordResult(success=False, id=sf_id, errors=[
            RecordError(PRECONDITION_FAILED, "the record was modified after the values were decided")])
    body = answer.get("body")
    failed = _record_result({"success": False, "errors": body if isinstance(body, list) else []})
    return RecordResult(success=False, id=sf_id, errors=failed.errors or [
        RecordError(f"HTTP_{status}", "the subrequest failed without an error body")])


def http_date(at: datetime) -> str:
    """`If-Unmodified-Since`'s format (`EEE, dd MMM yyyy HH:mm:ss GMT`): whole seconds."""
    return format_datetime(at.astimezone(UTC).replace(microsecond=0), usegmt=True)


def _record_result(item: Any) -> RecordResult:
    if not isinstance(item, dict):
        return RecordResult(success=False, errors=[RecordError("UNKNOWN", "malformed result")])
    errors = [
        RecordError(
            status_code=str(e.get("statusCode") or e.get("errorCode") or "UNKNOWN"),
            message=str(e.get("message") or ""),
            fields=[str(f) for f in e.get("fields") or []],
        )
        for e in item.get("errors") or []
        if isinstance(e, dict)
    ]
    success = bool(item.get("success"))
    # Failed creates carry no id; failed updates may echo the one we sent.
    return RecordResult(success=success, id=item.get("id") or None, errors=errors)


def _strip_attributes(record: dict[str, Any]) -> dict[str, Any]:
    """Drop Salesforce's `attributes` here and in nested relationship records."""
    return {
        key: _strip_attributes(value) if isinstance(value, dict) and "attributes" in value else value
        for key, value in record.items()
        if key != "attributes"
    }


def _name(segment: str) -> str:
    # Object names and ids are plain identifiers; quoting keeps a bad one from changing the path.
    return quote(segment, safe="")
