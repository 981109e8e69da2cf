"""The one boundary between Salesforce's HTTP answers and the rest of the project.

Every Salesforce REST call goes through `Transport.request`, which sends it over an
`HttpTransport` (`listener.salesforce.http`: aiohttp by default, a handler function in tests).
Here, and only here, HTTP statuses and Salesforce `errorCode`s become the project's error
tree; the HTTP transport has already turned network trouble into `NetworkError`, so nothing
above sees an aiohttp exception. Decisions use the status and the `errorCode`, never the
message text.

Creates are not idempotent: a POST whose outcome is unknown (its response was lost after the
request went out, or a 5xx that does not prove Salesforce refused it) is never retried here; it
raises `OutcomeUnknownError` so the caller can look for what the call created first. Failures
that prove nothing was applied (no connection, 503/429/408, SERVER_UNAVAILABLE, a lock) are
retried for every method, and so is everything for GET/PATCH/DELETE (idempotent).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import structlog

from listener.metrics import METRICS
from listener.salesforce.http import (
    Failure,
    HttpRequest,
    HttpResponse,
    HttpTransport,
    NetworkError,
)
from listener.salesforce.usage import ApiUsage, parse_limit_info
from reconciler.errors import (
    BudgetExhaustedError,
    FatalError,
    OutcomeUnknownError,
    RecordRejectedError,
    RetriableError,
    SessionExpiredError,
)
from reconciler.pacing import backoff_seconds
from reconciler.ports import ResendGuard

log = structlog.get_logger(__name__)

# 400s that mean our request (SOQL, field or object name) is wrong: retrying cannot help and
# every record would fail the same way, so stop and report instead of skipping records.
_FATAL_400_CODES = frozenset(
    {"MALFORMED_QUERY", "INVALID_FIELD", "INVALID_TYPE", "INVALID_QUERY_FILTER_OPERATOR",
     "API_DISABLED_FOR_ORG", "API_CURRENTLY_DISABLED", "UNSUPPORTED_API_VERSION"}
)
_RETRIABLE_CODES = frozenset({"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "QUERY_TIMEOUT"})
# Statuses by which the server says it did not process the request (unavailable, throttled,
# request not read in time). A 500/502/504 proves nothing: a gateway may give up while the
# org commits, and UNKNOWN_EXCEPTION says nothing about what was saved.
_REFUSED_STATUSES = frozenset({408, 429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """How often a call is tried, and the backoff between tries (`pacing.backoff_seconds`: full
    jitter, attempt n sleeps uniform(0, min(cap, base * 2**n)))."""

    attempts: int = 5
    base: float = 0.5
    cap: float = 30.0

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        return backoff_seconds(retry_number, base=self.base, cap=self.cap, rng=rng)


class Action(Enum):
    OK = "ok"
    NOT_FOUND = "not_found"
    REAUTHENTICATE = "reauthenticate"
    RETRY = "retry"
    BUDGET = "budget"
    FATAL = "fatal"
    SKIP = "skip"


def is_idempotent(method: str) -> bool:
    """Sending the call twice does no more than sending it once (every method we use but POST)."""
    return method.upper() != "POST"


def may_retry(method: str, failure: Failure) -> bool:
    """Retry automatically? Always when nothing was applied; otherwise only idempotent calls."""
    return failure in (Failure.NOT_SENT, Failure.REFUSED) or is_idempotent(method)


def response_failure(fault: ApiFault) -> Failure:
    """A retriable error response -> refused (nothing applied) or a server error (unknown)."""
    if fault.status in _REFUSED_STATUSES or fault.error_code in _RETRIABLE_CODES:
        return Failure.REFUSED
    return Failure.SERVER_ERROR


@dataclass(frozen=True)
class ApiFault:
    """Salesforce's first error entry of a failed response."""

    status: int
    error_code: str
    message: str
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.error_code}: {self.message}"


class SalesforceFatalError(FatalError):
    """A request Salesforce refused in a way retrying cannot fix; carries status and errorCode."""

    def __init__(self, fault: ApiFault) -> None:
        super().__init__(f"HTTP {fault.status} {fault}")
        self.status = fault.status
        self.error_code = fault.error_code
        self.message = fault.message


def classify(status: int, error_code: str) -> Action:
    """What to do with a response, from its HTTP status and Salesforce errorCode only."""
    if status < 300:
        return Action.OK
    if status == 401:
        return Action.REAUTHENTICATE if error_code in ("INVALID_SESSION_ID", "") else Action.FATAL
    if status == 403 and error_code == "REQUEST_LIMIT_EXCEEDED":
        return Action.BUDGET
    if status >= 500 or status in (408, 429) or error_code in _RETRIABLE_CODES:
        return Action.RETRY
    if status == 404 and error_code in ("NOT_FOUND", "ENTITY_IS_DELETED", ""):
        return Action.NOT_FOUND
    if status in (401, 403) or error_code in _FATAL_400_CODES:
        return Action.FATAL
    return Action.SKIP


