"""The leader lease on real MongoDB wire: one holder, takeover after expiry or release."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from reconciler.store import Store


def clock_at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


class TestOneHolder:
    async def test_second_owner_is_refused_while_the_first_holds_it(self, store: Store) -> None:
        """Two leases on one name: the first acquires, the second is refused and sees the holder."""
        first, second = store.lease("sync", owner="a"), store.lease("sync", owner="b")
        assert await first.acquire() is True
        assert await second.acquire() is False
        assert first.held() and not second.held()
        holder = await second.holder()
        assert holder is not None and holder.owner == "a"

    async def test_racing_acquires_elect_exactly_one(self, store: Store) -> None:
        """Owners racing for a free lease (the upsert race): exactly one wins, every round."""
        for round_ in range(5):
            leases = [store.lease(f"race{round_}", owner=f"o{i}") for i in range(4)]
            results = await asyncio.gather(*(lease.acquire() for lease in leases))
            assert sum(results) == 1, results

    async def test_document_shape(self, store: Store) -> None:
        """One `sync_state` document `lease:<name>` with owner, expires_at = renewed_at + TTL."""
        await store.lease("sync", owner="a", ttl=30).acquire()
        doc = await store.db.sync_state.find_one({"_id": "lease:sync"})
        assert doc["owner"] == "a"
        assert doc["expires_at"] - doc["renewed_at"] == timedelta(seconds=30)


class TestTakeover:
    async def test_expired_lease_is_taken_over(self, store: Store) -> None:
        """Once the holder stops renewing past the TTL, another owner takes it; the old one is refused."""
        now = datetime.now(UTC)
        old = store.lease("sync", owner="a", ttl=30, clock=clock_at(now))
        new = store.lease("sync", owner="b", ttl=30, clock=clock_at(now + timedelta(seconds=31)))
        assert await old.acquire()
        assert await new.acquire() is True
        assert await old.acquire() is False
        assert not old.held()

    async def test_release_lets_another_owner_take_it_at_once(self, store: Store) -> None:
        """A released lease is free immediately, with no wait for the TTL."""
        first, second = store.lease("sync", owner="a"), store.lease("sync", owner="b")
        assert await first.acquire()
        assert await first.release() is True
        assert not first.held()
        assert await second.acquire() is True

    async def test_release_by_a_non_holder_changes_nothing(self, store: Store) -> None:
        """Only the holder can release: a standby's release leaves the holder in place."""
        first, second = store.lease("sync", owner="a"), store.lease("sync", owner="b")
        assert await first.acquire()
        assert await second.release() is False
        assert await second.acquire() is False


class TestRenewal:
    async def test_renewal_by_the_holder_keeps_it(self, store: Store) -> None:
        """Renewed before expiry, the lease outlives its first TTL; others stay refused."""
        start = datetime.now(UTC)
        moment = [start]
        holder = store.lease("sync", owner="a", ttl=30, clock=lambda: moment[0])
        assert await holder.acquire()
        moment[0] = start + timedelta(seconds=20)
        assert await holder.acquire() is True
        other = store.lease("sync", owner="b", ttl=30, clock=clock_at(start + timedelta(seconds=35)))
        assert await other.acquire() is False
        doc = await store.db.sync_state.find_one({"_id": "lease:sync"})
        # BSON dates hold milliseconds
        assert abs(doc["expires_at"] - (start + timedelta(seconds=50))) < timedelta(milliseconds=1)

    async def test_lease_is_not_sync_state(self, store: Store) -> None:
        """The lease document stays out of `all_state` (the offsets shown in /api/status)."""
        await store.lease("sync", owner="a").acquire()
        assert "lease:sync" not in await store.all_state()
