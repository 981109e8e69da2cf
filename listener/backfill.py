"""Backfill: import every record of the synced objects, page by page, resumably.

Per object (parents first: `reconciler.objects.in_import_order`) the reader's keyset pages
(`listener.reader`, `SELECT <mapped + system fields> FROM <Object> WHERE <after the watermark>
ORDER BY SystemModstamp, Id`), each page applied as one batch of UPSERT changes (source IMPORT,
one summary sync log per page plus a log per failed record). The next page is fetched while the
current one is applied (one page ahead, never more), so REST and MongoDB time overlap and at
most two pages are in memory.

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

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import structlog

from listener.reader import Page, RecordReader
from reconciler.inbound import BatchResult
from reconciler.objects import in_import_order
from reconciler.ports import ChangeSource, SalesforceChange, StateStore
from reconciler.soql import floor_second
from reconciler.store.state_keys import watermark_key
from reconciler.watermark import Watermark

log = structlog.get_logger(__name__)

PageHook = Callable[[str, int, int], Awaitable[None]]  # (sobject, page number, records applied)
Clock = Callable[[], datetime]


class BatchImporter(Protocol):
    """What the backfill needs of the `Reconciler`."""

    async def apply_batch(self, changes: Sequence[SalesforceChange], *, summary: bool = False,
                          attempt: int = 1) -> BatchResult: ...


@dataclass
class BackfillResult:
    records: int = 0
    pages: int = 0
    calls: int = 0
    failed: int = 0
    by_object: dict[str, int] = field(default_factory=dict)


async def backfill(
    reader: RecordReader, store: StateStore, reconciler: BatchImporter, objects: Sequence[str], *,
    page_hook: PageHook | None = None, clock: Clock = lambda: datetime.now(UTC),
) -> BackfillResult:
    result = BackfillResult()
    for sobject in in_import_order(list(objects)):
        if sobject == "Account" and not reader.mappings.accounts_importable():
            log.info("backfill_object_skipped", sobject=sobject, reason="accounts not importable")
            continue
        signpost = floor_second(clock())
        await _backfill_object(reader, store, reconciler, sobject, signpost, result, page_hook)
    log.info("backfill_finished", records=result.records, pages=result.pages, failed=result.failed)
    return result


async def _backfill_object(
    reader: RecordReader, store: StateStore, reconciler: BatchImporter, sobject: str,
    signpost: datetime, result: BackfillResult, page_hook: PageHook | None,
) -> None:
    mark = Watermark.from_state(await store.load_state(watermark_key(sobject)))
    pages = reader.pages(sobject, mark, signpost, source=ChangeSource.IMPORT, stop_at_signpost=False,
                         include_deleted=False, read_ahead=True)
    page_number = 0
    async with contextlib.aclosing(pages):
        async for page in pages:
            page_number += 1
            failed = await _apply(reconciler, page, result, sobject)
            if page.mark != mark:
                await store.save_state(watermark_key(sobject), page.mark.to_state())
                mark = page.mark
            log.info("backfill_page_applied", sobject=sobject, page=page_number, records=len(page.changes),
                     failed=failed)
            if page_hook is not None:
                await page_hook(sobject, page_number, len(page.changes))


async def _apply(reconciler: BatchImporter, page: Page, result: BackfillResult, sobject: str) -> int:
    batch = await reconciler.apply_batch(page.changes, summary=True)
    result.pages += 1
    result.calls += 1
    result.records += len(page.changes)
    result.failed += batch.failed
    result.by_object[sobject] = result.by_object.get(sobject, 0) + len(page.changes)
    return batch.failed


__all__ = ["BackfillResult", "PageHook", "backfill"]
