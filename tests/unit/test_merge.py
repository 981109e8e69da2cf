"""The merge core, as a behaviour table: every direction x merge behaviour x blank/present on
each side x which side is newer x Salesforce field writable or read-only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler.merge import Side, Winner, bench_merge, merge_field, merge_record
from settings import Direction, FieldMapping, MergeBehaviour

DATA = "data"
BLANK = "blank"
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
EXPECT = {"L": Winner.LOCAL, "S": Winner.SALESFORCE, "-": Winner.NONE}


def mapping(direction: str = "both", merge: str = "most_recent", local: str = "title",
            sf: str = "Title") -> FieldMapping:
    return FieldMapping(local_field=local, sobject="Lead", sf_field=sf,
                        direction=Direction(direction), merge=MergeBehaviour(merge))


def times(newer: str) -> tuple[datetime, datetime]:
    """(local time, Salesforce time) for 'local' newer, 'salesforce' newer, or a 'tie'."""
    later = T0 + timedelta(seconds=1)
    return {"local": (later, T0), "salesforce": (T0, later), "tie": (T0, T0)}[newer]


# direction, merge, local, salesforce, newer, SF field writable, expected:
#   L = local value is written to Salesforce, S = Salesforce value is written locally, - = nothing
TABLE = [
    ("both", "most_recent", DATA, DATA, "local", True, "L"),
    ("both", "most_recent", DATA, DATA, "local", False, "S"),
    ("both", "most_recent", DATA, DATA, "salesforce", True, "S"),
    ("both", "most_recent", DATA, DATA, "salesforce", False, "S"),
    ("both", "most_recent", DATA, DATA, "tie", True, "S"),
    ("both", "most_recent", DATA, DATA, "tie", False, "S"),
    ("both", "most_recent", DATA, BLANK, "local", True, "L"),
    ("both", "most_recent", DATA, BLANK, "local", False, "-"),
    ("both", "most_recent", DATA, BLANK, "salesforce", True, "L"),
    ("both", "most_recent", DATA, BLANK, "salesforce", False, "-"),
    ("both", "most_recent", DATA, BLANK, "tie", True, "L"),
    ("both", "most_recent", DATA, BLANK, "tie", False, "-"),
    ("both", "most_recent", BLANK, DATA, "local", True, "S"),
    ("both", "most_recent", BLANK, DATA, "local", False, "S"),
    ("both", "most_recent", BLANK, DATA, "salesforce", True, "S"),
    ("both", "most_recent", BLANK, DATA, "salesforce", False, "S"),
    ("both", "most_recent", BLANK, DATA, "tie", True, "S"),
    ("both", "most_recent", BLANK, DATA, "tie", False, "S"),
    ("both", "most_recent", BLANK, BLANK, "local", True, "-"),
    ("both", "most_recent", BLANK, BLANK, "local", False, "-"),
    ("both", "most_recent", BLANK, BLANK, "salesforce", True, "-"),
    ("both", "most_recent", BLANK, BLANK, "salesforce", False, "-"),
    ("both", "most_recent", BLANK, BLANK, "tie", True, "-"),
    ("both", "most_recent", BLANK, BLANK, "tie", False, "-"),
    ("both", "salesforce_unless_blank", DATA, DATA, "local", True, "S"),
    ("both", "salesforce_unless_blank", DATA, DATA, "local", False, "S"),
    ("both", "salesforce_unless_blank", DATA, DATA, "salesforce", True, "S"),
    ("both", "salesforce_unless_blank", DATA, DATA, "salesforce", False, "S"),
    ("both", "salesforce_unless_blank", DATA, DATA, "tie", True, "S"),
    ("both", "salesforce_unless_blank", DATA, DATA, "tie", False, "S"),
    ("both", "salesforce_unless_blank", DATA, BLANK, "local", True, "L"),
    ("both", "salesforce_unless_blank", DATA, BLANK, "local", False, "-"),
    ("both", "salesforce_unless_blank", DATA, BLANK, "salesforce", True, "L"),
    ("both", "salesforce_unless_blank", DATA, BLANK, "salesforce", False, "-"),
    ("both", "salesforce_unless_blank", DATA, BLANK, "tie", True, "L"),
    ("both", "salesforce_unless_blank", DATA, BLANK, "tie", False, "-"),
    ("both", "salesforce_unless_blank", BLANK, DATA, "local", True, "S"),
    ("both", "salesforce_unless_blank", BLANK, DATA, "local", False, "S"),
    ("both", "salesforce_unless_blank", BLANK, DATA, "salesforce", True, "S"),
    ("both", "salesforce_unless_blank", BLANK, DATA, "salesforce", False, "S"),
    ("both", "salesforce_unless_blank", BLANK, DATA, "tie", True, "S"),
    ("both", "salesforce_unless_blank", BLANK, DATA, "tie", False, "S"),
    ("both", "salesforce_unless_blank", BLANK, BLANK, "local", True, "-"),
    ("both", "salesforce_unless_blank", BLANK, BLANK, "local", False, "-"),
    ("both", "salesforce_unless_blank", BLANK, BLANK, "salesforce", True, "-"),
    ("both", "salesforce_unless_blank", BLANK, BLANK, "salesforce", False, "-"),
    ("both", "salesforce_unless_blank", BLANK, BLANK, "tie", True, "-"),
    ("both", "salesforce_unless_blank", BLANK, BLANK, "tie", False, "-"),
    ("both", "local_unless_blank", DATA, DATA, "local", True, "L"),
    ("both", "local_unless_blank", DATA, DATA, "local", False, "S"),
    ("both", "local_unless_blank", DATA, DATA, "salesforce", True, "L"),
    ("both", "local_unless_blank", DATA, DATA, "salesforce", False, "S"),
    ("both", "local_unless_blank", DATA, DATA, "tie", True, "L"),
    ("both", "local_unless_blank", DATA, DATA, "tie", False, "S"),
    ("both", "local_unless_blank", DATA, BLANK, "local", True, "L"),
    ("both", "local_unless_blank", DATA, BLANK, "local", False, "-"),
    ("both", "local_unless_blank", DATA, BLANK, "salesforce", True, "L"),
    ("both", "local_unless_blank", DATA, BLANK, "salesforce", False, "-"),
    ("both", "local_unless_blank", DATA, BLANK, "tie", True, "L"),
    ("both", "local_unless_blank", DATA, BLANK, "tie", False, "-"),
    ("both", "local_unless_blank", BLANK, DATA, "local", True, "S"),
    ("both", "local_unless_blank", BLANK, DATA, "local", False, "S"),
    ("both", "local_unless_blank", BLANK, DATA, "salesforce", True, "S"),
    ("both", "local_unless_blank", BLANK, DATA, "salesforce", False, "S"),
    ("both", "local_unless_blank", BLANK, DATA, "tie", True, "S"),
    ("both", "local_unless_blank", BLANK, DATA, "tie", False, "S"),
    ("both", "local_unless_blank", BLANK, BLANK, "local", True, "-"),
    ("both", "local_unless_blank", BLANK, BLANK, "local", False, "-"),
    ("both", "local_unless_blank", BLANK, BLANK, "salesforce", True, "-"),
    ("both", "local_unless_blank", BLANK, BLANK, "salesforce", False, "-"),
    ("both", "local_unless_blank", BLANK, BLANK, "tie", True, "-"),
    ("both", "local_unless_blank", BLANK, BLANK, "tie", False, "-"),
    ("from_salesforce", "most_recent", DATA, DATA, "local", True, "S"),
    ("from_salesforce", "most_recent", DATA, DATA, "local", False, "S"),
    ("from_salesforce", "most_recent", DATA, DATA, "salesforce", True, "S"),
    ("from_salesforce", "most_recent", DATA, DATA, "salesforce", False, "S"),
    ("from_salesforce", "most_recent", DATA, DATA, "tie", True, "S"),
    ("from_salesforce", "most_recent", DATA, DATA, "tie", False, "S"),
    ("from_salesforce", "most_recent", DATA, BLANK, "local", True, "-"),
    ("from_salesforce", "most_recent", DATA, BLANK, "local", False, "-"),
    ("from_salesforce", "most_recent", DATA, BLANK, "salesforce", True, "-"),
    ("from_salesforce", "most_recent", DATA, BLANK, "salesforce", False, "-"),
    ("from_salesforce", "most_recent", DATA, BLANK, "tie", True, "-"),
    ("from_salesforce", "most_recent", DATA, BLANK, "tie", False, "-"),
    ("from_salesforce", "most_recent", BLANK, DATA, "local", True, "S"),
    ("from_salesforce", "most_recent", BLANK, DATA, "local", False, "S"),
    ("from_salesforce", "most_recent", BLANK, DATA, "salesforce", True, "S"),
    ("from_salesforce", "most_recent", BLANK, DATA, "salesforce", False, "S"),
    ("from_salesforce", "most_recent", BLANK, DATA, "tie", True, "S"),
    ("from_salesforce", "most_recent", BLANK, DATA, "tie", False, "S"),
    ("from_salesforce", "most_recent", BLANK, BLANK, "local", True, "-"),
    ("from_salesforce", "most_recent", BLANK, BLANK, "local", False, "-"),
    ("from_salesforce", "most_recent", BLANK, BLANK, "salesforce", True, "-"),
    ("from_salesforce", "most_recent", BLANK, BLANK, "salesforce", False, "-"),
    ("from_salesforce", "most_recent", BLANK, BLANK, "tie", True, "-"),
    ("from_salesforce", "most_recent", BLANK, BLANK, "tie", False, "-"),
    ("from_salesforce", "salesforce_unless_blank", DATA, DATA, "local", True, "S"),
    ("from_salesforce", "salesforce_unless_blank", DATA, DATA, "local", False, "S"),
    ("from_salesforce", "salesforce_unless_blank", DATA, DATA, "salesforce", True, "S"),
    ("from_salesforce", "salesforce_unless_blank", DATA, DATA, "salesforce", False, "S"),
    ("from_salesforce", "salesforce_unless_blank", DATA, DATA, "tie", True, "S"),
    ("from_salesforce", "salesforce_unless_blank", DATA, DATA, "tie", False, "S"),
    ("from_salesforce", "salesforce_unless_blank", DATA, BLANK, "local", True, "-"),
    ("from_salesforce", "salesforce_unless_blank", DATA, BLANK, "local", False, "-"),
    ("from_salesforce", "salesforce_unless_blank", DATA, BLANK, "salesforce", True, "-"),
    ("from_salesforce", "salesforce_unless_blank", DATA, BLANK, "salesforce", False, "-"),
    ("from_salesforce", "salesforce_unless_blank", DATA, BLANK, "tie", True, "-"),
    ("from_salesforce", "salesforce_unless_blank", DATA, BLANK, "tie", False, "-"),
    ("from_salesforce", "salesforce_unless_blank", BLANK, DATA, "local", True, "S"),
    ("from_salesforce", "salesforce_unless_blank", BLANK, DATA, "local", False, "S"),
    ("from_salesforce", "salesforce_unless_blank", BLANK, DATA, "salesforce", True, "S"),
    ("from_salesforce", "salesforce_unless_blank", BLANK, DATA, "salesforce", False, "S"),
    ("from_salesforce", "salesforce_unless_blank", BLANK, DATA, "tie", True, "S"),
    ("from_salesforce", "salesforce_unless_blank", BLANK, DATA, "tie", False, "S"),
    ("from_salesforce", "salesforce_unless_blank", BLANK, BLANK, "local", True, "-"),
    ("from_salesforce", "salesforce_unless_blank", BLANK, BLANK, "local", False, "-"),
    ("from_salesforce", "salesforce_unless_blank", BLANK, BLANK, "salesforce", True, "-"),
    ("from_salesforce", "salesforce_unless_blank", BLANK, BLANK, "salesforce", False, "-"),
    ("from_salesforce", "salesforce_unless_blank", BLANK, BLANK, "tie", True, "-"),
    ("from_salesforce", "salesforce_unless_blank", BLANK, BLANK, "tie", False, "-"),
    ("from_salesforce", "local_unless_blank", DATA, DATA, "local", True, "S"),
    ("from_salesforce", "local_unless_blank", DATA, DATA, "local", False, "S"),
    ("from_salesforce", "local_unless_blank", DATA, DATA, "salesforce", True, "S"),
    ("from_salesforce", "local_unless_blank", DATA, DATA, "salesforce", False, "S"),
    ("from_salesforce", "local_unless_blank", DATA, DATA, "tie", True, "S"),
    ("from_salesforce", "local_unless_blank", DATA, DATA, "tie", False, "S"),
    ("from_salesforce", "local_unless_blank", DATA, BLANK, "local", True, "-"),
    ("from_salesforce", "local_unless_blank", DATA, BLANK, "local", False, "-"),
    ("from_salesforce", "local_unless_blank", DATA, BLANK, "salesforce", True, "-"),
    ("from_salesforce", "local_unless_blank", DATA, BLANK, "salesforce", False, "-"),
    ("from_salesforce", "local_unless_blank", DATA, BLANK, "tie", True, "-"),
    ("from_salesforce", "local_unless_blank", DATA, BLANK, "tie", False, "-"),
    ("from_salesforce", "local_unless_blank", BLANK, DATA, "local", True, "S"),
    ("from_salesforce", "local_unless_blank", BLANK, DATA, "local", False, "S"),
    ("from_salesforce", "local_unless_blank", BLANK, DATA, "salesforce", True, "S"),
    ("from_salesforce", "local_unless_blank", BLANK, DATA, "salesforce", False, "S"),
    ("from_salesforce", "local_unless_blank", BLANK, DATA, "tie", True, "S"),
    ("from_salesforce", "local_unless_blank", BLANK, DATA, "tie", False, "S"),
    ("from_salesforce", "local_unless_blank", BLANK, BLANK, "local", True, "-"),
    ("from_salesforce", "local_unless_blank", BLANK, BLANK, "local", False, "-"),
    ("from_salesforce", "local_unless_blank", BLANK, BLANK, "salesforce", True, "-"),
    ("from_salesforce", "local_unless_blank", BLANK, BLANK, "salesforce", False, "-"),
    ("from_salesforce", "local_unless_blank", BLANK, BLANK, "tie", True, "-"),
    ("from_salesforce", "local_unless_blank", BLANK, BLANK, "tie", False, "-"),
    ("to_salesforce", "most_recent", DATA, DATA, "local", True, "L"),
    ("to_salesforce", "most_recent", DATA, DATA, "local", False, "-"),
    ("to_salesforce", "most_recent", DATA, DATA, "salesforce", True, "L"),
    ("to_salesforce", "most_recent", DATA, DATA, "salesforce", False, "-"),
    ("to_salesforce", "most_recent", DATA, DATA, "tie", True, "L"),
    ("to_salesforce", "most_recent", DATA, DATA, "tie", False, "-"),
    ("to_salesforce", "most_recent", DATA, BLANK, "local", True, "L"),
    ("to_salesforce", "most_recent", DATA, BLANK, "local", False, "-"),
    ("to_salesforce", "most_recent", DATA, BLANK, "salesforce", True, "L"),
    ("to_salesforce", "most_recent", DATA, BLANK, "salesforce", False, "-"),
    ("to_salesforce", "most_recent", DATA, BLANK, "tie", True, "L"),
    ("to_salesforce", "most_recent", DATA, BLANK, "tie", False, "-"),
    ("to_salesforce", "most_recent", BLANK, DATA, "local", True, "-"),
    ("to_salesforce", "most_recent", BLANK, DATA, "local", False, "-"),
    ("to_salesforce", "most_recent", BLANK, DATA, "salesforce", True, "-"),
    ("to_salesforce", "most_recent", BLANK, DATA, "salesforce", False, "-"),
    ("to_salesforce", "most_recent", BLANK, DATA, "tie", True, "-"),
    ("to_salesforce", "most_recent", BLANK, DATA, "tie", False, "-"),
    ("to_salesforce", "most_recent", BLANK, BLANK, "local", True, "-"),
    ("to_salesforce", "most_recent", BLANK, BLANK, "local", False, "-"),
    ("to_salesforce", "most_recent", BLANK, BLANK, "salesforce", True, "-"),
    ("to_salesforce", "most_recent", BLANK, BLANK, "salesforce", False, "-"),
    ("to_salesforce", "most_recent", BLANK, BLANK, "tie", True, "-"),
    ("to_salesforce", "most_recent", BLANK, BLANK, "tie", False, "-"),
    ("to_salesforce", "salesforce_unless_blank", DATA, DATA, "local", True, "L"),
    ("to_salesforce", "salesforce_unless_blank", DATA, DATA, "local", False, "-"),
    ("to_salesforce", "salesforce_unless_blank", DATA, DATA, "salesforce", True, "L"),
    ("to_salesforce", "salesforce_unless_blank", DATA, DATA, "salesforce", False, "-"),
    ("to_salesforce", "salesforce_unless_blank", DATA, DATA, "tie", True, "L"),
    ("to_salesforce", "salesforce_unless_blank", DATA, DATA, "tie", False, "-"),
    ("to_salesforce", "salesforce_unless_blank", DATA, BLANK, "local", True, "L"),
    ("to_salesforce", "salesforce_unless_blank", DATA, BLANK, "local", False, "-"),
    ("to_salesforce", "salesforce_unless_blank", DATA, BLANK, "salesforce", True, "L"),
    ("to_salesforce", "salesforce_unless_blank", DATA, BLANK, "salesforce", False, "-"),
    ("to_salesforce", "salesforce_unless_blank", DATA, BLANK, "tie", True, "L"),
    ("to_salesforce", "salesforce_unless_blank", DATA, BLANK, "tie", False, "-"),
    ("to_salesforce", "salesforce_unless_blank", BLANK, DATA, "local", True, "-"),
    ("to_salesforce", "salesforce_unless_blank", BLANK, DATA, "local", False, "-"),
    ("to_salesforce", "salesforce_unless_blank", BLANK, DATA, "salesforce", True, "-"),
    ("to_salesforce", "salesforce_unless_blank", BLANK, DATA, "salesforce", False, "-"),
    ("to_salesforce", "salesforce_unless_blank", BLANK, DATA, "tie", True, "-"),
    ("to_salesforce", "salesforce_unless_blank", BLANK, DATA, "tie", False, "-"),
    ("to_salesforce", "salesforce_unless_blank", BLANK, BLANK, "local", True, "-"),
    ("to_salesforce", "salesforce_unless_blank", BLANK, BLANK, "local", False, "-"),
    ("to_salesforce", "salesforce_unless_blank", BLANK, BLANK, "salesforce", True, "-"),
    ("to_salesforce", "salesforce_unless_blank", BLANK, BLANK, "salesforce", False, "-"),
    ("to_salesforce", "salesforce_unless_blank", BLANK, BLANK, "tie", True, "-"),
    ("to_salesforce", "salesforce_unless_blank", BLANK, BLANK, "tie", False, "-"),
    ("to_salesforce", "local_unless_blank", DATA, DATA, "local", True, "L"),
    ("to_salesforce", "local_unless_blank", DATA, DATA, "local", False, "-"),
    ("to_salesforce", "local_unless_blank", DATA, DATA, "salesforce", True, "L"),
    ("to_salesforce", "local_unless_blank", DATA, DATA, "salesforce", False, "-"),
    ("to_salesforce", "local_unless_blank", DATA, DATA, "tie", True, "L"),
    ("to_salesforce", "local_unless_blank", DATA, DATA, "tie", False, "-"),
    ("to_salesforce", "local_unless_blank", DATA, BLANK, "local", True, "L"),
    ("to_salesforce", "local_unless_blank", DATA, BLANK, "local", False, "-"),
    ("to_salesforce", "local_unless_blank", DATA, BLANK, "salesforce", True, "L"),
    ("to_salesforce", "local_unless_blank", DATA, BLANK, "salesforce", False, "-"),
    ("to_salesforce", "local_unless_blank", DATA, BLANK, "tie", True, "L"),
    ("to_salesforce", "local_unless_blank", DATA, BLANK, "tie", False, "-"),
    ("to_salesforce", "local_unless_blank", BLANK, DATA, "local", True, "-"),
    ("to_salesforce", "local_unless_blank", BLANK, DATA, "local", False, "-"),
    ("to_salesforce", "local_unless_blank", BLANK, DATA, "salesforce", True, "-"),
    ("to_salesforce", "local_unless_blank", BLANK, DATA, "salesforce", False, "-"),
    ("to_salesforce", "local_unless_blank", BLANK, DATA, "tie", True, "-"),
    ("to_salesforce", "local_unless_blank", BLANK, DATA, "tie", False, "-"),
    ("to_salesforce", "local_unless_blank", BLANK, BLANK, "local", True, "-"),
    ("to_salesforce", "local_unless_blank", BLANK, BLANK, "local", False, "-"),
    ("to_salesforce", "local_unless_blank", BLANK, BLANK, "salesforce", True, "-"),
    ("to_salesforce", "local_unless_blank", BLANK, BLANK, "salesforce", False, "-"),
    ("to_salesforce", "local_unless_blank", BLANK, BLANK, "tie", True, "-"),
    ("to_salesforce", "local_unless_blank", BLANK, BLANK, "tie", False, "-"),]


class TestMergeFieldTable:
    @pytest.mark.parametrize(("direction", "merge", "local", "salesforce", "newer", "writable", "expected"),
                             TABLE)
    def test_decision(self, direction: str, merge: str, local: str, salesforce: str, newer: str,
                      writable: bool, expected: str) -> None:
        """Each combination decides as the product rules say."""
        local_at, sf_at = times(newer)
        decision = merge_field(
            mapping(direction, merge),
            Side("local value" if local == DATA else None, local_at),
            Side("sf value" if salesforce == DATA else "  ", sf_at),
            sf_field_writable=writable,
        )
        assert decision.winner is EXPECT[expected]
        if expected == "L":
            assert decision.value == "local value"
        elif expected == "S":
            assert decision.value == "sf value"
        else:
            assert decision.reason

    def test_table_covers_every_combination(self) -> None:
        """The table has one row per combination, none missing or repeated."""
        keys = {row[:6] for row in TABLE}
        assert len(TABLE) == len(keys) == 3 * 3 * 2 * 2 * 3 * 2


class TestBlankValues:
    @pytest.mark.parametrize("blank", [None, "", "   ", "\t\n", []])
    def test_blank_never_overwrites_data(self, blank: object) -> None:
        """A blank Salesforce value never replaces local data, whatever the behaviour."""
        for merge in MergeBehaviour:
            decision = merge_field(mapping(merge=merge.value), Side("x", T0), Side(blank, T0 + timedelta(1)),
                                   sf_field_writable=True)
            assert not decision.write_local

    @pytest.mark.parametrize(("value", "expected"), [(0, Winner.SALESFORCE), (False, Winner.SALESFORCE),
                                                     ("0", Winner.SALESFORCE)])
    def test_falsy_values_are_data(self, value: object, expected: Winner) -> None:
        """0, False and "0" are values, not blanks."""
        decision = merge_field(mapping(), Side(None), Side(value, T0), sf_field_writable=True)
        assert decision.winner is expected

    def test_equal_values_write_nothing(self) -> None:
        """Equal values on both sides need no write."""
        decision = merge_field(mapping(), Side("a", T0), Side("a", T0 + timedelta(1)), sf_field_writable=True)
        assert decision.winner is Winner.NONE and decision.reason == "equal"

    def test_missing_local_time_is_older(self) -> None:
        """A side with no field time is older than one with a time; two untimed sides tie (Salesforce)."""
        assert merge_field(mapping(), Side("l", None), Side("s", T0), sf_field_writable=True).write_local
        assert merge_field(mapping(), Side("l", None), Side("s", None), sf_field_writable=True).write_local
        assert merge_field(mapping(), Side("l", T0), Side("s", None), sf_field_writable=True).write_salesforce


class TestMergeRecord:
    MAPPINGS = [
        mapping(local="first_name", sf="FirstName"),
        mapping(local="custom_fields.linkedin", sf="LinkedIn__c", direction="from_salesforce"),
        mapping(local="title", sf="Title", direction="to_salesforce"),
        mapping(local="score", sf="Score__c"),
    ]

    def test_partial_record_touches_only_present_fields(self) -> None:
        """An update carrying some fields merges only those."""
        result = merge_record(self.MAPPINGS, {"first_name": "Ann", "title": "CEO"},
                              {"LinkedIn__c": "in/ann"}, T0)
        assert result.local_updates == {"custom_fields.linkedin": "in/ann"}
        assert result.sf_updates == {}
        assert result.field_times == {"custom_fields.linkedin": T0}

    def test_complete_record_treats_missing_fields_as_blank(self) -> None:
        """A full record (create, poll, import) missing a mapped field is blank there: local data goes out."""
        result = merge_record(self.MAPPINGS, {"first_name": "Ann", "title": "CEO"}, {}, T0, complete=True)
        assert result.sf_updates == {"FirstName": "Ann", "Title": "CEO"}
        assert result.local_updates == {}

    def test_field_times_decide_most_recent(self) -> None:
        """Most recent compares the field's own time, read from `_sync.field_times` (dotted paths too)."""
        field_times = {"first_name": T0 + timedelta(hours=1), "score": T0 - timedelta(1)}
        local = {"first_name": "Ann", "score": 5, "_sync": {"field_times": field_times}}
        result = merge_record(self.MAPPINGS, local, {"FirstName": "Anna", "Score__c": 7}, T0)
        assert result.sf_updates == {"FirstName": "Ann"}
        assert result.local_updates == {"score": 7}

    def test_read_only_field_flows_inbound_only(self) -> None:
        """A field Salesforce marks read-only is never written there; `both` takes Salesforce's value."""
        local = {"first_name": "Ann", "title": "CEO",
                 "_sync": {"field_times": {"first_name": T0 + timedelta(1)}}}
        result = merge_record(self.MAPPINGS, local, {"FirstName": "Anna", "Title": None}, T0,
                              {"FirstName": False, "Title": False})
        assert result.local_updates == {"first_name": "Anna"}
        assert result.sf_updates == {}
        assert ("title", "read-only in salesforce") in result.skipped

    def test_new_record_takes_every_salesforce_value(self) -> None:
        """With no local document every non-blank inbound value is written locally."""
        result = merge_record(self.MAPPINGS, None, {"FirstName": "Bo", "Score__c": None, "Title": "X"}, T0,
                              complete=True)
        assert result.local_updates == {"first_name": "Bo"}


