"""The REST client against a scripted Salesforce served over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr
from structlog.testing import capture_logs

from emulator.state import SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET, EmulatorConfig
from listener.salesforce import ApiUsage, RetryPolicy, SalesforceClient
from reconciler.errors import (
    BudgetExhaustedError,
    FatalError,
    FencedError,
    RecordRejectedError,
    RetriableError,
    SessionExpiredError,
)
from settings import AuthFlow, SalesforceSettings
from tests.support.emulator import running_emulator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FAST = RetryPolicy(attempts=4, base=0.001, cap=0.005)
V = "/services/data/v62.0"


@dataclass
class FakeOrg:
    """A scripted Salesforce: a token endpoint plus whatever REST routes a test adds."""

    server: TestServer
    tokens_issued: int = 0
    token_forms: list[dict[str, str]] = field(default_factory=list)
    requests: list[web.Request] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    token_status: int = 200
    token_error: dict[str, str] | None = None
    usage: str = "api-usage=18/5000"

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def current_token(self) -> str:
        return f"00Dxx0000001gEF!token{self.tokens_issued}"

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    def settings(self, **overrides: Any) -> SalesforceSettings:
        values: dict[str, Any] = {
            "login_url": self.url, "auth_flow": AuthFlow.CLIENT_CREDENTIALS,
            "client_id": "cid", "client_secret": SecretStr("csecret"), "client_name": "sfsync-test",
        }
        values.update(overrides)
        return SalesforceSettings(**values)

    def client(self, **kwargs: Any) -> SalesforceClient:
        kwargs.setdefault("retry", FAST)
        return SalesforceClient(self.settings(), **kwargs)


def sf_json(body: Any, status: int = 200, usage: str = "api-usage=18/5000") -> web.Response:
    return web.json_response(body, status=status, headers={"Sforce-Limit-Info": usage})


def sf_error(status: int, code: str, message: str = "boom") -> web.Response:
    return sf_json([{"errorCode": code, "message": message}], status=status)


@pytest.fixture
async def org() -> AsyncIterator[FakeOrg]:
    app = web.Application()
    server = TestServer(app, host="127.0.0.1")
    fake = FakeOrg(server)

    async def token(request: web.Request) -> web.Response:
        fake.token_forms.append(dict(await request.post()))  # type: ignore[arg-type]
        if fake.token_error is not None:
            return web.json_response(fake.token_error, status=fake.token_status)
        if fake.token_status != 200:
            return web.Response(status=fake.token_status, text="<html>down</html>")
        fake.tokens_issued += 1
        return web.json_response({
            "access_token": fake.current_token(), "instance_url": fake.url,
            "issued_at": "1700000000000", "token_type": "Bearer",
        })

    async def dispatch(request: web.Request) -> web.StreamResponse:
        handler = fake.routes.get((request.method, request.path))
        if handler is None:
            return sf_error(404, "NOT_FOUND", "The requested resource does not exist")
        fake.requests.append(request)
        fake.bodies.append(await request.json() if request.can_read_body else None)
        expected = f"Bearer {fake.current_token()}"
        if request.headers.get("Authorization") != expected:
            return sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
        return await handler(request)

    app.router.add_post("/services/oauth2/token", token)
    app.router.add_route("*", "/services/data/{tail:.*}", dispatch)
    await server.start_server()
    try:
        yield fake
    finally:
        await server.close()


def ok(body: Any) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return sf_json(body)
    return handler


def sequence(*responses: Callable[[], web.Response]) -> Handler:
    """Answer each call with the next response; the last one repeats."""
    calls = iter(range(10_000))

    async def handler(request: web.Request) -> web.Response:
        return responses[min(next(calls), len(responses) - 1)]()
    return handler


class TestAuthentication:
    async def test_client_credentials_token_is_used_as_bearer(self, org: FakeOrg) -> None:
        """The client-credentials flow posts id + secret, and REST calls carry the token."""
        org.route("GET", f"{V}/limits", ok({"DailyApiRequests": {"Max": 5000, "Remaining": 4982}}))
        async with org.client() as client:
            assert await client.limits() == {"DailyApiRequests": {"Max": 5000, "Remaining": 4982}}
            assert client.instance_url == org.url
        assert org.token_forms == [
            {"grant_type": "client_credentials", "client_id": "cid", "client_secret": "csecret"}
        ]

    async def test_refresh_token_flow(self, org: FakeOrg) -> None:
        """The refresh-token flow posts the refresh token (and the secret when configured)."""
        settings = org.settings(auth_flow=AuthFlow.REFRESH_TOKEN, refresh_token=SecretStr("5Aep-rt"),
                                client_secret=None)
        async with SalesforceClient(settings, retry=FAST) as client:
            assert await client.access_token() == org.current_token()
        assert org.token_forms == [
            {"grant_type": "refresh_token", "client_id": "cid", "refresh_token": "5Aep-rt"}
        ]

    async def test_jwt_bearer_assertion_is_signed_with_the_private_key(
        self, org: FakeOrg, tmp_path: Path
    ) -> None:
        """The JWT flow posts an RS256 assertion: iss=client id, sub=username, aud=login URL, 3 minutes."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        (tmp_path / "server.key").write_bytes(pem)
        settings = org.settings(auth_flow=AuthFlow.JWT_BEARER, username="sync@example.com",
                                private_key_file=tmp_path / "server.key", client_secret=None)
        async with SalesforceClient(settings, retry=FAST) as client:
            await client.access_token()
        form = org.token_forms[0]
        assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
        claims = jwt.decode(form["assertion"], key.public_key(), algorithms=["RS256"], audience=org.url)
        assert (claims["iss"], claims["sub"]) == ("cid", "sync@example.com")
        assert abs(claims["exp"] - (time.time() + 180)) < 10

    async def test_unreadable_private_key_is_fatal_and_names_the_variable(
        self, org: FakeOrg, tmp_path: Path
    ) -> None:
        """A missing key file stops with an error naming SFSYNC_SALESFORCE__PRIVATE_KEY_FILE."""
        settings = org.settings(auth_flow=AuthFlow.JWT_BEARER, username="u",
                                private_key_file=tmp_path / "missing.key")
        async with SalesforceClient(settings, retry=FAST) as client:
            with pytest.raises(FatalError, match="SFSYNC_SALESFORCE__PRIVATE_KEY_FILE"):
                await client.access_token()

    async def test_oauth_error_is_fatal_with_salesforce_text_and_no_secret(self, org: FakeOrg) -> None:
        """`invalid_grant` becomes a FatalError carrying Salesforce's description, never the secret."""
        org.token_status = 400
        org.token_error = {"error": "invalid_grant", "error_description": "authentication failure"}
        async with org.client() as client:
            with pytest.raises(FatalError, match="invalid_grant: authentication failure") as caught:
                await client.access_token()
        assert "csecret" not in str(caught.value)

    async def test_token_endpoint_outage_is_retriable(self, org: FakeOrg) -> None:
        """A 5xx from the token endpoint is a RetriableError."""
        org.token_status = 503
        async with org.client() as client:
            with pytest.raises(RetriableError):
                await client.access_token()

    async def test_unreachable_login_url_is_retriable(self, org: FakeOrg) -> None:
        """A refused connection during authentication is a RetriableError, not an aiohttp error."""
        settings = org.settings(login_url="http://127.0.0.1:1")
        async with SalesforceClient(settings, retry=FAST) as client:
            with pytest.raises(RetriableError):
                await client.access_token()


