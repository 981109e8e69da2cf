"""The offset-commit predicate and the size/time-bounded micro-batcher."""

from __future__ import annotations

import asyncio
import time

import pytest

from listener.sources.batching import CommitPolicy, MicroBatcher, should_commit


class TestShouldCommit:
    @pytest.mark.parametrize(
        ("pending", "seconds", "expected"),
        [
            (0, 0.0, False),
            (0, 99.0, False),     # nothing to commit, however long it has been
            (1, 0.0, False),
            (9, 0.5, False),
            (10, 0.0, True),      # enough events
            (1, 1.0, True),       # enough time
            (500, 5.0, True),
        ],
    )
    def test_table(self, pending: int, seconds: float, expected: bool) -> None:
        """Commit when something is pending and either the count or the age is reached."""
        assert should_commit(pending, seconds, max_pending=10, max_seconds=1.0) is expected

    def test_policy_tracks_pending_and_time(self) -> None:
        """CommitPolicy counts applied events and restarts the clock on commit."""
        now = [100.0]
        policy = CommitPolicy(max_pending=3, max_seconds=2.0, clock=lambda: now[0])
        policy.applied(2)
        assert not policy.due()
        now[0] += 2.0
        assert policy.due()
        policy.committed()
        assert policy.pending == 0 and not policy.due()
        policy.applied(3)
        assert policy.due()


class TestMicroBatcher:
    async def test_takes_what_is_queued_up_to_the_size_bound(self) -> None:
        """A full batch is returned at once, without waiting for the time bound."""
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(7):
            queue.put_nowait(i)
        batcher = MicroBatcher(queue, max_items=5, max_wait=10.0)
        started = time.monotonic()
        assert await batcher.next_batch() == [0, 1, 2, 3, 4]
        assert time.monotonic() - started < 1.0
        assert queue.qsize() == 2

    async def test_time_bound(self) -> None:
        """A partial batch is returned once max_wait has passed since its first item."""
        queue: asyncio.Queue[int] = asyncio.Queue()
        queue.put_nowait(1)
        batcher = MicroBatcher(queue, max_items=100, max_wait=0.05)
        started = time.monotonic()
        assert await batcher.next_batch() == [1]
        assert 0.04 <= time.monotonic() - started < 1.0

    async def test_items_arriving_within_the_wait_join_the_batch(self) -> None:
        """Items put while the batch is open are part of it."""
        queue: asyncio.Queue[int] = asyncio.Queue()
        batcher = MicroBatcher(queue, max_items=3, max_wait=1.0)

        async def feed() -> None:
            for i in range(3):
                await asyncio.sleep(0.01)
                await queue.put(i)

        feeder = asyncio.create_task(feed())
        assert await batcher.next_batch() == [0, 1, 2]
        await feeder

    async def test_bounded_queue_applies_back_pressure(self) -> None:
        """A producer waits while the queue is full, and continues when a batch is taken."""
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=2)
        batcher = MicroBatcher(queue, max_items=2, max_wait=0.0)
        produced: list[int] = []

        async def produce() -> None:
            for i in range(4):
                await queue.put(i)
                produced.append(i)

        producer = asyncio.create_task(produce())
        await asyncio.sleep(0.01)
        assert produced == [0, 1]          # blocked on the third put
        assert await batcher.next_batch() == [0, 1]
        await asyncio.wait_for(producer, 1)
        assert produced == [0, 1, 2, 3]

    def test_rejects_empty_batches(self) -> None:
        """A batch size below one is a programming error."""
        with pytest.raises(ValueError, match="at least 1"):
            MicroBatcher(asyncio.Queue(), max_items=0, max_wait=0.1)
