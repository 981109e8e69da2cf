"""Outbound counters in /metrics only ever go up, across leader terms that replace the flusher."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from listener.metrics import METRICS
from service.supervisor import Service
from settings import Mappings, Settings


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
        service = Service(Settings(), Mappings())
        service._flusher = FakeFlusher(calls_made=3, records_sent=500, records_failed=2)
        service._publish_outbound_metrics()
        service._publish_outbound_metrics()  # nothing new: nothing added
        service._flusher = FakeFlusher(calls_made=1, records_sent=200)
        service._publish_outbound_metrics()
        assert METRICS.get("sfsync_outbound_calls_total") == 4
        assert METRICS.get("sfsync_outbound_records_total", status="success") == 700
        assert METRICS.get("sfsync_outbound_records_total", status="failed") == 2