class TestHeadersAndUsage:
    async def test_every_call_carries_bearer_and_client_name(self, org: FakeOrg) -> None:
        """Each request sends `Authorization: Bearer` and `Sforce-Call-Options: client=<name>`."""
        org.route("GET", f"{V}/limits", ok({}))
        async with org.client() as client:
            await client.limits()
            await client.limits()
        for request in org.requests:
            assert request.headers["Authorization"] == f"Bearer {org.current_token()}"
            assert request.headers["Sforce-Call-Options"] == "client=sfsync-test"

    async def test_limit_info_header_reaches_on_usage(self, org: FakeOrg) -> None:
        """`Sforce-Limit-Info: api-usage=used/max` is parsed and handed to the subscriber."""
        async def usage(request: web.Request) -> web.Response:
            return sf_json({}, usage="api-usage=4000/5000, per-app-api-usage=17/250(appName=x)")
        org.route("GET", f"{V}/limits", usage)
        seen: list[ApiUsage] = []
        async with org.client(on_usage=seen.append) as client:
            await client.limits()
        assert seen == [ApiUsage(used=4000, max=5000)]
        assert seen[0].remaining_pct == pytest.approx(20.0)


class TestReauthentication:
    async def test_expired_session_reauthenticates_once_then_retries(self, org: FakeOrg) -> None:
        """INVALID_SESSION_ID -> one new token -> the same call succeeds."""
        org.route("GET", f"{V}/limits", ok({"ok": True}))
        async with org.client() as client:
            await client.access_token()
            org.tokens_issued += 1  # the org revokes the session we hold
            assert await client.limits() == {"ok": True}
            assert client.calls_made == 2
        assert len(org.token_forms) == 2

    async def test_a_refused_fresh_token_is_not_retried_forever(self, org: FakeOrg) -> None:
        """If the new token is refused too, the call fails with SessionExpiredError after one re-auth."""
        async def always_expired(request: web.Request) -> web.Response:
            return sf_error(401, "INVALID_SESSION_ID")
        org.route("GET", f"{V}/limits", always_expired)
        async with org.client() as client:
            with pytest.raises(SessionExpiredError):
                await client.limits()
            assert client.calls_made == 2
        assert len(org.token_forms) == 2

    async def test_concurrent_expiries_share_one_renewal(self, org: FakeOrg) -> None:
        """Many calls refused at once trigger one token request, not one each."""
        org.route("GET", f"{V}/limits", ok({"ok": True}))
        async with org.client() as client:
            await client.access_token()
            org.tokens_issued += 1
            results = await asyncio.gather(*(client.limits() for _ in range(5)))
        assert results == [{"ok": True}] * 5
        assert len(org.token_forms) == 2

    async def test_reauthenticate_returns_a_new_token(self, org: FakeOrg) -> None:
        """`reauthenticate()` always fetches a fresh token (used after a refused CometD handshake)."""
        async with org.client() as client:
            first = await client.access_token()
            second = await client.reauthenticate()
        assert first != second == org.current_token()


