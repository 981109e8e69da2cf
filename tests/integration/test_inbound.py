"""Applying Salesforce changes to People/Companies in a real MongoDB (SecantusDB)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import pytest

from reconciler.inbound import Reconciler
from reconciler.ports import ChangeKind, RejectedEvent
from reconciler.store import BulkOutcome, RecordWrite, Store
from settings import Mappings, parse_mappings
from tests.support.salesforce_changes import (
    MAPPINGS,
    OWNER_1,
    OWNER_2,
    T0,
    UNMAPPED_OWNER,
    FakeOutbox,
    change,
    mappings_toml,
)


class CountingStore(Store):
    """The real store, counting the round-trips a batch makes."""

    calls: dict[str, int]

    async def find_linked(self, collection: str, sf_ids: Any, *,
                          converted: bool = False) -> list[dict[str, Any]]:
        self.calls["find"] = self.calls.get("find", 0) + 1
        return await super().find_linked(collection, sf_ids, converted=converted)

    async def find_unlinked_matches(self, collection: str, local_field: str,
                                    values: Any) -> list[dict[str, Any]]:
        self.calls["find"] = self.calls.get("find", 0) + 1
        return await super().find_unlinked_matches(collection, local_field, values)

    async def bulk_apply(self, collection: str, writes: Sequence[RecordWrite], **kw: Any) -> BulkOutcome:
        if writes:
            self.calls["bulk_write"] = self.calls.get("bulk_write", 0) + 1
        return await super().bulk_apply(collection, writes, **kw)

    async def insert_sync_logs(self, logs: Sequence[Any]) -> list[str]:
        if logs:
            self.calls["insert_logs"] = self.calls.get("insert_logs", 0) + 1
        return await super().insert_sync_logs(logs)


@pytest.fixture
async def store(mongo_uri: str, database_name: str) -> AsyncIterator[CountingStore]:
    store = await CountingStore.connect(mongo_uri, database_name)
    assert isinstance(store, CountingStore)
    store.calls = {}
    await store.ensure_indexes()
    yield store
    await store.client.drop_database(database_name)
    await store.close()


@pytest.fixture
def outbox() -> FakeOutbox:
    return FakeOutbox()


def reconciler_for(store: Store, outbox: FakeOutbox | None = None, mappings: Mappings = MAPPINGS,
                   **kw: Any) -> Reconciler:
    return Reconciler(store, mappings, outbox=outbox, **kw)


async def person(store: Store, sf_id: str) -> dict[str, Any]:
    doc = await store.db.people.find_one({"crm.id": sf_id})
    assert doc is not None
    return dict(doc)


async def linked_lead(store: Store, sf_id: str = "00Q000000000001AAA", **fields: Any) -> Any:
    doc = {"first_name": "Ann", "last_name": "Lee", "email": "ann@x.com", "updated_at": T0,
           "crm": {"object": "Lead", "id": sf_id}, **fields}
    return (await store.db.people.insert_one(doc)).inserted_id


class TestUpdates:
    async def test_update_writes_fields_and_marks_the_write_as_ours(self, store: CountingStore) -> None:
        """An update sets the mapped fields, field times, and `_sync.written_at == updated_at`."""
        await linked_lead(store)
        await reconciler_for(store).apply([change("00Q000000000001AAA",
                                                  {"Title": "CTO", "City": "Oslo", "LinkedIn__c": "in/ann"})])
        doc = await person(store, "00Q000000000001AAA")
        assert (doc["title"], doc["city"], doc["custom_fields"]["linkedin"]) == ("CTO", "Oslo", "in/ann")
        assert doc["_sync"]["written_at"] == doc["updated_at"]
        assert doc["_sync"]["field_times"]["title"] == T0
        assert doc["_sync"]["field_times"]["custom_fields"]["linkedin"] == T0
        logs, _ = await store.find_sync_logs()
        assert [(x["type"], x["status"]) for x in logs] == [("update", "success")]
        assert logs[0]["fields"]["title"] == {"old": None, "new": "CTO"}

    async def test_older_salesforce_value_loses_to_a_newer_local_edit(self, store: CountingStore) -> None:
        """most_recent: a local edit newer than the Salesforce change stands."""
        await linked_lead(store, title="CEO", _sync={"field_times": {"title": T0 + timedelta(minutes=1)}})
        await reconciler_for(store).apply([change("00Q000000000001AAA", {"Title": "CTO"})])
        assert (await person(store, "00Q000000000001AAA"))["title"] == "CEO"

    async def test_echoes_are_skipped_but_counted(self, store: CountingStore) -> None:
        """Our own writes coming back are not applied."""
        await linked_lead(store)
        result = await reconciler_for(store).apply_batch(
            [change("00Q000000000001AAA", {"Title": "Echo"}, is_echo=True)])
        assert result.echoes == 1 and result.applied == 0
        assert "title" not in await person(store, "00Q000000000001AAA")
        assert (await store.find_sync_logs())[0] == []

    async def test_nulled_fields_never_blank_a_local_value(self, store: CountingStore) -> None:
        """A field cleared in Salesforce keeps its local value."""
        await linked_lead(store, title="CEO")
        await reconciler_for(store).apply([change("00Q000000000001AAA", {"FirstName": "Anna"},
                                                  nulled_fields=frozenset({"Title"}))])
        doc = await person(store, "00Q000000000001AAA")
        assert (doc["title"], doc["first_name"]) == ("CEO", "Anna")

    async def test_same_batch_twice_changes_nothing_the_second_time(self, store: CountingStore) -> None:
        """Re-applying a batch writes nothing and logs nothing more."""
        await linked_lead(store)
        batch = [change("00Q000000000001AAA", {"Title": "CTO"}),
                 change("00Q000000000002AAA", {"FirstName": "Bo", "LastName": "Ng", "OwnerId": OWNER_1},
                        kind=ChangeKind.CREATE)]
        sink = reconciler_for(store)
        await sink.apply(batch)
        before = await store.db.people.find().sort("_id").to_list(None)
        again = await sink.apply_batch(batch)
        assert again.applied == 0 and again.unchanged == 2
        assert await store.db.people.find().sort("_id").to_list(None) == before
        assert len((await store.find_sync_logs())[0]) == 2

    async def test_several_changes_to_one_record_fold_into_one_write(self, store: CountingStore) -> None:
        """Two updates to one record in a batch: the later value lands, one log records both."""
        await linked_lead(store)
        result = await reconciler_for(store).apply_batch([
            change("00Q000000000001AAA", {"Title": "A"}),
            change("00Q000000000001AAA", {"Title": "B", "City": "Rome"}, at=T0 + timedelta(seconds=1)),
        ])
        assert result.applied == 1
        assert (await person(store, "00Q000000000001AAA"))["title"] == "B"
        [entry] = (await store.find_sync_logs())[0]
        assert entry["fields"]["title"] == {"old": None, "new": "B"}


class TestDeletes:
    async def test_delete_marks_and_undelete_clears(self, store: CountingStore) -> None:
        """DELETE marks `crm.deleted` (the person stays); UNDELETE clears it."""
        await linked_lead(store)
        sink = reconciler_for(store)
        await sink.apply([change("00Q000000000001AAA", {}, kind=ChangeKind.DELETE)])
        assert (await person(store, "00Q000000000001AAA"))["crm"]["deleted"] is True
        await sink.apply([change("00Q000000000001AAA", {}, kind=ChangeKind.UNDELETE)])
        assert "deleted" not in (await person(store, "00Q000000000001AAA"))["crm"]
        logs, _ = await store.find_sync_logs()
        assert [x["type"] for x in logs] == ["undelete", "delete"]

    async def test_an_undelete_sends_the_platform_edits_held_while_the_record_was_deleted(
            self, store: CountingStore, outbox: FakeOutbox) -> None:
        """A platform edit made while the Lead was deleted had nothing to go to; the undelete sends
        it (not the fields edited before the delete, which went out then), so the two sides do not
        stay apart with nothing logged (chaos seed 1097 x 2000, P57.state)."""
        lead = "00Q000000000001AAA"
        await linked_lead(store, title="CEO", _sync={"field_times": {"title": T0}})
        sink = reconciler_for(store, outbox)
        await sink.apply([change(lead, {"FirstName": "Ann", "Title": "CEO"}, at=T0)])  # the shadow
        await sink.apply([change(lead, {}, kind=ChangeKind.DELETE, at=T0 + timedelta(seconds=10))])
        await store.db.people.update_one({"crm.id": lead}, {"$set": {
            "first_name": "Anna", "_sync.field_times.first_name": T0 + timedelta(seconds=20)}})
        await sink.apply([change(lead, {"FirstName": "Ann", "LastName": "Lee", "Title": "CEO"},
                                 kind=ChangeKind.UNDELETE, at=T0 + timedelta(seconds=30))])
        assert [(w.sf_id, w.fields) for w in outbox.writes] == [(lead, {"FirstName": "Anna"})]
        assert (await person(store, lead))["first_name"] == "Anna"

    async def test_delete_of_an_unlinked_record_is_skipped(self, store: CountingStore) -> None:
        """Deleting a record that was never synced writes nothing."""
        result = await reconciler_for(store).apply_batch([change("00Q9", {}, kind=ChangeKind.DELETE)])
        assert result.skipped == 1 and await store.db.people.count_documents({}) == 0


class TestCreates:
    async def test_create_owned_by_a_mapped_user_creates_a_person(self, store: CountingStore) -> None:
        """A new Lead owned by a mapped user becomes a Person owned by the local user."""
        await reconciler_for(store).apply([change("00Q000000000002AAA", {"FirstName": "Bo", "LastName": "Ng",
                                                  "OwnerId": OWNER_1}, kind=ChangeKind.CREATE)])
        doc = await person(store, "00Q000000000002AAA")
        assert (doc["first_name"], doc["owner_id"], doc["crm"]["owner_id"]) == ("Bo", "u-1", OWNER_1)
        assert doc["crm"]["object"] == "Lead" and doc["_sync"]["created_by_sync"] is True
        [entry] = (await store.find_sync_logs())[0]
        assert (entry["type"], entry["local_id"]) == ("create", str(doc["_id"]))

    @pytest.mark.parametrize(("owner", "rule_on"), [(UNMAPPED_OWNER, True), (OWNER_1, False), (None, True)])
    async def test_create_rule_refusals(self, store: CountingStore, owner: str | None, rule_on: bool) -> None:
        """No Person without the rule on and a mapped owner."""
        mappings = MAPPINGS.model_copy(update={"rules": MAPPINGS.rules.model_copy(
            update={"create_person_from_salesforce": rule_on})})
        result = await reconciler_for(store, mappings=mappings).apply_batch(
            [change("00Q2", {"LastName": "Ng", "OwnerId": owner}, kind=ChangeKind.CREATE)])
        assert result.skipped == 1 and await store.db.people.count_documents({}) == 0

    async def test_accounts_are_created_only_when_importable(self, store: CountingStore) -> None:
        """A new Account becomes a Company only when name and domain are mapped."""
        account = change("001000000000001AAA", {"Name": "Acme", "Website": "acme.com"}, sobject="Account",
                         kind=ChangeKind.CREATE)
        no_domain = parse_mappings(mappings_toml({"companies.domain": None}))
        assert (await reconciler_for(store, mappings=no_domain).apply_batch([account])).skipped == 1
        await reconciler_for(store).apply([account])
        assert (await store.db.companies.find_one({"crm.id": "001000000000001AAA"}))["name"] == "Acme"

    async def test_contact_account_sets_the_company(self, store: CountingStore) -> None:
        """A Contact's AccountId points its Person at the Company linked to that Account, same batch."""
        await reconciler_for(store).apply([
            change("003000000000001AAA", {"LastName": "Ng", "OwnerId": OWNER_1, "AccountId": "001A"},
                   sobject="Contact", kind=ChangeKind.CREATE),
            change("001A", {"Name": "Acme", "Website": "https://acme.com"}, sobject="Account",
                   kind=ChangeKind.CREATE),
        ])
        company = await store.db.companies.find_one({"crm.id": "001A"})
        assert (await person(store, "003000000000001AAA"))["company_id"] == company["_id"]


