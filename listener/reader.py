"""The one Salesforce read path: full-record SOQL, keyset pages from a watermark, fetch by id.

The poller (polling, the stream's catch-up and gap fetches), the backfill and the reconciler's
re-fetches (retry, import, lead conversion, remerge: through `reconciler.ports.RecordFetcher`)
all read Salesforce records here, so they select the same fields and turn a record into a
change the same way.

Fields: `ALWAYS_SELECTED` (`Id`, `SystemModstamp`, `LastModifiedDate`, `IsDeleted`), then the
object's system fields (owner, linking and conversion fields, `reconciler.objects`), then the
mapped ones.

Keyset pages (`RecordReader.pages`), per object, ordered by (`SystemModstamp`, `Id`):

    SELECT <fields> FROM Lead
    WHERE (SystemModstamp > <ts> OR (SystemModstamp = <ts> AND Id > '<last_id>'))
      [AND SystemModstamp < <signpost>]
    ORDER BY SystemModstamp, Id

Each page comes with the watermark after it (never at or past the signpost, see
`reconciler.watermark`); the caller applies the page, then saves that watermark.

Record -> change (`record_change`), one rule for every path:

- kind: DELETE when `IsDeleted` is true (only `queryAll` returns deleted records), else UPSERT;
- `changed_at`: `LastModifiedDate`, else `SystemModstamp`, else the time it was read;
- a record without a string `Id` cannot be a change: it is left out and logged
  (`salesforce_record_unusable`), never silently;
- a record without a readable `SystemModstamp` is still applied (the backfill and fetch by id
  always did), but it has no keyset position, so it never moves the watermark; the poller, which
  used to drop it silently, now applies it too and logs `salesforce_record_without_modstamp`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import structlog

from reconciler.objects import ALWAYS_SELECTED, OBJECTS
from reconciler.ports import ChangeKind, ChangeSource, SalesforceChange
from reconciler.soql import parse_sf_datetime, soql_string
from reconciler.watermark import Watermark, record_position
from settings import Mappings

log = structlog.get_logger(__name__)

IDS_PER_QUERY = 200  # ids per `Id IN (...)` query, well inside SOQL's statement length limit
KEYSET_ORDER = "ORDER BY SystemModstamp, Id"

T = TypeVar("T")
Records = list[dict[str, Any]]
Clock = Callable[[], datetime]


class QueryApi(Protocol):
    """What the reader needs of `SalesforceClient`."""

    def query(self, soql: str, *, include_deleted: bool = False) -> AsyncIterator[list[dict[str, Any]]]: ...


def select_fields(mappings: Mappings, sobject: str) -> list[str]:
    """The fields a full-record query of `sobject` selects: always-selected, system, mapped."""
    known = OBJECTS.get(sobject)
    fields: list[str] = [*ALWAYS_SELECTED, *(known.system_fields if known else ())]
    for m in mappings.for_object(sobject):
        if m.sf_field not in fields:
            fields.append(m.sf_field)
    return fields


def soql(mappings: Mappings, sobject: str, where: str | None = None, order_by: str | None = None) -> str:
    text = f"SELECT {', '.join(select_fields(mappings, sobject))} FROM {sobject}"
    if where:
        text = f"{text} WHERE {where}"
    return f"{text} {order_by}" if order_by else text


def record_change(sobject: str, record: Mapping[str, Any], source: ChangeSource, *,
                  read_at: datetime) -> SalesforceChange | None:
    """One queried record -> its change (see the module docstring); None without a string Id."""
    sf_id = record.get("Id")
    if not isinstance(sf_id, str) or not sf_id:
        return None
    changed_at = (parse_sf_datetime(record.get("LastModifiedDate"))
                  or parse_sf_datetime(record.get("SystemModstamp")) or read_at)
    kind = ChangeKind.DELETE if record.get("IsDeleted") is True else ChangeKind.UPSERT
    fields = {k: v for k, v in record.items() if k not in ("Id", "attributes")}
    return SalesforceChange(sobject=sobject, sf_id=sf_id, kind=kind, fields=fields,
                            changed_at=changed_at, source=source)


@dataclass(frozen=True)
class Page:
    """One keyset page: the changes not yet covered, and the watermark once they are applied."""

    changes: list[SalesforceChange]
    mark: Watermark
    read: int  # records Salesforce returned in this page


class RecordReader:
    """Reads full Salesforce records as `SalesforceChange`s; implements `RecordFetcher`."""

    def __init__(self, sf: QueryApi, mappings: Mappings, *,
                 clock: Clock = lambda: datetime.now(UTC)) -> None:
        self._sf = sf
        self.mappings = mappings
        self._clock = clock

    def fields(self, sobject: str) -> list[str]:
        return select_fields(self.mappings, sobject)

    async def fetch(self, sobject: str, ids: Iterable[str], *, source: ChangeSource,
                    mappings: Mappings | None = None) -> list[SalesforceChange]:
        """Current state of records by id, deleted included: one `Id IN (...)` query per 200 ids."""
        unique = list(dict.fromkeys(ids))
        changes: list[SalesforceChange] = []
        for start in range(0, len(unique), IDS_PER_QUERY):
            in_list = ", ".join(soql_string(i) for i in unique[start:start + IDS_PER_QUERY])
            query = soql(mappings or self.mappings, sobject, f"Id IN ({in_list})")
            async for records in self._sf.query(query, include_deleted=True):
                changes += self.changes(sobject, records, source)
        return changes

    async def pages(
        self, sobject: str, mark: Watermark, signpost: datetime, *, source: ChangeSource,
        stop_at_signpost: bool = True, include_deleted: bool = True, read_ahead: bool = False,
    ) -> AsyncGenerator[Page, None]:
        """Keyset pages after `mark`; each page's watermark stays below `signpost`.

        The poller reads up to the signpost, deleted records included; the backfill reads
        everything there is (`stop_at_signpost=False`, live records only) one page ahead
        (`read_ahead`). Close the generator (`aclosing`) when abandoning it.
        """
        where = mark.soql_filter(signpost if stop_at_signpost else None)
        query = soql(self.mappings, sobject, where, KEYSET_ORDER)
        source_pages: AsyncIterator[Records] = self._sf.query(query, include_deleted=include_deleted)
        if read_ahead:
            source_pages = prefetched(source_pages)
        async with contextlib.aclosing(_closing(source_pages)) as pages:
            async for records in pages:
                read: list[tuple[str, datetime]] = []
                fresh: list[dict[str, Any]] = []
                for record in records:
                    position = record_position(record)
                    if position is not None:
                        read.append(position)
                    # Only what an old-shape watermark lists is covered: the query skips the rest.
                    if position is None or not mark.covers(*position):
                        fresh.append(record)
                page = Page(self.changes(sobject, fresh, source, keyset=True), mark.advance(read, signpost),
                            len(records))
                yield page
                mark = page.mark

    def changes(self, sobject: str, records: Iterable[Mapping[str, Any]], source: ChangeSource, *,
                keyset: bool = False) -> list[SalesforceChange]:
        """`record_change` over `records`, logging the records it cannot position or use."""
        read_at = self._clock()
        out: list[SalesforceChange] = []
        for record in records:
            change = record_change(sobject, record, source, read_at=read_at)
            if change is None:
                log.warning("salesforce_record_unusable", object=sobject, reason="no Id")
                continue
            if keyset and parse_sf_datetime(record.get("SystemModstamp")) is None:
                log.warning("salesforce_record_without_modstamp", object=sobject, sf_id=change.sf_id)
            out.append(change)
        return out


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


async def _closing(pages: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """`pages` as a generator that closes its source (a pending prefetch included) when closed."""
    try:
        async for page in pages:
            yield page
    finally:
        aclose = getattr(pages, "aclose", None)
        if aclose is not None:
            await aclose()


__all__ = ["IDS_PER_QUERY", "Page", "QueryApi", "RecordReader", "prefetched", "record_change",
           "select_fields", "soql"]
