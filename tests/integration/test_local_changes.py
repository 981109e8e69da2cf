"""The local-change watcher on a real MongoDB-wire server: change streams and polling fallback."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId

from reconciler.local_changes import LocalChangeWatcher
from reconciler.objects import COMPANIES, PEOPLE
from reconciler.outbox import Outbox
from reconciler.shadow import has_unstamped_edit, platform_time
from reconciler.store import OutboxEntry, Store
from reconciler.store.state_keys import local_watermark_key, resume_key
from settings import Mappings, parse_mappings
from tests.support.eventually import eventually

MAPPINGS = """
[people.first_name]
lead = "FirstName"
contact = "FirstName"
[people.last_name]
lead = "LastName"
contact = "LastName"
[people.company_name]
lead = "Company"
[people.score]
lead = "Score__c"
direction = "from_salesforce"
[people."custom_fields.linkedin"]
lead = "LinkedIn__c"
[people.owner_crm_id]
lead = "OwnerId"
direction = "from_salesforce"
[companies.name]
account = "Name"
[companies.domain]
account = "Website"
[rules]
create_in_salesforce = "lead"
"""

LEAD_ID = "00Q000000000001AAA"


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def mappings() -> Mappings:
    return parse_mappings(MAPPINGS)


@pytest.fixture
def outbox(store: Store) -> Outbox:
    return Outbox(store.outbox)


class Running:
    """A watcher running in the background for the duration of a test; entered once it reads
    every collection (its offset for each is written: a resume token, or a polling watermark)."""

    def __init__(self, watcher: LocalChangeWatcher, store: Store) -> None:
        self.watcher = watcher
        self.store = store
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LocalChangeWatcher:
        self.task = asyncio.create_task(self.watcher.run(self.stop))
        await eventually(self.reading)
        return self.watcher

    async def reading(self) -> bool:
        assert self.task is not None
        if self.task.done():
            self.task.result()  # the watcher died: show why
        mode = self.watcher.mode
        if mode is None:
            return False
        key = resume_key if mode == "stream" else local_watermark_key
        return all([await self.store.load_state(key(c)) is not None for c in (PEOPLE, COMPANIES)])

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 10)


def watcher(store: Store, mappings: Mappings, outbox: Outbox, **options: Any) -> LocalChangeWatcher:
    options.setdefault("max_await_ms", 50)
    # token_save_interval 0: the first (empty) batch already saves a resume token, the sign
    # `Running` waits for that the change stream is open.
    return LocalChangeWatcher(store, mappings, outbox, poll_interval=timedelta(milliseconds=100),
                              settle=timedelta(0), token_save_interval=timedelta(0), **options)


MARKER_OBJECT = {PEOPLE: ("Lead", "last_name"), COMPANIES: ("Account", "name")}


def is_marker(entry: OutboxEntry) -> bool:
    return "MARK" in str(entry.write.sf_id)


async def settled(store: Store, outbox: Outbox, collection: str = PEOPLE) -> list[OutboxEntry]:
    """The pending writes (markers left out) once the watcher has processed every change made
    so far to `collection`. The proof is a marker, not a sleep: a linked record written now by
    the service, then edited by the platform, certainly enqueues an update; the watcher reads
    a collection in order (change stream, or (updated_at, _id) when polling), so once the
    marker's update is pending every earlier change has had its effect -- or none."""
    sobject, field = MARKER_OBJECT[collection]
    marker_id = ObjectId()
    sf_id = f"{sobject[:1]}MARK{str(marker_id)[-13:]}"  # 18 characters, unique
    at = now()
    await store.db[collection].insert_one({
        "_id": marker_id, field: "Marker", "updated_at": at,
        "crm": {"object": sobject, "id": sf_id, "linked_at": at}, "_sync": {"written_at": at}})
    await platform_edit(store, marker_id, collection, **{field: "Marker edited"})

    async def marker_pending() -> bool:
        return any(e.write.local_id == marker_id for e in await outbox.pending())
    await eventually(marker_pending)
    return [e for e in await outbox.pending() if not is_marker(e)]


async def pending_after(store: Store, outbox: Outbox, count: int,
                        collection: str = PEOPLE) -> list[OutboxEntry]:
    """Wait for `count` pending writes, then until everything written so far was processed
    (`settled`), and return what is pending (markers left out)."""
    async def enough() -> bool:
        return len([e for e in await outbox.pending() if not is_marker(e)]) >= count
    await eventually(enough)
    return await settled(store, outbox, collection)


async def insert_linked_person(store: Store, **fields: Any) -> ObjectId:
    """A Person the service created from Salesforce: a service write."""
    doc_id = ObjectId()
    at = now()
    await store.db.people.insert_one({
        "_id": doc_id, "first_name": "Ann", "last_name": "Lee", "updated_at": at,
        "crm": {"object": "Lead", "id": LEAD_ID, "linked_at": at},
        "_sync": {"written_at": at}, **fields})
    return doc_id


