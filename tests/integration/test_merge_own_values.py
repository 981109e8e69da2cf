"""A merge (an admin re-import or retry) weighs a value Salesforce holds that the service wrote
there itself as the platform's own, at the time the platform set it (the org emulator over real
HTTP, a real MongoDB-wire server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from bson import ObjectId

from listener.reader import RecordReader
from reconciler.inbound import Reconciler
from reconciler.jobs import Jobs
from reconciler.outbox import Outbox
from reconciler.ports import OutboundWrite
from reconciler.store import Store
from tests.integration.test_outbound_lost_response import (
    MAPPINGS,
    Org,
    flush_until_empty,
    flusher_for,
    linked_person_whose_update_is_lost,
    platform_titles,
    running_org,
)


@pytest.fixture
async def org() -> AsyncIterator[Org]:
    async with running_org() as running:
        yield running


def jobs_for(store: Store, org: Org, outbox: Outbox) -> Jobs:
    """The admin jobs as the service builds them: re-imports read through the one reader."""
    reader = RecordReader(org.client, MAPPINGS)
    return Jobs(store, Reconciler(store, MAPPINGS, fetcher=reader, outbox=outbox))


async def until_a_later_second(than: datetime) -> None:
    """Wait until this host's clock is in a later whole second than `than` (Salesforce's
    `LastModifiedDate` has whole seconds)."""
    while datetime.now(UTC).replace(microsecond=0) <= than.replace(microsecond=0):
        await asyncio.sleep(0.02)


async def new_person(store: Store, outbox: Outbox, **fields: str) -> ObjectId:
    """A Person Ng (Acme, ng@x.com and `fields`) made on the platform now, its create queued."""
    local_id, now = ObjectId(), datetime.now(UTC)
    person = {"last_name": "Ng", "company_name": "Acme", "email": "ng@x.com", **fields}
    await store.db.people.insert_one({
        "_id": local_id, **person, "updated_at": now,
        "_sync": {"written_at": now, "field_times": dict.fromkeys(person, now)}})
    create = {"LastName": "Ng", "Company": "Acme", "Email": "ng@x.com",
              **{name.title().replace("_", ""): value for name, value in fields.items()}}
    await outbox.enqueue([OutboundWrite("Lead", None, "people", local_id, create, "create")])
    return local_id


class TestAReImportOfTheServicesOwnWrite:
    """Chaos seed 60607, P25.first_name: the platform edited a new Person's first name just as the
    flusher claimed its create (the create carried the name it was queued with); an admin
    re-import of the Lead ran before the edit went out. The merge dated the Lead's first name by
    its `LastModifiedDate` (the create's, later than the edit), so the older name, the
    platform's own, replaced the newer one on the platform, and the queued edit then had
    nothing to send: the edit was lost on both sides."""

    async def test_a_platform_edit_made_as_the_create_went_out_stands(
            self, org: Org, store: Store) -> None:
        outbox, flusher = flusher_for(store, org)
        local_id = await new_person(store, outbox, first_name="Ann")
        edited_at = datetime.now(UTC)
        await store.db.people.update_one({"_id": local_id}, {"$set": {
            "first_name": "Anna", "updated_at": edited_at, "_sync.written_at": edited_at,
            "_sync.field_times.first_name": edited_at}})
        await until_a_later_second(edited_at)  # the Lead is written after the edit
        await flush_until_empty(outbox, flusher)  # the create as queued: "Ann"
        doc = await store.db.people.find_one({"_id": local_id})
        assert doc is not None
        sf_id = str(doc["crm"]["id"])
        # the watcher queues the edit once the create was claimed
        await outbox.enqueue([OutboundWrite("Lead", sf_id, "people", local_id, {"FirstName": "Anna"},
                                            "local_edit")])

        outcome = await jobs_for(store, org, outbox).import_record(sf_id)

        assert outcome.status == "retried"
        doc = await store.db.people.find_one({"_id": local_id})
        assert doc is not None and doc["first_name"] == "Anna"
        await flush_until_empty(outbox, flusher)
        [lead] = await org.rows(f"SELECT FirstName FROM Lead WHERE Id = '{sf_id}'")
        assert lead["FirstName"] == "Anna"


class TestAReImportOfALostUpdatesOwnValue:
    """The same for a value our update sent whose answer was lost (chaos seed 40427's hole, met by
    a merge): the shadow does not know it, but the queued write's claims do (`sent_values`)."""

    async def test_a_platform_edit_made_while_the_call_was_in_flight_stands(
            self, org: Org, store: Store) -> None:
        """The platform edited the title again while the lost call was in flight (its time before
        the Lead's `LastModifiedDate`); a re-import ran before the write was sent again. Dated by
        that `LastModifiedDate`, the lost call's older value replaced the newer one on the
        platform, and the re-sent write had nothing to send."""
        outbox, flusher = flusher_for(store, org)
        before_call = datetime.now(UTC) - timedelta(seconds=1)
        sf_id, local_id = await linked_person_whose_update_is_lost(store, outbox, org, flusher)
        await platform_titles(store, outbox, sf_id, local_id, "Newer", at=before_call)

        outcome = await jobs_for(store, org, outbox).import_record(sf_id)

        assert outcome.status == "retried"
        doc = await store.db.people.find_one({"_id": local_id})
        assert doc is not None and doc["title"] == "Newer"
        await flush_until_empty(outbox, flusher)
        [lead] = await org.rows(f"SELECT Title FROM Lead WHERE Id = '{sf_id}'")
        assert lead["Title"] == "Newer"
