"""Progress of long operations (backfill, remerge): a bar on a terminal, `progress` log events otherwise.

In a container nobody watches a bar: the log aggregator gets one `progress` event every
`interval` seconds (and a final `progress_done`), with counts, rate and an ETA.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

import structlog

log = structlog.get_logger(__name__)

_BAR_WIDTH = 28


class Progress:
    """Count work done: `advance(n)` as items finish, `close()` (or `with`) at the end."""

    def __init__(
        self,
        task: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
    ) -> None:
        self.task = task
        self.total = total
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._interval = interval if not self._tty else 0.1  # a bar redraws often, cheaply
        self._clock = clock
        self._started = clock()
        self._last_report = self._started
        self._closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(failed=exc_type is not None)

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self._clock()
        if now - self._last_report >= self._interval:
            self._last_report = now
            self._report(now)

    def close(self, *, failed: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        now = self._clock()
        elapsed = now - self._started
        if self._tty:
            self._draw(now)
            self._stream.write("\n")
            self._stream.flush()
        log.info("progress_done", task=self.task, done=self.done, total=self.total,
                 seconds=round(elapsed, 3), failed=failed)

    @property
    def rate(self) -> float:
        elapsed = self._clock() - self._started
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self) -> float | None:
        rate = self.rate
        if self.total is None or rate <= 0:
            return None
        return max(self.total - self.done, 0) / rate

    def _report(self, now: float) -> None:
        if self._tty:
            self._draw(now)
            return
        pct = round(100.0 * self.done / self.total, 1) if self.total else None
        eta = self.eta_seconds()
        log.info("progress", task=self.task, done=self.done, total=self.total, pct=pct,
                 rate_per_s=round(self.rate, 1), eta_s=None if eta is None else round(eta))

    def _draw(self, now: float) -> None:
        self._stream.write("\r" + render_bar(self.task, self.done, self.total, self.rate,
                                             self.eta_seconds()))
        self._stream.flush()


def render_bar(task: str, done: int, total: int | None, rate: float, eta: float | None) -> str:
    """One terminal line: `task [#####.....]  45%  450/1000  12.3/s  ETA 0:05`."""
    if total:
        frac = min(done / total, 1.0)
        filled = int(frac * _BAR_WIDTH)
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        head = f"{task} [{bar}] {frac * 100:5.1f}%  {done:,}/{total:,}"
    else:
        head = f"{task} {done:,}"
    tail = f"  {rate:,.1f}/s"
    if eta is not None:
        minutes, seconds = divmod(int(eta), 60)
        tail += f"  ETA {minutes}:{seconds:02d}"
    return head + tail + "   "
