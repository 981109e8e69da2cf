"""Sync logs: insert (resolving the failures a success fixes; `_open_failures` says which
records have any), filter newest-first with a stable cursor, mark retried, count open failures
per error code."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId

from reconciler.store._client import translate_errors
from reconciler.store._open_failures import MAX_KEPT, Key, OpenFailures
from reconciler.store._retry_links import link_later_attempts
from reconciler.sync_logs import SyncLog, can_resolve, record_keys, resolves


def encode_cursor(ts: datetime, oid: ObjectId) -> str:
    return base64.urlsafe_b64encode(f"{ts.isoformat()}|{oid}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, ObjectId] | None:
    """None for a cursor we did not make (the API answers from the start rather than fail)."""
    try:
        ts_text, oid_text = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(ts_text), ObjectId(oid_text)
    except (ValueError, binascii.Error, InvalidId, UnicodeDecodeError):
        return None


def _json_safe(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def public_log(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored log as the APIs show it: `id` (string) instead of `_id`, JSON-safe values."""
    out = {"id": str(doc["_id"])}
    out.update({k: _json_safe(v) for k, v in doc.items() if k != "_id"})
    return out


def _object_id(log_id: str) -> ObjectId | None:
    try:
        return ObjectId(log_id)
    except (InvalidId, TypeError):
        return None


# A failed log's error starts with Salesforce's status code (`REQUIRED_FIELD_MISSING: ...`);
# any other error (a network failure, no error text) is grouped as OTHER.
OTHER_ERROR_CODE = "OTHER"
_ERROR_CODE = re.compile(r"^([A-Z][A-Z0-9_]*):")
# Open: failed, not retried since (a retry writes a new log and marks this one `retried_by`, or
# `retry_queued` until Salesforce answers it) and not resolved (a later success of the same
# record and fields, issue 10 item 6).
_OPEN_FAILURE: dict[str, Any] = {"status": "failed", "retried_by": None, "retry_queued": None,
                                 "resolved": None}


def error_code_of(error: Any) -> str:
    """The Salesforce status code a failed log's error starts with, else `OTHER`."""
    match = _ERROR_CODE.match(error) if isinstance(error, str) else None
    return match[1] if match else OTHER_ERROR_CODE


def _error_code_query(code: str) -> dict[str, Any]:
    """Failed logs with that code (a code filter implies `status=failed`)."""
    if code == OTHER_ERROR_CODE:
        return {"status": "failed", "error": {"$not": _ERROR_CODE}}
    return {"status": "failed", "error": {"$regex": f"^{re.escape(code)}:"}}


