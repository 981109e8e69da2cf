"""Salesforce's literal forms, in one place: SOQL string and date-time literals, and the
date-times Salesforce sends back.

    soql_string("O'Brien")                 -> 'O\\'Brien'
    format_sf_datetime(<aware datetime>)   -> 2024-05-01T10:00:00Z   (a SOQL literal; second precision)
    parse_sf_datetime(<what Salesforce sends>) -> aware UTC datetime, or None when unreadable
    floor_second(<aware datetime>)         -> the start of its second (Salesforce's SystemModstamp precision)

`parse_sf_datetime` accepts every spelling the service meets: REST (`...000+0000`), ISO with `Z`
or `+02:00`, CDC's epoch milliseconds (`commitTimestamp`), and a `datetime` read back from
MongoDB (naive means UTC).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

_COMPACT_OFFSET = re.compile(r"[+-]\d{4}$")


def soql_string(value: str) -> str:
    """A SOQL string literal: quoted, with backslashes and single quotes escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def format_sf_datetime(value: datetime) -> str:
    """Aware datetime -> the SOQL literal form `2024-05-01T10:00:00Z` (second precision)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def floor_second(value: datetime) -> datetime:
    """The start of `value`'s second, in UTC."""
    return value.astimezone(UTC).replace(microsecond=0)


def parse_sf_datetime(value: Any) -> datetime | None:
    """A Salesforce date-time -> aware UTC datetime; None when it is not one.

    Accepted: a `datetime` (naive is UTC), epoch milliseconds (an int, not a bool; one outside
    the years 1-9999 is None, never an error), and a string `2024-05-01T10:00:00.000+0000`,
    `...Z` or `...+02:00` (surrounding blanks ignored).
    """
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (ValueError, OverflowError, OSError):
            return None  # outside what a datetime can hold (year 0 or past 9999)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    elif _COMPACT_OFFSET.search(text):
        text = f"{text[:-2]}:{text[-2:]}"
    try:
        parsed = datetime.fromisoformat(text)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None  # not a date-time, or one whose UTC form leaves the years 1-9999


__all__ = ["floor_second", "format_sf_datetime", "parse_sf_datetime", "soql_string"]
