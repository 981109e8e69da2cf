"""People and Companies: lookups by CRM id / email / domain, and one bulk write per batch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymongo import DeleteOne, UpdateOne
from pymongo.errors import BulkWriteError

from reconciler.errors import RetriableError
from reconciler.store._client import CASE_INSENSITIVE, translate_errors


@dataclass
class RecordWrite:
    """One document's change, written in a batch. `filter` selects it (`{"_id": ...}` or
    `{"crm.id": ...}`); `upsert` inserts it (with `set_on_insert`) when nothing matches."""

    filter: dict[str, Any]
    set: dict[str, Any] = field(default_factory=dict)
    unset: list[str] = field(default_factory=list)
    set_on_insert: dict[str, Any] = field(default_factory=dict)
    upsert: bool = False
    delete: bool = False


@dataclass
class BulkOutcome:
    upserted: dict[int, Any] = field(default_factory=dict)   # write index -> new _id
    errors: dict[int, str] = field(default_factory=dict)     # write index -> "CODE: message"


def _operation(write: RecordWrite) -> Any:
    if write.delete:
        return DeleteOne(write.filter)
    update: dict[str, Any] = {}
    if write.set:
        update["$set"] = write.set
    if write.unset:
        update["$unset"] = dict.fromkeys(write.unset, "")
    if write.set_on_insert:
        update["$setOnInsert"] = write.set_on_insert
    return UpdateOne(write.filter, update, upsert=write.upsert)


def _write_error(error: dict[str, Any]) -> str:
    if error.get("code") == 11000:
        return f"DUPLICATE_VALUE: {error.get('keyValue') or error.get('errmsg')}"
    return f"WRITE_ERROR {error.get('code')}: {error.get('errmsg')}"


class RecordsMixin:
    db: Any

    async def find_linked(self, collection: str, sf_ids: Collection[str]) -> list[dict[str, Any]]:
        """Documents linked (`crm.id`) or formerly linked as a converted Lead to these ids."""
        if not sf_ids:
            return []
        ids = list(sf_ids)
        query = {"$or": [{"crm.id": {"$in": ids}}, {"crm.converted_from": {"$in": ids}}]}
        with translate_errors("find_linked"):
            return list(await self.db[collection].find(query).to_list(None))

    async def find_unlinked_matches(
        self, collection: str, local_field: str, values: Collection[str]
    ) -> list[dict[str, Any]]:
        """Unlinked documents whose `local_field` equals one of `values`, ignoring case."""
        if not values:
            return []
        query = {local_field: {"$in": list(values)}, "crm.id": {"$exists": False}}
        with translate_errors("find_unlinked_matches"):
            cursor = self.db[collection].find(query, collation=CASE_INSENSITIVE)
            return list(await cursor.to_list(None))

    async def find_records(self, collection: str, ids: Collection[Any]) -> list[dict[str, Any]]:
        if not ids:
            return []
        with translate_errors("find_records"):
            return list(await self.db[collection].find({"_id": {"$in": list(ids)}}).to_list(None))

    async def iter_linked(
        self, collection: str, sobject: str, *, batch_size: int = 200
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every document linked to `sobject`, in pages of `batch_size`, by `_id`."""
        last: Any = None
        while True:
            query: dict[str, Any] = {"crm.object": sobject, "crm.id": {"$exists": True}}
            if last is not None:
                query["_id"] = {"$gt": last}
            with translate_errors("iter_linked"):
                page = await self.db[collection].find(query).sort("_id", 1).limit(batch_size).to_list(None)
            if not page:
                return
            yield list(page)
            last = page[-1]["_id"]

    async def bulk_apply(self, collection: str, writes: Sequence[RecordWrite]) -> BulkOutcome:
        """One unordered bulk write; per-document failures come back in `errors`, not raised."""
        if not writes:
            return BulkOutcome()
        with translate_errors("bulk_apply"):
            try:
                result = await self.db[collection].bulk_write([_operation(w) for w in writes], ordered=False)
            except BulkWriteError as exc:
                details = exc.details
                if details.get("writeConcernErrors"):
                    raise RetriableError("MongoDB write concern not satisfied") from exc
                return BulkOutcome(
                    upserted={u["index"]: u["_id"] for u in details.get("upserted", [])},
                    errors={e["index"]: _write_error(e) for e in details.get("writeErrors", [])},
                )
        return BulkOutcome(upserted=dict(result.upserted_ids or {}))

    async def write_in_order(self, collection: str, writes: Sequence[RecordWrite]) -> BulkOutcome:
        """An ordered bulk write, for the few changes whose order matters (a conversion frees
        a CRM id on one document before linking it to another)."""
        if not writes:
            return BulkOutcome()
        with translate_errors("write_in_order"):
            try:
                result = await self.db[collection].bulk_write([_operation(w) for w in writes], ordered=True)
            except BulkWriteError as exc:
                details = exc.details
                failed = {e["index"]: _write_error(e) for e in details.get("writeErrors", [])}
                first = min(failed) if failed else len(writes)
                # ordered: everything after the first failure did not run
                failed.update({i: "NOT_RUN: an earlier write failed" for i in range(first + 1, len(writes))})
                return BulkOutcome(errors=failed)
        return BulkOutcome(upserted=dict(result.upserted_ids or {}))
