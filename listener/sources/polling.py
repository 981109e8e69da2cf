"""SOQL polling: the inbound fallback when the stream cannot run, and the stream's catch-up.

Per object, one `queryAll` (deleted records included) ordered by (`SystemModstamp`, `Id`),
keyset-paged from the watermark:

    SELECT <mapped fields + system fields> FROM Lead
    WHERE (SystemModstamp > <ts> OR (SystemModstamp = <ts> AND Id > '<last_id>'))
      AND SystemModstamp < <signpost>
    ORDER BY SystemModstamp, Id

`SystemModstamp` has one-second precision, so a `>` watermark would miss the rest of its
second; the keyset form reads the watermark second again but only after the last (`Id`,
`SystemModstamp`) pair applied (see `reconciler.watermark`). The signpost is the start of the
second the pass began: every second below it is complete, so no record can still appear in a
second behind the watermark, and a record changed twice in one second is never half-seen.
The watermark (`sync_state` `watermark:<Object>` = `{"ts": "2024-05-01T10:00:00Z",
"last_id": "00Q..."}`, shared with the backfill; an old `{"ts", "ids"}` document is still read;
the fields selected are `reconciler.records.select_fields`, as the backfill's) moves only after
a page is applied, and never reaches the signpost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from listener.events import parse_sf_datetime
from listener.metrics import METRICS
from reconciler.errors import BudgetExhaustedError, RetriableError
from reconciler.ports import ChangeKind, ChangeSink, ChangeSource, SalesforceChange
from reconciler.records import format_sf_datetime, select_fields
from reconciler.watermark import Watermark, record_position, watermark_key
from settings import Mappings

__all__ = ["PassReport", "Poller", "Watermark", "floor_second", "polled_change", "soql_datetime",
           "watermark_key"]

log = structlog.get_logger(__name__)

IN_CHUNK = 200  # ids per `Id IN (...)` query, well inside SOQL's statement length limit


class QueryApi(Protocol):
    """What the poller needs of `SalesforceClient`."""

    def query(self, soql: str, *, include_deleted: bool = False) -> AsyncIterator[list[dict[str, Any]]]: ...

    @property
    def calls_made(self) -> int: ...


class StateStore(Protocol):
    async def load_state(self, key: str) -> dict[str, Any] | None: ...

    async def save_state(self, key: str, value: dict[str, Any]) -> None: ...


def soql_datetime(value: datetime) -> str:
    """The SOQL literal, and the watermark's `ts` form (the same as the backfill writes)."""
    return format_sf_datetime(value)


