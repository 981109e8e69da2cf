"""A platform edit that waited in the outbox is re-decided against Salesforce's record as it is
now, not against a shadow the inbound side may not have brought up to date (real SecantusDB, the
org emulator over HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from bson import ObjectId

from reconciler.inbound import Reconciler
from reconciler.outbound import OutboundFlusher
from reconciler.outbound_shadow import ShadowGate
from reconciler.outbox import Outbox
from reconciler.ports import ChangeKind, ChangeSource, OutboundWrite, SalesforceChange
from reconciler.store import Store
from tests.integration.test_outbound_lost_response import MAPPINGS, Budget, Org, running_org
from tests.support.clock import Clock

QUERY = "/services/data/v62.0/query"


@pytest.fixture(name="org")
async def org_fixture() -> AsyncIterator[Org]:
    async with running_org() as running:
        yield running


async def edit_as_user(org: Org, sf_id: str, **fields: Any) -> None:
    """A Salesforce user edits the Lead (its change event is never read here: no stream runs)."""
    async with aiohttp.ClientSession() as session:
        answer = await session.patch(f"{org.emulator.base_url}/_emulator/records/Lead/{sf_id}", json=fields)
        assert answer.status == 200


async def platform_title_edit(store: Store, sf_id: str, at: datetime) -> ObjectId:
    """A Person linked to the Lead whose title the platform edited at `at`; the shadow last saw
    Salesforce's "Old" a minute before that."""
    local_id = ObjectId()
    await store.db.people.insert_one({
        "_id": local_id, "last_name": "Ng", "company_name": "Acme", "title": "Platform", "updated_at": at,
        "crm": {"object": "Lead", "id": sf_id},
        "_sync": {"written_at": at, "field_times": {"title": at},
                  "sf": {"Lead": {"Title": {"v": "Old", "at": at - timedelta(minutes=1)}}}}})
    return local_id


async def flush_queued_at(store: Store, org: Org, local_id: ObjectId, sf_id: str, queued: datetime) -> None:
    """Queue the platform's edit at `queued` (the outbox's clock), then flush it now (streaming)."""
    clock = Clock()
    clock.now = queued
    outbox = Outbox(store.outbox, clock=clock)
    await outbox.enqueue([OutboundWrite("Lead", sf_id, "people", local_id, {"Title": "Platform"},
                                        "local_edit")])
    flusher = OutboundFlusher(outbox, org.client, store, Budget(), client_name="salesforce-sync",
                              gate=ShadowGate(org.client, store, MAPPINGS))
    await flusher.flush()
    assert await outbox.depth() == 0


def queries(org: Org) -> int:
    return sum(1 for r in org.emulator.state.requests.entries if r["path"] == QUERY)


