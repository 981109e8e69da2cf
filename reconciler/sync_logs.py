"""Sync logs: one document per sync action, what an admin filters, reads and retries.

Bulk imports (backfill pages) are logged as ONE summary log per page (`type="import"`,
`count` = records applied) plus one log per failed record: a 100,000-record backfill would
otherwise double its MongoDB write load with log inserts while telling the admin nothing
more than "imported". Everything else (stream, poll, retry, re-import) logs per record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

Source = Literal["salesforce", "local"]
LogType = Literal[
    "create", "update", "delete", "undelete", "merge", "convert", "link", "import",
    "owner_change", "event", "skipped",
]
Status = Literal["success", "failed"]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class SyncLog:
    source: Source
    type: LogType
    status: Status
    object: str | None = None
    sf_id: str | None = None
    local_id: str | None = None
    collection: str | None = None
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # field -> {"old", "new"}
    error: str | None = None
    job: dict[str, Any] | None = None
    attempt: int = 1
    retriable: bool = False
    retried_by: str | None = None
    count: int = 1                 # records this log covers (>1 only for import summaries)
    note: str | None = None        # what happened, when type/status do not say it all
    ts: datetime = field(default_factory=utcnow)

    def to_document(self) -> dict[str, Any]:
        # Shallow on purpose: `dataclasses.asdict` deep-copies every nested value and was ~40% of
        # the reconciler's CPU per stream batch (bench/inbound.py profile).
        return {name: getattr(self, name) for name in _FIELDS}


def inbound_job(sobject: str, sf_id: str) -> dict[str, Any]:
    """What a retry needs to re-run an inbound change: re-fetch the record and merge it."""
    return {"kind": "inbound", "sobject": sobject, "sf_id": sf_id}


def event_job(raw: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "event", "raw": raw}


def failed_inbound(
    sobject: str | None, sf_id: str | None, error: str, *, type: LogType = "update",
    retriable: bool = False, collection: str | None = None, local_id: str | None = None,
    attempt: int = 1, raw: dict[str, Any] | None = None, fields: dict[str, dict[str, Any]] | None = None,
) -> SyncLog:
    """A failed inbound change, with the job that re-runs it. `fields`: what it would have
    written (local field -> {"old", "new"}), so only a success writing them resolves it."""
    job = inbound_job(sobject, sf_id) if sobject and sf_id else event_job(raw or {})
    return SyncLog(
        source="salesforce", type=type, status="failed", object=sobject, sf_id=sf_id,
        local_id=local_id, collection=collection, fields=dict(fields or {}), error=error, job=job,
        attempt=attempt, retriable=retriable,
    )


def record_keys(entry: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(source, "sf_id" | "local_id", id) for each record id a log names."""
    source = str(entry.get("source"))
    return [(source, key, str(entry[key])) for key in ("sf_id", "local_id") if entry.get(key)]


def can_resolve(entry: Mapping[str, Any]) -> bool:
    """A success that says a record synced (not a rule's `skipped`, not a bulk summary)."""
    return entry.get("status") == "success" and entry.get("type") not in ("skipped", "import") \
        and bool(record_keys(entry))


def resolves(success: Mapping[str, Any], failed: Mapping[str, Any]) -> bool:
    """design.md: a failed log is resolved once a later sync of the same record (same direction,
    same Salesforce or local id) and fields (every field the failure names) succeeds. Failures
    name the fields they would have written (inbound: local fields; outbound: Salesforce fields,
    as their successes do); one that names none failed for the whole record (not found, an
    unknown object), and any later success of the record resolves it."""
    if not can_resolve(success) or failed.get("status") != "failed" or failed.get("resolved"):
        return False
    if not set(record_keys(success)) & set(record_keys(failed)):
        return False
    if isinstance(success.get("ts"), datetime) and isinstance(failed.get("ts"), datetime) \
            and _naive(failed["ts"]) > _naive(success["ts"]):
        return False
    return set(failed.get("fields") or {}) <= set(success.get("fields") or {})


def _naive(value: datetime) -> datetime:
    offset = value.utcoffset()
    return value if offset is None else (value - offset).replace(tzinfo=None)


_FIELDS = tuple(f.name for f in fields(SyncLog))
