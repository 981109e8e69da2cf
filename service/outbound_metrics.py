"""The outbound counters in `/metrics`, added from each leader term's flusher.

A flusher counts for its own life (one leader term); the process counters add what it did
since the last look, so they never go down when a new term starts a new flusher.
"""

from __future__ import annotations

from typing import Protocol

from listener.metrics import METRICS


class FlusherProgress(Protocol):
    """What `reconciler.outbound.OutboundFlusher` has done since it was built."""

    @property
    def calls_made(self) -> int: ...

    @property
    def records_sent(self) -> int: ...

    @property
    def records_failed(self) -> int: ...


class OutboundCounters:
    """Publishes the progress of the flusher it watches as increments of the process counters."""

    def __init__(self) -> None:
        self._flusher: FlusherProgress | None = None
        self._seen = (0, 0, 0)

    def watch(self, flusher: FlusherProgress) -> None:
        """A new term's flusher: its counts start from zero."""
        self._flusher, self._seen = flusher, (0, 0, 0)

    def publish(self) -> None:
        flusher = self._flusher
        if flusher is None:
            return
        now = (flusher.calls_made, flusher.records_sent, flusher.records_failed)
        calls, sent, failed = (n - b for n, b in zip(now, self._seen, strict=True))
        METRICS.inc("sfsync_outbound_calls_total", calls)
        METRICS.inc("sfsync_outbound_records_total", sent, status="success")
        METRICS.inc("sfsync_outbound_records_total", failed, status="failed")
        self._seen = now


__all__ = ["FlusherProgress", "OutboundCounters"]
