"""The REST client over a handler transport: usage header, re-authentication, retries (no server)."""

from __future__ import annotations

import pytest

from listener.salesforce import ApiUsage, HttpRequest, HttpResponse, NetworkError
from listener.salesforce.http import Failure
from reconciler.errors import OutcomeUnknownError, RetriableError
from tests.support.salesforce_http import ScriptedOrg, V, sequence, sf_error, sf_json

LIMITS = {"DailyApiRequests": {"Max": 15000, "Remaining": 14958}}


class TestUsageHeader:
    async def test_every_answer_reports_api_usage(self) -> None:
        """`Sforce-Limit-Info: api-usage=42/15000` reaches `on_usage` as ApiUsage(42, 15000)."""
        org, seen = ScriptedOrg(), list[ApiUsage]()
        org.route("GET", f"{V}/limits", lambda _: sf_json(LIMITS, usage="api-usage=42/15000, per-app=1/2"))
        client, _ = org.client(on_usage=seen.append)
        async with client:
            assert await client.limits() == LIMITS
        assert seen == [ApiUsage(42, 15000)]

    async def test_calls_carry_the_token_and_the_client_name(self) -> None:
        """Bearer token from the OAuth call; `Sforce-Call-Options: client=<name>` marks our echoes."""
        org = ScriptedOrg()
        org.route("GET", f"{V}/limits", lambda _: sf_json(LIMITS))
        client, transport = org.client()
        async with client:
            await client.limits()
        token, call = transport.requests
        assert token.form == {"grant_type": "client_credentials", "client_id": "cid",
                              "client_secret": "csecret"}
        assert call.headers["Authorization"] == f"Bearer {org.valid_token}"
        assert call.headers["Sforce-Call-Options"] == "client=sfsync-test"
        assert transport.closed


class TestReauthentication:
    async def test_an_expired_session_is_renewed_once_and_the_call_repeated(self) -> None:
        """401 INVALID_SESSION_ID: one new token, the same call again, its answer returned."""
        org = ScriptedOrg()
        org.route("GET", f"{V}/limits", lambda _: sf_json(LIMITS))
        client, _ = org.client()
        async with client:
            await client.limits()
            org.expire_token()
            assert await client.limits() == LIMITS
        assert org.tokens_issued == 2
        assert len(org.rest_calls) == 3  # ok, 401, ok


class TestRetries:
    async def test_a_503_is_retried_until_it_succeeds(self) -> None:
        """Salesforce unavailable twice, then the page: the caller sees only the page."""
        org = ScriptedOrg()
        page = {"done": True, "totalSize": 1, "records": [{"attributes": {"type": "Lead"}, "Id": "00Q1"}]}
        org.route("GET", f"{V}/query", sequence(lambda: sf_error(503, "SERVER_UNAVAILABLE"),
                                                lambda: sf_error(503, "SERVER_UNAVAILABLE"),
                                                lambda: sf_json(page)))
        client, _ = org.client()
        async with client:
            pages = [p async for p in client.query("SELECT Id FROM Lead")]
        assert pages == [[{"Id": "00Q1"}]]
        assert len(org.rest_calls) == 3

    async def test_retries_stop_at_the_policy_limit(self) -> None:
        """Always 503: RetriableError after `attempts` calls."""
        org = ScriptedOrg()
        org.route("GET", f"{V}/limits", lambda _: sf_error(503, "SERVER_UNAVAILABLE"))
        client, _ = org.client()
        async with client:
            with pytest.raises(RetriableError, match="gave up after 4 attempts"):
                await client.limits()
        assert len(org.rest_calls) == 4

    async def test_a_create_answered_500_is_not_sent_again(self) -> None:
        """A 500 does not prove nothing was created: OutcomeUnknownError after one POST."""
        org = ScriptedOrg()
        org.route("POST", f"{V}/composite/sobjects", lambda _: sf_error(500, "UNKNOWN_EXCEPTION"))
        client, _ = org.client()
        async with client:
            with pytest.raises(OutcomeUnknownError):
                await client.create("Lead", [{"LastName": "Ng", "Company": "Acme"}])
        assert len(org.rest_calls) == 1

    async def test_a_call_that_never_left_is_retried(self) -> None:
        """NetworkError(NOT_SENT) from the transport: the call is sent again, even a POST."""
        org = ScriptedOrg()
        org.route("POST", f"{V}/composite/sobjects", lambda _: sf_json([{"id": "00Q1", "success": True}]))
        failures = [NetworkError(Failure.NOT_SENT, "connect refused")]

        def flaky(request: HttpRequest) -> HttpResponse:
            if "composite" in request.url and failures:
                raise failures.pop()
            return org(request)

        client, transport = org.client()
        transport.handler = flaky
        async with client:
            [result] = await client.create("Lead", [{"LastName": "Ng", "Company": "Acme"}])
        assert (result.success, result.id) == (True, "00Q1")
        assert len(org.rest_calls) == 1 and len(transport.requests) == 3  # token, refused, sent
