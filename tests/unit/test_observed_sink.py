"""`/metrics` counts what the reconciler did with a batch: applied, echoed and failed apart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from listener.metrics import METRICS
from reconciler.inbound import BatchResult
from reconciler.ports import RejectedEvent, SalesforceChange
from reconciler.sync_logs import failed_inbound
from service.observed import ObservedSink
from tests.support.salesforce_changes import change


@dataclass
class FakeReconciler:
    """The reconciler's side of the sink: answers each batch with a prepared outcome."""

    outcome: BatchResult
    batches: list[Sequence[SalesforceChange]] = field(default_factory=list)

    async def apply(self, changes: Sequence[SalesforceChange]) -> None:
        await self.apply_batch(changes)

    async def apply_batch(self, changes: Sequence[SalesforceChange]) -> BatchResult:
        self.batches.append(changes)
        return self.outcome

    async def reject(self, events: Sequence[RejectedEvent]) -> None:
        pass


@pytest.fixture(autouse=True)
def clean_metrics() -> None:
    METRICS.reset()


class TestAppliedCounter:
    async def test_echoes_and_failed_changes_are_not_counted_as_applied(self) -> None:
        """Of an echo, a change the reconciler logged as failed and a good one, only the good one
        counts as applied; the echo and the failure have their own counters."""
        failed = failed_inbound("Lead", "00Q000000000002AAA", "LastName is required")
        inner = FakeReconciler(BatchResult(applied=1, echoes=1, failed=1, logs=[failed]))
        sink = ObservedSink(inner)
        await sink.apply([
            change("00Q000000000001AAA", {"LastName": "Ours"}, is_echo=True),
            change("00Q000000000002AAA", {"LastName": None}),
            change("00Q000000000003AAA", {"LastName": "Good"}),
        ])
        assert METRICS.get("sfsync_events_applied_total", object="Lead") == 1
        assert METRICS.get("sfsync_events_echoed_total", object="Lead") == 1
        assert METRICS.get("sfsync_events_failed_total", object="Lead") == 1
        assert METRICS.get("sfsync_sync_failures_total", source="salesforce") == 1

    async def test_apply_does_not_write_the_replay_lag(self) -> None:
        """The CDC stream is the one writer of `sfsync_replay_lag_seconds` (commit -> apply)."""
        sink = ObservedSink(FakeReconciler(BatchResult(applied=1)))
        await sink.apply([change("00Q000000000003AAA", {"LastName": "Good"})])
        assert METRICS.get("sfsync_replay_lag_seconds") == 0.0  # unset (the change is from 2024)