class TestOwner:
    async def test_owner_change_updates_the_local_owner(self, store: CountingStore) -> None:
        """update_owner: a new Salesforce owner maps to the local user."""
        await linked_lead(store, owner_id="u-1", crm={"object": "Lead", "id": "00Q1", "owner_id": OWNER_1})
        await reconciler_for(store).apply([change("00Q1", {"OwnerId": OWNER_2})])
        doc = await person(store, "00Q1")
        assert (doc["owner_id"], doc["crm"]["owner_id"], doc["owner_crm_id"]) == ("u-2", OWNER_2, OWNER_2)

    async def test_owner_change_ignored_by_rule(self, store: CountingStore) -> None:
        """ignore: the local owner stays, the CRM owner follows Salesforce."""
        mappings = MAPPINGS.model_copy(update={"rules": MAPPINGS.rules.model_copy(
            update={"on_salesforce_owner_change": "ignore"})})
        await linked_lead(store, owner_id="u-1", crm={"object": "Lead", "id": "00Q1", "owner_id": OWNER_1})
        await reconciler_for(store, mappings=mappings).apply([change("00Q1", {"OwnerId": OWNER_2})])
        doc = await person(store, "00Q1")
        assert (doc["owner_id"], doc["crm"]["owner_id"]) == ("u-1", OWNER_2)

    async def test_owner_only_change_is_logged_as_owner_change(self, store: CountingStore) -> None:
        """An owner change alone (the platform owner and the Owner CRM ID mapping's field) is an
        `owner_change` log."""
        await linked_lead(store, owner_id="u-1", crm={"object": "Lead", "id": "00Q1", "owner_id": OWNER_1})
        await reconciler_for(store).apply([change("00Q1", {"OwnerId": OWNER_2})])
        [entry] = (await store.find_sync_logs())[0]
        assert entry["type"] == "owner_change" and set(entry["fields"]) == {"owner_id", "owner_crm_id"}


