"""Linking unlinked Salesforce records to local ones, and Lead conversion, in a real MongoDB."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from listener.reader import RecordReader
from reconciler.inbound import Reconciler
from reconciler.ports import ChangeKind
from reconciler.store import Store
from settings import parse_mappings
from tests.support.salesforce_changes import (
    MAPPINGS,
    OWNER_1,
    T0,
    FakeOutbox,
    FakeSalesforce,
    change,
    mappings_toml,
)

LEAD = "00Q000000000001AAA"
CONTACT = "003000000000001AAA"
ACCOUNT = "001000000000001AAA"


@pytest.fixture
def outbox() -> FakeOutbox:
    return FakeOutbox()


def create(sf_id: str, fields: dict[str, Any], sobject: str = "Lead", **kw: Any) -> Any:
    return change(sf_id, {"OwnerId": OWNER_1, **fields}, sobject=sobject, kind=ChangeKind.CREATE, **kw)


class TestLinkByEmail:
    async def test_unlinked_lead_links_to_the_person_with_that_email(self, store: Store,
                                                                     outbox: FakeOutbox) -> None:
        """Email matching ignores case; no second Person; the local value that won goes to Salesforce."""
        pid = (await store.db.people.insert_one({"email": "Ann@Example.com", "title": "CEO"})).inserted_id
        await Reconciler(store, MAPPINGS, outbox=outbox).apply(
            [create(LEAD, {"Email": "ann@example.COM", "LastName": "Lee"})])
        assert await store.db.people.count_documents({}) == 1
        doc = await store.db.people.find_one({"_id": pid})
        assert (doc["crm"]["id"], doc["crm"]["object"], doc["last_name"]) == (LEAD, "Lead", "Lee")
        [write] = outbox.writes
        assert (write.sf_id, write.reason, write.fields) == (LEAD, "merge", {"Title": "CEO"})
        assert write.local_id == pid
        [entry] = (await store.find_sync_logs())[0]
        assert entry["type"] == "link" and entry["fields"]["salesforce.Title"]["new"] == "CEO"

    async def test_a_linked_person_is_not_taken_again(self, store: Store) -> None:
        """A Person already linked elsewhere is not a match; a new Person is created instead."""
        await store.db.people.insert_one({"email": "ann@example.com",
                                          "crm": {"object": "Lead", "id": "00Qother"}})
        await Reconciler(store, MAPPINGS).apply([create(LEAD, {"Email": "ann@example.com", "LastName": "L"})])
        assert await store.db.people.count_documents({}) == 2

    async def test_one_person_links_to_one_record_per_batch(self, store: Store) -> None:
        """Two new Leads with one email: the first links, the second creates a Person."""
        pid = (await store.db.people.insert_one({"email": "ann@example.com"})).inserted_id
        await Reconciler(store, MAPPINGS).apply([
            create("00Q1", {"Email": "ann@example.com", "LastName": "A"}),
            create("00Q2", {"Email": "ann@example.com", "LastName": "B"}),
        ])
        assert (await store.db.people.find_one({"_id": pid}))["crm"]["id"] == "00Q1"
        assert (await store.db.people.find_one({"crm.id": "00Q2"}))["_id"] != pid


class TestLinkByDomain:
    async def test_account_links_to_the_company_with_that_domain(self, store: Store) -> None:
        """Websites are normalised (scheme, www., case, path) before matching the Company domain."""
        cid = (await store.db.companies.insert_one({"name": "Acme", "domain": "acme.com"})).inserted_id
        await Reconciler(store, MAPPINGS).apply([create(ACCOUNT, {"Name": "Acme Inc",
                                                                  "Website": "https://WWW.Acme.com/about"},
                                                        sobject="Account")])
        assert await store.db.companies.count_documents({}) == 1
        doc = await store.db.companies.find_one({"_id": cid})
        assert doc["crm"]["id"] == ACCOUNT


def conversion_changes() -> list[Any]:
    """What Salesforce sends for one conversion: Account CREATE, Contact CREATE, Lead UPDATE."""
    key: dict[str, Any] = {"transaction_key": "tx-1"}
    return [
        create(ACCOUNT, {"Name": "Acme", "Website": "acme.com"}, sobject="Account", **key),
        create(CONTACT, {"LastName": "Lee", "Email": "ann@example.com", "MailingCity": "Oslo",
                         "AccountId": ACCOUNT}, sobject="Contact", at=T0 + timedelta(seconds=1), **key),
        change(LEAD, {"IsConverted": True, "ConvertedContactId": CONTACT, "ConvertedAccountId": ACCOUNT,
                      "Status": "Closed - Converted"}, at=T0 + timedelta(seconds=1), **key),
    ]


async def lead_person(store: Store, **extra: Any) -> Any:
    return (await store.db.people.insert_one({
        "first_name": "Ann", "last_name": "Lee", "email": "ann@example.com",
        "crm": {"object": "Lead", "id": LEAD}, **extra})).inserted_id


class TestLeadConversion:
    async def test_same_batch_relinks_the_same_person(self, store: Store) -> None:
        """Account, Contact and Lead update in one batch: the Lead's Person now follows the Contact."""
        pid = await lead_person(store)
        await Reconciler(store, MAPPINGS).apply(conversion_changes())
        assert await store.db.people.count_documents({}) == 1
        doc = await store.db.people.find_one({"_id": pid})
        crm = doc["crm"]
        assert (crm["object"], crm["id"], crm["converted_from"]) == ("Contact", CONTACT, LEAD)
        assert doc["city"] == "Oslo"
        company = await store.db.companies.find_one({"crm.id": ACCOUNT})
        assert doc["company_id"] == company["_id"]
        types = sorted(x["type"] for x in (await store.find_sync_logs())[0])
        assert types == ["convert", "create", "merge"]

    async def test_lead_update_first_in_the_batch_gives_the_same_result(self, store: Store) -> None:
        """Order within the batch does not matter: the conversion runs first."""
        pid = await lead_person(store)
        account, contact, lead = conversion_changes()
        await Reconciler(store, MAPPINGS).apply([lead, contact, account])
        assert await store.db.people.count_documents({}) == 1
        assert (await store.db.people.find_one({"_id": pid}))["crm"]["id"] == CONTACT

    async def test_contact_created_in_an_earlier_batch_is_folded_in(self, store: Store) -> None:
        """Contact CREATE in a previous batch made a Person; the Lead update folds it into the Lead's."""
        pid = await lead_person(store, title=None)
        account, contact, lead = conversion_changes()
        sink = Reconciler(store, MAPPINGS)
        await sink.apply([account, contact])
        assert await store.db.people.count_documents({}) == 2
        await sink.apply([lead])
        assert await store.db.people.count_documents({}) == 1
        doc = await store.db.people.find_one({"_id": pid})
        assert (doc["crm"]["id"], doc["city"]) == (CONTACT, "Oslo")
        [convert] = (await store.find_sync_logs(type="convert"))[0]
        assert convert["fields"]["merged_person"]["new"] == str(pid)

    async def test_a_folded_contact_merges_by_the_merge_behaviour_not_only_into_blanks(
        self, store: Store
    ) -> None:
        """The Contact carries the Lead's latest values, some of which the service may never have
        seen on the Lead (their events lost): folding its Person in is a merge, decided like the
        same-batch one (`most_recent`: the Contact's newer FirstName wins over the Lead Person's
        older one; chaos seed 2718, L8.first_name)."""
        pid = await lead_person(store, _sync={"field_times": {"first_name": T0 - timedelta(minutes=1)}})
        account, contact, lead = conversion_changes()
        contact.fields["FirstName"] = "Annie"
        sink = Reconciler(store, MAPPINGS)
        await sink.apply([account, contact])
        await sink.apply([lead])
        doc = await store.db.people.find_one({"_id": pid})
        assert (doc["crm"]["id"], doc["first_name"], doc["city"]) == (CONTACT, "Annie", "Oslo")

    @pytest.mark.parametrize(("folded_edit", "city"), [(timedelta(seconds=2), "Bergen"),
                                                        (timedelta(minutes=-2), "Oslo")])
    async def test_a_to_salesforce_field_keeps_the_later_platform_edit(
        self, store: Store, folded_edit: timedelta, city: str
    ) -> None:
        """Chaos seed 12289, L8.state: the Contact's create made a Person before the conversion
        came in, and the platform edited that Person's `to_salesforce` field (stamped). Folding
        it in merged it as Salesforce's value, which never writes a `to_salesforce` field: the
        platform's edit was lost with the folded Person. Salesforce cannot have set it, so it is
        the platform's own: of the two Persons' edits (the Lead's at T0-1 min), the later stays."""
        mappings = parse_mappings(mappings_toml({"people.city": {"direction": "to_salesforce"}}))
        lead_edit = T0 - timedelta(minutes=1)
        pid = await lead_person(store, city="Oslo", _sync={"field_times": {"city": lead_edit}})
        account, contact, lead = conversion_changes()
        sink = Reconciler(store, mappings)
        await sink.apply([account, contact])
        await store.db.people.update_one({"crm.id": CONTACT}, {"$set": {  # the platform's edit
            "city": "Bergen", "_sync.field_times.city": T0 + folded_edit}})
        await sink.apply([lead])
        doc = await store.db.people.find_one({"_id": pid})
        assert (doc["crm"]["id"], doc["city"]) == (CONTACT, city)
        assert await store.db.people.count_documents({}) == 1

    async def test_a_folded_contact_is_merged_with_the_merge_behaviours(self, store: Store) -> None:
        """A conversion is a merge ("SalesLoft ... selects the preferred data based on your
        Advanced Configuration settings", most recent by default): Salesforce's first name, set
        after the platform's and never delivered as a Lead update (its event lost), reaches the
        Person through the Contact, although the Person folded in only filled blanks (chaos seed
        2718, L8.first_name). The Contact is re-fetched (one query) and merged."""
        pid = await lead_person(store, _sync={"field_times": {"first_name": T0}})
        account, contact, lead = conversion_changes()
        later = T0 + timedelta(seconds=5)
        contact = change(CONTACT, {**contact.fields, "FirstName": "Anna"}, sobject="Contact",
                         kind=ChangeKind.CREATE, at=later)
        sf = FakeSalesforce({"Contact": [{"Id": CONTACT, "FirstName": "Anna", "LastName": "Lee",
                                          "Email": "ann@example.com", "MailingCity": "Oslo",
                                          "SystemModstamp": "2024-05-01T10:00:05.000+0000"}]})
        sink = Reconciler(store, MAPPINGS, fetcher=RecordReader(sf, MAPPINGS))
        await sink.apply([account, contact])
        await sink.apply([lead])
        assert (await store.db.people.find_one({"_id": pid}))["first_name"] == "Anna"
        assert await store.db.people.count_documents({}) == 1
        assert len(sf.queries) == 1

    async def test_contact_created_in_a_later_batch_merges_into_the_person(self, store: Store) -> None:
        """Lead update first, Contact CREATE in the next batch: the create merges, nothing new."""
        pid = await lead_person(store)
        account, contact, lead = conversion_changes()
        sink = Reconciler(store, MAPPINGS)
        await sink.apply([account, lead])
        await sink.apply([contact])
        assert await store.db.people.count_documents({}) == 1
        assert (await store.db.people.find_one({"_id": pid}))["city"] == "Oslo"

    async def test_missing_contact_data_is_fetched(self, store: Store) -> None:
        """With the Contact nowhere in sight, it is re-fetched (one query) and merged."""
        pid = await lead_person(store)
        sf = FakeSalesforce({"Contact": [{"Id": CONTACT, "LastName": "Lee", "MailingCity": "Rome",
                                          "SystemModstamp": "2024-05-01T10:00:05.000+0000"}]})
        await Reconciler(store, MAPPINGS, fetcher=RecordReader(sf, MAPPINGS)).apply([conversion_changes()[2]])
        assert len(sf.queries) == 1 and "WHERE Id IN ('003000000000001AAA')" in sf.queries[0]
        assert (await store.db.people.find_one({"_id": pid}))["city"] == "Rome"

    async def test_the_persons_company_follows_to_the_account(self, store: Store) -> None:
        """An unlinked Company of the Lead's Person is linked to the new Account."""
        cid = (await store.db.companies.insert_one({"name": "Acme", "domain": "other.com"})).inserted_id
        await lead_person(store, company_id=cid)
        await Reconciler(store, MAPPINGS).apply([conversion_changes()[2]])
        assert (await store.db.companies.find_one({"_id": cid}))["crm"]["id"] == ACCOUNT

    async def test_conversion_applied_twice_changes_nothing(self, store: Store) -> None:
        """A re-delivered conversion batch writes nothing and logs nothing more."""
        await lead_person(store)
        sink = Reconciler(store, MAPPINGS)
        await sink.apply(conversion_changes())
        before = await store.db.people.find().to_list(None)
        logs = len((await store.find_sync_logs())[0])
        await sink.apply(conversion_changes())
        assert await store.db.people.find().to_list(None) == before
        assert len((await store.find_sync_logs())[0]) == logs

    async def test_converted_lead_without_a_person_creates_nothing(self, store: Store) -> None:
        """A converted Lead never becomes a Person by itself."""
        lead = create(LEAD, {"LastName": "Lee", "IsConverted": True, "ConvertedContactId": CONTACT})
        result = await Reconciler(store, MAPPINGS).apply_batch([lead])
        assert result.skipped == 1 and await store.db.people.count_documents({}) == 0
