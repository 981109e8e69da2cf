"""CDC messages -> changes, gap/overflow requests or rejected events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from listener.events import (
    GapRequest,
    OverflowRequest,
    flat_field_name,
    flatten_fields,
    is_echo,
    parse_message,
)
from reconciler.ports import ChangeKind, ChangeSource, RejectedEvent, SalesforceChange
from reconciler.soql import parse_sf_datetime

OBJECTS = ("Lead", "Contact", "Account")
COMMIT_MS = 1_714_557_600_000  # 2024-05-01T10:00:00Z


def message(
    payload_fields: dict[str, Any] | None = None, *, header: dict[str, Any] | None = None,
    replay_id: int = 42, channel: str = "/data/LeadChangeEvent",
) -> dict[str, Any]:
    head = {
        "entityName": "Lead", "recordIds": ["00Q000000000001AAA"], "changeType": "UPDATE",
        "changeOrigin": "com/salesforce/api/rest/62.0", "transactionKey": "tx-1",
        "sequenceNumber": 1, "commitTimestamp": COMMIT_MS, "commitNumber": 10,
        "commitUser": "005000000000001AAA", "changedFields": [], "nulledFields": [], "diffFields": [],
    }
    head.update(header or {})
    payload = {"ChangeEventHeader": head, **(payload_fields or {})}
    return {"channel": channel, "data": {"schema": "s", "payload": payload, "event": {"replayId": replay_id}}}


def _cycle() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


def changes_of(parsed: object) -> list[SalesforceChange]:
    assert isinstance(parsed, list), parsed
    return parsed


def parse(msg: dict[str, Any], **kwargs: Any) -> object:
    return parse_message(msg, client_name="salesforce-sync", objects=OBJECTS, **kwargs)


class TestFlattening:
    @pytest.mark.parametrize(
        ("dotted", "flat"),
        [
            ("Name.FirstName", "FirstName"),
            ("Name.LastName", "LastName"),
            ("Address.City", "City"),
            ("Address.PostalCode", "PostalCode"),
            ("MailingAddress.City", "MailingCity"),
            ("OtherAddress.Street", "OtherStreet"),
            ("BillingAddress.Country", "BillingCountry"),
            ("ShippingAddress.State", "ShippingState"),
            ("Company", "Company"),
        ],
    )
    def test_dotted_names_become_flat_api_names(self, dotted: str, flat: str) -> None:
        """changedFields' dotted compound names map to the flat API names mappings use."""
        assert flat_field_name(dotted) == flat

    def test_compound_values_are_spread(self) -> None:
        """Nested Name/Address values become flat fields; the header is not a field."""
        payload = {
            "ChangeEventHeader": {}, "Name": {"FirstName": "Ada", "LastName": "Lovelace"},
            "MailingAddress": {"City": "London", "Street": None}, "Email": "ada@example.com",
        }
        assert flatten_fields(payload) == {
            "FirstName": "Ada", "LastName": "Lovelace", "MailingCity": "London",
            "MailingStreet": None, "Email": "ada@example.com",
        }


