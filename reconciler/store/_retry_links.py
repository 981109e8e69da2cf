"""How a failed sync log stops being open when a later attempt of the same job logs its outcome:
`retried_by` names that later log (design.md: a retried log is no longer open; the retry's own
log is). Two ways a later attempt comes:

- an admin or auto retry still queued when the job stopped waiting for it (`retry_queued`);
- the same write or read sent again without anyone asking: a leader logged a failure and lost
  its term before it could park the write, and the next leader recovered it (chaos seed 1776 x
  2000, P135: two open failures for one create).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from motor.motor_asyncio import AsyncIOMotorDatabase

from reconciler.store._client import translate_errors

# Jobs that re-run the record as it is now (not a stored event): a later failure of one covers
# an earlier one of the same record and fields.
_RECORD_JOBS = ("outbound", "inbound")


async def link_later_attempts(db: AsyncIOMotorDatabase[Any], docs: Sequence[dict[str, Any]],
                              ids: Sequence[str]) -> None:
    await _link_queued_retries(db, docs, ids)
    await _supersede_failures(db, docs, ids)


async def _link_queued_retries(db: AsyncIOMotorDatabase[Any], docs: Sequence[dict[str, Any]],
                               ids: Sequence[str]) -> None:
    """A retry still queued when the job stopped waiting (`retry_queued`) gets its outcome
    now: the first outbound log of the same record since it was queued, as `retried_by`
    (what `Jobs` would have linked had the flusher answered in time). One find per batch
    of outbound logs that may be a retry's outcome; one update per retry linked."""
    outbound = [(d, i) for d, i in zip(docs, ids, strict=True)
                if d.get("source") == "local" and d.get("local_id")]
    # A retry's write carries the failed log's attempt, so its outcome logs attempt >= 2 (a
    # give-up logs the write's own attempt, and is failed): plain edits cost no query.
    if not any(int(d.get("attempt") or 1) > 1 or d.get("status") == "failed" for d, _ in outbound):
        return
    query = {"local_id": {"$in": sorted({str(d["local_id"]) for d, _ in outbound})},
             "retry_queued": {"$ne": None}, "retried_by": None}
    with translate_errors("link_queued_retries"):
        queued = await db.sync_logs.find(query, {"local_id": 1, "retry_queued": 1}).to_list(None)
        for entry in queued:
            outcome = next((i for d, i in outbound if str(d["local_id"]) == str(entry["local_id"])
                            and _utc(d["ts"]) >= _utc(entry["retry_queued"])), None)
            if outcome is not None:
                await db.sync_logs.update_one({"_id": entry["_id"], "retried_by": None},
                                              {"$set": {"retried_by": outcome}})


async def _supersede_failures(db: AsyncIOMotorDatabase[Any], docs: Sequence[dict[str, Any]],
                              ids: Sequence[str]) -> None:
    """An open failure of a record job is superseded (`retried_by`) by a later failure of the same
    job kind and record whose fields include its own: that attempt tried everything it did again.
    One find per id kind, only for batches with such a failure (failures are rare)."""
    failures = [(d, i) for d, i in zip(docs, ids, strict=True) if _record_failure(d)]
    for key in ("local_id", "sf_id"):
        named = [(d, i) for d, i in failures if d.get(key)]
        if not named:
            continue
        query = {key: {"$in": sorted({str(d[key]) for d, _ in named})}, "status": "failed",
                 "retried_by": None, "resolved": None, "_id": {"$nin": [ObjectId(i) for _, i in named]}}
        with translate_errors("supersede_failures"):
            earlier = await db.sync_logs.find(
                query, {key: 1, "source": 1, "job.kind": 1, "fields": 1, "ts": 1}).to_list(None)
            for old in earlier:
                later = next((i for d, i in named if _supersedes(d, old, key)), None)
                if later is not None:
                    await db.sync_logs.update_one({"_id": old["_id"], "retried_by": None},
                                                  {"$set": {"retried_by": later}})


def _record_failure(doc: dict[str, Any]) -> bool:
    return doc.get("status") == "failed" and (doc.get("job") or {}).get("kind") in _RECORD_JOBS


def _supersedes(new: dict[str, Any], old: dict[str, Any], key: str) -> bool:
    return (str(new[key]) == str(old.get(key)) and new.get("source") == old.get("source")
            and (old.get("job") or {}).get("kind") == new["job"]["kind"]
            and _utc(old["ts"]) <= _utc(new["ts"])
            and set(old.get("fields") or {}) <= set(new.get("fields") or {}))


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