def parse_fault(status: int, body: Any, text: str = "") -> ApiFault:
    """Salesforce error bodies are `[{"errorCode", "message", "fields"}]` (sometimes one object)."""
    entry = body[0] if isinstance(body, list) and body else body
    if isinstance(entry, dict):
        code = str(entry.get("errorCode") or entry.get("error") or "")
        message = str(entry.get("message") or entry.get("error_description") or "")
        fields = tuple(str(f) for f in entry.get("fields") or ())
        return ApiFault(status, code, message, fields)
    # Proxies and maintenance pages answer HTML: keep a short excerpt for the error text.
    return ApiFault(status, "", " ".join(text.split())[:200] or f"HTTP {status}")


class TokenSource(Protocol):
    """Where the transport gets bearer tokens (the authenticator)."""

    async def token(self) -> tuple[str, str]:
        """(access token, instance URL), authenticating on first use."""
        ...

    async def renew(self, stale: str) -> tuple[str, str]:
        """A fresh token, unless another caller already replaced `stale`."""
        ...


@dataclass(frozen=True)
class _Response:
    status: int
    body: Any
    text: str


class Transport:
    """Authenticated, retrying, usage-reporting JSON requests against the instance URL."""

    def __init__(
        self,
        http: HttpTransport,
        tokens: TokenSource,
        *,
        client_name: str,
        retry: RetryPolicy,
        on_usage: Callable[[ApiUsage], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._http = http
        self._tokens = tokens
        self._call_options = f"client={client_name}"
        self._retry = retry
        self._on_usage = on_usage
        self._rng = rng or random.Random()
        self.calls_made = 0

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        not_found_ok: bool = False,
        before_resend: ResendGuard | None = None,
    ) -> Any:
        """Send one REST call (re-authenticating once, retrying transient failures); return its JSON.
        `before_resend` runs before each send after the first (raising stops the call)."""
        reauthenticated = False
        retry_number = 0
        while True:
            if (retry_number or reauthenticated) and before_resend is not None:
                await before_resend()
            token, instance_url = await self._tokens.token()
            try:
                response = await self._send(method, instance_url + path, token, params, body)
            except NetworkError as exc:
                if not may_retry(method, exc.failure):
                    raise self._outcome_unknown(method, path, exc.reason) from exc
                retry_number = await self._back_off(retry_number, method, path, exc.reason, exc)
                continue
            fault = (
                parse_fault(response.status, response.body, response.text)
                if response.status >= 300 else None
            )
            action = classify(response.status, fault.error_code if fault else "")
            if action is Action.OK:
                return response.body
            assert fault is not None
            if action is Action.NOT_FOUND and not_found_ok:
                return None
            if action is Action.REAUTHENTICATE and not reauthenticated:
                reauthenticated = True
                log.info("salesforce_session_expired", method=method, path=path)
                await self._tokens.renew(token)
                continue
            if action is Action.RETRY:
                if not may_retry(method, response_failure(fault)):
                    raise self._outcome_unknown(method, path,
                                                f"{method} {path}: HTTP {fault.status} {fault}")
                retry_number = await self._back_off(retry_number, method, path, str(fault), None)
                continue
            raise _error_for(action, fault)

    async def _send(
        self, method: str, url: str, token: str, params: dict[str, str] | None, body: Any
    ) -> _Response:
        headers = {
            "Authorization": f"Bearer {token}",
            "Sforce-Call-Options": self._call_options,
            "Accept": "application/json",
        }
        self.calls_made += 1
        METRICS.inc("sfsync_api_calls_total")
        resp = await self._http.send(HttpRequest(method, url, params=params, json=body, headers=headers))
        text = resp.text
        self._report_usage(header(resp, "Sforce-Limit-Info"))
        return _Response(resp.status, _json_or_none(text), text)

    def _outcome_unknown(self, method: str, path: str, reason: str) -> OutcomeUnknownError:
        log.warning("salesforce_outcome_unknown", method=method, path=path.split("?")[0],
                    reason=reason)
        return OutcomeUnknownError(f"{reason} (not retried: it may have been applied)")

    def _report_usage(self, header: str | None) -> None:
        usage = parse_limit_info(header)
        if usage is not None and self._on_usage is not None:
            self._on_usage(usage)

    async def _back_off(
        self, retry_number: int, method: str, path: str, reason: str, cause: Exception | None
    ) -> int:
        if retry_number + 1 >= self._retry.attempts:
            raise RetriableError(
                f"{method} {path}: gave up after {self._retry.attempts} attempts: {reason}"
            ) from cause
        delay = self._retry.delay(retry_number, self._rng)
        log.warning("salesforce_retry", method=method, path=path.split("?")[0], reason=reason,
                    attempt=retry_number + 1, delay_s=round(delay, 3))
        await asyncio.sleep(delay)
        return retry_number + 1


def _error_for(action: Action, fault: ApiFault) -> Exception:
    if action is Action.BUDGET:
        return BudgetExhaustedError(str(fault))
    if action is Action.REAUTHENTICATE:
        # A brand-new token was refused too: the caller backs off and tries again later.
        return SessionExpiredError(str(fault))
    if action is Action.SKIP or action is Action.NOT_FOUND:
        return RecordRejectedError(fault.error_code or f"HTTP_{fault.status}", fault.message,
                                   list(fault.fields))
    return SalesforceFatalError(fault)


def header(response: HttpResponse, name: str) -> str | None:
    """A response header, whatever the case its transport keeps names in."""
    headers: Mapping[str, str] = response.headers
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
    return value


def _json_or_none(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
