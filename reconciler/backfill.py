"""Backfill: import every record of the synced objects, page by page, resumably.

Per object `SELECT <mapped + system fields> FROM <Object> ORDER BY SystemModstamp, Id`,
streamed one page at a time (a page is never held longer than its own apply), each page
applied as one batch of UPSERT changes (source IMPORT, one summary sync log per page plus a
log per failed record). After each page the object's watermark (`sync_state`
`watermark:<Object>` = `{"ts": <SystemModstamp, ISO, second precision>, "ids": [ids at
that ts]}`) is saved, after the page it covers; a re-run resumes from it with `>=` and skips
the ids already applied at that second. The poller continues from the same watermark.
Accounts go first so Contacts find their Companies, Leads before Contacts so a converted
Lead's Person moves to its Contact before the Contact arrives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from reconciler.ports import ChangeSource, SalesforceApi, SalesforceChange
from reconciler.records import format_sf_datetime, parse_sf_datetime, record_change, select_fields
from settings import Mappings

if TYPE_CHECKING:
    from reconciler.inbound import Reconciler

log = structlog.get_logger(__name__)

OBJECT_ORDER = ("Account", "Lead", "Contact")
IDS_PER_QUERY = 200  # keeps `WHERE Id IN (...)` well under the SOQL length limit

PageHook = Callable[[str, int], Awaitable[None]]


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


def watermark_key(sobject: str) -> str:
    return f"watermark:{sobject}"


def soql(mappings: Mappings, sobject: str, where: str | None = None) -> str:
    text = f"SELECT {', '.join(select_fields(mappings, sobject))} FROM {sobject}"
    return f"{text} WHERE {where}" if where else text


def advance_watermark(
    watermark: dict[str, Any] | None, records: Sequence[dict[str, Any]]
) -> dict[str, Any] | None:
    """The watermark after a page ordered by SystemModstamp, Id (pure)."""
    current = dict(watermark) if watermark else None
    for record in records:
        stamp = parse_sf_datetime(record.get("SystemModstamp"))
        if stamp is None:
            continue
        ts = format_sf_datetime(stamp)
        if current is None or ts > current["ts"]:
            current = {"ts": ts, "ids": [record["Id"]]}
        elif ts == current["ts"] and record["Id"] not in current["ids"]:
            current["ids"] = [*current["ids"], record["Id"]]
    return current


def already_applied(watermark: dict[str, Any] | None, record: dict[str, Any]) -> bool:
    if not watermark:
        return False
    stamp = parse_sf_datetime(record.get("SystemModstamp"))
    return stamp is not None and format_sf_datetime(stamp) == watermark["ts"] \
        and record.get("Id") in watermark["ids"]


async def backfill(
    sf: SalesforceApi, store: StateStore, reconciler: Reconciler, mappings: Mappings,
    objects: Sequence[str], *, page_hook: PageHook | None = None,
) -> BackfillResult:
    result = BackfillResult()
    for sobject in sorted(objects, key=lambda o: OBJECT_ORDER.index(o) if o in OBJECT_ORDER else 9):
        if sobject == "Account" and not mappings.accounts_importable():
            log.info("backfill_object_skipped", sobject=sobject, reason="accounts not importable")
            continue
        await _backfill_object(sf, store, reconciler, mappings, sobject, result, page_hook)
    log.info("backfill_finished", records=result.records, pages=result.pages, failed=result.failed)
    return result


async def _backfill_object(
    sf: SalesforceApi, store: StateStore, reconciler: Reconciler, mappings: Mappings, sobject: str,
    result: BackfillResult, page_hook: PageHook | None,
) -> None:
    watermark = await store.load_state(watermark_key(sobject))
    where = f"SystemModstamp >= {watermark['ts']}" if watermark else None
    query = f"{soql(mappings, sobject, where)} ORDER BY SystemModstamp, Id"
    page_number = 0
    async for page in sf.query(query):
        page_number += 1
        result.pages += 1
        result.calls += 1
        changes = [record_change(sobject, r, ChangeSource.IMPORT) for r in page
                   if not already_applied(watermark, r)]
        batch = await reconciler.apply_batch(changes, summary=True)
        result.records += len(changes)
        result.failed += batch.failed
        result.by_object[sobject] = result.by_object.get(sobject, 0) + len(changes)
        watermark = advance_watermark(watermark, page)
        if watermark is not None:
            await store.save_state(watermark_key(sobject), watermark)
        log.info("backfill_page_applied", sobject=sobject, page=page_number, records=len(changes),
                 failed=batch.failed)
        if page_hook is not None:
            await page_hook(sobject, page_number)


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