class TestFailures:
    async def test_bad_records_fail_alone(self, store: CountingStore) -> None:
        """A wrong-typed value, an unknown object and a duplicate key each fail their record only."""
        await linked_lead(store)
        await store.db.people.create_index("email", unique=True, name="email_unique_for_test")
        result = await reconciler_for(store).apply_batch([
            change("00Q000000000001AAA", {"Title": {"nested": "x"}}),
            change("006000000000001AAA", {"Name": "Deal"}, sobject="Opportunity", raw={"x": 1}),
            change("00Q3", {"LastName": "Dup", "Email": "other@x.com", "OwnerId": OWNER_1},
                   kind=ChangeKind.CREATE),
            change("00Q4", {"LastName": "Dup", "Email": "other@x.com", "OwnerId": OWNER_1},
                   kind=ChangeKind.CREATE),
            change("00Q000000000001AAA", {"City": "Oslo"}),
        ])
        assert (result.failed, result.applied) == (3, 2)
        assert (await person(store, "00Q000000000001AAA"))["city"] == "Oslo"
        failed, _ = await store.find_sync_logs(status="failed")
        errors = sorted(x["error"].split(":")[0] for x in failed)
        assert errors == ["DUPLICATE_VALUE", "INVALID_TYPE", "UNKNOWN_OBJECT"]
        jobs = {x["sf_id"]: x["job"] for x in failed}
        assert jobs["00Q000000000001AAA"] == {"kind": "inbound", "sobject": "Lead",
                                              "sf_id": "00Q000000000001AAA"}

    async def test_reject_keeps_the_raw_event(self, store: CountingStore) -> None:
        """A malformed event becomes a failed `event` log with the raw message kept for retry."""
        event = RejectedEvent(reason="no ChangeEventHeader", raw={"payload": {}},
                              channel="/data/LeadChangeEvent", replay_id=7)
        await reconciler_for(store).reject([event])
        [entry] = (await store.find_sync_logs(status="failed"))[0]
        assert entry["type"] == "event" and entry["error"] == "no ChangeEventHeader"
        assert entry["job"]["kind"] == "event" and entry["job"]["raw"]["event"] == {"payload": {}}


