"""Issue 11, the store's part: durable data writes (item 9), monotonic and fenced offsets
(item 4), compare-and-set record writes (item 6), driver encoding errors (item 1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import monitoring

from reconciler.errors import FencedError, SyncError
from reconciler.inbound import Reconciler
from reconciler.ports import ChangeKind, ChangeSource, OutboundWrite
from reconciler.store import Fence, RecordVersion, RecordWrite, Store
from reconciler.sync_logs import SyncLog
from tests.support.salesforce_changes import MAPPINGS, OWNER_1, T0, change

WRITE_COMMANDS = {"insert", "update", "delete", "findAndModify"}
LEAD = "00Q000000000009AAA"


class WriteConcerns(monitoring.CommandListener):
    """Every write command's collection and write concern, as sent on the wire."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in WRITE_COMMANDS:
            command = event.command
            self.sent.append((event.command_name, str(command[event.command_name]),
                              command.get("writeConcern")))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def watched_store(mongo_uri: str, database_name: str) -> AsyncIterator[tuple[Store, WriteConcerns]]:
    """A Store over a client whose URI asks for w=1, with a command listener."""
    listener = WriteConcerns()
    sep = "&" if "?" in mongo_uri else "/?"
    client: Any = AsyncIOMotorClient(f"{mongo_uri}{sep}w=1", tz_aware=True, event_listeners=[listener])
    store = Store(client, client[database_name])
    await store.ensure_indexes()
    await store.outbox.ensure_indexes()
    yield store, listener
    await client.drop_database(database_name)
    client.close()


class TestDataIsAsDurableAsOffsets:
    async def test_logs_outbox_offsets_and_single_record_writes_are_majority_journaled(
        self, watched_store: tuple[Store, WriteConcerns]
    ) -> None:
        """Item 9: even on a w=1 URI, people, companies, outbox, sync_logs and sync_state writes
        carry {w: majority, j: true}, the write concern offsets use, unless a batch says otherwise."""
        store, listener = watched_store
        listener.sent.clear()
        person = ObjectId()
        await store.bulk_apply("people", [RecordWrite({"_id": person}, set={"email": "a@x.com"},
                                                      upsert=True)])
        await store.write_in_order("companies", [RecordWrite({"_id": 1}, set={"name": "A"}, upsert=True)])
        await store.insert_sync_logs([SyncLog(source="local", type="update", status="success")])
        await store.link_created("people", person, sobject="Lead", sf_id="00Q000000000001AAA")
        await store.outbox.add([OutboundWrite("Lead", None, "people", person, {"LastName": "A"}, "create")],
                               datetime.now(UTC))
        await store.save_state("replay:x", {"replay_id": 1})
        await store.journal_barrier()
        collections = {name for _, name, _ in listener.sent}
        assert {"people", "companies", "sync_logs", "outbox", "sync_state"} <= collections
        for command, name, concern in listener.sent:
            assert concern == {"w": "majority", "j": True}, (command, name, concern)

    async def test_a_batchs_records_are_majority_and_its_last_write_majority_journaled(
        self, watched_store: tuple[Store, WriteConcerns]
    ) -> None:
        """Item 9, at one journal sync per batch: `apply_batch` writes records {w: majority}
        without `j`, and its last write before it returns is {w: majority, j: true}; a journaled
        acknowledgement covers every earlier write, so nothing the batch wrote is acknowledged,
        or passed by an offset, before it is journaled. Three kinds of batch: an update that logs,
        an update that writes only the Salesforce shadow (no log: `journal_barrier` closes it),
        and an import page of creates (one summary log)."""
        store, listener = watched_store
        reconciler = Reconciler(store, MAPPINGS)
        await store.db.people.insert_one({"first_name": "Ann", "last_name": "Lee", "email": "ann@x.com",
                                          "updated_at": T0, "crm": {"object": "Lead", "id": LEAD}})
        batches = {
            "logged update": ([change(LEAD, {"FirstName": "Anna"})], False),
            "shadow-only update": ([change(LEAD, {"Email": "ann@x.com"})], False),
            "import page": ([change(f"00Q00000000000{i}AAA", {"LastName": f"L{i}", "OwnerId": OWNER_1},
                                    kind=ChangeKind.CREATE, source=ChangeSource.IMPORT) for i in range(3)],
                            True),
        }
        for name, (changes, summary) in batches.items():
            listener.sent.clear()
            result = await reconciler.apply_batch(changes, summary=summary)
            assert result.applied == len(changes), name
            assert (result.logs == []) is (name == "shadow-only update"), name
            records = [concern for _, coll, concern in listener.sent if coll == "people"]
            assert records and all(c == {"w": "majority"} for c in records), (name, listener.sent)
            assert listener.sent[-1][2] == {"w": "majority", "j": True}, (name, listener.sent)
        shadow = (await store.db.people.find_one({"crm.id": LEAD}) or {})["_sync"]["sf"]["Lead"]
        assert shadow["Email"]["v"] == "ann@x.com"  # the shadow-only batch did write


