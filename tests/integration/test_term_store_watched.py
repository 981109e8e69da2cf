"""Issue 11 item 4, the watcher's own writes: field times, links of created records and the
Salesforce shadow, written through a leader term's `TermStore`, are refused once a newer term
holds the lease -- a stalled ex-leader's watcher and flusher write nothing to the records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler.errors import FencedError
from reconciler.store import Fence, Store
from reconciler.term_store import TermStore

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


async def take_lease(store: Store, owner: str) -> Fence:
    lease = store.lease("sync", owner=owner, ttl=30)
    assert await lease.acquire()
    fence = lease.fence()
    assert fence is not None
    return fence


async def ended_term(store: Store) -> Fence:
    """The fence of a term that is over: its lease expired and a newer term took it."""
    old = await take_lease(store, "old-leader")
    await store.db.sync_state.update_one(
        {"_id": "lease:sync"}, {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}})
    await take_lease(store, "new-leader")
    return old


@pytest.fixture
async def person(store: Store) -> dict[str, object]:
    doc: dict[str, object] = {"_id": "p-1", "first_name": "Ada", "updated_at": T0}
    await store.db.people.insert_one(dict(doc))
    return doc


class TestAnEndedTermsWatchedWritesAreRefused:
    async def test_field_times(self, store: Store, person: dict[str, object]) -> None:
        old = await ended_term(store)
        watched = TermStore(store, lambda: old).watched("people")
        with pytest.raises(FencedError):
            await watched.record_field_times({"p-1": {"first_name": T0}}, T0 + timedelta(seconds=1))
        assert await store.db.people.find_one({"_id": "p-1"}) == person

    async def test_the_link_of_a_created_record(self, store: Store, person: dict[str, object]) -> None:
        old = await ended_term(store)
        term_store = TermStore(store, lambda: old)
        with pytest.raises(FencedError):
            await term_store.watched("people").link("p-1", sobject="Lead", sf_id="00Q000000000001AAA", now=T0)
        with pytest.raises(FencedError):
            await term_store.link_created("people", "p-1", sobject="Lead", sf_id="00Q000000000001AAA")
        assert await store.db.people.find_one({"_id": "p-1"}) == person

    async def test_the_salesforce_shadow(self, store: Store, person: dict[str, object]) -> None:
        old = await ended_term(store)
        with pytest.raises(FencedError):
            await TermStore(store, lambda: old).record_shadow(
                "people", {"p-1": {"_sync.sf.Lead.FirstName": {"v": "Ann", "at": T0}}})
        assert await store.db.people.find_one({"_id": "p-1"}) == person


class TestTheLiveTermWrites:
    async def test_field_times_link_and_shadow_land(self, store: Store, person: dict[str, object]) -> None:
        live = await take_lease(store, "leader")
        term_store = TermStore(store, lambda: live)
        await term_store.watched("people").record_field_times({"p-1": {"first_name": T0}}, T0)
        await term_store.record_shadow("people", {"p-1": {"_sync.sf.Lead.FirstName": {"v": "Ann", "at": T0}}})
        assert await term_store.link_created("people", "p-1", sobject="Lead", sf_id="00Q000000000001AAA")
        doc = await store.db.people.find_one({"_id": "p-1"})
        assert doc is not None
        assert doc["crm"]["id"] == "00Q000000000001AAA"
        assert doc["_sync"]["field_times"]["first_name"] is not None
        assert doc["_sync"]["sf"]["Lead"]["FirstName"]["v"] == "Ann"


class TestBetweenTerms:
    async def test_no_term_writes_nothing(self, store: Store, person: dict[str, object]) -> None:
        with pytest.raises(FencedError):
            await TermStore(store, lambda: None).watched("people").record_field_times(
                {"p-1": {"first_name": T0}}, T0)
        assert await store.db.people.find_one({"_id": "p-1"}) == person
