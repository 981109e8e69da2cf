"""Salesforce literal forms: one SOQL quoting, one date-time parser for every spelling met."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from reconciler.soql import floor_second, format_sf_datetime, parse_sf_datetime, soql_string

TEN = datetime(2024, 5, 1, 10, tzinfo=UTC)


class TestParseSalesforceDatetime:
    @pytest.mark.parametrize(("value", "expected"), [
        # REST and SOQL results
        ("2024-05-01T10:00:00.000+0000", TEN),
        ("2024-05-01T12:00:00.000+0200", TEN),
        ("2024-05-01T10:00:00Z", TEN),
        ("2024-05-01T12:00:00+02:00", TEN),
        ("2024-05-01T10:00:00", TEN),                           # no offset: UTC
        (" 2024-05-01T10:00:00Z ", TEN),                        # surrounding blanks
        ("2024-05-01T10:00:00.250Z", TEN.replace(microsecond=250_000)),
        # CDC commitTimestamp: epoch milliseconds
        (1_714_557_600_000, TEN),
        # read back from MongoDB
        (datetime(2024, 5, 1, 10), TEN),                         # naive: UTC
        (datetime(2024, 5, 1, 12, tzinfo=timezone(timedelta(hours=2))), TEN),
        # not a date-time
        ("nope", None), ("", None), (None, None), (True, None), (1.5, None), ({"a": 1}, None),
    ])
    def test_accepted_spellings(self, value: object, expected: datetime | None) -> None:
        """Every spelling either former parser took gives the same aware UTC instant; the rest None."""
        parsed = parse_sf_datetime(value)
        assert parsed == expected
        if parsed is not None:
            assert parsed.tzinfo is UTC


class TestLiterals:
    @pytest.mark.parametrize(("value", "literal"), [
        ("00Q1", "'00Q1'"), ("O'Brien", "'O\\'Brien'"), ("a\\b", "'a\\\\b'"), ("", "''"),
    ])
    def test_soql_string(self, value: str, literal: str) -> None:
        """Quotes and backslashes are escaped inside single quotes."""
        assert soql_string(value) == literal

    def test_datetime_literal_and_second(self) -> None:
        """The SOQL date-time literal is UTC at second precision; floor_second drops the fraction."""
        at = datetime(2024, 5, 1, 12, 0, 0, 900_000, tzinfo=timezone(timedelta(hours=2)))
        assert format_sf_datetime(at) == "2024-05-01T10:00:00Z"
        assert floor_second(at) == TEN and floor_second(at).tzinfo is UTC