def later(seconds: float) -> Any:
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return lambda: moment


class TestOffsetsNeverGoBackwards:
    async def test_a_lower_replay_id_does_not_replace_a_higher_one(self, store: Store) -> None:
        """Item 4: replay ids are written with $max: a late, lower write leaves the higher one."""
        await store.save_state("replay:/data/LeadChangeEvent", {"replay_id": 10})
        await store.save_state("replay:/data/LeadChangeEvent", {"replay_id": 7})
        assert await store.load_state("replay:/data/LeadChangeEvent") == {"replay_id": 10}
        await store.save_state("replay:/data/LeadChangeEvent", {"replay_id": 12})
        assert await store.load_state("replay:/data/LeadChangeEvent") == {"replay_id": 12}


class TestLeaseTerms:
    async def test_each_new_holder_gets_a_higher_term_and_renewals_keep_it(self, store: Store) -> None:
        """Item 4: the lease document carries a term, +1 per acquisition, unchanged by renewals."""
        first = store.lease("sync", owner="a", ttl=30)
        assert first.fence() is None
        assert await first.acquire()
        fence = first.fence()
        assert fence == Fence("sync", "a", 1)
        assert await first.acquire()  # renewal
        assert first.fence() == fence
        second = store.lease("sync", owner="b", ttl=30, clock=later(31))
        assert await second.acquire()
        assert second.fence() == Fence("sync", "b", 2)
        doc = await store.db.sync_state.find_one({"_id": "lease:sync"})
        assert (doc["owner"], doc["term"]) == ("b", 2)


class TestFencedWrites:
    async def test_the_holders_fenced_writes_apply(self, store: Store) -> None:
        """Item 4: offsets and records written under the current term are applied."""
        lease = store.lease("sync", owner="a")
        assert await lease.acquire()
        fence = lease.fence()
        assert fence is not None
        await store.save_state("watermark:Lead", {"ts": "t1"}, fence=fence)
        await store.save_state("replay:/data/LeadChangeEvent", {"replay_id": 3}, fence=fence)
        outcome = await store.bulk_apply("people", [RecordWrite({"_id": 1}, set={"a": 1}, upsert=True)],
                                         fence=fence)
        assert outcome.errors == {}
        assert await store.load_state("watermark:Lead") == {"ts": "t1"}
        assert await store.db.people.count_documents({}) == 1

    async def test_a_stalled_ex_leaders_late_writes_are_refused(self, store: Store) -> None:
        """Item 4: after a takeover, the old term's offset and record writes raise FencedError
        and change nothing, even for a key the new leader has not written yet."""
        old = store.lease("sync", owner="a", ttl=30)
        assert await old.acquire()
        stale = old.fence()
        assert stale is not None
        await store.save_state("watermark:Lead", {"ts": "t1"}, fence=stale)
        new = store.lease("sync", owner="b", ttl=30, clock=later(31))
        assert await new.acquire()
        with pytest.raises(FencedError):
            await store.save_state("watermark:Lead", {"ts": "t0"}, fence=stale)
        with pytest.raises(FencedError):
            await store.save_state("replay:/data/LeadChangeEvent", {"replay_id": 99}, fence=stale)
        with pytest.raises(FencedError):
            await store.bulk_apply("people", [RecordWrite({"_id": 1}, set={"a": 1}, upsert=True)],
                                   fence=stale)
        with pytest.raises(FencedError):
            await store.write_in_order("people", [RecordWrite({"_id": 1}, set={"a": 1}, upsert=True)],
                                       fence=stale)
        assert await store.load_state("watermark:Lead") == {"ts": "t1"}
        assert await store.load_state("replay:/data/LeadChangeEvent") is None
        assert await store.db.people.count_documents({}) == 0

    async def test_a_write_that_passed_the_lease_check_is_still_refused_after_takeover(
        self, store: Store
    ) -> None:
        """Item 4: the takeover stamps every offset with the new term, so an old-term offset write
        is refused by the offset document itself, whatever the lease check saw before it."""
        old = store.lease("sync", owner="a", ttl=30)
        assert await old.acquire()
        stale = old.fence()
        assert stale is not None
        await store.save_state("watermark:Lead", {"ts": "t1"}, fence=stale)
        new = store.lease("sync", owner="b", ttl=30, clock=later(31))
        assert await new.acquire()
        # What the old leader's lease check saw just before it stalled: still its own term.
        await store.db.sync_state.update_one({"_id": "lease:sync"}, {"$set": {"owner": "a", "term": 1}})
        with pytest.raises(FencedError):
            await store.save_state("watermark:Lead", {"ts": "t0"}, fence=stale)
        assert await store.load_state("watermark:Lead") == {"ts": "t1"}
        assert isinstance(FencedError("x"), SyncError)


