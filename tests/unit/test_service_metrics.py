"""Outbound counters in /metrics only ever go up, across leader terms that replace the flusher."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from listener.metrics import METRICS
from service.outbound_metrics import OutboundCounters


@dataclass
class FakeFlusher:
    calls_made: int = 0
    records_sent: int = 0
    records_failed: int = 0


@pytest.fixture(autouse=True)
def clean_metrics() -> None:
    METRICS.reset()


class TestOutboundCounters:
    def test_counters_add_each_flushers_progress(self) -> None:
        """A new flusher (a new term) starting from zero adds to the counters, never lowers them."""
        counters = OutboundCounters()
        counters.publish()  # no flusher yet (a standby): nothing to add
        first = FakeFlusher(calls_made=3, records_sent=500, records_failed=2)
        counters.watch(first)
        counters.publish()
        counters.publish()  # nothing new: nothing added
        counters.watch(FakeFlusher(calls_made=1, records_sent=200))
        counters.publish()
        assert METRICS.get("sfsync_outbound_calls_total") == 4
        assert METRICS.get("sfsync_outbound_records_total", status="success") == 700
        assert METRICS.get("sfsync_outbound_records_total", status="failed") == 2
