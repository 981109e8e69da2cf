"""Backfill: import every record of the synced objects, page by page, resumably.

Per object `SELECT <mapped + system fields> FROM <Object> WHERE <after the watermark>
ORDER BY SystemModstamp, Id`, one page at a time, each page applied as one batch
of UPSERT changes (source IMPORT, one summary sync log per page plus a log per failed record).
The next page is fetched while the current one is applied (one page ahead, never more), so
REST and MongoDB time overlap and at most two pages are in memory.

After each page the object's watermark (`sync_state` `watermark:<Object>` =
`{"ts": <SystemModstamp, second precision>, "last_id": <Id of the page's last record>}`, see
`reconciler.watermark`) is saved, after the page it covers; a re-run resumes right after it
(keyset on `(SystemModstamp, Id)`), and the poller continues from the same watermark. The
watermark never reaches the signpost (the start of the second the object's pass began): a
second not yet over may still gain records ordered before the watermark's id. Records from
that second on are imported all the same (a backfill takes everything there is) and read
once more by the next poll (or the stream's closing poll), which applies them unchanged or
with their newer values. Accounts go first so Contacts find their Companies, Leads before Contacts
so a converted Lead's Person moves to its Contact before the Contact arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from reconciler.ports import ChangeSource, SalesforceApi, SalesforceChange
from reconciler.records import record_change, select_fields
from reconciler.watermark import Watermark, record_position, watermark_key
from settings import Mappings

if TYPE_CHECKING:
    from reconciler.inbound import Reconciler

log = structlog.get_logger(__name__)

OBJECT_ORDER = ("Account", "Lead", "Contact")
IDS_PER_QUERY = 200  # keeps `WHERE Id IN (...)` well under the SOQL length limit

PageHook = Callable[[str, int, int], Awaitable[None]]  # (sobject, page number, records applied)
Clock = Callable[[], datetime]
T = TypeVar("T")


class StateStore(Protocol):
    async def load_state(self, key: str) -> dict[str, Any] | None: ...
    async def save_state(self, key: str, value: dict[str, Any]) -> None: ...


@dataclass
class BackfillResult:
    records: int = 0
    pages: int = 0
    calls: int = 0
    failed: int = 0
    by_object: dict[str, int] = field(default_factory=dict)


def soql(mappings: Mappings, sobject: str, where: str | None = None) -> str:
    text = f"SELECT {', '.join(select_fields(mappings, sobject))} FROM {sobject}"
    return f"{text} WHERE {where}" if where else text


async def backfill(
    sf: SalesforceApi, store: StateStore, reconciler: Reconciler, mappings: Mappings,
    objects: Sequence[str], *, page_hook: PageHook | None = None,
    clock: Clock = lambda: datetime.now(UTC),
) -> BackfillResult:
    result = BackfillResult()
    for sobject in sorted(objects, key=lambda o: OBJECT_ORDER.index(o) if o in OBJECT_ORDER else 9):
        if sobject == "Account" and not mappings.accounts_importable():
            log.info("backfill_object_skipped", sobject=sobject, reason="accounts not importable")
            continue
        signpost = clock().astimezone(UTC).replace(microsecond=0)
        await _backfill_object(sf, store, reconciler, mappings, sobject, signpost, result, page_hook)
    log.info("backfill_finished", records=result.records, pages=result.pages, failed=result.failed)
    return result


async def _backfill_object(
    sf: SalesforceApi, store: StateStore, reconciler: Reconciler, mappings: Mappings, sobject: str,
    signpost: datetime, result: BackfillResult, page_hook: PageHook | None,
) -> None:
    mark = Watermark.from_state(await store.load_state(watermark_key(sobject)))
    query = f"{soql(mappings, sobject, mark.soql_filter())} ORDER BY SystemModstamp, Id"
    page_number = 0
    async with contextlib.aclosing(prefetched(sf.query(query))) as pages:
        async for page in pages:
            page_number += 1
            result.pages += 1
            result.calls += 1
            positions = [record_position(r) for r in page]
            read = [p for p in positions if p is not None]
            # The keyset query skips what is applied; `covers` matters for an old-shape watermark.
            changes = [record_change(sobject, r, ChangeSource.IMPORT)
                       for r, p in zip(page, positions, strict=True) if p is None or not mark.covers(*p)]
            batch = await reconciler.apply_batch(changes, summary=True)
            result.records += len(changes)
            result.failed += batch.failed
            result.by_object[sobject] = result.by_object.get(sobject, 0) + len(changes)
            advanced = mark.advance(read, signpost)
            if advanced != mark:
                await store.save_state(watermark_key(sobject), advanced.to_state())
                mark = advanced
            log.info("backfill_page_applied", sobject=sobject, page=page_number, records=len(changes),
                     failed=batch.failed)
            if page_hook is not None:
                await page_hook(sobject, page_number, len(changes))


async def prefetched(pages: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """`pages`, with the next one already being fetched while the caller works on this one.

    One page ahead and never more: at most two pages are in memory. Close it (`aclosing`) so an
    abandoned read cancels its pending fetch.
    """
    ahead: asyncio.Task[T | None] = asyncio.create_task(_next(pages))
    try:
        while (page := await ahead) is not None:
            ahead = asyncio.create_task(_next(pages))
            yield page
    finally:
        if not ahead.done():
            ahead.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ahead
        aclose = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()


async def _next(pages: AsyncIterator[T]) -> T | None:
    return await anext(pages, None)


async def fetch_changes(
    sf: SalesforceApi, mappings: Mappings, sobject: str, ids: Sequence[str], *, source: ChangeSource
) -> list[SalesforceChange]:
    """Re-fetch records by id (deleted ones included) as UPSERT changes, 200 ids a query."""
    changes: list[SalesforceChange] = []
    for start in range(0, len(ids), IDS_PER_QUERY):
        chunk = ids[start:start + IDS_PER_QUERY]
        in_list = ", ".join(f"'{_quote(i)}'" for i in chunk)
        async for page in sf.query(soql(mappings, sobject, f"Id IN ({in_list})"), include_deleted=True):
            changes += [record_change(sobject, r, source) for r in page]
    return changes


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")
