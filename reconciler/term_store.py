"""The store as one leader term writes through it (issue 11 item 4, the wiring).

`TermStore(store, fence)` shares `store`'s connection; `fence` returns the `Fence` captured when
the current term began (None between terms). Every write a term makes through it is fenced:

- offsets (`save_state`: replay ids, watermarks, watcher offsets, remerge state) and record
  writes (`bulk_apply`, `write_in_order`) carry the fence: refused by the store itself once a
  newer term holds the lease;
- sync logs and the watcher's and flusher's own record writes (field times and links through
  `watched(...)`, the Salesforce shadow) check the fence first (one read): a stalled ex-leader
  logs nothing as done, and stamps or links nothing, after a newer term began; the first sync
  logs of a term re-read which records have open failures (`Store.forget_open_failures`: other
  leaders logged some meanwhile);
- between terms (no fence) every such write is refused.

A refusal is `FencedError`, logged here (`term_write_refused`, the operation and the term) and
raised: not retriable; whoever meets it ends the term (`LeaderTerm.fenced`), no crash. Reads are
the store's own. Never `close()` it: the connection is the store's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import structlog

from reconciler.errors import FencedError
from reconciler.store import BulkOutcome, Fence, RecordWrite, Store, WatchedCollection
from reconciler.sync_logs import SyncLog

log = structlog.get_logger(__name__)

FenceProvider = Callable[[], Fence | None]


class TermStore(Store):
    """`Store` whose writes carry (or check) the current leader term's fence."""

    def __init__(self, store: Store, fence: FenceProvider) -> None:
        super().__init__(store.client, store.db, sync_log_retention_days=store.sync_log_retention_days)
        self._term_fence = fence
        self._logs_term: int | None = None  # the term whose sync logs this store last wrote

    def term(self) -> Fence:
        """The term writes are made for; `FencedError` between terms."""
        fence = self._term_fence()
        if fence is None:
            raise FencedError("no leader term to write for")
        return fence

    async def save_state(self, key: str, value: dict[str, Any], *, fence: Fence | None = None) -> None:
        async with self._refusals(f"save_state {key}"):
            await super().save_state(key, value, fence=fence or self.term())

    async def bulk_apply(self, collection: str, writes: Sequence[RecordWrite], *,
                         fence: Fence | None = None, journaled: bool = True) -> BulkOutcome:
        async with self._refusals(f"bulk_apply {collection}"):
            return await super().bulk_apply(collection, writes, fence=fence or self.term(),
                                            journaled=journaled)

    async def write_in_order(self, collection: str, writes: Sequence[RecordWrite], *,
                             fence: Fence | None = None) -> BulkOutcome:
        async with self._refusals(f"write_in_order {collection}"):
            return await super().write_in_order(collection, writes, fence=fence or self.term())

    async def insert_sync_logs(self, logs: Sequence[SyncLog]) -> list[str]:
        if logs:
            async with self._refusals("insert_sync_logs"):
                fence = self.term()
                await self.check_fence(fence)
            if fence.term != self._logs_term:
                # the leaders between our terms logged failures this process has not seen
                self.forget_open_failures()
                self._logs_term = fence.term
        return await super().insert_sync_logs(logs)

    def watched(self, collection: str) -> WatchedCollection:
        return _TermWatched(self, collection)  # link_created goes through it too

    async def record_shadow(self, collection: str, sets: Mapping[Any, Mapping[str, Any]]) -> None:
        if any(sets.values()):
            await self.check_term(f"record_shadow {collection}")
        await super().record_shadow(collection, sets)

    async def check_term(self, operation: str) -> None:
        """`FencedError` (logged) unless the lease still names this term: one read."""
        async with self._refusals(operation):
            await self.check_fence(self.term())

    @asynccontextmanager
    async def _refusals(self, operation: str) -> AsyncIterator[None]:
        try:
            yield
        except FencedError as exc:
            fence = self._term_fence()
            log.warning("term_write_refused", operation=operation, applied=exc.applied,
                        term=fence.term if fence else None, error=str(exc))
            raise


class _TermWatched(WatchedCollection):
    """A watched collection whose own record writes check the term first."""

    def __init__(self, store: TermStore, name: str) -> None:
        super().__init__(store.db, name)
        self._term_store = store

    async def record_field_times(self, times: Mapping[Any, Mapping[str, datetime]], now: datetime,
                                 values: Mapping[Any, Mapping[str, Any]] | None = None) -> None:
        if any(times.values()):
            await self._term_store.check_term(f"record_field_times {self.name}")
        await super().record_field_times(times, now, values)

    async def link(self, local_id: Any, *, sobject: str, sf_id: str, now: datetime) -> bool:
        await self._term_store.check_term(f"link {self.name}")
        return await super().link(local_id, sobject=sobject, sf_id=sf_id, now=now)


__all__ = ["FenceProvider", "TermStore"]
