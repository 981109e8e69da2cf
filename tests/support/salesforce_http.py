"""A handler-function HTTP transport for `SalesforceClient` (as httpx's `MockTransport`), and a
scripted org built on it: unit tests of the client and the flusher need no HTTP server."""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from listener.salesforce import HttpRequest, HttpResponse, RetryPolicy, SalesforceClient
from settings import AuthFlow, SalesforceSettings

Handler = Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]]
INSTANCE_URL = "https://example.my.salesforce.com"
LOGIN_URL = "https://login.example.com"
ORG_ID = "00Dxx0000001gEFEAY"
INTEGRATION_USER = "005xx000001Sv6AAAS"
V = "/services/data/v62.0"
# No sleeping between retries: delays are uniform(0, 0).
NO_WAIT = RetryPolicy(attempts=4, base=0.0, cap=0.0)


class HandlerTransport:
    """An `HttpTransport` answering every request with `handler(request)` (sync or async);
    the handler may raise `NetworkError` to play a call that got no response."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[HttpRequest] = []
        self.closed = False

    async def send(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        answer = self.handler(request)
        return await answer if inspect.isawaitable(answer) else answer

    async def aclose(self) -> None:
        self.closed = True


def sf_json(body: Any, status: int = 200, usage: str = "api-usage=18/5000") -> HttpResponse:
    """A Salesforce REST answer: JSON plus the `Sforce-Limit-Info` header every answer carries."""
    return HttpResponse.of_json(status, body, {"Sforce-Limit-Info": usage})


def sf_error(status: int, code: str, message: str = "boom") -> HttpResponse:
    return sf_json([{"errorCode": code, "message": message}], status=status)


Route = Callable[[HttpRequest], HttpResponse]


@dataclass
class ScriptedOrg:
    """The token endpoint (client credentials) plus the REST routes a test adds, by (method, path).

    A REST call with a token other than the latest one issued answers 401 INVALID_SESSION_ID;
    `expire_token()` makes the current token stale, as a session timeout would.
    """

    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    tokens_issued: int = 0
    token_forms: list[dict[str, str]] = field(default_factory=list)
    rest_calls: list[HttpRequest] = field(default_factory=list)
    valid_token: str | None = None

    def route(self, method: str, path: str, answer: Route) -> None:
        self.routes[(method, path)] = answer

    def expire_token(self) -> None:
        self.valid_token = None

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = urlsplit(request.url).path
        if request.method == "POST" and path == "/services/oauth2/token":
            self.token_forms.append(dict(request.form or {}))
            self.tokens_issued += 1
            self.valid_token = f"00Dxx0000001gEF!token{self.tokens_issued}"
            return HttpResponse.of_json(200, {"access_token": self.valid_token, "instance_url": INSTANCE_URL,
                                              "issued_at": "1700000000000", "token_type": "Bearer",
                                              "id": f"{LOGIN_URL}/id/{ORG_ID}/{INTEGRATION_USER}"})
        self.rest_calls.append(request)
        if self.valid_token is None or request.headers.get("Authorization") != f"Bearer {self.valid_token}":
            return sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
        answer = self.routes.get((request.method, path))
        if answer is None:
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        return answer(request)

    def client(self, **kwargs: Any) -> tuple[SalesforceClient, HandlerTransport]:
        """A client whose every call (OAuth included) this org answers, with no retry waits."""
        transport = HandlerTransport(self)
        kwargs.setdefault("retry", NO_WAIT)
        return SalesforceClient(org_settings(), transport=transport, **kwargs), transport


def org_settings() -> SalesforceSettings:
    return SalesforceSettings(login_url=LOGIN_URL, auth_flow=AuthFlow.CLIENT_CREDENTIALS, client_id="cid",
                              client_secret=SecretStr("csecret"), client_name="sfsync-test")


def body_of(request: HttpRequest) -> Any:
    """The JSON body a request carries (a copy, as the server would read it)."""
    return json.loads(json.dumps(request.json))


def sequence(*answers: Callable[[], HttpResponse]) -> Route:
    """Answer each call with the next response; the last one repeats."""
    calls = iter(range(10_000))

    def answer(_: HttpRequest) -> HttpResponse:
        return answers[min(next(calls), len(answers) - 1)]()
    return answer