class LogsMixin:
    db: Any

    _open: OpenFailures | None = None  # created on first use, one per store

    def forget_open_failures(self) -> None:
        """Others may have logged failures (a new leader term began): resolving reads the open
        failures from the database again before it next relies on them."""
        self._open_failures().forget()

    def _open_failures(self) -> OpenFailures:
        if self._open is None:
            self._open = OpenFailures()
        return self._open

    async def insert_sync_logs(self, logs: Sequence[SyncLog]) -> list[str]:
        """Insert in one round-trip; returns the new log ids (as strings), in order."""
        if not logs:
            return []
        docs = [entry.to_document() for entry in logs]
        failed = [key for d in docs if d.get("status") == "failed" for key in record_keys(d)]
        self._open_failures().add(failed)
        with translate_errors("insert_sync_logs"):
            result = await self.db.sync_logs.insert_many(docs, ordered=False)
        self._open_failures().add(failed)  # see `_open_failures`: a lookup meanwhile missed them
        ids = [str(oid) for oid in result.inserted_ids]
        await self._resolve_failures(docs, ids)
        await link_later_attempts(self.db, docs, ids)
        return ids

    async def mark_retry_queued(self, log_ids: Sequence[str], *, at: datetime) -> None:
        """These failed logs' retries are in the outbox, not answered yet (see `_retry_links`)."""
        oids = [oid for oid in map(_object_id, log_ids) if oid is not None]
        if oids:
            with translate_errors("mark_retry_queued"):
                await self.db.sync_logs.update_many({"_id": {"$in": oids}, "retried_by": None},
                                                    {"$set": {"retry_queued": at}})

    async def _resolve_failures(self, docs: Sequence[dict[str, Any]], ids: Sequence[str]) -> None:
        """Failed logs these successes fix gain `resolved` ({by, at}): a find per id kind, one
        update per resolving log; no find unless some of these records have open failures."""
        successes = [(d, i) for d, i in zip(docs, ids, strict=True) if can_resolve(d)]
        if not successes:
            return
        known = self._open_failures()
        if known.stale():
            await self._load_open_failures(known)
        wanted = known.candidates(k for d, _ in successes for k in record_keys(d))
        if not wanted:
            return
        since = known.mark()
        open_failures = await self._find_open_failures(wanted)
        with translate_errors("resolve_failures"):
            for success, log_id in successes:
                fixed = [f["_id"] for f in open_failures if resolves(success, f)]
                if fixed:
                    await self.db.sync_logs.update_many(
                        {"_id": {"$in": fixed}, "resolved": None},
                        {"$set": {"resolved": {"by": log_id, "at": success["ts"]}}})
                    open_failures = [f for f in open_failures if f["_id"] not in fixed]
        known.settled(wanted, [k for f in open_failures for k in record_keys(f)], since)

    async def _find_open_failures(self, keys: set[Key]) -> list[dict[str, Any]]:
        """The open failed logs naming these records' ids: one indexed `$in` per id kind (an
        `$or` of the two is a collection scan on SecantusDB), of the few ids with failures."""
        found: dict[Any, dict[str, Any]] = {}
        with translate_errors("resolve_failures"):
            for kind in ("sf_id", "local_id"):
                values = sorted({value for _, k, value in keys if k == kind})
                if values:
                    async for failure in self.db.sync_logs.find(
                        {kind: {"$in": values}, "status": "failed", "resolved": None},
                        {"source": 1, "sf_id": 1, "local_id": 1, "fields": 1, "ts": 1, "status": 1},
                    ):
                        found[failure["_id"]] = failure
        return list(found.values())

    async def _load_open_failures(self, known: OpenFailures) -> None:
        since = known.mark()
        with translate_errors("load_open_failures"):
            docs = await self.db.sync_logs.find(
                {"status": "failed", "resolved": None}, {"source": 1, "sf_id": 1, "local_id": 1}
            ).limit(MAX_KEPT + 1).to_list(None)
        known.loaded((k for d in docs for k in record_keys(d)), since, complete=len(docs) <= MAX_KEPT)

    async def find_sync_logs(
        self, *, status: str | None = None, source: str | None = None, type: str | None = None,
        object: str | None = None, record: str | None = None, limit: int = 50,
        cursor: str | None = None, error_code: str | None = None, open_only: bool = False,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first. The cursor is the (ts, _id) of the last item: stable under inserts.
        `error_code`: failed logs whose error starts with that status code (`OTHER`: with none).
        `open_only`: open failures only (not retried, not resolved)."""
        query: dict[str, Any] = dict(_OPEN_FAILURE) if open_only else {}
        for key, value in (("status", status), ("source", source), ("type", type), ("object", object)):
            if value:
                query[key] = value
        if error_code:
            query.update(_error_code_query(error_code))
        if record:
            query["$or"] = [{"sf_id": record}, {"local_id": record}]
        position = decode_cursor(cursor) if cursor else None
        if position is not None:
            ts, oid = position
            query = {"$and": [query, {"$or": [{"ts": {"$lt": ts}}, {"ts": ts, "_id": {"$lt": oid}}]}]}
        limit = max(1, min(limit, 500))
        with translate_errors("find_sync_logs"):
            docs = await self.db.sync_logs.find(query).sort([("ts", -1), ("_id", -1)]).limit(limit + 1) \
                .to_list(None)
        more = len(docs) > limit
        docs = docs[:limit]
        next_cursor = encode_cursor(docs[-1]["ts"], docs[-1]["_id"]) if more and docs else None
        return [public_log(d) for d in docs], next_cursor

    async def find_outcomes(self, source: str, local_ids: Sequence[str],
                            since: datetime) -> dict[str, dict[str, Any]]:
        """The first log of each record (by local id) written at or after `since` (one query)."""
        if not local_ids:
            return {}
        query = {"source": source, "local_id": {"$in": list(local_ids)}, "ts": {"$gte": since}}
        with translate_errors("find_outcomes"):
            docs = await self.db.sync_logs.find(query).sort([("ts", 1), ("_id", 1)]).to_list(None)
        first: dict[str, dict[str, Any]] = {}
        for doc in docs:
            first.setdefault(str(doc["local_id"]), public_log(doc))
        return first

    async def open_failed_fields(self, source: str, sf_ids: Sequence[str], code: str) -> dict[str, set[str]]:
        """The fields the open failed logs of these records (by Salesforce id) from `source` name,
        where Salesforce's error was `code`, per Salesforce id (one query)."""
        if not sf_ids:
            return {}
        query = {**_OPEN_FAILURE, "source": source, "sf_id": {"$in": list(sf_ids)}}
        with translate_errors("open_failed_fields"):
            docs = await self.db.sync_logs.find(query, {"sf_id": 1, "error": 1, "fields": 1}).to_list(None)
        out: dict[str, set[str]] = {}
        for doc in docs:
            if error_code_of(doc.get("error")) == code:
                out.setdefault(str(doc["sf_id"]), set()).update(doc.get("fields") or {})
        return out

    async def get_sync_log(self, log_id: str) -> dict[str, Any] | None:
        oid = _object_id(log_id)
        if oid is None:
            return None
        with translate_errors("get_sync_log"):
            doc = await self.db.sync_logs.find_one({"_id": oid})
        return public_log(doc) if doc else None

    async def get_sync_logs(self, log_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The logs with these ids, by id, in one query (ids that name no log are left out)."""
        oids = [oid for oid in (_object_id(i) for i in set(log_ids)) if oid is not None]
        if not oids:
            return {}
        with translate_errors("get_sync_logs"):
            docs = await self.db.sync_logs.find({"_id": {"$in": oids}}).to_list(None)
        return {str(d["_id"]): public_log(d) for d in docs}

    async def open_failures_by_code(self) -> dict[str, int]:
        """Open failed logs (not retried since) counted per error code, most first."""
        pipeline = [{"$match": _OPEN_FAILURE}, {"$group": {"_id": "$error", "n": {"$sum": 1}}}]
        with translate_errors("open_failures_by_code"):
            groups = await self.db.sync_logs.aggregate(pipeline).to_list(None)
        counts: dict[str, int] = {}
        for group in groups:
            code = error_code_of(group["_id"])
            counts[code] = counts.get(code, 0) + int(group["n"])
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    async def mark_sync_log(self, log_id: str, *, retried_by: str) -> None:
        oid = _object_id(log_id)
        if oid is None:
            return
        with translate_errors("mark_sync_log"):
            await self.db.sync_logs.update_one({"_id": oid}, {"$set": {"retried_by": retried_by}})

    async def find_failed_logs(
        self, *, retriable_only: bool = False, max_attempt: int | None = None,
        before: datetime | None = None, limit: int = 500,
    ) -> list[dict[str, Any]]:
        """Failed logs not yet retried nor resolved (oldest first), as `public_log` dicts."""
        query: dict[str, Any] = {**_OPEN_FAILURE, "job": {"$ne": None}}
        if retriable_only:
            query["retriable"] = True
        if max_attempt is not None:
            query["attempt"] = {"$lt": max_attempt}
        if before is not None:
            query["ts"] = {"$lte": before}
        with translate_errors("find_failed_logs"):
            cursor = self.db.sync_logs.find(query).sort([("ts", 1), ("_id", 1)]).limit(limit)
            docs = await cursor.to_list(None)
        return [public_log(d) for d in docs]