def floor_second(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(microsecond=0)


def polled_change(sobject: str, record: dict[str, Any], source: ChangeSource) -> SalesforceChange | None:
    """One queried record -> an UPSERT (or DELETE when `IsDeleted`); None when unusable."""
    sf_id = record.get("Id")
    stamp = parse_sf_datetime(record.get("SystemModstamp"))
    if not isinstance(sf_id, str) or stamp is None:
        return None
    changed_at = parse_sf_datetime(record.get("LastModifiedDate")) or stamp
    kind = ChangeKind.DELETE if record.get("IsDeleted") is True else ChangeKind.UPSERT
    fields = {k: v for k, v in record.items() if k not in ("Id", "attributes")}
    return SalesforceChange(sobject=sobject, sf_id=sf_id, kind=kind, fields=fields,
                            changed_at=changed_at, source=source)


@dataclass
class PassReport:
    records: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


class Poller:
    """Polls each configured object from its watermark (a `Source`); also fetches records by id."""

    name = "poller"

    def __init__(
        self,
        sf: QueryApi,
        store: StateStore,
        sink: ChangeSink,
        mappings: Mappings,
        objects: Sequence[str],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        every_minutes: int = 10,
    ) -> None:
        self._sf = sf
        self._store = store
        self._sink = sink
        self._mappings = mappings
        self.objects = list(objects)
        self._clock = clock
        self.every_minutes = every_minutes
        self.last_pass: PassReport | None = None
        self.running = False

    @property
    def ready(self) -> bool:
        return self.running

    def status(self) -> dict[str, Any]:
        return {"running": self.running, "every_minutes": self.every_minutes}

    async def handover_marks(self) -> dict[str, Watermark]:
        return {sobject: await self.watermark(sobject) for sobject in self.objects}

    def resume_from(self, marks: dict[str, Watermark]) -> None:
        """The poller continues from the watermarks in `sync_state`; nothing to take over."""

    async def run(self, stop: asyncio.Event) -> None:
        await self.run_every(self.every_minutes, stop)

    async def watermark(self, sobject: str) -> Watermark:
        return Watermark.from_state(await self._store.load_state(watermark_key(sobject)))

    async def run_once(self, objects: Sequence[str] | None = None) -> PassReport:
        """One pass over every object (or `objects`); watermarks advance page by page."""
        signpost = floor_second(self._clock())
        report = PassReport()
        for sobject in objects if objects is not None else self.objects:
            before = self._sf.calls_made
            report.records[sobject] = await self._poll(sobject, await self.watermark(sobject), signpost,
                                                       persist=True)
            report.calls[sobject] = self._sf.calls_made - before
        log.info("poll_pass", signpost=signpost.isoformat(), records=report.records, calls=report.calls)
        self.last_pass = report
        return report

    async def poll_since(self, sobject: str, since: datetime) -> int:
        """Catch up one object from `since` (after a GAP_OVERFLOW); the watermark is untouched."""
        signpost = floor_second(self._clock())
        return await self._poll(sobject, Watermark(floor_second(since)), signpost, persist=False)

    async def run_every(self, minutes: int, stop: asyncio.Event) -> None:
        """Poll every `minutes` until `stop`; a failed pass is logged and retried next interval."""
        self.running = True
        try:
            while not stop.is_set():
                try:
                    await self.run_once()
                except (RetriableError, BudgetExhaustedError) as exc:
                    log.warning("poll_pass_failed", error=str(exc), error_type=type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), minutes * 60)
        finally:
            self.running = False

    async def fetch_by_ids(self, sobject: str, ids: Iterable[str]) -> list[SalesforceChange]:
        """Current state of records by id: one `Id IN (...)` query per 200 ids (deleted included)."""
        unique = sorted(set(ids))
        fields = ", ".join(select_fields(self._mappings, sobject))
        changes: list[SalesforceChange] = []
        for start in range(0, len(unique), IN_CHUNK):
            quoted = ", ".join(_quote(i) for i in unique[start:start + IN_CHUNK])
            soql = f"SELECT {fields} FROM {sobject} WHERE Id IN ({quoted})"
            async for page in self._sf.query(soql, include_deleted=True):
                changes.extend(c for r in page if (c := polled_change(sobject, r, ChangeSource.GAP)))
        return changes

    async def _poll(self, sobject: str, mark: Watermark, signpost: datetime, *, persist: bool) -> int:
        seen = 0
        async for page in self._sf.query(self._soql(sobject, mark, signpost), include_deleted=True):
            fresh: list[SalesforceChange] = []
            read: list[tuple[str, datetime]] = []
            for record in page:
                change = polled_change(sobject, record, ChangeSource.POLL)
                position = record_position(record)
                if change is None or position is None:
                    continue
                read.append(position)
                if not mark.covers(*position):  # only an old-shape watermark's ids are skipped
                    fresh.append(change)
            if fresh:
                await self._sink.apply(fresh)
            seen += len(fresh)
            METRICS.inc("sfsync_records_polled_total", len(page), object=sobject)
            advanced = mark.advance(read, signpost)
            if persist and advanced != mark:
                await self._store.save_state(watermark_key(sobject), advanced.to_state())
            mark = advanced
        return seen

    def _soql(self, sobject: str, mark: Watermark, signpost: datetime) -> str:
        fields = ", ".join(select_fields(self._mappings, sobject))
        return (f"SELECT {fields} FROM {sobject} WHERE {mark.soql_filter(signpost)} "
                "ORDER BY SystemModstamp, Id")


def _quote(sf_id: str) -> str:
    return "'" + sf_id.replace("\\", "\\\\").replace("'", "\\'") + "'"
