"""Watching a local collection (`people`, `companies`) for the platform's edits.

Two ways in: MongoDB change streams (`full_document="updateLookup"`, resumable from a token)
and, where change streams are unavailable (a standalone server), a keyset scan on
(`updated_at`, `_id`). Also the watcher's own writes to those documents: field times and the
link a successful create leaves. Every such write sets `_sync.written_at` and `updated_at`
together, which is how this service recognises its own writes (see the reconciler contract),
and increments `_sync.version` (compare-and-set, `_bulk`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, ReplaceOne, UpdateOne
from pymongo.errors import DuplicateKeyError, OperationFailure

from reconciler.errors import SyncError
from reconciler.shadow import STAMPED_VALUES, stamped_value
from reconciler.store._bulk import VERSION
from reconciler.store._client import translate_errors
from reconciler.store._outbox import OutboxCollection
from reconciler.store._outbox_entry import aware

SNAPSHOTS = "local_snapshots"
# NoReplicationEnabled/"only supported on replica sets", unrecognised stage, not supported.
_NO_CHANGE_STREAMS = frozenset({40573, 40324, 115, 20})
# ChangeStreamHistoryLost, ChangeStreamFatalError, InvalidResumeToken.
_HISTORY_LOST = frozenset({286, 280, 260})


class StreamHistoryLostError(SyncError):
    """The resume token points before the oldest retained change: a catch-up scan is needed."""


@dataclass(frozen=True)
class LocalChange:
    """One change-stream event, reduced to what the watcher needs."""

    op: str                          # insert | update | replace | delete | ...
    doc_id: Any
    document: dict[str, Any] | None  # the current document (updateLookup), None when gone
    changed_paths: frozenset[str]    # updates only: dotted paths set or removed
    at: datetime                     # when the change happened (wallTime, else clusterTime)


@dataclass(frozen=True)
class LocalChangeBatch:
    """The changes read since the last batch, and the token that resumes after them."""

    changes: list[LocalChange]
    resume_token: dict[str, Any] | None


@contextmanager
def _stream_errors(action: str) -> Iterator[None]:
    with translate_errors(action):
        try:
            yield
        except OperationFailure as exc:
            if exc.code in _HISTORY_LOST:
                raise StreamHistoryLostError(f"{action}: {exc.code}: resume token lost") from exc
            raise


class WatchedCollection:
    """One local collection, as the local-change watcher and the outbound flusher see it."""

    def __init__(self, db: Any, name: str) -> None:
        self.name = name
        self._coll = db[name]
        self._snapshots = db[SNAPSHOTS]

    async def ensure_polling_index(self) -> None:
        with translate_errors(f"{self.name}.ensure_polling_index"):
            await self._coll.create_index([("updated_at", ASCENDING), ("_id", ASCENDING)],
                                          name="updated_at_id")

    async def supports_change_streams(self) -> bool:
        """Open a change stream once: False when the server cannot (standalone, old engine)."""
        with translate_errors(f"{self.name}.watch"):
            try:
                async with self._coll.watch(max_await_time_ms=10) as stream:
                    await stream.try_next()
                return True
            except OperationFailure as exc:
                if exc.code in _NO_CHANGE_STREAMS:
                    return False
                raise

    async def batches(self, resume_after: Mapping[str, Any] | None, *, max_await_ms: int = 500,
                      max_batch: int = 500) -> AsyncGenerator[LocalChangeBatch, None]:
        """Yield batches forever (empty ones while idle, so the caller can save and stop)."""
        options: dict[str, Any] = {"full_document": "updateLookup", "max_await_time_ms": max_await_ms}
        if resume_after:
            options["resume_after"] = dict(resume_after)
        with _stream_errors(f"{self.name}.watch"):
            async with self._coll.watch(**options) as stream:
                while True:
                    changes: list[LocalChange] = []
                    while len(changes) < max_batch:
                        raw = await stream.try_next()
                        if raw is None:
                            break
                        changes.append(_to_change(raw))
                    yield LocalChangeBatch(changes, stream.resume_token)

    async def changed_since(self, after: tuple[datetime, Any | None], until: datetime,
                            limit: int) -> list[dict[str, Any]]:
        """Documents after the (`updated_at`, `_id`) watermark, `updated_at` <= `until`, in order.

        A watermark without an id (a fresh start) takes every document at or after its time.
        """
        at, last_id = after
        query: dict[str, Any] = {"updated_at": {"$gte": at, "$lte": until}}
        if last_id is not None:
            query = {"updated_at": {"$lte": until},
                     "$or": [{"updated_at": {"$gt": at}}, {"updated_at": at, "_id": {"$gt": last_id}}]}
        with translate_errors(f"{self.name}.changed_since"):
            return list(await self._coll.find(query).sort(
                [("updated_at", ASCENDING), ("_id", ASCENDING)]).limit(limit).to_list(None))

    async def record_field_times(self, times: Mapping[Any, Mapping[str, datetime]], now: datetime,
                                 values: Mapping[Any, Mapping[str, Any]] | None = None) -> None:
        """Set `_sync.field_times.<field>` (never backwards), and beside it the value stamped
        (`values`, per document and field: `shadow.stamped_value`); a service write, so it is marked."""
        ops = [
            UpdateOne({"_id": doc_id}, {
                "$max": {f"_sync.field_times.{name}": at for name, at in fields.items()},
                "$set": {"_sync.written_at": now, "updated_at": now, **{
                    f"{STAMPED_VALUES}.{name}": stamped_value(value, fields[name])
                    for name, value in (values or {}).get(doc_id, {}).items() if name in fields}},
                "$inc": {VERSION: 1},
            })
            for doc_id, fields in times.items() if fields
        ]
        if ops:
            with translate_errors(f"{self.name}.record_field_times"):
                await self._coll.bulk_write(ops, ordered=False)

    async def link(self, local_id: Any, *, sobject: str, sf_id: str, now: datetime) -> bool:
        """Link a document created in Salesforce; False if it (or its crm id) is linked already."""
        update = {"$set": {"crm": {"object": sobject, "id": sf_id, "linked_at": now},
                           "_sync.written_at": now, "updated_at": now}, "$inc": {VERSION: 1}}
        with translate_errors(f"{self.name}.link"):
            try:
                result = await self._coll.update_one(
                    {"_id": local_id, "crm.id": {"$exists": False}}, update)
            except DuplicateKeyError:
                return False
        return bool(result.modified_count)

    async def find(self, local_id: Any) -> dict[str, Any] | None:
        with translate_errors(f"{self.name}.find"):
            doc: dict[str, Any] | None = await self._coll.find_one({"_id": local_id})
            return doc

    async def snapshots(self, ids: Sequence[Any]) -> dict[Any, dict[str, Any]]:
        """The mapped values last seen per document (polling mode diffs against them)."""
        keys = [{"collection": self.name, "id": doc_id} for doc_id in ids]
        with translate_errors(f"{self.name}.snapshots"):
            docs = await self._snapshots.find({"_id": {"$in": keys}}).to_list(None)
        # stored as pairs: local field names may be dotted paths
        return {d["_id"]["id"]: {p["f"]: p.get("v") for p in d.get("values") or []} for d in docs}

    async def save_snapshots(self, values: Mapping[Any, Mapping[str, Any]]) -> None:
        ops = [ReplaceOne({"_id": {"collection": self.name, "id": doc_id}},
                          {"values": [{"f": name, "v": value} for name, value in fields.items()]},
                          upsert=True)
               for doc_id, fields in values.items()]
        if ops:
            with translate_errors(f"{self.name}.save_snapshots"):
                await self._snapshots.bulk_write(ops, ordered=False)


def _to_change(raw: Mapping[str, Any]) -> LocalChange:
    description = raw.get("updateDescription") or {}
    paths = set(_leaf_paths(description.get("updatedFields") or {}))
    paths.update(description.get("removedFields") or [])
    return LocalChange(
        op=str(raw.get("operationType")),
        doc_id=(raw.get("documentKey") or {}).get("_id"),
        document=raw.get("fullDocument"),
        changed_paths=frozenset(paths),
        at=_change_time(raw),
    )


def _leaf_paths(fields: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted leaf paths: servers report `$set {"a.b": 1}` as `{"a.b": 1}` or `{"a": {"b": 1}}`."""
    for name, value in fields.items():
        path = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            yield from _leaf_paths(value, f"{path}.")
        else:
            yield path