class TestRetries:
    @pytest.mark.parametrize(
        "failure",
        [
            pytest.param(lambda: sf_error(503, "SERVER_UNAVAILABLE"), id="503"),
            pytest.param(lambda: sf_error(500, "UNKNOWN_EXCEPTION"), id="500"),
            pytest.param(lambda: sf_error(400, "UNABLE_TO_LOCK_ROW"), id="lock"),
            pytest.param(lambda: web.Response(status=502, text="<html>bad gateway</html>"), id="html"),
        ],
    )
    async def test_transient_failures_are_retried(self, org: FakeOrg, failure: Any) -> None:
        """5xx and UNABLE_TO_LOCK_ROW are retried; every attempt is a counted call."""
        org.route("GET", f"{V}/limits", sequence(failure, failure, lambda: sf_json({"ok": 1})))
        async with org.client() as client:
            assert await client.limits() == {"ok": 1}
            assert client.calls_made == 3

    @pytest.mark.parametrize("method", ["create", "update", "update_if_unmodified"])
    async def test_a_write_is_sent_again_only_if_its_guard_allows(self, org: FakeOrg, method: str) -> None:
        """A write refused whole (UNABLE_TO_LOCK_ROW: nothing applied) is retried after a backoff;
        the caller's `before_resend` runs before each re-send (not before the first) and may stop
        it: a leader whose term ended meanwhile sends nothing more (chaos seed 35107)."""
        lock, done = (lambda: sf_error(400, "UNABLE_TO_LOCK_ROW"),
                      lambda: sf_json([{"id": "00Q1", "success": True, "errors": []}]))
        path, verb = (f"{V}/composite", "POST") if method == "update_if_unmodified" else (
            f"{V}/composite/sobjects", "POST" if method == "create" else "PATCH")
        if method == "update_if_unmodified":
            done = lambda: sf_json({"compositeResponse": [  # noqa: E731
                {"body": None, "httpStatusCode": 204, "referenceId": "r0"}]})
        org.route(verb, path, sequence(lock, done))
        checks: list[bool] = []

        async def fenced() -> None:
            checks.append(False)
            raise FencedError("lease sync: term 2 is over")

        async def allowed() -> None:
            checks.append(True)

        record = {"Id": "00Q1", "LastName": "Ng"}
        async with org.client() as client:
            call = getattr(client, method)
            args = [(record, datetime.now(UTC))] if method == "update_if_unmodified" else [record]
            with pytest.raises(FencedError):
                await call("Lead", args, before_resend=fenced)
            assert client.calls_made == 1 and checks == [False]
            org.route(verb, path, sequence(lock, done))
            [result] = await call("Lead", args, before_resend=allowed)
            assert result.success and client.calls_made == 3 and checks == [False, True]

    async def test_gives_up_with_retriable_error(self, org: FakeOrg) -> None:
        """After `attempts` tries the error is a RetriableError naming the last failure."""
        org.route("GET", f"{V}/limits", sequence(lambda: sf_error(503, "SERVER_UNAVAILABLE")))
        async with org.client() as client:
            with pytest.raises(RetriableError, match=r"4 attempts.*SERVER_UNAVAILABLE"):
                await client.limits()
            assert client.calls_made == FAST.attempts

    async def test_timeouts_are_retried(self, org: FakeOrg) -> None:
        """A call that exceeds the client timeout is retried."""
        calls = 0

        async def slow_then_fast(request: web.Request) -> web.Response:
            nonlocal calls
            calls += 1
            if calls == 1:
                await asyncio.Event().wait()  # never answers: only the client's timeout ends it
            return sf_json({"ok": 1})
        org.route("GET", f"{V}/limits", slow_then_fast)
        # Well above what the fast answer takes on two busy cores: only the hung call times out.
        async with org.client(timeout=1.5) as client:
            assert await client.limits() == {"ok": 1}
            assert client.calls_made == 2

    async def test_backoff_sleeps_between_attempts(self, org: FakeOrg) -> None:
        """Each retry waits a jittered delay under the growing ceiling, and says so in the log."""
        org.route("GET", f"{V}/limits", sequence(lambda: sf_error(503, "SERVER_UNAVAILABLE")))
        policy = RetryPolicy(attempts=4, base=0.01, cap=0.03)
        async with org.client(retry=policy) as client:
            with capture_logs() as logs, pytest.raises(RetriableError):
                await client.limits()
        retries = [e for e in logs if e["event"] == "salesforce_retry"]
        assert [e["attempt"] for e in retries] == [1, 2, 3]
        for entry, ceiling in zip(retries, (0.01, 0.02, 0.03), strict=True):
            assert 0 <= entry["delay_s"] <= ceiling
            assert entry["reason"] == "SERVER_UNAVAILABLE: boom"

    async def test_request_limit_exceeded_is_not_retried(self, org: FakeOrg) -> None:
        """403 REQUEST_LIMIT_EXCEEDED raises BudgetExhaustedError after exactly one call."""
        org.route("GET", f"{V}/limits", sequence(lambda: sf_error(403, "REQUEST_LIMIT_EXCEEDED")))
        async with org.client() as client:
            with pytest.raises(BudgetExhaustedError, match="REQUEST_LIMIT_EXCEEDED"):
                await client.limits()
            assert client.calls_made == 1

    @pytest.mark.parametrize(
        ("status", "code", "expected"),
        [
            (400, "MALFORMED_QUERY", FatalError),
            (400, "INVALID_FIELD", FatalError),
            (403, "INSUFFICIENT_ACCESS", FatalError),
            (400, "FIELD_CUSTOM_VALIDATION_EXCEPTION", RecordRejectedError),
        ],
    )
    async def test_other_client_errors_carry_the_error_code(
        self, org: FakeOrg, status: int, code: str, expected: type[Exception]
    ) -> None:
        """Other 4xx are fatal or skippable by errorCode, with Salesforce's code and message."""
        org.route("GET", f"{V}/limits", sequence(lambda: sf_error(status, code, "the reason")))
        async with org.client() as client:
            with pytest.raises(expected, match=f"{code}: the reason"):
                await client.limits()
            assert client.calls_made == 1


