"""The HTTP seam of the Salesforce client: one request in, status/headers/body out.

`SalesforceClient` sends every call (OAuth included) through an `HttpTransport`, as httpx's
clients do through theirs: the default `AiohttpTransport` talks to the network, and a test
passes a handler-function transport (`tests/support/salesforce_http.py`) so client and flusher
unit tests need no HTTP server. A transport answers every response it gets, whatever its
status (deciding what a status means is `_transport`'s job); when no response came it raises
`NetworkError`, saying whether the request may have reached Salesforce.

This module is the only one in the client that imports aiohttp.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import aiohttp

from reconciler.errors import RetriableError


@dataclass(frozen=True)
class HttpRequest:
    """One call: `json` is sent as a JSON body, `form` as `application/x-www-form-urlencoded`."""

    method: str
    url: str
    params: Mapping[str, str] | None = None
    json: Any = None
    form: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes = b""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @classmethod
    def of_json(cls, status: int, body: Any, headers: Mapping[str, str] | None = None) -> HttpResponse:
        """A JSON response (what Salesforce answers), for transports that build their own."""
        return cls(status, {"Content-Type": "application/json", **(headers or {})},
                   json.dumps(body).encode())


class Failure(Enum):
    """How a call failed, as far as "was anything applied?" goes."""

    NOT_SENT = "not_sent"            # no connection was made: Salesforce never saw the request
    REFUSED = "refused"              # Salesforce answered that it did not process it
    RESPONSE_LOST = "response_lost"  # timeout or connection dropped after the request went out
    SERVER_ERROR = "server_error"    # a 5xx that does not say whether anything was saved


class NetworkError(RetriableError):
    """A call that got no response; `failure` says whether it may have reached Salesforce."""

    def __init__(self, failure: Failure, reason: str) -> None:
        super().__init__(reason)
        self.failure = failure
        self.reason = reason


class HttpTransport(Protocol):
    """Sends one request; raises `NetworkError` only when no response came back."""

    async def send(self, request: HttpRequest) -> HttpResponse: ...

    async def aclose(self) -> None: ...


def network_failure(exc: BaseException) -> Failure:
    """An aiohttp/asyncio exception of a call -> whether the request may have reached Salesforce.

    Only a failed connect proves the request never left; a timeout under the total deadline
    may fire in any phase, so it counts as lost (the caller then checks, at the cost of a query).
    """
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return Failure.NOT_SENT
    return Failure.RESPONSE_LOST


class AiohttpTransport:
    """The default transport: one `aiohttp.ClientSession` with a bounded connection pool."""

    def __init__(self, *, max_connections: int = 8, timeout: float = 60) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def send(self, request: HttpRequest) -> HttpResponse:
        what = f"{request.method} {request.url.split('?')[0]}"
        try:
            async with self._session.request(
                request.method, request.url, params=request.params, json=request.json,
                data=request.form, headers=dict(request.headers),
            ) as resp:
                body = await resp.read()
                return HttpResponse(resp.status, resp.headers, body)
        except TimeoutError as exc:
            raise NetworkError(network_failure(exc), f"{what}: timed out") from exc
        except aiohttp.ClientError as exc:
            raise NetworkError(network_failure(exc), f"{what}: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        await self._session.close()


__all__ = ["AiohttpTransport", "Failure", "HttpRequest", "HttpResponse", "HttpTransport", "NetworkError",
           "network_failure"]
