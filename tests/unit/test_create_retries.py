"""Creates are never retried blindly: what the transport retries, and how a lost create is found."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from listener.salesforce._transport import ApiFault, is_idempotent, may_retry, response_failure
from listener.salesforce.http import Failure, network_failure
from reconciler.errors import OutcomeUnknownError, RetriableError
from reconciler.outbound import match_key, match_recovered, recovery_query

RETRIED, UNKNOWN = "retried", "outcome unknown"
USER = "005000000000003AAA"


class TestRetryDecision:
    @pytest.mark.parametrize(("method", "failure", "expected"), [
        ("POST", Failure.NOT_SENT, RETRIED),
        ("POST", Failure.REFUSED, RETRIED),
        ("POST", Failure.RESPONSE_LOST, UNKNOWN),
        ("POST", Failure.SERVER_ERROR, UNKNOWN),
        ("PATCH", Failure.NOT_SENT, RETRIED),
        ("PATCH", Failure.REFUSED, RETRIED),
        ("PATCH", Failure.RESPONSE_LOST, RETRIED),
        ("PATCH", Failure.SERVER_ERROR, RETRIED),
        ("GET", Failure.RESPONSE_LOST, RETRIED),
        ("GET", Failure.SERVER_ERROR, RETRIED),
        ("DELETE", Failure.RESPONSE_LOST, RETRIED),
        ("post", Failure.RESPONSE_LOST, UNKNOWN),
    ])
    def test_method_and_failure_decide(self, method: str, failure: Failure, expected: str) -> None:
        """Only a POST whose outcome is unknown is not retried; idempotent calls always are."""
        assert (RETRIED if may_retry(method, failure) else UNKNOWN) == expected

    def test_only_post_is_not_idempotent(self) -> None:
        """GET, PATCH and DELETE may be sent twice; POST (a create) may not."""
        assert [is_idempotent(m) for m in ("GET", "PATCH", "DELETE", "POST")] == [True, True, True, False]

    def test_outcome_unknown_is_retriable_for_callers(self) -> None:
        """Callers that only know RetriableError still back off instead of crashing."""
        assert issubclass(OutcomeUnknownError, RetriableError)


def _connector_error() -> aiohttp.ClientConnectorError:
    key: Any = type("Key", (), {"ssl": None, "host": "127.0.0.1", "port": 1})()
    return aiohttp.ClientConnectorError(key, OSError(111, "Connection refused"))


class TestNetworkFailures:
    @pytest.mark.parametrize(("exc", "expected"), [
        pytest.param(_connector_error(), Failure.NOT_SENT, id="connection-refused"),
        pytest.param(aiohttp.ConnectionTimeoutError(), Failure.NOT_SENT, id="connect-timeout"),
        pytest.param(TimeoutError(), Failure.RESPONSE_LOST, id="total-timeout"),
        pytest.param(aiohttp.SocketTimeoutError(), Failure.RESPONSE_LOST, id="read-timeout"),
        pytest.param(aiohttp.ServerDisconnectedError(), Failure.RESPONSE_LOST, id="disconnected"),
        pytest.param(aiohttp.ClientOSError(104, "Connection reset"), Failure.RESPONSE_LOST, id="reset"),
        pytest.param(aiohttp.ClientPayloadError("cut"), Failure.RESPONSE_LOST, id="truncated-body"),
    ])
    def test_only_a_failed_connect_proves_nothing_was_sent(
        self, exc: BaseException, expected: Failure
    ) -> None:
        """A refused or timed-out connect never reached Salesforce; anything later may have."""
        assert network_failure(exc) is expected


class TestResponseFailures:
    @pytest.mark.parametrize(("status", "code", "expected"), [
        (503, "SERVER_UNAVAILABLE", Failure.REFUSED),
        (503, "", Failure.REFUSED),
        (502, "SERVER_UNAVAILABLE", Failure.REFUSED),
        (429, "", Failure.REFUSED),
        (408, "", Failure.REFUSED),
        (400, "UNABLE_TO_LOCK_ROW", Failure.REFUSED),
        (500, "UNKNOWN_EXCEPTION", Failure.SERVER_ERROR),
        (502, "", Failure.SERVER_ERROR),
        (504, "", Failure.SERVER_ERROR),
    ])
    def test_a_5xx_proves_nothing_unless_salesforce_says_so(
        self, status: int, code: str, expected: Failure
    ) -> None:
        """503/429/408 and Salesforce's retriable codes mean "not processed"; other 5xx are unknown."""
        assert response_failure(ApiFault(status, code, "boom")) is expected


