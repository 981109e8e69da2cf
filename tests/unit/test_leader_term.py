"""A replica stands by while another holds the lease, leads while it holds it, and ends the
term (then stands by again) when the lease is lost."""

from __future__ import annotations

import asyncio

from service.readiness import Health, Role
from service.term import SHUTDOWN_SECONDS, LeaderTerm
from tests.support.eventually import eventually
from tests.support.service_fakes import FakeLease


class TestStandby:
    async def test_a_standby_is_healthy_and_names_the_holder(self) -> None:
        """Lease taken by another replica: role standby, nothing pending, the holder known."""
        lease, health = FakeLease(free=False), Health()
        term = LeaderTerm(lease, health)
        stop = asyncio.Event()
        task = asyncio.create_task(term.stand_by(stop))
        await eventually(lambda: term.role is Role.STANDBY)
        assert health.phase == "" and health.mongo_ok
        status = term.status()
        assert (status.owner, status.held, status.holder) == ("me", False, "other-replica")
        stop.set()
        assert await asyncio.wait_for(task, 1) is False


class TestTerm:
    async def test_losing_the_lease_ends_the_term_then_the_replica_stands_by(self) -> None:
        """The work's stop is set when the lease is taken; it stops within TTL/6; a clean stop
        afterwards releases the lease."""
        lease, health = FakeLease(free=True), Health()
        term = LeaderTerm(lease, health)
        stop = asyncio.Event()
        seen: list[tuple[Role | None, bool, float]] = []

        async def work(term_stop: asyncio.Event) -> None:
            seen.append((term.role, term.status().held, term.drain_seconds))
            await term_stop.wait()
            seen.append((term.role, term.status().held, term.drain_seconds))

        task = asyncio.create_task(term.serve(stop, work))
        await eventually(lambda: len(seen) == 1)
        lease.free = False  # another replica takes it
        await eventually(lambda: term.role is Role.STANDBY)
        assert seen == [(Role.LEADER, True, SHUTDOWN_SECONDS), (Role.LEADER, False, lease.ttl / 6)]
        assert term.drain_seconds == SHUTDOWN_SECONDS  # reset for the next term
        stop.set()
        await asyncio.wait_for(task, 1)
        assert lease.releases == 1 and term.role is None