class TestChanges:
    def test_update_carries_only_changed_fields(self) -> None:
        """An UPDATE holds the changed fields (flattened), not the nulls of unchanged ones."""
        msg = message(
            {"Name": {"FirstName": "Ada", "LastName": None}, "Address": {"City": "Paris"},
             "Company": None, "LastModifiedDate": "2024-05-01T10:00:01.000+0000"},
            header={"changedFields": ["Name.FirstName", "Address.City", "LastModifiedDate"]},
        )
        [change] = changes_of(parse(msg))
        assert change.fields == {"FirstName": "Ada", "City": "Paris",
                                 "LastModifiedDate": "2024-05-01T10:00:01.000+0000"}
        assert change.kind is ChangeKind.UPDATE
        assert change.source is ChangeSource.STREAM
        assert change.changed_at == datetime(2024, 5, 1, 10, 0, 1, tzinfo=UTC)
        assert change.replay_id == 42
        assert change.transaction_key == "tx-1"

    def test_nulled_fields_are_flattened(self) -> None:
        """nulledFields are reported in flat form, so a cleared City is known to be cleared."""
        msg = message({"Address": {"City": None}}, header={"nulledFields": ["Address.City"],
                                                            "changedFields": ["Address.City"]})
        [change] = changes_of(parse(msg))
        assert change.nulled_fields == frozenset({"City"})
        assert "City" not in change.fields

    def test_create_carries_every_non_null_field(self) -> None:
        """A CREATE holds all non-null fields; the commit time stands in for LastModifiedDate."""
        msg = message({"Name": {"LastName": "Hopper"}, "Company": "Navy", "Email": None},
                      header={"changeType": "CREATE"})
        [change] = changes_of(parse(msg))
        assert change.kind is ChangeKind.CREATE
        assert change.fields == {"LastName": "Hopper", "Company": "Navy"}
        assert change.changed_at == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)

    def test_account_name_is_a_plain_field(self) -> None:
        """Account `Name` is text, not a compound: an Account CREATE keeps it as is."""
        msg = message({"Name": "Acme Corp", "BillingAddress": {"City": "Paris"}},
                      header={"changeType": "CREATE", "entityName": "Account",
                              "recordIds": ["001000000000001AAA"]},
                      channel="/data/AccountChangeEvent")
        [change] = changes_of(parse(msg))
        assert change.fields == {"Name": "Acme Corp", "BillingCity": "Paris"}

    def test_one_change_per_record_id(self) -> None:
        """An event naming several records yields one change each."""
        msg = message({"Status": "Open"}, header={"recordIds": ["00QA", "00QB"], "changedFields": ["Status"]})
        assert [c.sf_id for c in changes_of(parse(msg))] == ["00QA", "00QB"]

    @pytest.mark.parametrize(("change_type", "kind"), [("DELETE", ChangeKind.DELETE),
                                                       ("UNDELETE", ChangeKind.UNDELETE)])
    def test_delete_and_undelete(self, change_type: str, kind: ChangeKind) -> None:
        """DELETE and UNDELETE keep their kind; a DELETE carries no field values."""
        [change] = changes_of(parse(message({"Company": "x"}, header={"changeType": change_type})))
        assert change.kind is kind
        if kind is ChangeKind.DELETE:
            assert change.fields == {}

    def test_conversion_fields_pass_through(self) -> None:
        """Lead conversion fields reach the reconciler untouched."""
        msg = message({"IsConverted": True, "ConvertedContactId": "003X", "ConvertedAccountId": "001X"},
                      header={"changedFields": ["IsConverted", "ConvertedContactId", "ConvertedAccountId"]})
        [change] = changes_of(parse(msg))
        assert change.fields["IsConverted"] is True
        assert change.fields["ConvertedContactId"] == "003X"


class TestEcho:
    @pytest.mark.parametrize(
        ("origin", "expected"),
        [
            ("com/salesforce/api/rest/62.0;client=salesforce-sync", True),
            ("com/salesforce/api/rest/62.0;client=salesforce-sync-2", False),
            ("com/salesforce/api/rest/62.0;client=other", False),
            ("com/salesforce/api/rest/62.0", False),
            ("", False),
            (None, False),
        ],
    )
    def test_change_origin(self, origin: str | None, expected: bool) -> None:
        """Only our exact client name in changeOrigin marks an echo."""
        assert is_echo(origin, "salesforce-sync") is expected

    def test_echo_flag_on_change(self) -> None:
        """An echo is still a change (its offset advances), flagged is_echo."""
        origin = "com/salesforce/api/rest/62.0;client=salesforce-sync"
        msg = message({"Company": "x"}, header={"changeOrigin": origin, "changedFields": ["Company"]})
        [change] = changes_of(parse(msg))
        assert change.is_echo is True


class TestGaps:
    @pytest.mark.parametrize("change_type", ["GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"])
    def test_gap_events_ask_for_a_fetch(self, change_type: str) -> None:
        """GAP_* events name records to fetch by id."""
        parsed = parse(message(header={"changeType": change_type, "recordIds": ["00QA", "00QB"]}))
        assert isinstance(parsed, GapRequest)
        assert parsed.record_ids == ("00QA", "00QB")
        assert parsed.sobject == "Lead"
        assert parsed.replay_id == 42

    def test_overflow_asks_for_a_poll_from_commit_time(self) -> None:
        """GAP_OVERFLOW asks for a poll of the object from the event's commit time."""
        parsed = parse(message(header={"changeType": "GAP_OVERFLOW", "recordIds": ["000000000000000AAA"]}))
        assert isinstance(parsed, OverflowRequest)
        assert parsed.since == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


