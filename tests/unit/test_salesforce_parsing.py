"""Pure parts of the Salesforce client: error classification, usage header, backoff, OAuth forms."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from pydantic import SecretStr

import listener.salesforce
from listener.salesforce import ApiUsage, RetryPolicy, parse_limit_info, parse_token_response, token_request
from listener.salesforce._transport import Action, classify, parse_fault
from reconciler.errors import FatalError, RetriableError
from settings import AuthFlow, SalesforceSettings


class TestExportedMembers:
    def test_public_surface_is_pinned(self) -> None:
        """The package exports exactly its documented names."""
        assert sorted(listener.salesforce.__all__) == [
            "AccessToken", "AiohttpTransport", "ApiUsage", "COLLECTION_LIMIT", "ClientState",
            "HttpRequest", "HttpResponse", "HttpTransport", "NetworkError", "RetryPolicy",
            "SalesforceClient", "SalesforceFatalError", "fetch_token", "parse_limit_info",
            "parse_token_response", "token_request",
        ]


class TestClassify:
    @pytest.mark.parametrize(
        ("status", "code", "action"),
        [
            (200, "", Action.OK),
            (204, "", Action.OK),
            (401, "INVALID_SESSION_ID", Action.REAUTHENTICATE),
            (403, "REQUEST_LIMIT_EXCEEDED", Action.BUDGET),
            (403, "INSUFFICIENT_ACCESS", Action.FATAL),
            (500, "UNKNOWN_EXCEPTION", Action.RETRY),
            (503, "", Action.RETRY),
            (400, "UNABLE_TO_LOCK_ROW", Action.RETRY),
            (400, "MALFORMED_QUERY", Action.FATAL),
            (400, "INVALID_FIELD", Action.FATAL),
            (404, "NOT_FOUND", Action.NOT_FOUND),
            (404, "ENTITY_IS_DELETED", Action.NOT_FOUND),
            (400, "FIELD_CUSTOM_VALIDATION_EXCEPTION", Action.SKIP),
            (400, "DUPLICATE_VALUE", Action.SKIP),
        ],
    )
    def test_action_follows_status_and_error_code(self, status: int, code: str, action: Action) -> None:
        """Retries, re-auth and failures are decided by status + errorCode, never message text."""
        assert classify(status, code) is action

    def test_message_text_does_not_change_the_decision(self) -> None:
        """A message mentioning a lock does not make a validation error retriable."""
        fault = parse_fault(400, [{"errorCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                                   "message": "UNABLE_TO_LOCK_ROW mentioned in text"}])
        assert classify(fault.status, fault.error_code) is Action.SKIP

    def test_non_json_error_body_keeps_a_short_excerpt(self) -> None:
        """An HTML error page becomes a fault with a whitespace-collapsed excerpt."""
        fault = parse_fault(502, None, "<html>\n  Bad   gateway</html>")
        assert (fault.error_code, fault.message) == ("", "<html> Bad gateway</html>")


class TestLimitInfo:
    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("api-usage=18/5000", ApiUsage(18, 5000)),
            ("api-usage=18/5000, per-app-api-usage=17/250(appName=x)", ApiUsage(18, 5000)),
            ("per-app-api-usage=17/250(appName=x), api-usage=7/100", ApiUsage(7, 100)),
            ("per-app-api-usage=17/250(appName=x)", None),
            ("", None),
            (None, None),
        ],
    )
    def test_parse(self, header: str | None, expected: ApiUsage | None) -> None:
        """Only the org-wide `api-usage` entry counts; per-app usage is ignored."""
        assert parse_limit_info(header) == expected

    @pytest.mark.parametrize(
        ("usage", "pct"), [(ApiUsage(0, 100), 100.0), (ApiUsage(75, 100), 25.0),
                           (ApiUsage(120, 100), 0.0), (ApiUsage(0, 0), 0.0)],
    )
    def test_remaining_pct(self, usage: ApiUsage, pct: float) -> None:
        """Remaining percent never goes below zero, and a zero allocation has nothing left."""
        assert usage.remaining_pct == pct


class _Ceiling(random.Random):
    """Full jitter's worst case: always the ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


class TestRetryPolicy:
    def test_ceiling_doubles_up_to_the_cap(self) -> None:
        """Delays are drawn under base * 2**n, capped."""
        policy = RetryPolicy(attempts=5, base=0.5, cap=30)
        assert [policy.delay(n, _Ceiling()) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]

    def test_full_jitter_stays_within_bounds(self) -> None:
        """Sampled delays lie in [0, ceiling]."""
        rng = random.Random(7)
        delays = [RetryPolicy(base=1, cap=4).delay(3, rng) for _ in range(200)]
        assert all(0 <= d <= 4 for d in delays) and len(set(delays)) > 100


class TestTokenRequest:
    def test_missing_credentials_name_the_variables(self) -> None:
        """A flow without its credentials is a FatalError naming the env variables."""
        settings = SalesforceSettings(auth_flow=AuthFlow.CLIENT_CREDENTIALS, client_id="cid")
        with pytest.raises(FatalError, match="SFSYNC_SALESFORCE__CLIENT_SECRET"):
            token_request(settings)

    def test_refresh_token_with_secret(self) -> None:
        """The refresh-token flow includes the client secret when one is configured."""
        settings = SalesforceSettings(auth_flow=AuthFlow.REFRESH_TOKEN, client_id="cid",
                                      refresh_token=SecretStr("rt"), client_secret=SecretStr("cs"))
        assert token_request(settings) == {"grant_type": "refresh_token", "client_id": "cid",
                                           "refresh_token": "rt", "client_secret": "cs"}


class TestTokenResponse:
    def test_success(self) -> None:
        """A token answer gives the token, the instance URL and the issue time."""
        token = parse_token_response(200, '{"access_token": "00D!x", "instance_url": "https://a.my/",'
                                          ' "issued_at": "1700000000000"}')
        assert token.access_token.get_secret_value() == "00D!x"
        assert token.instance_url == "https://a.my"
        assert token.issued_at.timestamp() == 1_700_000_000

    @pytest.mark.parametrize(("identity", "user_id"), [
        ("https://login.salesforce.com/id/00D000000000001AAA/005000000000003AAA", "005000000000003AAA"),
        ("https://login.salesforce.com/id/00D000000000001AAA/005000000000003AAA/", "005000000000003AAA"),
        (None, None),
        ("not a url", None),
    ])
    def test_the_identity_url_names_the_integration_user(self, identity: str | None,
                                                         user_id: str | None) -> None:
        """Item 7: the `id` of a token answer (the identity URL) gives the authenticated user's id,
        what the lost-create recovery matches `CreatedById` against."""
        body = {"access_token": "00D!x", "instance_url": "https://a.my", "id": identity}
        assert parse_token_response(200, json.dumps(body)).user_id == user_id

    @pytest.mark.parametrize(
        ("status", "text", "expected"),
        [
            (400, '{"error": "invalid_client_id", "error_description": "client identifier invalid"}',
             pytest.raises(FatalError, match="invalid_client_id: client identifier invalid")),
            (400, "not json", pytest.raises(FatalError, match="HTTP 400")),
            (200, '{"instance_url": "https://a"}', pytest.raises(FatalError, match="no access token")),
            (200, '{"access_token": "t"}', pytest.raises(FatalError, match="instance_url")),
            (503, "<html/>", pytest.raises(RetriableError, match="503")),
        ],
    )
    def test_failures(self, status: int, text: str, expected: Any) -> None:
        """OAuth errors are fatal with Salesforce's text; outages are retriable."""
        with expected:
            parse_token_response(status, text)
