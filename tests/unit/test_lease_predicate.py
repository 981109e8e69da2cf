"""The holder's "do I still hold the lease" predicate: pure, on its own monotonic clock."""

from __future__ import annotations

import pytest

from reconciler.store._lease import HOLD_FRACTION, RENEW_FRACTION, new_owner_id, still_held

TTL = 30.0


class TestStillHeld:
    @pytest.mark.parametrize(("renewed_at", "now", "expected"), [
        (None, 100.0, False),   # never renewed
        (100.0, 100.0, True),   # just renewed
        (100.0, 110.0, True),   # one renewal interval later
        (100.0, 114.9, True),   # just under TTL/2
        (100.0, 115.0, False),  # TTL/2 without a renewal: stop syncing
        (100.0, 130.0, False),  # the lease itself has expired
        (100.0, 99.0, False),   # a clock that went backwards proves nothing
    ])
    def test_table(self, renewed_at: float | None, now: float, expected: bool) -> None:
        """Held strictly less than TTL/2 after the last successful renewal was sent."""
        assert still_held(renewed_at, now, TTL) is expected

    def test_holder_stops_before_a_skewed_standby_can_take_over(self) -> None:
        """Giving up at TTL/2, TTL/6 to stop, and clock skew under TTL/3 stay within the TTL."""
        assert HOLD_FRACTION + 1 / 6 + 1 / 3 <= 1.0

    def test_two_renewals_may_fail_before_the_holder_gives_up(self) -> None:
        """Renewing every TTL/3 leaves room for a failed renewal and a retry before TTL/2."""
        assert RENEW_FRACTION < HOLD_FRACTION < 2 * RENEW_FRACTION


class TestOwnerId:
    def test_unique_per_call_and_names_the_process(self) -> None:
        """hostname-pid-random: two owners in one process still differ."""
        import os

        first, second = new_owner_id(), new_owner_id()
        assert first != second
        assert f"-{os.getpid()}-" in first