class TestRejected:
    @pytest.mark.parametrize(
        ("msg", "reason"),
        [
            ({"channel": "/data/LeadChangeEvent",
              "data": {"payload": {"Company": "x"}, "event": {"replayId": 5}}}, "no ChangeEventHeader"),
            ({"channel": "/data/LeadChangeEvent", "data": {"event": {"replayId": 5}}}, "no payload"),
            (message(header={"entityName": "Opportunity"}), "unknown entity"),
            (message(header={"recordIds": "00QA"}), "recordIds must be a list"),
            (message(header={"recordIds": [1, 2]}), "recordIds must be a list"),
            (message(header={"recordIds": []}), "recordIds is empty"),
            (message(header={"commitTimestamp": "yesterday"}), "commitTimestamp"),
            (message(header={"changeType": "MERGE"}), "unknown changeType"),
            (message(header={"changedFields": "Company"}), "changedFields must be a list"),
            (message({"Name": "Ada Lovelace"}), "compound field Name"),
            (message({"LastModifiedDate": "not a date"}), "LastModifiedDate"),
            (message(header={"commitTimestamp": 10**15}), "commitTimestamp out of range"),
            (message({"LastModifiedDate": 10**15}), "LastModifiedDate"),
            (message({"LastModifiedDate": -(10**15)}), "LastModifiedDate"),
        ],
    )
    def test_malformed_events_are_rejected_with_a_reason(self, msg: dict[str, Any], reason: str) -> None:
        """A malformed event becomes a RejectedEvent naming the problem, with its replay id."""
        parsed = parse(msg)
        assert isinstance(parsed, RejectedEvent)
        assert reason in parsed.reason
        assert parsed.replay_id in (5, 42)
        assert parsed.raw == json.loads(json.dumps(msg, default=str))  # storable in a sync log

    def test_dates_after_latest_are_out_of_range(self) -> None:
        """A LastModifiedDate after `latest` (a year-9999 date, say) is rejected, not applied."""
        parsed = parse(message({"LastModifiedDate": "9999-12-31T23:59:59Z"}),
                       latest=datetime(2024, 5, 2, tzinfo=UTC))
        assert isinstance(parsed, RejectedEvent)
        assert "out of range" in parsed.reason

    @pytest.mark.parametrize("value", [_cycle(), {(1, 2): "x"}], ids=["cycle", "tuple key"])
    def test_a_message_json_cannot_encode_is_rejected_with_a_storable_raw(self, value: Any) -> None:
        """A message json cannot encode is rejected; its raw is a truncated text of it."""
        parsed = parse(message({"Description": value}))
        assert isinstance(parsed, RejectedEvent)
        assert "not JSON" in parsed.reason
        assert set(parsed.raw) == {"unreadable"}

    def test_oversized_payload(self) -> None:
        """An event over the size limit is rejected, not parsed."""
        parsed = parse(message({"Description": "x" * 5000}), max_bytes=1000)
        assert isinstance(parsed, RejectedEvent)
        assert "larger than" in parsed.reason


class TestDates:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("2024-05-01T10:00:00.000+0000", datetime(2024, 5, 1, 10, tzinfo=UTC)),
            ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
            ("2024-05-01T12:00:00+02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),
            (COMMIT_MS, datetime(2024, 5, 1, 10, tzinfo=UTC)),
            ("nope", None),
            (None, None),
            (10**15, None),       # year 33658: not a datetime, never an error
            (-(10**15), None),
            ("9999-12-31T23:59:59-01:00", None),  # past year 9999 once in UTC
            ("0001-01-01T00:00:00+01:00", None),
        ],
    )
    def test_salesforce_datetimes(self, value: object, expected: datetime | None) -> None:
        """Salesforce's date-time spellings parse to aware UTC datetimes."""
        assert parse_sf_datetime(value) == expected
