"""A fenced leader's last claim can land just after the new term's flusher looked for old
terms' claims (chaos seed 7: a 30 s outbound stall after a takeover). The flusher looks again
every `RECOVER_EVERY` (seconds), not every quarter of the 2-minute claim lease."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from reconciler.outbound import RECOVER_EVERY, OutboundFlusher
from tests.unit.test_outbound_flusher import Budget, MemoryOutbox, MemoryStore


class CountingOutbox(MemoryOutbox):
    recoveries: int = 0

    async def recover_expired(self) -> int:
        self.recoveries += 1
        return 0


class TestRecoveryCadence:
    async def test_older_terms_claims_are_looked_for_every_few_seconds(self) -> None:
        outbox = CountingOutbox([])
        assert outbox.lease == timedelta(minutes=2)
        now = [datetime(2025, 1, 1, tzinfo=UTC)]
        flusher = OutboundFlusher(outbox, None, MemoryStore(), Budget(),  # type: ignore[arg-type]
                                  client_name="sfsync-test", tick=timedelta(milliseconds=10),
                                  clock=lambda: now[0])
        stop = asyncio.Event()
        task = asyncio.create_task(flusher.run(stop))
        for _ in range(3):
            await asyncio.sleep(0.05)
            now[0] += RECOVER_EVERY
        await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 2)
        assert outbox.recoveries >= 4  # at start, then after each RECOVER_EVERY
        assert timedelta(seconds=5) >= RECOVER_EVERY
