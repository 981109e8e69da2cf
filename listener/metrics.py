"""Process-wide counters and gauges, rendered in Prometheus text format for `/metrics`.

Deliberately tiny (no client library): names and labels are fixed by the code, values are
numbers, and rendering is a pure function of the registry.
"""

from __future__ import annotations

import threading
from collections import defaultdict

Labels = tuple[tuple[str, str], ...]

_HELP: dict[str, tuple[str, str]] = {
    "sfsync_events_received_total": ("counter", "CDC events received, by object"),
    "sfsync_events_applied_total": ("counter", "Inbound changes applied (not echoes, not failed), by object"),
    "sfsync_events_echoed_total": ("counter", "Our own writes coming back as inbound changes, by object"),
    "sfsync_events_failed_total": ("counter", "Inbound changes or events that failed, by object"),
    "sfsync_records_polled_total": ("counter", "Records read by the poller, by object"),
    "sfsync_outbound_records_total": ("counter", "Records written to Salesforce, by object and status"),
    "sfsync_outbound_calls_total": ("counter", "Outbound write calls made (composite/sobjects, /composite)"),
    "sfsync_api_calls_total": ("counter", "Salesforce REST calls made by this process"),
    "sfsync_api_used": ("gauge", "Daily API requests used (Sforce-Limit-Info)"),
    "sfsync_api_max": ("gauge", "Daily API request allocation"),
    "sfsync_api_remaining_pct": ("gauge", "Daily API requests remaining, percent"),
    "sfsync_mode": ("gauge", "1 for the current mode (starting/streaming/polling/paused)"),
    "sfsync_queue_depth": ("gauge", "Items waiting, by queue (inbound, outbox)"),
    "sfsync_replay_lag_seconds": ("gauge", "CDC stream only: seconds from the newest Salesforce change in "
                                  "the last applied batch (its commit time) to the end of its apply"),
    "sfsync_sync_failures_total": ("counter", "Failed sync logs written, by source"),
    "sfsync_alerts_sent_total": ("counter", "Alert messages delivered to SFSYNC_ALERTS__WEBHOOK_URL"),
    "sfsync_alerts_dropped_total": ("counter", "Alert messages dropped, by reason"),
    "sfsync_task_failures_total": ("counter", "Unexpected exits of supervised background tasks, by task"),
}


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[Labels, float]] = defaultdict(dict)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._values[name]
            series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[name][key] = float(value)

    def get(self, name: str, **labels: str) -> float:
        key = tuple(sorted(labels.items()))
        with self._lock:
            return self._values.get(name, {}).get(key, 0.0)

    def reset(self) -> None:
        with self._lock:
            self._values.clear()

    def render(self) -> str:
        with self._lock:
            snapshot = {name: dict(series) for name, series in self._values.items()}
        lines: list[str] = []
        for name in sorted(set(snapshot) | set(_HELP)):
            kind, text = _HELP.get(name, ("gauge", name))
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in sorted(snapshot.get(name, {}).items()):
                lines.append(f"{name}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


METRICS = Metrics()
"""The process's registry; tests call `METRICS.reset()`."""
