"""Inbound applies keep the Salesforce shadow and apply `local_unless_blank` to live Salesforce
edits (issue 10), in a real MongoDB (SecantusDB)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from listener.reader import RecordReader
from reconciler.inbound import Reconciler
from reconciler.merge import HELD_LOCAL
from reconciler.ports import ChangeKind, ChangeSource
from reconciler.store import Store
from settings import parse_mappings
from tests.support.salesforce_changes import OWNER_1, T0, FakeOutbox, FakeSalesforce, change, mappings_toml

SF_ID = "00Q000000000001AAA"
MAPPINGS = parse_mappings(mappings_toml({"people.title": {"merge": "local_unless_blank"}}))


@pytest.fixture
async def store(mongo_uri: str, database_name: str) -> AsyncIterator[Store]:
    store = await Store.connect(mongo_uri, database_name)
    await store.ensure_indexes()
    yield store
    await store.client.drop_database(database_name)
    await store.close()


async def lead(store: Store, **fields: Any) -> None:
    doc = {"first_name": "Ann", "last_name": "Lee", "email": "ann@x.com", "updated_at": T0,
           "_sync": {"written_at": T0}, "crm": {"object": "Lead", "id": SF_ID}, **fields}
    await store.db.people.insert_one(doc)


async def person(store: Store) -> dict[str, Any]:
    doc = await store.db.people.find_one({"crm.id": SF_ID})
    assert doc is not None
    return dict(doc)


class TestShadowInbound:
    async def test_an_inbound_update_records_salesforces_values(self, store: Store) -> None:
        """Each mapped field the change carries (cleared ones too) lands in `_sync.sf` with its time."""
        await lead(store)
        at = T0 + timedelta(seconds=5)
        await Reconciler(store, MAPPINGS).apply([change(SF_ID, {"FirstName": "Anna"}, at=at,
                                                        nulled_fields=frozenset({"Email"}))])
        shadow = (await person(store))["_sync"]["sf"]["Lead"]
        assert shadow["FirstName"] == {"v": "Anna", "at": at}
        assert shadow["Email"] == {"v": None, "at": at}

    async def test_a_shadow_only_change_leaves_no_update_log(self, store: Store) -> None:
        """Salesforce re-sends a value the platform already has: the shadow learns it, no log."""
        await lead(store)
        await Reconciler(store, MAPPINGS).apply([change(SF_ID, {"FirstName": "Ann"})])
        assert (await person(store))["_sync"]["sf"]["Lead"]["FirstName"]["v"] == "Ann"
        assert (await store.find_sync_logs())[0] == []


class TestLocalUnlessBlankLive:
    async def test_a_salesforce_edit_does_not_overwrite_platform_data(self, store: Store) -> None:
        """local_unless_blank: the platform's value stays; one skipped log names the field and why."""
        await lead(store, title="CEO")
        sink = Reconciler(store, MAPPINGS)
        edit = change(SF_ID, {"Title": "CTO"}, at=T0 + timedelta(seconds=5))
        await sink.apply([edit])
        doc = await person(store)
        assert doc["title"] == "CEO"
        assert doc["_sync"]["sf"]["Lead"]["Title"]["v"] == "CTO"
        logs, _ = await store.find_sync_logs()
        assert [(x["type"], x["status"]) for x in logs] == [("skipped", "success")]
        assert logs[0]["fields"]["title"]["reason"] == HELD_LOCAL
        await sink.apply([edit])  # re-delivered: no second log
        assert len((await store.find_sync_logs())[0]) == 1

    async def test_a_blank_platform_field_takes_the_salesforce_edit(self, store: Store) -> None:
        await lead(store)
        edit = change(SF_ID, {"Title": "CTO"}, at=T0 + timedelta(seconds=5))
        await Reconciler(store, MAPPINGS).apply([edit])
        assert (await person(store))["title"] == "CTO"


class TestSameSecondEdits:
    async def test_a_fresh_platform_edit_beats_an_older_salesforce_edit(self, store: Store) -> None:
        """The platform edited at T0+2s (not yet stamped by the watcher); Salesforce's edit of T0+1s
        arrives after: the platform's value stands and its time is stamped."""
        edited = T0 + timedelta(seconds=2)
        await lead(store, first_name="Platform", updated_at=edited)
        await Reconciler(store, MAPPINGS).apply([change(SF_ID, {"FirstName": "Sf"},
                                                        at=T0 + timedelta(seconds=1))])
        doc = await person(store)
        assert doc["first_name"] == "Platform"
        assert doc["_sync"]["field_times"]["first_name"] == edited