class TestQuery:
    async def test_follows_next_records_url_and_strips_attributes(self, org: FakeOrg) -> None:
        """Pages are yielded in order until `done`, without `attributes` (nested ones too)."""
        def record(n: int) -> dict[str, Any]:
            return {"attributes": {"type": "Lead"}, "Id": f"00Q{n}",
                    "Owner": {"attributes": {"type": "User"}, "Name": "Ann"}}
        org.route("GET", f"{V}/query", ok({"done": False, "records": [record(1), record(2)],
                                          "nextRecordsUrl": f"{V}/query/01g-2"}))
        org.route("GET", f"{V}/query/01g-2", ok({"done": True, "records": [record(3)]}))
        async with org.client() as client:
            pages = [page async for page in client.query("SELECT Id, Owner.Name FROM Lead")]
        assert [[r["Id"] for r in page] for page in pages] == [["00Q1", "00Q2"], ["00Q3"]]
        assert pages[0][0] == {"Id": "00Q1", "Owner": {"Name": "Ann"}}
        assert org.requests[0].query["q"] == "SELECT Id, Owner.Name FROM Lead"

    async def test_include_deleted_uses_query_all(self, org: FakeOrg) -> None:
        """`include_deleted=True` reads through `queryAll`."""
        org.route("GET", f"{V}/queryAll", ok({"done": True, "records": [{"Id": "00Q1"}]}))
        async with org.client() as client:
            pages = [p async for p in client.query("SELECT Id FROM Lead", include_deleted=True)]
        assert pages == [[{"Id": "00Q1"}]]