SINCE = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


class TestRecoveryQuery:
    def test_people_are_found_by_email_created_by_the_integration_user_since_the_first_send(
        self
    ) -> None:
        """One query per batch: the batch's emails, created by the integration user since the
        first send (item 7)."""
        soql = recovery_query("Lead", [{"Email": "b@x.com"}, {"Email": "o'neil@x.com"},
                                       {"LastName": "NoEmail"}], SINCE, USER)
        assert soql == ("SELECT Id, CreatedDate, Email FROM Lead "
                        "WHERE (Email IN ('b@x.com', 'o\\'neil@x.com')) "
                        "AND CreatedById = '005000000000003AAA' "
                        "AND CreatedDate >= 2025-01-01T12:00:00Z ORDER BY CreatedDate, Id")

    def test_companies_are_found_by_website_or_name(self) -> None:
        """Accounts are found by Website or by Name (each one by every key it has)."""
        soql = recovery_query("Account", [{"Name": "Acme", "Website": "https://acme.com"},
                                          {"Name": "Globex"}], SINCE, USER)
        assert soql is not None
        assert "WHERE (Name IN ('Acme', 'Globex') OR Website IN ('https://acme.com')) AND" in soql
        assert soql.startswith("SELECT Id, CreatedDate, Name, Website FROM Account")

    def test_an_account_is_looked_for_by_every_key_it_has(self) -> None:
        """The retried write carries the Company's values now: an edit since the lost send may have
        changed the Website, so its Name is looked for too (chaos seed 777, Q12: created twice)."""
        soql = recovery_query("Account", [{"Name": "Acme", "Website": "https://acme2.com"}], SINCE, USER)
        assert soql is not None
        assert "WHERE (Name IN ('Acme') OR Website IN ('https://acme2.com')) AND" in soql

    def test_nothing_to_look_for_makes_no_query(self) -> None:
        """Records without a match key cannot be found: no query at all."""
        assert recovery_query("Lead", [{"LastName": "A"}], SINCE, USER) is None
        assert recovery_query("Opportunity", [{"Name": "A"}], SINCE, USER) is None


class TestMatchingRecovered:
    def test_found_records_match_by_normalised_key(self) -> None:
        """Email case and Website form do not matter."""
        assert match_key("Contact", {"Email": " A@X.com "}) == ("Email", "a@x.com")
        assert match_key("Account", {"Website": "https://www.Acme.com/"}) == ("Website", "acme.com")
        assert match_key("Account", {"Name": " Acme "}) == ("Name", "acme")
        assert match_key("Lead", {"Email": ""}) is None

    def test_each_found_record_links_one_write(self) -> None:
        """Two writes with one email and one record found: only the first is recovered."""
        records = [{"Email": "a@x.com"}, {"Email": "A@x.com"}, {"Email": "b@x.com"}]
        found = [{"Id": "00Q1", "Email": "a@x.com"}, {"Id": "00Q2", "Email": "c@x.com"}]
        assert match_recovered("Lead", records, found) == {0: "00Q1"}

    def test_an_account_sent_by_name_matches_by_name(self) -> None:
        """An Account found with a Website it was not sent with still matches by Name."""
        records = [{"Name": "Globex"}, {"Name": "Acme", "Website": "acme.com"}]
        found = [{"Id": "001A", "Name": "Acme", "Website": "http://acme.com"},
                 {"Id": "001G", "Name": "globex", "Website": "globex.io"}]
        assert match_recovered("Account", records, found) == {1: "001A", 0: "001G"}

    def test_an_account_whose_website_changed_since_the_lost_send_matches_by_name(self) -> None:
        """Sent with one Website, answer lost; the Website was edited before the retry: the record
        found (the old Website) is still the write's, by Name."""
        records = [{"Name": "Acme", "Website": "acme2.com"}]
        found = [{"Id": "001A", "Name": "Acme", "Website": "acme.com"}]
        assert match_recovered("Account", records, found) == {0: "001A"}

    def test_a_record_created_before_a_writes_first_send_is_not_its(self) -> None:
        """Item 7: each write matches only records created at or after its own first send."""
        records = [{"Email": "a@x.com"}, {"Email": "a@x.com"}]
        found = [{"Id": "00Q1", "Email": "a@x.com", "CreatedDate": "2025-01-01T12:00:00.000+0000"}]
        late = SINCE.replace(minute=5)
        assert match_recovered("Lead", records, found, [late, SINCE]) == {1: "00Q1"}
        assert match_recovered("Lead", records[:1], found, [late]) == {}