class TestRereadIsNotAnEdit:
    async def test_a_polled_value_salesforce_already_had_does_not_undo_a_platform_edit(
            self, store: Store) -> None:
        """salesforce_unless_blank: the platform's later edit was held (not sent); a poll re-reads
        Salesforce's unchanged value (the record changed in another field): the platform keeps its
        value (the shadow says it is not a Salesforce edit)."""
        mappings = parse_mappings(mappings_toml({"people.title": {"merge": "salesforce_unless_blank"}}))
        shadow = {"Lead": {"Title": {"v": "CTO", "at": T0}}}
        await lead(store, title="Platform title", _sync={"written_at": T0, "sf": shadow,
                                                         "field_times": {"title": T0 + timedelta(seconds=1)}})
        polled = change(SF_ID, {"Title": "CTO", "FirstName": "Annie"}, at=T0 + timedelta(seconds=9),
                        kind=ChangeKind.UPSERT, source=ChangeSource.POLL)
        await Reconciler(store, mappings).apply([polled])
        doc = await person(store)
        assert (doc["title"], doc["first_name"]) == ("Platform title", "Annie")


NEW_LEAD = {"FirstName": "Ann", "LastName": "Lee", "OwnerId": OWNER_1}


class Unseen(Store):
    """The store as a reader that raced another writer sees it: no linked document yet."""

    async def find_linked(self, collection: str, sf_ids: Any, *,
                          converted: bool = False) -> list[dict[str, Any]]:
        return []


class TestCreatedShadow:
    async def test_a_create_writes_the_whole_shadow(self, store: Store) -> None:
        at = T0 + timedelta(seconds=5)
        await Reconciler(store, MAPPINGS).apply([change(SF_ID, NEW_LEAD, kind=ChangeKind.CREATE, at=at)])
        shadow = (await person(store))["_sync"]["sf"]["Lead"]
        assert shadow["FirstName"] == {"v": "Ann", "at": at}
        # a create is the full record; a blank it was created with is no edit: no time
        assert shadow["Title"] == {"v": None, "at": None}

    async def test_a_document_created_meanwhile_keeps_its_shadow(self, store: Store) -> None:
        """The create's upsert meets a document another writer linked after our read: the
        fields are merged into it, its shadow (seen later) is not replaced."""
        later = T0 + timedelta(seconds=30)
        await lead(store, _sync={"written_at": T0, "sf": {"Lead": {"FirstName": {"v": "Anne", "at": later}}}})
        racing = Unseen(store.client, store.db)
        await Reconciler(racing, MAPPINGS).apply([change(SF_ID, NEW_LEAD, kind=ChangeKind.CREATE, at=T0)])
        assert (await person(store))["_sync"]["sf"]["Lead"] == {"FirstName": {"v": "Anne", "at": later}}


class TestAnEditInTheSecondOfOurWrite:
    """Chaos seed 50321, L4.first_name and P7.last_name: a Salesforce user edited the field 85 ms
    and 0.5 s before the flusher wrote the platform's value, in the same second of Salesforce's
    clock; the event came in after our write. Its stamp cannot tell whether it came before our
    write (Salesforce holds ours: applying it swaps the two sides) or after (Salesforce holds
    theirs). Such an event is decided by the record read again (one query): what Salesforce
    holds now is the later value."""

    OUR_WRITE = T0 + timedelta(seconds=10)   # Salesforce took our value in this second

    async def ours_sent(self, store: Store) -> None:
        await lead(store, first_name="Ours", updated_at=T0 + timedelta(seconds=8),
                   _sync={"written_at": T0 + timedelta(seconds=8),
                          "field_times": {"first_name": T0 + timedelta(seconds=8)},
                          "sf": {"Lead": {"FirstName": {"v": "Ours", "at": T0 + timedelta(seconds=8),
                                                        "sent": self.OUR_WRITE}}}})

    def org(self, first_name: str) -> FakeSalesforce:
        return FakeSalesforce({"Lead": [{"Id": SF_ID, "FirstName": first_name, "LastName": "Lee",
                                         "Email": "ann@x.com", "IsDeleted": False,
                                         "LastModifiedDate": "2024-05-01T10:00:10.000+0000",
                                         "SystemModstamp": "2024-05-01T10:00:10.000+0000"}]})

    async def test_one_made_before_our_write_leaves_our_value(self, store: Store) -> None:
        await self.ours_sent(store)
        sf = self.org("Ours")  # our write landed after theirs
        theirs = change(SF_ID, {"FirstName": "Theirs"}, at=self.OUR_WRITE)
        await Reconciler(store, MAPPINGS, fetcher=RecordReader(sf, MAPPINGS)).apply([theirs])
        assert (await person(store))["first_name"] == "Ours"
        assert len(sf.queries) == 1

    async def test_one_made_after_our_write_is_applied(self, store: Store) -> None:
        await self.ours_sent(store)
        sf = self.org("Theirs")
        theirs = change(SF_ID, {"FirstName": "Theirs"}, at=self.OUR_WRITE)
        await Reconciler(store, MAPPINGS, fetcher=RecordReader(sf, MAPPINGS)).apply([theirs])
        assert (await person(store))["first_name"] == "Theirs"