class TestCollections:
    async def test_creates_are_sent_in_chunks_of_200(self, org: FakeOrg) -> None:
        """450 records -> 3 composite/sobjects POSTs (200, 200, 50) with allOrNone false."""
        async def created(request: web.Request) -> web.Response:
            records = (await request.json())["records"]
            return sf_json([{"id": f"00Q{i}", "success": True, "errors": []} for i in range(len(records))])
        org.route("POST", f"{V}/composite/sobjects", created)
        records = [{"LastName": f"L{i}", "Company": "Acme"} for i in range(450)]
        async with org.client() as client:
            results = await client.create("Lead", records)
            assert client.calls_made == 3
        assert [len(b["records"]) for b in org.bodies] == [200, 200, 50]
        assert all(b["allOrNone"] is False for b in org.bodies)
        assert org.bodies[0]["records"][0] == {"attributes": {"type": "Lead"}, "LastName": "L0",
                                               "Company": "Acme"}
        assert len(results) == 450 and all(r.success for r in results)

    async def test_per_record_errors_are_matched_by_position(self, org: FakeOrg) -> None:
        """A failed create carries no id; its error lands on the record at the same position."""
        org.route("POST", f"{V}/composite/sobjects", ok([
            {"id": "00Q1", "success": True, "errors": []},
            {"success": False, "errors": [{"statusCode": "REQUIRED_FIELD_MISSING",
                                           "message": "Required fields are missing: [Company]",
                                           "fields": ["Company"]}]},
        ]))
        async with org.client() as client:
            ok_result, failed = await client.create("Lead", [{"LastName": "A", "Company": "X"},
                                                             {"LastName": "B"}])
        assert (ok_result.success, ok_result.id) == (True, "00Q1")
        assert (failed.success, failed.id) == (False, None)
        assert failed.errors[0].status_code == "REQUIRED_FIELD_MISSING"
        assert failed.errors[0].fields == ["Company"]

    async def test_update_patches_records_with_ids(self, org: FakeOrg) -> None:
        """Updates PATCH composite/sobjects; a record without Id is refused before any call."""
        org.route("PATCH", f"{V}/composite/sobjects", ok([{"id": "00Q1", "success": True, "errors": []}]))
        async with org.client() as client:
            [result] = await client.update("Lead", [{"Id": "00Q1", "City": "Oslo"}])
            with pytest.raises(ValueError, match="Id"):
                await client.update("Lead", [{"City": "Oslo"}])
            assert client.calls_made == 1
        assert result.success
        assert org.bodies[0]["records"] == [{"attributes": {"type": "Lead"}, "Id": "00Q1", "City": "Oslo"}]


