"""What the control API steers on the emulated org's traffic: injected faults and the request
log. Plain data the state holds; the routes and the middleware are `emulator.control`."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass
class Fault:
    path_prefix: str
    status: int | None
    remaining: int
    latency_ms: int = 0
    apply_then_drop: bool = False


class Faults:
    """Injected failures: the next `count` calls whose path starts with `path_prefix` answer
    `status` (after `latency_ms`), or are only delayed when no status is given. With
    `apply_then_drop` the call is served (a write is applied), then after `latency_ms` the
    connection is closed without an answer: a response lost on the way back."""

    def __init__(self) -> None:
        self.active: list[Fault] = []

    def add(self, fault: Fault) -> None:
        self.active.append(fault)

    def clear(self) -> None:
        self.active.clear()

    def take(self, path: str) -> Fault | None:
        for fault in self.active:
            if path.startswith(fault.path_prefix):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.active.remove(fault)
                return fault
        return None


class RequestLog:
    """The last requests the org served (method, path, query, headers with Authorization redacted,
    body, status), bounded so benchmarks do not grow it without limit."""

    def __init__(self, *, max_entries: int = 2000) -> None:
        self.entries: deque[dict[str, Any]] = deque(maxlen=max_entries)

    def clear(self) -> None:
        self.entries.clear()