async def platform_edit(store: Store, doc_id: Any, collection: str = "people", **fields: Any) -> None:
    await store.db[collection].update_one({"_id": doc_id}, {"$set": {**fields, "updated_at": now()}})


async def service_write(store: Store, doc_id: Any, **fields: Any) -> None:
    at = now()
    await store.db.people.update_one(
        {"_id": doc_id}, {"$set": {**fields, "_sync.written_at": at, "updated_at": at}})


@pytest.fixture(params=["stream", "poll"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestPlatformEdits:
    async def test_an_edit_to_a_linked_person_is_enqueued(
        self, store: Store, mappings: Mappings, outbox: Outbox, mode: str
    ) -> None:
        """The mapped fields the platform changed go to the outbox as one update."""
        doc_id = await insert_linked_person(store)
        async with Running(watcher(store, mappings, outbox, force_polling=mode == "poll"), store) as w:
            await platform_edit(store, doc_id, first_name="Anne", **{"custom_fields.linkedin": "in/anne"})
            [entry] = await pending_after(store, outbox, 1)
        assert w.mode == mode
        assert (entry.kind, entry.write.sobject, entry.write.sf_id) == ("update", "Lead", LEAD_ID)
        expected = {"FirstName": "Anne", "LinkedIn__c": "in/anne"}
        # polling: its first pass re-reads the overlap window, so the service's own write of the
        # document is its baseline, and only the changed fields go
        assert entry.write.fields == expected
        doc = await store.db.people.find_one({"_id": doc_id})
        assert set(doc["_sync"]["field_times"]) >= {"first_name", "custom_fields"}
        assert doc["_sync"]["written_at"] == doc["updated_at"]

    async def test_each_value_stamped_is_kept_beside_its_time(
        self, store: Store, mappings: Mappings, outbox: Outbox, mode: str
    ) -> None:
        """The watcher keeps the value it stamped with the field's time, so a later edit of
        another field, not stamped yet, does not date this one's older value as fresh (chaos seed
        1873 x 2000, P3.company_name)."""
        doc_id = await insert_linked_person(store)
        async with Running(watcher(store, mappings, outbox, force_polling=mode == "poll"), store):
            await platform_edit(store, doc_id, first_name="Anne")
            await pending_after(store, outbox, 1)
        doc = await store.db.people.find_one({"_id": doc_id})
        stamped = doc["_sync"]["field_times"]["first_name"]
        assert doc["_sync"]["field_values"]["first_name"] == {"v": "Anne", "at": stamped}
        await platform_edit(store, doc_id, last_name="Lee")  # the watcher is stopped: unstamped
        doc = await store.db.people.find_one({"_id": doc_id})
        assert has_unstamped_edit(doc)
        assert platform_time(doc, "first_name", None) == stamped
        assert platform_time(doc, "last_name", None) == doc["updated_at"]

    async def test_the_services_own_writes_are_not_sent_back(
        self, store: Store, mappings: Mappings, outbox: Outbox, mode: str
    ) -> None:
        """Writes carrying `_sync.written_at` (inbound applies, links) never reach the outbox."""
        doc_id = await insert_linked_person(store)
        async with Running(watcher(store, mappings, outbox, force_polling=mode == "poll"), store):
            await service_write(store, doc_id, first_name="From Salesforce")
            assert await settled(store, outbox) == []
            # ...and the watcher's own field-time write after a real edit does not loop either
            await platform_edit(store, doc_id, last_name="Lee-Smith")
            await pending_after(store, outbox, 1)
            for entry in await outbox.pending():
                await outbox.done(await outbox.claim(entry.write.sobject, entry.kind, 10))
            assert await settled(store, outbox) == []

    async def test_a_new_unlinked_person_becomes_a_lead_create(
        self, store: Store, mappings: Mappings, outbox: Outbox, mode: str
    ) -> None:
        """A Person the platform creates is a create per `rules.create_in_salesforce`."""
        async with Running(watcher(store, mappings, outbox, force_polling=mode == "poll"), store):
            doc_id = ObjectId()
            await store.db.people.insert_one({"_id": doc_id, "first_name": "Kim", "last_name": "Park",
                                              "company_name": "Acme", "score": 7, "updated_at": now()})
            [entry] = await pending_after(store, outbox, 1)
        assert (entry.kind, entry.write.sobject, entry.write.local_id) == ("create", "Lead", doc_id)
        assert entry.write.fields == {"FirstName": "Kim", "LastName": "Park", "Company": "Acme"}

    async def test_a_new_company_becomes_an_account_create(
        self, store: Store, mappings: Mappings, outbox: Outbox
    ) -> None:
        """A Company the platform creates is an Account create."""
        async with Running(watcher(store, mappings, outbox), store):
            await store.db.companies.insert_one({"_id": "c-1", "name": "Acme", "domain": "acme.com",
                                                 "updated_at": now()})
            [entry] = await pending_after(store, outbox, 1, COMPANIES)
        assert (entry.kind, entry.write.sobject) == ("create", "Account")
        assert entry.write.fields == {"Name": "Acme", "Website": "acme.com"}

    async def test_inbound_only_fields_and_deletes_are_not_sent(
        self, store: Store, mappings: Mappings, outbox: Outbox
    ) -> None:
        """A from_salesforce field edit and a delete enqueue nothing; the edit's time is kept."""
        doc_id = await insert_linked_person(store)
        other = await insert_linked_person(store, crm={"object": "Lead", "id": "00Q000000000002AAA"})
        async with Running(watcher(store, mappings, outbox), store):
            await platform_edit(store, doc_id, score=99)
            await store.db.people.delete_one({"_id": other})
            assert await settled(store, outbox) == []
        doc = await store.db.people.find_one({"_id": doc_id})
        assert "score" in doc["_sync"]["field_times"]

    async def test_create_in_salesforce_none_creates_nothing(
        self, store: Store, outbox: Outbox
    ) -> None:
        """With `create_in_salesforce = "none"` a new Person stays local."""
        mappings = parse_mappings(MAPPINGS.replace('create_in_salesforce = "lead"',
                                                   'create_in_salesforce = "none"'))
        async with Running(watcher(store, mappings, outbox), store):
            await store.db.people.insert_one({"last_name": "Park", "updated_at": now()})
            assert await settled(store, outbox) == []


class TestResume:
    async def test_a_restart_resumes_from_the_saved_token(
        self, store: Store, mappings: Mappings, outbox: Outbox
    ) -> None:
        """Edits made while stopped are picked up after a restart; earlier ones are not repeated."""
        doc_id = await insert_linked_person(store)
        async with Running(watcher(store, mappings, outbox), store):
            await platform_edit(store, doc_id, first_name="Before")
            [first] = await pending_after(store, outbox, 1)
        assert (await store.load_state("resume:people") or {}).get("token")
        await outbox.done(await outbox.claim("Lead", "update", 10))  # flushed

        await platform_edit(store, doc_id, last_name="While-Stopped")
        async with Running(watcher(store, mappings, outbox), store):
            [second] = await pending_after(store, outbox, 1)
        assert first.write.fields == {"FirstName": "Before"}
        assert second.write.fields == {"LastName": "While-Stopped"}

    async def test_a_first_start_saves_where_its_stream_began_at_once(
        self, store: Store, mappings: Mappings, outbox: Outbox
    ) -> None:
        """Chaos seed 5309, Q1: the first leader had watched the companies for 10 s with no change,
        so no token was saved yet (one is saved with a change, or every 30 s), when it lost its
        lease (MongoDB restarted) and stopped without its last save. A Company created before
        the next term's stream opened was never seen: with no token, it watched from its own
        start. A stream with no saved token saves where it began at once."""
        first = LocalChangeWatcher(store, mappings, outbox, max_await_ms=50)  # 30 s save interval
        task = asyncio.create_task(first.run(asyncio.Event()))

        async def position_saved() -> bool:
            if task.done():
                task.result()
            return bool((await store.load_state(resume_key(COMPANIES)) or {}).get("token"))
        await eventually(position_saved)
        task.cancel()  # the term ends abruptly: no save on the way out
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.db.companies.insert_one({"_id": "c-1", "name": "Acme", "domain": "acme.com",
                                             "updated_at": now()})

        async with Running(watcher(store, mappings, outbox), store):
            [entry] = await pending_after(store, outbox, 1, COMPANIES)
        assert (entry.write.local_id, entry.write.reason) == ("c-1", "create")

    async def test_polling_resumes_from_its_watermark(
        self, store: Store, mappings: Mappings, outbox: Outbox
    ) -> None:
        """The polling fallback keeps an (updated_at, _id) watermark across restarts."""
        doc_id = await insert_linked_person(store)
        async with Running(watcher(store, mappings, outbox, force_polling=True), store):
            await platform_edit(store, doc_id, first_name="Before")
            await pending_after(store, outbox, 1)
        assert await store.load_state("local_watermark:people")
        await outbox.done(await outbox.claim("Lead", "update", 10))

        await platform_edit(store, doc_id, last_name="While-Stopped")
        async with Running(watcher(store, mappings, outbox, force_polling=True), store):
            [second] = await pending_after(store, outbox, 1)
        assert second.write.fields == {"LastName": "While-Stopped"}  # diffed against the snapshot