class TestClocks:
    """Most recent compares one clock: Salesforce's `LastModifiedDate` is on Salesforce's clock,
    local field times on this host's; the learned offset (Salesforce minus host) converts."""

    MAPPINGS = [mapping(local="first_name", sf="FirstName")]

    @pytest.mark.parametrize(
        ("local_at", "sf_at", "sf_ahead", "expected"),
        [
            # Salesforce edit 2 s after the local one on the wall, Salesforce's clock 3 s ahead:
            # its stamp reads 5 s later, converted it is 2 s later -> Salesforce wins.
            (0, 5, 3, "S"),
            # Salesforce stamp 2 s after the local time, but Salesforce's clock is 3 s ahead:
            # the Salesforce edit really happened 1 s *before* the local one -> local wins.
            (0, 2, 3, "L"),
            # Salesforce's clock 3 s behind: a stamp 2 s before the local time is 1 s after it.
            (0, -2, -3, "S"),
            # Salesforce's clock 3 s behind: a stamp 4 s before the local time is 1 s before it.
            (0, -4, -3, "L"),
            # No offset learned: compared as they are.
            (0, 2, 0, "S"),
            (0, -2, 0, "L"),
        ],
    )
    def test_both_sides_on_one_clock(self, local_at: int, sf_at: int, sf_ahead: int, expected: str) -> None:
        """The winner is decided on the host's clock; a Salesforce win records a host-clock time."""
        local_time = T0 + timedelta(seconds=local_at)
        local = {"first_name": "Ann", "_sync": {"field_times": {"first_name": local_time}}}
        result = merge_record(self.MAPPINGS, local, {"FirstName": "Anna"}, T0 + timedelta(seconds=sf_at),
                              sf_clock_offset=timedelta(seconds=sf_ahead))
        if expected == "S":
            assert result.local_updates == {"first_name": "Anna"}
            assert result.field_times == {"first_name": T0 + timedelta(seconds=sf_at - sf_ahead)}
        else:
            assert result.sf_updates == {"FirstName": "Ann"}


