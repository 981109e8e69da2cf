"""Time and stopping: one backoff, one pacing loop, one "run until stop".

Every long-lived loop of the service (sources, flusher, watchers, governor, restart loop) waits
through these, so a stop is always noticed at once and every retry backs off the same way.

Backoff uses *full jitter* (AWS architecture blog, "Exponential Backoff And Jitter"): attempt
n sleeps `uniform(0, min(cap, base * 2**n))`. Full jitter spreads replicas that failed
together the most; a caller that needs a floor (never retry sooner than x) passes `floor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def backoff_seconds(attempt: int, *, base: float, cap: float, floor: float = 0.0,
                    rng: random.Random | None = None) -> float:
    """Full-jitter delay for `attempt` (0-based): uniform(floor, max(floor, min(cap, base * 2**n)))."""
    ceiling = min(cap, base * (2 ** min(max(attempt, 0), 62)))
    return (rng or random).uniform(floor, max(floor, ceiling))


@dataclass
class Backoff:
    """Consecutive-failure counter: `next_delay()` grows per failure, `reset()` after a success."""

    base: float = 1.0
    cap: float = 60.0
    floor: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        delay = backoff_seconds(self.attempt, base=self.base, cap=self.cap, floor=self.floor, rng=self.rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0

    async def wait(self, stop: asyncio.Event) -> bool:
        """Sleep the next delay unless `stop` is set first; True when stopped."""
        return await sleep_unless_stopped(stop, self.next_delay())


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds`, waking at once when `stop` is set; True when stopped."""
    if stop.is_set():
        return True
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def every(interval: float, stop: asyncio.Event, *, first_at_once: bool = True) -> AsyncIterator[int]:
    """Yield 0, 1, 2... every `interval` seconds (the first at once by default) until `stop`.

    The interval is measured from the end of the caller's work, as a `while` loop with a sleep
    at its end would: a slow pass never makes the next one start early.
    """
    tick = 0
    if not first_at_once and await sleep_unless_stopped(stop, interval):
        return
    while not stop.is_set():
        yield tick
        tick += 1
        if await sleep_unless_stopped(stop, interval):
            return


async def run_until_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> tuple[bool, T | None]:
    """Run `work` unless `stop` is set first (then cancel it).

    Returns `(True, result)` when the work completed, `(False, None)` when `stop` won; the
    work's own exception propagates.
    """
    task: asyncio.Task[T] = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return False, None
    return True, task.result()


__all__ = ["Backoff", "backoff_seconds", "every", "run_until_stopped", "sleep_unless_stopped"]
