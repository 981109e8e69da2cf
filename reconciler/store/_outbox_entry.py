"""One outbox document as the flusher sees it (`OutboxEntry`), its statuses, and its key: one
pending write per Salesforce record (or per local document not linked yet)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId

from reconciler.ports import OutboundWrite

OUTBOX = "outbox"
PENDING = "pending"
INFLIGHT = "inflight"
FAILED = "failed"       # given up after too many retriable failures: parked until a retry
HELD = "held"           # its document's record is deleted in Salesforce: parked until undeleted
LEASE_EXPIRED = "LEASE_EXPIRED: the flusher that claimed it stopped before finishing"
CREATE = "create"
UPDATE = "update"


def aware(value: datetime) -> datetime:
    """BSON dates come back naive unless the client is tz-aware: they are UTC either way."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def coalescing_key(write: OutboundWrite) -> str:
    """Writes to one Salesforce record, or to one not-yet-linked local doc, share a key."""
    if write.sf_id:
        return record_key(write.sobject, write.sf_id)
    return f"local:{write.collection}:{write.local_id}"


def record_key(sobject: str, sf_id: str) -> str:
    return f"sf:{sobject}:{sf_id}"


@dataclass(frozen=True)
class OutboxEntry:
    """One claimed (or pending) outbox document."""

    id: ObjectId
    key: str
    kind: str                       # "create" | "update"
    write: OutboundWrite
    enqueued_at: datetime           # the oldest coalesced edit: what the flush wait is timed from
    next_attempt_at: datetime
    lease: str | None = None        # set while claimed
    first_sent_at: datetime | None = None   # when a flusher first claimed it to send (this host's clock)
    first_sent_sf_at: datetime | None = None  # the same moment on Salesforce's clock, as known then
    failures: int = 0               # retriable failures (expired claims included) since queued
    last_error: str | None = None
    sent: dict[str, list[Any]] = field(default_factory=dict)  # every value earlier claims sent, per field
    last_queued_at: datetime | None = None  # the latest coalesced edit (the document's `updated_at`)

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> OutboxEntry:
        write = OutboundWrite(
            sobject=doc["sobject"], sf_id=doc.get("sf_id"), collection=doc["collection"],
            local_id=doc["local_id"], fields=dict(doc.get("fields") or {}),
            reason=doc.get("reason", "local_edit"), attempt=int(doc.get("attempt", 0)),
        )
        return cls(id=doc["_id"], key=doc["key"], kind=doc["kind"], write=write,
                   enqueued_at=aware(doc["enqueued_at"]), next_attempt_at=aware(doc["next_attempt_at"]),
                   lease=doc.get("lease"),
                   first_sent_at=aware(doc["first_sent_at"]) if doc.get("first_sent_at") else None,
                   first_sent_sf_at=aware(doc["first_sent_sf_at"]) if doc.get("first_sent_sf_at") else None,
                   failures=int(doc.get("failures", 0)), last_error=doc.get("last_error"),
                   sent=claimed_values(doc.get("claims_before")),
                   last_queued_at=aware(doc["updated_at"]) if doc.get("updated_at") else None)


@dataclass(frozen=True)
class OutboxGroup:
    """Due pending writes of one object and kind: one or more `composite/sobjects` calls."""

    sobject: str
    kind: str
    count: int
    oldest: datetime


def claimed_values(claims: Any) -> dict[str, list[Any]]:
    """Every value the claims sent, per field (documents claimed before `claims` have none)."""
    values: dict[str, list[Any]] = {}
    for fields in claims if isinstance(claims, list) else ():
        for name, value in (fields or {}).items():
            if value not in values.setdefault(name, []):
                values[name].append(value)
    return values