class TestRecordsAndDescribe:
    async def test_describe_is_cached_per_object(self, org: FakeOrg) -> None:
        """Two describes of Lead make one call; writability is updateable and not calculated."""
        org.route("GET", f"{V}/sobjects/Lead/describe", ok({"name": "Lead", "fields": [
            {"name": "City", "updateable": True, "calculated": False},
            {"name": "Score__c", "updateable": True, "calculated": True},
            {"name": "CreatedDate", "updateable": False, "calculated": False},
        ]}))
        async with org.client() as client:
            await client.describe("Lead")
            writable = await client.field_writability("Lead")
            assert client.calls_made == 1
        assert writable == {"City": True, "Score__c": False, "CreatedDate": False}

    async def test_get_returns_fields_or_none(self, org: FakeOrg) -> None:
        """`get` asks for the named fields; a missing record is None."""
        org.route("GET", f"{V}/sobjects/Lead/00Q1", ok({"attributes": {"type": "Lead"}, "Id": "00Q1",
                                                        "City": "Oslo"}))
        org.route("GET", f"{V}/sobjects/Lead/00Q2",
                  sequence(lambda: sf_error(404, "NOT_FOUND", "The requested resource does not exist")))
        async with org.client() as client:
            assert await client.get("Lead", "00Q1", ["Id", "City"]) == {"Id": "00Q1", "City": "Oslo"}
            assert await client.get("Lead", "00Q2", ["Id"]) is None
        assert org.requests[0].query["fields"] == "Id,City"

    async def test_delete(self, org: FakeOrg) -> None:
        """`delete` sends DELETE on the record; an already-deleted record is not an error."""
        async def deleted(request: web.Request) -> web.Response:
            return web.Response(status=204, headers={"Sforce-Limit-Info": "api-usage=1/5"})
        org.route("DELETE", f"{V}/sobjects/Lead/00Q1", deleted)
        org.route("DELETE", f"{V}/sobjects/Lead/00Q2",
                  sequence(lambda: sf_error(404, "ENTITY_IS_DELETED", "entity is deleted")))
        async with org.client() as client:
            await client.delete("Lead", "00Q1")
            await client.delete("Lead", "00Q2")
            assert client.calls_made == 2


