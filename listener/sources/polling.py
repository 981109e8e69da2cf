"""SOQL polling: the inbound fallback when the stream cannot run, and the stream's catch-up.

Per object, one `queryAll` (deleted records included) ordered by (`SystemModstamp`, `Id`),
keyset-paged from the watermark by `listener.reader.RecordReader` (also the backfill's reader):

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
"last_id": "00Q..."}`, shared with the backfill; an old `{"ts", "ids"}` document is still read)
moves only after a page is applied, and never reaches the signpost. A record is applied as
the reader turns it into a change (DELETE when `IsDeleted`, else UPSERT); one without a readable
`SystemModstamp` is applied and logged but cannot move the watermark.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from listener.metrics import METRICS
from listener.reader import RecordReader
from reconciler.errors import BudgetExhaustedError, RetriableError
from reconciler.pacing import every
from reconciler.ports import ChangeSink, ChangeSource, SalesforceChange, StateStore
from reconciler.soql import floor_second
from reconciler.store.state_keys import watermark_key
from reconciler.watermark import Watermark
from settings import Mappings

__all__ = ["PassReport", "Poller", "QueryApi", "Watermark"]

log = structlog.get_logger(__name__)


class QueryApi(Protocol):
    """What the poller needs of `SalesforceClient`."""

    def query(self, soql: str, *, include_deleted: bool = False) -> AsyncIterator[list[dict[str, Any]]]: ...

    @property
    def calls_made(self) -> int: ...


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
        self.reader = RecordReader(sf, mappings, clock=clock)
        self._store = store
        self._sink = sink
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
            async for _ in every(minutes * 60, stop):
                try:
                    await self.run_once()
                except (RetriableError, BudgetExhaustedError) as exc:
                    log.warning("poll_pass_failed", error=str(exc), error_type=type(exc).__name__)
        finally:
            self.running = False

    async def fetch_by_ids(self, sobject: str, ids: Iterable[str]) -> list[SalesforceChange]:
        """Current state of records by id (after GAP_* events): the reader's fetch, source GAP."""
        return await self.reader.fetch(sobject, sorted(set(ids)), source=ChangeSource.GAP)

    async def _poll(self, sobject: str, mark: Watermark, signpost: datetime, *, persist: bool) -> int:
        seen = 0
        pages = self.reader.pages(sobject, mark, signpost, source=ChangeSource.POLL)
        async with contextlib.aclosing(pages):
            async for page in pages:
                if page.changes:
                    await self._sink.apply(page.changes)
                seen += len(page.changes)
                METRICS.inc("sfsync_records_polled_total", page.read, object=sobject)
                if persist and page.mark != mark:
                    await self._store.save_state(watermark_key(sobject), page.mark.to_state())
                mark = page.mark
        return seen
