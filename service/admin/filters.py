"""Sync-log filters from a query string: validated once, shared by the API and the page."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from settings import SALESFORCE_OBJECTS

STATUSES = ("success", "failed")
SOURCES = ("salesforce", "local")
TYPES = (
    "create", "update", "delete", "undelete", "merge", "convert", "link",
    "import", "owner_change", "event", "skipped",
)
OBJECTS = SALESFORCE_OBJECTS
MAX_LIMIT = 500
DEFAULT_LIMIT = 50

# A Salesforce id (15/18 characters) or a local id (an ObjectId's hex, or the platform's own key).
_RECORD = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_CURSOR = re.compile(r"^[A-Za-z0-9_.:=+/-]{1,256}$")
_ERROR_CODE = re.compile(r"^[A-Z][A-Z0-9_]{0,79}$")  # a Salesforce status code, or OTHER
_SF_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")


class BadParameter(ValueError):
    """A query parameter has a value the API does not accept."""

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(f"{parameter}: {reason}")
        self.parameter = parameter
        self.reason = reason


@dataclass(frozen=True)
class LogFilters:
    status: str | None = None
    source: str | None = None
    type: str | None = None
    object: str | None = None
    record: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None
    error_code: str | None = None
    open: bool = False  # failed and neither retried nor resolved since (issue 10)

    def store_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `Store.find_sync_logs` (`error_code`, `open` only when filtered on)."""
        kwargs: dict[str, Any] = {
            "status": self.status, "source": self.source, "type": self.type,
            "object": self.object, "record": self.record, "limit": self.limit,
            "cursor": self.cursor,
        }
        if self.error_code:
            kwargs["error_code"] = self.error_code
        if self.open:
            kwargs["open_only"] = True
        return kwargs

    def query(self, *, cursor: str | None = None) -> dict[str, str]:
        """The query string that reproduces these filters (without paging unless `cursor`)."""
        pairs = {
            "status": self.status, "source": self.source, "type": self.type,
            "object": self.object, "record": self.record, "error_code": self.error_code,
        }
        out = {k: v for k, v in pairs.items() if v}
        if self.open:
            out["open"] = "true"
        if self.limit != DEFAULT_LIMIT:
            out["limit"] = str(self.limit)
        if cursor:
            out["cursor"] = cursor
        return out


def _choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    """A value from `allowed`, matched case-insensitively and returned in its canonical case."""
    raw = query.get(name, "").strip()
    if not raw:
        return None
    value = next((a for a in allowed if a.lower() == raw.lower()), None)
    if value is None:
        raise BadParameter(name, f"must be one of {', '.join(allowed)}")
    return value


def parse_filters(query: Mapping[str, str], *, allow_all: bool = False) -> LogFilters:
    """Validate the filters in `query`; raise `BadParameter` naming the first bad one.

    `allow_all` accepts `status=all` (the page's "All" choice) as no status filter.
    """
    status_raw = query.get("status", "").strip().lower()
    if allow_all and status_raw == "all":
        query = {k: v for k, v in query.items() if k != "status"}
    status = _choice(query, "status", STATUSES)
    source = _choice(query, "source", SOURCES)
    type_ = _choice(query, "type", TYPES)
    object_ = _choice(query, "object", OBJECTS)
    record = query.get("record", "").strip() or None
    if record is not None and not _RECORD.match(record):
        raise BadParameter("record", "must be a Salesforce id or a local id (letters, digits, _ . : -)")
    cursor = query.get("cursor", "").strip() or None
    if cursor is not None and not _CURSOR.match(cursor):
        raise BadParameter("cursor", "is not a cursor this API returned")
    error_code = query.get("error_code", "").strip().upper() or None
    if error_code is not None and not _ERROR_CODE.match(error_code):
        raise BadParameter("error_code",
                           "must be a Salesforce status code like REQUIRED_FIELD_MISSING, or OTHER")
    open_only = _open(query.get("open", ""), status)
    return LogFilters(
        status="failed" if open_only else status, source=source, type=type_, object=object_,
        record=record, limit=_limit(query.get("limit", "")), cursor=cursor, error_code=error_code,
        open=open_only,
    )


def _open(raw: str, status: str | None) -> bool:
    """`open=true`: a sub-filter of `status=failed` (implied when the status is left out)."""
    value = raw.strip().lower()
    if value in ("", "false", "0", "no"):
        return False
    if value not in ("true", "1", "yes"):
        raise BadParameter("open", "must be true or false")
    if status not in (None, "failed"):
        raise BadParameter("open", "only narrows status=failed")
    return True


def _limit(raw: str) -> int:
    raw = raw.strip()
    if not raw:
        return DEFAULT_LIMIT
    # ASCII digits only: "²".isdigit() is True but int("²") raises.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadParameter("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def is_salesforce_id(value: str) -> bool:
    return bool(_SF_ID.match(value))