def _change_time(raw: Mapping[str, Any]) -> datetime:
    wall = raw.get("wallTime")
    if isinstance(wall, datetime):
        return aware(wall)
    cluster = raw.get("clusterTime")
    if cluster is not None and hasattr(cluster, "as_datetime"):
        return aware(cluster.as_datetime())
    return datetime.now(UTC)


class OutboundMixin:
    """What `Store` exposes of the outbound side: `store.outbox`, `store.watched(...)`, linking."""

    db: Any

    @property
    def outbox(self) -> OutboxCollection:
        return OutboxCollection(self.db)

    def watched(self, collection: str) -> WatchedCollection:
        return WatchedCollection(self.db, collection)

    async def record_shadow(self, collection: str, sets: Mapping[Any, Mapping[str, Any]]) -> None:
        """Set Salesforce-shadow entries (`_sync.sf...`, `reconciler.shadow`) per document. Not a
        platform edit and not a field the watcher maps; `updated_at` and `_sync.written_at` stay
        as they are, so an unstamped platform edit still looks unstamped."""
        ops = [UpdateOne({"_id": doc_id}, {"$set": dict(fields), "$inc": {VERSION: 1}})
               for doc_id, fields in sets.items() if fields]
        if ops:
            with translate_errors(f"{collection}.record_shadow"):
                await self.db[collection].bulk_write(ops, ordered=False)

    async def link_created(self, collection: str, local_id: Any, *, sobject: str, sf_id: str) -> bool:
        """Link a local document to the record a create just made (a service write)."""
        return await self.watched(collection).link(local_id, sobject=sobject, sf_id=sf_id,
                                                   now=datetime.now(UTC))
