"""The one backoff (reconciler.pacing), as the CDC stream uses it between sessions."""

from __future__ import annotations

import asyncio
import random

from reconciler.pacing import Backoff


class TestFullJitterBackoff:
    def test_grows_with_full_jitter_up_to_the_cap(self) -> None:
        """Delay n is drawn from [0, min(cap, base * 2**n)]: doubling ceilings, capped."""
        backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(7))
        delays = [backoff.next_delay() for _ in range(200)]
        ceilings = [min(8.0, 2.0 ** n) for n in range(200)]
        assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
        assert min(delays[3:]) < 4.0  # full jitter: well below half the ceiling happens
        backoff.reset()
        assert backoff.next_delay() <= 1.0

    async def test_wait_returns_at_once_when_stopped(self) -> None:
        """A stop set during the wait ends it early, and says so."""
        stop = asyncio.Event()
        backoff = Backoff(base=60.0, cap=60.0, floor=30.0)
        asyncio.get_running_loop().call_later(0.01, stop.set)
        assert await asyncio.wait_for(backoff.wait(stop), 5.0) is True
