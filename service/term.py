"""The leader term: stand by until this replica holds the `sync` lease, keep it, end the term
when it is lost, release it on a clean stop.

Several processes may run against one MongoDB. After connecting (store, Salesforce) each one
stands by until it holds the `sync` leader lease in `sync_state`; only the holder backfills,
runs the source, the outbound flusher, the local-change watcher, auto-retry and the governor's
`limits` checks. The holder renews every TTL/3 (SFSYNC_SYNC__LEASE_SECONDS); when it cannot
renew for TTL/2, or finds the lease taken, it stops the term in order -- intake first, the
batch in flight finished and its offsets committed, then the flusher and the rest, all within
TTL/6 (`drain_seconds`) -- and stands by again. A clean shutdown releases the lease, so a
standby takes over at its next try (within TTL/3); after a crash, within ~TTL.

A term can also be ended from inside (`end(reason)`, a supervised task whose policy is to end
the term, see `service.supervised`): it stops in the same order, then releases the lease and
steps aside -- waits TTL/2 ... TTL, growing to 8 TTL while terms keep ending that way -- before
trying the lease again, so a standby gets it first. `/readyz` answers 503 with the reason
meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from reconciler.errors import RetriableError, SyncError
from reconciler.pacing import Backoff, sleep_unless_stopped
from reconciler.store import Fence
from service.readiness import Health, LeaseStatus, Role

log = structlog.get_logger(__name__)

SHUTDOWN_SECONDS = 10.0

TermWork = Callable[[asyncio.Event], Awaitable[None]]  # runs until its stop event, then stops in order


class LeaseHolder(Protocol):
    @property
    def owner(self) -> str: ...


class LeaderLease(Protocol):
    """One named lease as seen by one owner (`reconciler.store.Store.lease`)."""

    @property
    def owner(self) -> str: ...

    @property
    def ttl(self) -> float: ...

    @property
    def renew_every(self) -> float: ...

    def held(self) -> bool: ...

    def seconds_left(self) -> float: ...

    def fence(self) -> Fence | None: ...

    async def acquire(self) -> bool: ...

    async def release(self) -> bool: ...

    async def holder(self) -> LeaseHolder | None: ...


class LeaderTerm:
    """Terms of leadership over one lease, for one process life."""

    def __init__(self, lease: LeaderLease, health: Health) -> None:
        self.lease = lease
        self._health = health
        self.role: Role | None = None
        self.holder: str | None = None
        # How long stopping a term may take: SHUTDOWN_SECONDS, or less once the lease is lost.
        self.drain_seconds = SHUTDOWN_SECONDS
        self._term_stop: asyncio.Event | None = None
        self._fence: Fence | None = None  # captured when the term began; None between terms
        self._ended_by: str | None = None
        self._aside = Backoff(base=lease.ttl, cap=lease.ttl * 8, floor=lease.ttl / 2)

    def status(self) -> LeaseStatus:
        lease = self.lease
        held = self.role is Role.LEADER and lease.held()
        return LeaseStatus(owner=lease.owner, held=held, holder=lease.owner if held else self.holder,
                           role=self.role)

    async def serve(self, stop: asyncio.Event, work: TermWork) -> None:
        """Stand by, lead a term running `work`, stand by again... until `stop`; then release."""
        try:
            while await self.stand_by(stop):
                await self.lead(stop, work)
        finally:
            await self.release()

    async def stand_by(self, stop: asyncio.Event) -> bool:
        """Try the lease every TTL/3 until this replica holds it (True) or `stop` (False)."""
        lease, health = self.lease, self._health
        if self.role is None:
            health.phase = "trying the sync lease"
        while not stop.is_set():
            try:
                if await lease.acquire():
                    log.info("lease_acquired", owner=lease.owner, ttl_seconds=lease.ttl)
                    self.holder = lease.owner
                    return True
                holder = await lease.holder()
                if self.role is not Role.STANDBY or (holder and holder.owner != self.holder):
                    log.info("standing_by", owner=lease.owner, holder=holder.owner if holder else None)
                self.holder = holder.owner if holder else None
                self.role, health.phase, health.mongo_ok = Role.STANDBY, "", True
            except RetriableError as exc:
                health.mongo_ok = False
                log.warning("lease_try_failed", error=str(exc))
            await sleep_unless_stopped(stop, lease.renew_every)
        return False

    async def lead(self, stop: asyncio.Event, work: TermWork) -> None:
        """One term: `work` runs until `stop` or until the lease is lost, whichever comes first."""
        self.role = Role.LEADER
        self._fence = self.lease.fence()
        term_stop = self._term_stop = asyncio.Event()
        keeper = asyncio.create_task(self._keep(stop, term_stop), name="lease")
        try:
            await work(term_stop)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            self.role, self.drain_seconds, self._term_stop = None, SHUTDOWN_SECONDS, None
            self._fence = None
        ended_by, self._ended_by = self._ended_by, None
        if ended_by is not None:
            await self._step_aside(stop, ended_by)
        elif not stop.is_set():
            self._aside.reset()
            self._health.phase = "lease lost, standing by"
            log.warning("lease_term_ended", owner=self.lease.owner, reason="lease lost")

    def fence(self) -> Fence | None:
        """The running term's fence, as captured when it began (not the lease's live one: a
        write made for this term must be refused once a newer one began, even if this replica
        holds the lease again); None between terms. Pass this method to whatever writes."""
        return self._fence

    def fenced(self, error: Exception) -> None:
        """A write made for the running term was refused (`FencedError`: a newer term leads):
        end the term as lost -- it stops in order and stands by; no-op between terms."""
        term_stop, fence = self._term_stop, self._fence
        if term_stop is None or term_stop.is_set():
            return
        log.warning("lease_term_fenced", owner=self.lease.owner, term=fence.term if fence else None,
                    error=str(error))
        term_stop.set()

    def end(self, reason: str) -> None:
        """End the running term early (it stops in order), then step aside; no-op between terms."""
        term_stop = self._term_stop
        if term_stop is None or term_stop.is_set():
            return
        log.warning("lease_term_ending", owner=self.lease.owner, reason=reason)
        self._ended_by = reason
        term_stop.set()

    async def _step_aside(self, stop: asyncio.Event, reason: str) -> None:
        """After a term ended by `end`: release the lease and wait, so a standby leads first."""
        log.warning("lease_term_ended", owner=self.lease.owner, reason=reason)
        await self.release()
        self.holder = None
        delay = self._aside.next_delay()
        self._health.phase = f"leader term ended ({reason}); trying the lease again in {delay:.0f} s"
        await sleep_unless_stopped(stop, delay)

    async def _keep(self, stop: asyncio.Event, term_stop: asyncio.Event) -> None:
        """Renew every TTL/3 (sooner after a failure); end the term when the lease is lost."""
        lease = self.lease
        wait = lease.renew_every
        try:
            while not await sleep_unless_stopped(stop, min(wait, lease.seconds_left())):
                try:
                    # bounded: a renewal hanging on an unreachable MongoDB must not outlive the lease
                    taken = not await asyncio.wait_for(lease.acquire(), max(0.01, lease.seconds_left()))
                    wait = lease.renew_every
                except (SyncError, TimeoutError) as exc:
                    taken, wait = False, max(0.2, lease.renew_every / 4)
                    log.warning("lease_renew_failed", owner=lease.owner, error=str(exc) or type(exc).__name__)
                if taken or not lease.held():
                    log.warning("lease_lost", owner=lease.owner, taken=taken)
                    # a standby may take over TTL/3 (skew) after TTL/2: stop within what is left
                    self.drain_seconds = min(SHUTDOWN_SECONDS, lease.ttl / 6)
                    return
        finally:
            term_stop.set()

    async def release(self) -> None:
        """A clean stop hands the lease over at once; a failure leaves it to expire."""
        self.role = None
        try:
            if await self.lease.release():
                log.info("lease_released", owner=self.lease.owner)
        except SyncError as exc:
            log.warning("lease_release_failed", owner=self.lease.owner, error=str(exc))


__all__ = ["SHUTDOWN_SECONDS", "LeaderLease", "LeaderTerm", "TermWork"]
