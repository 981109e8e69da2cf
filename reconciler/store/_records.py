"""People and Companies: lookups by CRM id / email / domain, and one bulk write per batch
(`_bulk`: per-record outcomes, compare-and-set, encoding errors), optionally fenced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any

import structlog

from reconciler.errors import FencedError
from reconciler.store._bulk import BulkOutcome, RecordWrite, write_records
from reconciler.store._client import CASE_INSENSITIVE, MAJORITY, translate_errors
from reconciler.store._lease import Fence, check_fence

log = structlog.get_logger(__name__)


@asynccontextmanager
async def _fenced(db: Any, fence: Fence | None, operation: str) -> AsyncIterator[None]:
    """A record write made for a leader term: the lease is checked right before the write
    (lost: `FencedError`, nothing written) and right after it (lost meanwhile: `FencedError`
    with `applied=True`, the write landed). What remains: a writer that stalls between the
    first check and the server applying the write lands that one write inside the new term;
    the after-check reports it, and compare-and-set (`RecordWrite.expected`) refuses it for
    any document the new term rewrote since the stale writer read it."""
    if fence is None:
        yield
        return
    await check_fence(db, fence)
    yield
    try:
        await check_fence(db, fence)
    except FencedError as exc:
        log.error("fenced_write_landed_late", operation=operation, lease=fence.lease,
                  owner=fence.owner, term=fence.term)
        raise FencedError(f"{operation}: applied after the lease was lost: {exc}", applied=True) from exc


def chunks(values: Collection[Any], size: int) -> list[list[Any]]:
    items = list(values)
    return [items[i:i + size] for i in range(0, len(items), size)]


class RecordsMixin:
    db: Any
    # `$in` lists are sent in slices of this size. One logical lookup per batch; the slicing is
    # for SecantusDB, which re-checks each matched document against the `$in` list linearly
    # (quadratic in the slice): a 200-event micro-batch's lookup of its linked People cost the
    # server 68-75 ms of CPU as one `$in`, 49-50 ms as two, 38-39 ms as four. mongod has no such
    # cost (there the slices only add requests, sent together by `_find_in`): raise it there.
    lookup_chunk: int = 50

    async def _find_in(self, collection: str, field: str, values: Collection[Any],
                       extra: dict[str, Any] | None = None, **options: Any) -> list[dict[str, Any]]:
        """One lookup, its slices in flight together: the slices cost the server what they cost,
        but their round-trips overlap instead of adding up (on SecantusDB a slice's reply takes
        about twice its server time; on mongod the slices are then no slower than one `$in`)."""
        async def one(part: list[Any]) -> list[dict[str, Any]]:
            query = {field: {"$in": part}, **(extra or {})}
            with translate_errors(f"find {collection}.{field}"):
                # One reply for the whole slice (the default first batch of 101 costs a getMore), one
                # larger than it can fill when every id matches once: a reply that fills its batch
                # exactly leaves the cursor open, and closing it costs another (empty) round-trip.
                found: list[dict[str, Any]] = await self.db[collection].find(
                    query, batch_size=len(part) + 1, **options).to_list(None)
            return found

        parts = chunks(values, self.lookup_chunk)
        if len(parts) <= 1:
            return await one(parts[0]) if parts else []
        tasks = [asyncio.ensure_future(one(part)) for part in parts]
        try:
            slices = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one failed, or we were cancelled: none is left running
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [doc for found in slices for doc in found]

    async def find_linked(
        self, collection: str, sf_ids: Collection[str], *, converted: bool = False
    ) -> list[dict[str, Any]]:
        """Documents linked (`crm.id`) to these ids; with `converted`, also the People whose
        Contact one of these Leads was converted into (`crm.converted_from`: a list of Lead ids,
        or one id on a document written before; `$in` matches either, one index serves both)."""
        if not sf_ids:
            return []
        docs = await self._find_in(collection, "crm.id", sf_ids)
        if converted:
            found = {d["crm"]["id"] for d in docs}
            docs += await self._find_in(collection, "crm.converted_from",
                                        [i for i in sf_ids if i not in found])
        return docs

    async def find_unlinked_matches(
        self, collection: str, local_field: str, values: Collection[str]
    ) -> list[dict[str, Any]]:
        """Unlinked documents whose `local_field` equals one of `values`, ignoring case."""
        return await self._find_in(collection, local_field, values, {"crm.id": {"$exists": False}},
                                   collation=CASE_INSENSITIVE)

    async def find_records(self, collection: str, ids: Collection[Any]) -> list[dict[str, Any]]:
        return await self._find_in(collection, "_id", ids)

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

    async def bulk_apply(self, collection: str, writes: Sequence[RecordWrite], *,
                         fence: Fence | None = None, journaled: bool = True) -> BulkOutcome:
        """One unordered bulk write; per-document failures come back in `errors`, not raised.
        With `fence`, see `_fenced`. `journaled=False` writes majority without `j`: only for a
        caller that ends its batch with a journaled write (a sync-log insert, `journal_barrier`)
        before it reports anything done (see the package docstring)."""
        if not writes:
            return BulkOutcome()
        async with _fenced(self.db, fence, "bulk_apply"):
            return await self._bulk_apply(collection, writes, journaled)

    async def _bulk_apply(self, collection: str, writes: Sequence[RecordWrite],
                          journaled: bool = True) -> BulkOutcome:
        coll = self.db[collection] if journaled else self.db[collection].with_options(write_concern=MAJORITY)
        return await write_records(coll, writes, ordered=False, operation="bulk_apply")

    async def write_in_order(self, collection: str, writes: Sequence[RecordWrite], *,
                             fence: Fence | None = None) -> BulkOutcome:
        """An ordered bulk write, for the few changes whose order matters (a conversion frees
        a CRM id on one document before linking it to another). `fence` as in `bulk_apply`;
        everything after the first failed write is reported `NOT_RUN`."""
        if not writes:
            return BulkOutcome()
        async with _fenced(self.db, fence, "write_in_order"):
            return await write_records(self.db[collection], writes, ordered=True,
                                       operation="write_in_order")
