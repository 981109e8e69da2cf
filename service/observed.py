"""What reaches the reconciler, counted for `/metrics` and the status strip's last event time.

`ObservedSink` sits between the sources and the reconciler. It counts each change by what the
reconciler did with it, from the batch outcome the reconciler returns:

- `sfsync_events_echoed_total`: our own writes coming back (`is_echo`), which change nothing;
- `sfsync_events_failed_total`: changes whose record the reconciler logged as failed;
- `sfsync_events_applied_total`: every other change (written, already up to date, or held
  back by a rule -- applied as the rules say).

Failed sync logs (from a batch or from rejected events) also count in
`sfsync_sync_failures_total`. The replay lag is not written here: the CDC stream measures it
(commit time to apply) and is its one writer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from listener.metrics import METRICS
from reconciler.inbound import BatchResult
from reconciler.ports import RejectedEvent, SalesforceChange


class BatchApplier(Protocol):
    """The reconciler as the sink sees it (`reconciler.inbound.Reconciler`)."""

    async def apply_batch(self, changes: Sequence[SalesforceChange]) -> BatchResult: ...

    async def reject(self, events: Sequence[RejectedEvent]) -> None: ...


class ObservedSink:
    """A `ChangeSink` over the reconciler; `last_outcome` is the last batch's result."""

    def __init__(self, inner: BatchApplier) -> None:
        self._inner = inner
        self.last_event_at: datetime | None = None
        self.last_outcome: BatchResult | None = None

    async def apply(self, changes: Sequence[SalesforceChange]) -> None:
        outcome = await self._inner.apply_batch(changes)
        self.last_outcome = outcome
        count_outcome(changes, outcome)
        if changes:
            newest = max(change.changed_at for change in changes)
            self.last_event_at = newest if self.last_event_at is None else max(newest, self.last_event_at)

    async def reject(self, events: Sequence[RejectedEvent]) -> None:
        await self._inner.reject(events)
        METRICS.inc("sfsync_sync_failures_total", len(events), source="salesforce")


def count_outcome(changes: Sequence[SalesforceChange], outcome: BatchResult) -> None:
    """Count each change once: echoed, failed (its record has a failed log) or applied."""
    failed_records = {(log.object, log.sf_id) for log in outcome.logs if log.status == "failed"}
    counts: Counter[tuple[str, str]] = Counter()
    for change in changes:
        if change.is_echo:
            counts["sfsync_events_echoed_total", change.sobject] += 1
        elif (change.sobject, change.sf_id) in failed_records:
            counts["sfsync_events_failed_total", change.sobject] += 1
        else:
            counts["sfsync_events_applied_total", change.sobject] += 1
    for (name, sobject), n in counts.items():
        METRICS.inc(name, n, object=sobject)
    failed_logs = sum(1 for log in outcome.logs if log.status == "failed")
    if failed_logs:
        METRICS.inc("sfsync_sync_failures_total", failed_logs, source="salesforce")


__all__ = ["BatchApplier", "ObservedSink", "count_outcome"]
