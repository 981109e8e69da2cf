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

Salesforce time, not host time (issue 11 item 3):

- The signpost is Salesforce's clock, not this host's: `SalesforceClock.safe_now()` (learned
  from the `Date` of Salesforce's responses, a time Salesforce has certainly reached) minus
  `POLL_SAFETY_LAG`, floored to the second. A host running ahead of Salesforce no longer
  declares seconds complete that Salesforce has not lived yet.
- A record is stamped when its transaction writes it but visible only at commit, which can be
  long after a later-stamped record was already polled (and the watermark moved past it). So
  each pass reads from `overlap` (default 2 minutes, `SFSYNC_SYNC__POLL_OVERLAP_SECONDS`)
  before the watermark, and skips the (`Id`, `SystemModstamp`) pairs this poller already
  applied in that window (kept in memory, pruned to the window). The stored watermark never
  moves back. A commit later than `overlap` after its stamp is still missed.
- What the overlap costs: no extra call while the window's records and the new ones fit in
  the pages the pass reads anyway (one query per object per pass, 2,000 records a page); past
  that, one call per 2,000 records changed in the last `overlap`. The re-read records cost
  bandwidth and a set lookup each. After a restart the memory is empty: the first pass applies
  the window again, which the reconciler makes a no-op (it compares values; nothing changed
  writes nothing and logs nothing).

Fencing (issue 11 item 4): with `fence` (returns the leader term's `Fence`), each pass reads
the fence once when it starts and every watermark it writes is conditional on that term still
holding the lease (`FencedError` otherwise, which ends the pass).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from listener.metrics import METRICS
from listener.reader import RecordReader
from listener.sources.base import term_fence
from reconciler.errors import BudgetExhaustedError, RetriableError
from reconciler.pacing import every
from reconciler.ports import ChangeSink, ChangeSource, SalesforceChange, StateStore
from reconciler.soql import floor_second, parse_sf_datetime
from reconciler.store import Fence
from reconciler.store.state_keys import watermark_key
from reconciler.watermark import Watermark
from settings import Mappings

__all__ = ["DEFAULT_POLL_OVERLAP", "POLL_SAFETY_LAG", "PassReport", "Poller", "QueryApi", "SalesforceTime",
           "Watermark"]

log = structlog.get_logger(__name__)

DEFAULT_POLL_OVERLAP = timedelta(minutes=2)
# Seconds kept off the end of a pass: its signpost is Salesforce's (certain) now minus this.
POLL_SAFETY_LAG = timedelta(seconds=1)


class SalesforceTime(Protocol):
    """Salesforce's clock as learned from its responses (`listener.salesforce_time.SalesforceClock`)."""

    def safe_now(self) -> datetime: ...

    def upper_now(self) -> datetime: ...


class _AppliedPairs:
    """(Id, SystemModstamp) pairs this poller applied recently, per object: the overlap's dedup."""

    def __init__(self) -> None:
        self._pairs: dict[str, dict[tuple[str, datetime], None]] = {}

    def fresh(self, sobject: str, changes: list[SalesforceChange]) -> list[SalesforceChange]:
        """The changes not applied before."""
        seen = self._pairs.get(sobject, {})
        return [c for c in changes if (key := _pair(c)) is None or key not in seen]

    def remember(self, sobject: str, changes: list[SalesforceChange]) -> None:
        """These changes are applied: only once the sink took them, so a pass whose apply failed
        (a fenced term, a MongoDB failure) leaves them for the next (chaos seed 50321, A14)."""
        seen = self._pairs.setdefault(sobject, {})
        seen.update((key, None) for c in changes if (key := _pair(c)) is not None)

    def forget_before(self, sobject: str, moment: datetime) -> None:
        seen = self._pairs.get(sobject)
        if seen:
            self._pairs[sobject] = {k: None for k in seen if k[1] >= moment}


def _pair(change: SalesforceChange) -> tuple[str, datetime] | None:
    stamp = parse_sf_datetime(change.fields.get("SystemModstamp"))
    return None if stamp is None else (change.sf_id, stamp.replace(microsecond=0))


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
        every_minutes: float = 10,
        sf_clock: SalesforceTime | None = None,
        overlap: timedelta = DEFAULT_POLL_OVERLAP,
        fence: Callable[[], Fence | None] | None = None,
    ) -> None:
        """`sf_clock` gives Salesforce's time (without one, `clock` is taken as Salesforce's);
        `overlap` is how far before the watermark each pass reads again (see the module)."""
        self._sf = sf
        self.reader = RecordReader(sf, mappings, clock=clock)
        self._sf_clock = sf_clock
        self.overlap = overlap
        self._applied = _AppliedPairs()
        self._fence = fence
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

    async def run_once(self, objects: Sequence[str] | None = None, *,
                       through_now: bool = False) -> PassReport:
        """One pass over every object (or `objects`); watermarks advance page by page, below the
        signpost. `through_now`: records changed since the signpost are read too (the stream's
        closing poll, `listener.sources.handover`)."""
        signpost = self.signpost()
        term = term_fence(self._fence, "poller")
        report = PassReport()
        for sobject in objects if objects is not None else self.objects:
            before = self._sf.calls_made
            report.records[sobject] = await self._poll(sobject, await self.watermark(sobject), signpost,
                                                       persist=True, fence=term, through_now=through_now)
            report.calls[sobject] = self._sf.calls_made - before
        log.info("poll_pass", signpost=signpost.isoformat(), records=report.records, calls=report.calls)
        self.last_pass = report
        return report

    async def poll_since(self, sobject: str, since: datetime) -> int:
        """Catch up one object from `since` (after a GAP_OVERFLOW) up to now: the watermark is
        untouched, and the changes the overflow stands for have no event, so none may be left
        past a signpost."""
        return await self._poll(sobject, Watermark(floor_second(since)), self.signpost(), persist=False,
                                overlap=False, through_now=True)

    def signpost(self) -> datetime:
        """Where a pass starting now stops: Salesforce's certain now, less the safety lag."""
        now = self._sf_clock.safe_now() if self._sf_clock is not None else self._clock()
        return floor_second(now - POLL_SAFETY_LAG)

    async def wait_until_covered(self) -> None:
        """Wait until a pass started then covers every change made before this call (the
        stream's closing poll: everything before its subscription must be below the signpost)."""
        if self._sf_clock is not None:
            latest, reached = self._sf_clock.upper_now(), self._sf_clock.safe_now()
        else:
            latest = reached = self._clock()
        covered_from = floor_second(latest) + timedelta(seconds=1) + POLL_SAFETY_LAG
        delay = (covered_from - reached).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay + 0.01)

    async def run_every(self, minutes: float, stop: asyncio.Event) -> None:
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

    async def _poll(self, sobject: str, mark: Watermark, signpost: datetime, *, persist: bool,
                    overlap: bool = True, fence: Fence | None = None, through_now: bool = False) -> int:
        """Apply what follows `mark` (from `overlap` before it, skipping pairs already applied)."""
        seen = 0
        start = mark.rewound(self.overlap) if overlap else mark
        pages = self.reader.pages(sobject, start, signpost, source=ChangeSource.POLL,
                                  stop_at_signpost=not through_now)
        async with contextlib.aclosing(pages):
            async for page in pages:
                changes = self._applied.fresh(sobject, page.changes)
                if changes:
                    await self._sink.apply(changes)
                    self._applied.remember(sobject, changes)
                seen += len(changes)
                METRICS.inc("sfsync_records_polled_total", page.read, object=sobject)
                moved = mark.at_least(page.mark)
                if persist and moved != mark:
                    await self._store.save_state(watermark_key(sobject), moved.to_state(), fence=fence)
                mark = moved
        if mark.ts is not None:
            self._applied.forget_before(sobject, mark.ts - self.overlap)
        return seen