class TestARecordReadAgainUnchanged:
    """Chaos seed 50321, L1.owner_crm_id: the platform edited an unmapped field (notes), and a
    resync's poll then read the Contact, unchanged since the shadow last saw it. Every mapped
    value was Salesforce's own read again (`edits_only` leaves them out), yet the full record's
    merge took each for a Salesforce blank: the platform's data "won" and every field, the owner
    too, was queued for Salesforce. A value read again is not an edit of the field, nor a blank."""

    VALUES = {"FirstName": "Ann", "LastName": "Lee", "Email": "ann@x.com", "Title": "CTO",
              "City": "Paris", "OwnerId": OWNER_1, "LinkedIn__c": None}

    async def test_nothing_is_queued_for_salesforce(self, store: Store) -> None:
        shadow = {"Lead": {name: {"v": value, "at": T0} for name, value in self.VALUES.items()}}
        await lead(store, title="CTO", city="Paris", owner_crm_id=OWNER_1, notes="edited",
                   updated_at=T0 + timedelta(seconds=3), _sync={"written_at": T0, "sf": shadow})
        polled = change(SF_ID, self.VALUES, at=T0 + timedelta(seconds=2), kind=ChangeKind.UPSERT,
                        source=ChangeSource.POLL)
        outbox = FakeOutbox()
        await Reconciler(store, MAPPINGS, outbox=outbox).apply([polled])
        assert outbox.writes == []

    async def test_a_field_salesforce_blanked_is_still_a_blank(self, store: Store) -> None:
        """The record read lacks a value the shadow knew: Salesforce's blank. The platform keeps
        its data (data wins over a blank) and the shadow learns the blank."""
        shadow = {"Lead": {name: {"v": value, "at": T0} for name, value in self.VALUES.items()}}
        await lead(store, title="CTO", city="Paris", _sync={"written_at": T0, "sf": shadow})
        read = {name: value for name, value in self.VALUES.items() if name != "Title"}
        polled = change(SF_ID, read, at=T0 + timedelta(seconds=2), kind=ChangeKind.UPSERT,
                        source=ChangeSource.POLL)
        await Reconciler(store, MAPPINGS, outbox=FakeOutbox()).apply([polled])
        doc = await person(store)
        assert doc["title"] == "CTO" and doc["_sync"]["sf"]["Lead"]["Title"]["v"] is None


class TestAnEditNotYetStamped:
    async def test_an_inbound_write_dates_it_before_marking_the_document_stamped(self, store: Store) -> None:
        """The platform edited the Person's first name at T0+2 s and the watcher has not stamped
        it (a leader gap). An inbound write of another field marks the document as the service's
        (`_sync.written_at`): it dates the first name's edit in the same write, so a Salesforce
        edit of it made before (T0+1 s) and read after does not replace it as if it were older."""
        await lead(store, updated_at=T0 + timedelta(seconds=2), first_name="Annie", _sync={
            "written_at": T0, "field_times": {"first_name": T0},
            "sf": {"Lead": {"FirstName": {"v": "Ann", "at": T0}}}})
        sink = Reconciler(store, parse_mappings(mappings_toml()))
        await sink.apply([change(SF_ID, {"Email": "annie@x.com"}, at=T0 + timedelta(seconds=3))])
        doc = await person(store)
        assert doc["_sync"]["field_times"]["first_name"] == T0 + timedelta(seconds=2)
        await sink.apply([change(SF_ID, {"FirstName": "Anna"}, at=T0 + timedelta(seconds=1))])
        assert (await person(store))["first_name"] == "Annie"
