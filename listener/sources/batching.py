"""Micro-batching of inbound events, and the "commit the offset now?" predicate.

The stream's reader puts messages into a bounded `asyncio.Queue` (it waits when the queue is
full: back-pressure reaches CometD, which stops fetching). The applier takes a batch that is
size-bounded (`max_items`) and time-bounded (`max_wait` after the first item), applies it,
and only then commits the offsets the batch covers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


def should_commit(
    pending: int, seconds_since_commit: float, *, max_pending: int, max_seconds: float
) -> bool:
    """Commit when something is pending and either enough events or enough time has passed."""
    if pending <= 0:
        return False
    return pending >= max_pending or seconds_since_commit >= max_seconds


@dataclass
class CommitPolicy:
    """Tracks applied-but-uncommitted events; `due()` wraps `should_commit` with a clock."""

    max_pending: int = 1
    max_seconds: float = 0.0
    clock: Callable[[], float] = time.monotonic
    pending: int = 0
    last_commit: float = 0.0

    def __post_init__(self) -> None:
        self.last_commit = self.clock()

    def applied(self, count: int) -> None:
        self.pending += count

    def due(self) -> bool:
        return should_commit(
            self.pending, self.clock() - self.last_commit,
            max_pending=self.max_pending, max_seconds=self.max_seconds,
        )

    def committed(self) -> None:
        self.pending = 0
        self.last_commit = self.clock()


class MicroBatcher(Generic[T]):
    """Takes size- and time-bounded batches from a bounded queue."""

    def __init__(self, queue: asyncio.Queue[T], *, max_items: int, max_wait: float) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.queue = queue
        self.max_items = max_items
        self.max_wait = max_wait

    async def next_batch(self) -> list[T]:
        """Wait for one item, then gather more until `max_items` or `max_wait` has passed."""
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_items:
            # Whatever is already queued is taken without waiting.
            while len(batch) < self.max_items and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            remaining = deadline - time.monotonic()
            if len(batch) >= self.max_items or remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        return batch