class TestBench:
    def test_bench_merge_reports_a_rate(self) -> None:
        """bench_merge returns decisions per second."""
        assert bench_merge(200) > 1000


class TestLiveSalesforceEditUnderSalesforceUnlessBlank:
    """A live Salesforce edit is applied, unless the platform's value changed later: read late
    (a stream resync after a fault, a poll), an older Salesforce edit does not replace a newer
    platform edit (chaos seed 40961, A4.industry: a value set in Salesforce 4 s before the
    platform's edit, read 2 s after it, replaced it). At a merge (link, retry, re-import,
    conversion, mapping edit) Salesforce's value wins whatever the times."""

    @pytest.mark.parametrize(("newer", "live", "expected"), [
        ("local", True, "-"), ("salesforce", True, "S"), ("tie", True, "S"),
        ("local", False, "S"), ("salesforce", False, "S"), ("tie", False, "S"),
    ])
    def test_decision(self, newer: str, live: bool, expected: str) -> None:
        local_at, sf_at = times(newer)
        decision = merge_field(mapping(merge="salesforce_unless_blank"), Side("Retail", local_at),
                               Side("Technology", sf_at), sf_field_writable=True, live=live)
        assert decision.winner is EXPECT[expected]

    def test_a_late_read_record_leaves_the_newer_platform_value(self) -> None:
        doc = {"industry": "Retail", "_sync": {"field_times": {"industry": T0 + timedelta(seconds=4)}}}
        merged = merge_record([mapping(merge="salesforce_unless_blank", local="industry", sf="Industry")],
                              doc, {"Industry": "Technology"}, T0, live=True)
        assert merged.local_updates == {} and merged.sf_updates == {}