class TestAWriteThatWaitedIsDecidedAgainstSalesforceNow:
    async def test_a_later_salesforce_edit_the_shadow_does_not_show_yet_stands(self, org: Org,
                                                                              store: Store) -> None:
        """Chaos seed 2718, L10.title and A10.city: the platform edited the title, then no leader
        flushed for half a minute (a leader gap, the budget paused) while a Salesforce user edited
        it too; the new leader's flusher sent the platform's older value over that edit before
        its stream had read it. Queued that long ago, the write is decided against the Lead read
        again: Salesforce's later edit stands (most recent value), nothing is sent."""
        sf_id = await org.seed_as_user({"LastName": "Ng", "Company": "Acme", "Title": "Old"})
        edited = datetime.now(UTC) - timedelta(seconds=30)
        local_id = await platform_title_edit(store, sf_id, edited)
        await edit_as_user(org, sf_id, Title="Sf")
        before = queries(org)

        await flush_queued_at(store, org, local_id, sf_id, edited)

        assert queries(org) == before + 1  # the Lead read again: one query for the call
        [lead] = await org.rows(f"SELECT Title FROM Lead WHERE Id = '{sf_id}'")
        assert lead["Title"] == "Sf"
        # The stored shadow stays what the inbound side has read, so when a poll reads "Sf" it is
        # an edit and reaches the platform (had the flush stored it, the poll would skip it as a
        # value read before: the second run of chaos seed 2718 left eight fields diverged so)
        doc = await store.db.people.find_one({"_id": local_id})
        assert doc is not None and doc["_sync"]["sf"]["Lead"]["Title"]["v"] == "Old"
        await Reconciler(store, MAPPINGS).apply([SalesforceChange(
            sobject="Lead", sf_id=sf_id, kind=ChangeKind.UPDATE, fields={"Title": "Sf"},
            changed_at=datetime.now(UTC), source=ChangeSource.POLL)])
        doc = await store.db.people.find_one({"_id": local_id})
        assert doc is not None and doc["title"] == "Sf"

    async def test_an_old_edit_queued_late_by_a_new_leader_is_decided_against_salesforce_now(
            self, org: Org, store: Store) -> None:
        """Chaos seed 2718 (third run), L10.title: the new leader's watcher queued the platform's
        edit, made half a minute before, just before its flusher sent it; the queue time was
        fresh, the edit was not. Its field time counts: the Lead is read again."""
        sf_id = await org.seed_as_user({"LastName": "Ng", "Company": "Acme", "Title": "Old"})
        local_id = await platform_title_edit(store, sf_id, datetime.now(UTC) - timedelta(seconds=30))
        await edit_as_user(org, sf_id, Title="Sf")

        await flush_queued_at(store, org, local_id, sf_id, datetime.now(UTC))

        [lead] = await org.rows(f"SELECT Title FROM Lead WHERE Id = '{sf_id}'")
        assert lead["Title"] == "Sf"

    async def test_a_write_flushed_on_time_reads_nothing(self, org: Org, store: Store) -> None:
        """The normal flush (queued two seconds ago) trusts the shadow: no query, the edit goes out."""
        sf_id = await org.seed_as_user({"LastName": "Ng", "Company": "Acme", "Title": "Old"})
        now = datetime.now(UTC)
        local_id = await platform_title_edit(store, sf_id, now - timedelta(seconds=2))
        before = queries(org)

        await flush_queued_at(store, org, local_id, sf_id, now - timedelta(seconds=2))

        assert queries(org) == before
        [lead] = await org.rows(f"SELECT Title FROM Lead WHERE Id = '{sf_id}'")
        assert lead["Title"] == "Platform"


class TestANewTermReadsWhatItsStreamHasNotYet:
    async def test_an_edit_made_before_the_term_started_is_decided_against_salesforce_now(
            self, org: Org, store: Store) -> None:
        """Chaos seed 50321, P14.city: the platform edited City, a Salesforce user edited it
        1.4 s later, and the leader was stopped; the new leader's flusher sent the platform's
        older value 0.25 s into its term, 4.7 s after the edit (not yet "waited"), before its
        stream had read the Salesforce edit made in the leader gap. An edit made before the
        flusher's term started is decided against the Lead read again: Salesforce's stands."""
        sf_id = await org.seed_as_user({"LastName": "Ng", "Company": "Acme", "Title": "Old"})
        edited = datetime.now(UTC) - timedelta(seconds=3)
        local_id = await platform_title_edit(store, sf_id, edited)
        await edit_as_user(org, sf_id, Title="Sf")
        clock = Clock()
        clock.now = edited
        outbox = Outbox(store.outbox, clock=clock)
        await outbox.enqueue([OutboundWrite("Lead", sf_id, "people", local_id, {"Title": "Platform"},
                                            "local_edit")])
        flusher = OutboundFlusher(outbox, org.client, store, Budget(), client_name="salesforce-sync",
                                  gate=ShadowGate(org.client, store, MAPPINGS))

        stop = asyncio.Event()
        running = asyncio.create_task(flusher.run(stop))  # a new term's flusher: it starts now
        try:
            async with asyncio.timeout(30):
                while await outbox.depth():
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            await running

        [lead] = await org.rows(f"SELECT Title FROM Lead WHERE Id = '{sf_id}'")
        assert lead["Title"] == "Sf"