class TestCompareAndSetRecordWrites:
    async def test_a_platform_edit_since_the_read_is_a_conflict_not_overwritten(self, store: Store) -> None:
        """Item 6: the document changed (platform edit: updated_at moved) between read and write:
        that write is reported in `conflicts` and not applied; the batch's other writes are."""
        t0 = datetime(2025, 1, 1, tzinfo=UTC)
        await store.db.people.insert_many([{"_id": 1, "city": "Oslo", "updated_at": t0},
                                           {"_id": 2, "city": "Rome", "updated_at": t0}])
        seen = {d["_id"]: RecordVersion.of(d) for d in await store.find_records("people", [1, 2])}
        await store.db.people.update_one({"_id": 1}, {"$set": {"city": "Bergen",
                                                               "updated_at": t0 + timedelta(seconds=1)}})
        outcome = await store.bulk_apply("people", [
            RecordWrite({"_id": 1}, set={"city": "Paris"}, expected=seen[1]),
            RecordWrite({"_id": 2}, set={"city": "Milan"}, expected=seen[2]),
        ])
        assert outcome.conflicts == {0} and outcome.errors == {}
        docs = {d["_id"]: d async for d in store.db.people.find({})}
        assert docs[1]["city"] == "Bergen" and docs[2]["city"] == "Milan"

    async def test_our_own_write_since_the_read_is_a_conflict_even_with_the_same_updated_at(
        self, store: Store
    ) -> None:
        """Item 6: every store write bumps `_sync.version`, so a second writer that read the same
        version conflicts even when both set the same `updated_at`."""
        t0 = datetime(2025, 1, 1, tzinfo=UTC)
        await store.db.people.insert_one({"_id": 1, "city": "Oslo", "updated_at": t0})
        [doc] = await store.find_records("people", [1])
        seen = RecordVersion.of(doc)
        def write(city: str) -> list[RecordWrite]:
            return [RecordWrite({"_id": 1}, set={"city": city, "updated_at": t0}, expected=seen)]

        first = await store.bulk_apply("people", write("A"))
        second = await store.bulk_apply("people", write("B"))
        assert first.conflicts == set() and second.conflicts == {0}
        [doc] = await store.find_records("people", [1])
        assert doc["city"] == "A" and RecordVersion.of(doc).version == 1

    async def test_a_document_never_stamped_is_written_by_a_writer_that_read_it_so(
        self, store: Store
    ) -> None:
        """Item 6: no `updated_at`, no `_sync` (a platform document the service never wrote):
        the version read is (None, None), which matches the missing fields; the write applies."""
        await store.db.people.insert_one({"_id": 1, "city": "Oslo"})
        [doc] = await store.find_records("people", [1])
        assert RecordVersion.of(doc) == RecordVersion(None, None)
        outcome = await store.bulk_apply("people", [RecordWrite({"_id": 1}, set={"city": "Paris"},
                                                                expected=RecordVersion.of(doc))])
        assert outcome.conflicts == set() and outcome.errors == {}
        [doc] = await store.find_records("people", [1])
        assert doc["city"] == "Paris" and RecordVersion.of(doc).version == 1

    async def test_a_document_deleted_since_the_read_is_a_conflict_and_not_recreated(
        self, store: Store
    ) -> None:
        """Item 6: a write expecting a version of a document that is gone changes nothing."""
        await store.db.people.insert_one({"_id": 1, "city": "Oslo"})
        [doc] = await store.find_records("people", [1])
        await store.db.people.delete_one({"_id": 1})
        outcome = await store.bulk_apply("people", [RecordWrite({"_id": 1}, set={"city": "X"},
                                                                expected=RecordVersion.of(doc))])
        assert outcome.conflicts == {0}
        assert await store.db.people.count_documents({}) == 0

    def test_an_expected_version_cannot_be_an_upsert(self) -> None:
        """Item 6: upserting on a version mismatch would insert a second document: refused."""
        with pytest.raises(ValueError, match="upsert"):
            RecordWrite({"_id": 1}, set={"a": 1}, upsert=True, expected=RecordVersion(None, None))