class TestLifecycle:
    async def test_calls_made_counts_rest_calls_not_oauth(self, org: FakeOrg) -> None:
        """OAuth requests are not counted; REST calls and their retries are."""
        org.route("GET", f"{V}/limits", sequence(lambda: sf_error(503, "SERVER_UNAVAILABLE"),
                                                  lambda: sf_json({})))
        async with org.client() as client:
            await client.access_token()
            assert client.calls_made == 0
            await client.limits()
            assert client.calls_made == 2

    async def test_reopening_and_use_after_close_are_errors(self, org: FakeOrg) -> None:
        """A client opens once; after close it refuses calls."""
        client = org.client()
        async with client:
            pass
        with pytest.raises(RuntimeError, match="closed"):
            await client.limits()
        with pytest.raises(RuntimeError, match="closed"):
            async with client:
                pass


def emulator_settings(base_url: str, **overrides: Any) -> SalesforceSettings:
    values: dict[str, Any] = {
        "login_url": base_url, "auth_flow": AuthFlow.CLIENT_CREDENTIALS,
        "client_id": SAMPLE_CLIENT_ID, "client_secret": SecretStr(SAMPLE_CLIENT_SECRET),
    }
    values.update(overrides)
    return SalesforceSettings(**values)


class TestAgainstTheEmulator:
    async def test_read_write_round_trip(self) -> None:
        """Against the org emulator: query, describe, create (with a per-record error), update, get."""
        usage: list[ApiUsage] = []
        async with (
            running_emulator(EmulatorConfig(seed="sample")) as em,
            SalesforceClient(emulator_settings(em.base_url), on_usage=usage.append, retry=FAST) as client,
        ):
            leads = [r async for page in client.query("SELECT Id, LastName FROM Lead") for r in page]
            assert len(leads) == 300 and all(set(r) == {"Id", "LastName"} for r in leads)
            writable = await client.field_writability("Lead")
            assert writable["LastName"] and not writable["Id"]
            created, failed = await client.create("Lead", [{"LastName": "Ng", "Company": "Acme"},
                                                           {"LastName": "NoCompany"}])
            assert created.success and created.id
            assert failed.errors[0].status_code == "REQUIRED_FIELD_MISSING" and failed.id is None
            assert created.id is not None
            [updated] = await client.update("Lead", [{"Id": created.id, "City": "Oslo"}])
            assert updated.success
            assert await client.get("Lead", created.id, ["City"]) == {"City": "Oslo"}
            assert usage[-1].used == client.calls_made

    async def test_expired_session_is_renewed(self) -> None:
        """When the emulator's token expires, the client re-authenticates and the call succeeds."""
        async with (
            running_emulator(EmulatorConfig(seed="sample")) as em,
            SalesforceClient(emulator_settings(em.base_url), retry=FAST) as client,
        ):
            first = await client.access_token()
            em.state.tokens.expire_all()
            assert (await client.limits())["DailyApiRequests"]["Max"] == 100_000
            assert await client.access_token() != first
            assert client.calls_made == 2

    async def test_jwt_bearer_flow(self, tmp_path: Path) -> None:
        """The emulator accepts our JWT bearer assertion signed with the configured key."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (tmp_path / "k.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        config = EmulatorConfig(jwt_public_key_pem=public)
        async with running_emulator(config) as em:
            settings = emulator_settings(em.base_url, auth_flow=AuthFlow.JWT_BEARER, client_secret=None,
                                         username=config.username, private_key_file=tmp_path / "k.pem")
            async with SalesforceClient(settings, retry=FAST) as client:
                assert await client.limits()
                assert client.instance_url == em.base_url

    async def test_wrong_secret_is_fatal(self) -> None:
        """A wrong client secret is a FatalError with the emulator's OAuth error."""
        async with running_emulator(EmulatorConfig()) as em:
            settings = emulator_settings(em.base_url, client_secret=SecretStr("wrong-secret"))
            async with SalesforceClient(settings, retry=FAST) as client:
                with pytest.raises(FatalError, match="invalid_client") as caught:
                    await client.limits()
        assert "wrong-secret" not in str(caught.value)