class TestFailuresNameTheirFields:
    """A failed inbound log names the fields its change would have written, so it is resolved only
    by a later success of the same record that wrote them (design.md: "same record and fields")."""

    async def test_a_success_of_other_fields_does_not_resolve_a_failure(self, store: CountingStore) -> None:
        await linked_lead(store, title="CEO")
        lead = "00Q000000000001AAA"
        await reconciler_for(store).apply([change(lead, {"Title": {"nested": "x"}, "FirstName": "Ann"})])
        [failed] = (await store.find_sync_logs(status="failed"))[0]
        assert set(failed["fields"]) == {"title"}  # FirstName holds what the platform has already
        await reconciler_for(store).apply([change(lead, {"City": "Oslo"})])
        assert "resolved" not in (await store.get_sync_log(failed["id"]) or {})
        await reconciler_for(store).apply([change(lead, {"Title": "CTO"})])
        resolved = (await store.get_sync_log(failed["id"]) or {}).get("resolved")
        assert resolved is not None
        by = await store.get_sync_log(resolved["by"])
        assert by is not None and set(by["fields"]) == {"title"}

    async def test_a_failed_write_names_what_it_would_have_written(self, store: CountingStore) -> None:
        """A create the database refuses (a duplicate key) names the fields the create carried."""
        await store.db.people.create_index("email", unique=True, name="email_unique_for_test")
        await linked_lead(store, "00Q9", email="dup@x.com")
        await reconciler_for(store).apply([change(
            "00Q3", {"LastName": "Dup", "Email": "dup@x.com", "OwnerId": OWNER_1}, kind=ChangeKind.CREATE)])
        [failed] = (await store.find_sync_logs(status="failed"))[0]
        assert {"last_name", "email", "owner_id"} <= set(failed["fields"])


class TestRoundTrips:
    async def test_a_large_batch_costs_a_handful_of_round_trips(self, store: CountingStore) -> None:
        """2,000 updates to linked people: one lookup, one bulk write, one log insert (the store slices
        the lookup's `$in` list into a few queries for SecantusDB)."""
        await store.db.people.insert_many([{"crm": {"object": "Lead", "id": f"00Q{i:05d}"}}
                                           for i in range(2000)])
        batch = [change(f"00Q{i:05d}", {"Title": f"T{i}"}) for i in range(2000)]
        result = await reconciler_for(store).apply_batch(batch)
        assert result.applied == 2000
        assert store.calls == {"find": 1, "bulk_write": 1, "insert_logs": 1}
