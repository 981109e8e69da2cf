"""Linking unlinked Salesforce records to local ones, and Lead conversion, in a real MongoDB."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from listener.budget import BudgetGovernor
from listener.events import parse_message
from listener.reader import RecordReader
from listener.salesforce import SalesforceClient
from listener.sources.cometd import CdcStream, StreamOptions
from listener.sources.polling import Poller
from reconciler.inbound import Reconciler
from reconciler.ports import ChangeKind, ChangeSource, SalesforceChange
from reconciler.store import Store
from reconciler.store.state_keys import replay_key
from settings import BudgetSettings, parse_mappings
from tests.support.eventually import eventually
from tests.support.mappings import sample_mappings
from tests.support.org_rig import Org, org_and_store
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
        assert (crm["object"], crm["id"], crm["converted_from"]) == ("Contact", CONTACT, [LEAD])
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

    async def test_a_platform_edit_not_yet_stamped_is_dated_through_the_relink(
        self, store: Store, outbox: FakeOutbox
    ) -> None:
        """The platform edited the Lead's Person after the conversion (T0+2 s; the Contact was
        made at T0+1 s), and the watcher had not stamped the edit yet (a leader gap). The relink
        is a service write: it marks the document stamped, so the edit must be dated in it, or
        the Contact's older value wins the merge that follows (chaos seed 1970 x 2000,
        L4.last_name: the platform's last name lost to the Contact's)."""
        before = T0 - timedelta(minutes=1)
        pid = await lead_person(store, updated_at=T0 + timedelta(seconds=2), _sync={
            "written_at": before, "field_times": {"last_name": before},
            "sf": {"Lead": {"LastName": {"v": "Lee", "at": before}}}})
        await store.db.people.update_one({"_id": pid}, {"$set": {"last_name": "Li"}})
        await Reconciler(store, MAPPINGS, outbox=outbox).apply(conversion_changes())
        doc = await store.db.people.find_one({"_id": pid})
        assert (doc["crm"]["id"], doc["last_name"], doc["city"]) == (CONTACT, "Li", "Oslo")
        assert [(w.sf_id, w.fields.get("LastName")) for w in outbox.writes] == [(CONTACT, "Li")]

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


# A Salesforce user creates a Lead and converts it (two transactions) before the service has read
# either: the Lead channel carries its CREATE (IsConverted false, as created) then the conversion's
# UPDATE; the Account and Contact CREATEs come on their own channels, in no order with the Lead's.
SF_OBJECTS = ["Lead", "Contact", "Account"]
CLIENT = "salesforce-sync"
NEW_EMAIL = "grace@example.com"
SAMPLE = parse_mappings(sample_mappings())  # the fields the emulator's objects have


@dataclass
class CreatedAndConverted:
    """The emulator's ids, and the events it published as the stream parses them: `Lc` (the
    Lead's create), `Lu` (its conversion update), `A`, `C` (the conversion's creates)."""

    lead: str
    contact: str
    events: dict[str, SalesforceChange]


async def create_and_convert(org: Org) -> CreatedAndConverted:
    first = org.emu.state.bus.last_replay_id
    seeded = await org.control("seed", {"records": {"Lead": [{
        "FirstName": "Grace", "LastName": "Hopper", "Company": "Navy", "Email": NEW_EMAIL,
        "OwnerId": OWNER_1}]}})
    lead = seeded["ids"]["Lead"][0]
    converted = await org.control("convert-lead", {"leadId": lead})
    lead_create, account, contact, lead_update = events_since(org, first)
    assert lead_create.kind is ChangeKind.CREATE and lead_create.fields["IsConverted"] is False
    return CreatedAndConverted(lead, converted["contactId"],
                               {"Lc": lead_create, "A": account, "C": contact, "Lu": lead_update})


def events_since(org: Org, replay_id: int) -> list[SalesforceChange]:
    """The emulator's events after `replay_id`, as the stream parses them."""
    changes: list[SalesforceChange] = []
    for event in org.emu.state.bus.retained():
        if event.replay_id > replay_id:
            parsed = parse_message({"channel": event.channel, "data": event.data},
                                   client_name=CLIENT, objects=SF_OBJECTS)
            assert isinstance(parsed, list), parsed
            changes += parsed
    return changes


@asynccontextmanager
async def emulated(mongo_uri: str, database_name: str) -> AsyncIterator[tuple[Org, SalesforceClient, Store]]:
    async with org_and_store(mongo_uri, database_name) as (org, settings, store), \
            SalesforceClient(settings) as sf:
        try:
            yield org, sf, store
        finally:
            await store.client.drop_database(database_name)


async def the_one_person(store: Store, done: CreatedAndConverted) -> None:
    """Exactly one Person for the Lead and its Contact: linked to the Contact, recording the Lead."""
    people = await store.db.people.find({"email": NEW_EMAIL}).to_list(None)
    assert [(p["crm"]["object"], p["crm"]["id"], p["crm"].get("converted_from")) for p in people] == [
        ("Contact", done.contact, [done.lead])]


class TestLeadCreatedAndConvertedBeforeItWasRead:
    """Chaos seed 60013, L10: a Lead converted 0.28 s after its creation, before the service read
    either. Whatever the order the Lead's and the Contact's channels (or a read of the Lead) come
    in, the Lead and its Contact end as one Person, linked to the Contact."""

    async def test_one_batch_over_the_stream_makes_one_person(self, mongo_uri: str,
                                                              database_name: str) -> None:
        """The Lead's create, the Account's and Contact's creates and the conversion's update arrive
        in one CometD batch: the Lead's create makes no Person of its own."""
        async with emulated(mongo_uri, database_name) as (org, sf, store):
            reconciler = Reconciler(store, SAMPLE, fetcher=RecordReader(sf, SAMPLE), client_name=CLIENT)
            options = StreamOptions(client_name=CLIENT, api_version="62.0", batch_size=20,
                                    batch_wait_ms=20, stall_timeout=2.0)
            stream = CdcStream(sf=sf, store=store, sink=reconciler,
                               catch_up=Poller(sf, store, reconciler, SAMPLE, SF_OBJECTS),
                               objects=SF_OBJECTS, options=options, governor=BudgetGovernor(BudgetSettings()))
            stop = asyncio.Event()
            task = asyncio.create_task(stream.run(stop))
            try:
                handover = (await org.control("seed", {"records": {"Lead": [{
                    "LastName": "Handover", "Company": "Acme", "OwnerId": OWNER_1}]}}))["ids"]["Lead"][0]
                await eventually(lambda: store.db.people.find_one({"crm.id": handover}))
                await org.control("streaming/pause", {})
                done = await create_and_convert(org)
                await org.control("streaming/resume", {})

                async def all_applied() -> bool:
                    state = await store.load_state(replay_key("/data/LeadChangeEvent"))
                    return state is not None and state["replay_id"] == org.emu.state.bus.last_replay_id
                await eventually(all_applied)
                await the_one_person(store, done)
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)

    @pytest.mark.parametrize("batches", [
        pytest.param([["A", "C"], ["Lc", "Lu"]], id="contact-first-then-lead-create-and-conversion"),
        pytest.param([["Lc", "Lu"], ["A", "C"]], id="lead-create-and-conversion-then-contact"),
        pytest.param([["Lc", "Lu"], ["read"], ["A", "C"]], id="lead-create-and-conversion-read-contact"),
        pytest.param([["read"], ["Lc", "Lu"], ["A", "C"]], id="a-read-of-the-lead-ahead-of-its-events"),
        pytest.param([["A", "C"], ["read"], ["Lc"], ["Lu"]], id="contact-read-then-lead-events-apart"),
        pytest.param([["A", "C"], ["Lc"], ["Lu"]], id="contact-lead-create-conversion"),
        pytest.param([["Lc"], ["A", "C"], ["Lu"]], id="lead-create-contact-conversion"),
        pytest.param([["Lc"], ["Lu"], ["A", "C"]], id="lead-create-conversion-contact"),
        pytest.param([["Lc", "A", "C", "Lu"]], id="all-in-one-batch"),
    ])
    async def test_any_order_of_the_channels_makes_one_person(
        self, mongo_uri: str, database_name: str, batches: list[list[str]]
    ) -> None:
        """The emulator's events (and `read`: a poll, gap fetch or resync reading the Lead, already
        converted) applied in the batches given; then all of them delivered again, and the Lead
        read again: still one Person."""
        async with emulated(mongo_uri, database_name) as (org, sf, store):
            reader = RecordReader(sf, SAMPLE)
            reconciler = Reconciler(store, SAMPLE, fetcher=reader, client_name=CLIENT)
            done = await create_and_convert(org)

            async def changes(names: list[str]) -> list[SalesforceChange]:
                return [c for name in names for c in (
                    await reader.fetch("Lead", [done.lead], source=ChangeSource.POLL) if name == "read"
                    else [done.events[name]])]
            for batch in batches:
                await reconciler.apply(await changes(batch))
            await the_one_person(store, done)
            await reconciler.apply(await changes(["Lc", "A", "C", "Lu"]))
            await reconciler.apply(await changes(["read"]))
            await the_one_person(store, done)


SECOND_EMAIL = "g.hopper@example.com"


async def two_leads_changes(reader: RecordReader, first: CreatedAndConverted, second: CreatedAndConverted,
                            names: list[str]) -> list[SalesforceChange]:
    """The emulator's events of the two conversions by name ("Lc2": the second Lead's create...),
    and "read" / "read2": each Lead read by a poll."""
    reads = {"read": first.lead, "read2": second.lead}
    return [c for name in names for c in (
        await reader.fetch("Lead", [reads[name]], source=ChangeSource.POLL) if name in reads
        else [second.events[name]])]


async def convert_a_second_lead(org: Org, first: CreatedAndConverted) -> CreatedAndConverted:
    """A second Lead, for the same woman, created and then converted into the first one's
    Contact (Salesforce's "merge into an existing contact"): no Contact CREATE; the Lead's Title
    fills the Contact's blank one (a Contact UPDATE, `Cu`). Events: `Lc2`, `Cu`, `Lu2`."""
    start = org.emu.state.bus.last_replay_id
    seeded = await org.control("seed", {"records": {"Lead": [{
        "FirstName": "Grace", "LastName": "Hopper", "Company": "Navy", "Email": SECOND_EMAIL,
        "Title": "Rear Admiral", "OwnerId": OWNER_1}]}})
    lead = seeded["ids"]["Lead"][0]
    await org.control("convert-lead", {"leadId": lead, "contactId": first.contact,
                                       "accountId": first.events["A"].sf_id})
    lead_create, contact, lead_update = events_since(org, start)
    assert (contact.sobject, contact.kind, contact.sf_id) == ("Contact", ChangeKind.UPDATE, first.contact)
    assert lead_update.fields["ConvertedContactId"] == first.contact
    return CreatedAndConverted(lead, first.contact,
                               {**first.events, "Lc2": lead_create, "Cu": contact, "Lu2": lead_update})


async def one_person_for_both(store: Store, first: CreatedAndConverted, second: CreatedAndConverted) -> Any:
    """Exactly one Person: linked to the Contact, recording both Leads, with the Contact's values:
    its own email (Salesforce kept it: the second Lead's filled only blanks), and the Title the
    second Lead brought to it. Returns its `_id`."""
    people = await store.db.people.find().to_list(None)
    assert [(p["crm"]["object"], p["crm"]["id"], recorded_leads(p), p.get("email"), p.get("title"))
            for p in people] == [
        ("Contact", first.contact, sorted([first.lead, second.lead]), NEW_EMAIL, "Rear Admiral")]
    return people[0]["_id"]


def recorded_leads(person: dict[str, Any]) -> list[str]:
    """The Leads a Person records as converted into its Contact (one, or a list of them)."""
    value = person.get("crm", {}).get("converted_from")
    return sorted(value) if isinstance(value, list) else [value] if value else []


class TestASecondLeadConvertedIntoTheSameContact:
    """Salesforce lets a user convert a Lead into an existing Contact, so one Contact, and its
    Person, may absorb several Leads over time. The first Lead's conversion is applied (one
    Person, linked to the Contact, recording it); then a second Lead is created and converted into
    that Contact. Whatever the order its events (and reads of it) come in, the second Lead makes
    no Person of its own: the Contact's Person records it too, and stays the one Person."""

    @pytest.mark.parametrize("batches", [
        pytest.param([["Lu2"], ["Lc2"], ["Cu"]], id="conversion-then-create-in-a-later-batch"),
        pytest.param([["Lu2", "Cu"], ["read2"], ["Lc2"]], id="conversion-then-a-read-then-create"),
        pytest.param([["Lc2", "Lu2"], ["Cu"]], id="create-and-conversion-in-one-batch"),
        pytest.param([["Lc2", "Cu", "Lu2"]], id="all-in-one-batch"),
        pytest.param([["read2"], ["Lc2"], ["Lu2"], ["Cu"]], id="a-read-of-the-lead-ahead-of-its-events"),
        pytest.param([["Lc2"], ["Lu2"], ["Cu"]], id="create-then-conversion-folds-its-person"),
        pytest.param([["Lc2"], ["Cu"], ["Lu2"]], id="create-contact-update-then-conversion"),
    ])
    async def test_the_second_lead_makes_no_person_of_its_own(
        self, mongo_uri: str, database_name: str, batches: list[list[str]]
    ) -> None:
        """Then every event of both Leads is delivered again and both Leads are read again:
        still the one Person, the one the first conversion left."""
        async with emulated(mongo_uri, database_name) as (org, sf, store):
            reader = RecordReader(sf, SAMPLE)
            reconciler = Reconciler(store, SAMPLE, fetcher=reader, client_name=CLIENT)
            first = await create_and_convert(org)
            await reconciler.apply([first.events[name] for name in ("Lc", "A", "C", "Lu")])
            await the_one_person(store, first)
            original = (await store.db.people.find_one({}))["_id"]
            second = await convert_a_second_lead(org, first)

            def changes(names: list[str]) -> Awaitable[list[SalesforceChange]]:
                return two_leads_changes(reader, first, second, names)
            for batch in batches:
                await reconciler.apply(await changes(batch))
            assert await one_person_for_both(store, first, second) == original
            await reconciler.apply(await changes(["Lc", "A", "C", "Lu", "Lc2", "Cu", "Lu2"]))
            await reconciler.apply(await changes(["read", "read2"]))
            assert await one_person_for_both(store, first, second) == original

    @pytest.mark.parametrize("batches", [
        pytest.param([["Lu", "Lu2"], ["Lc", "Lc2"], ["A", "C", "Cu"]], id="both-conversions-in-one-batch"),
        pytest.param([["Lc", "Lu", "Lc2", "Lu2"], ["A", "C", "Cu"]], id="both-leads-then-the-contact"),
        pytest.param([["Lc", "Lc2"], ["Lu", "Lu2"], ["A", "C", "Cu"]], id="both-relinked-in-one-batch"),
        pytest.param([["A", "C", "Cu"], ["Lc2", "Lu2", "Lc", "Lu"]], id="the-contact-then-both-leads"),
    ])
    async def test_both_leads_read_late_make_one_person(
        self, mongo_uri: str, database_name: str, batches: list[list[str]]
    ) -> None:
        """Neither Lead read before both were converted: their events, and the Contact's, in the
        batches given, then all delivered again and both Leads read again: one Person."""
        async with emulated(mongo_uri, database_name) as (org, sf, store):
            reader = RecordReader(sf, SAMPLE)
            reconciler = Reconciler(store, SAMPLE, fetcher=reader, client_name=CLIENT)
            first = await create_and_convert(org)
            second = await convert_a_second_lead(org, first)

            def changes(names: list[str]) -> Awaitable[list[SalesforceChange]]:
                return two_leads_changes(reader, first, second, names)
            for batch in batches:
                await reconciler.apply(await changes(batch))
            await one_person_for_both(store, first, second)
            await reconciler.apply(await changes(["Lc", "A", "C", "Lu", "Lc2", "Cu", "Lu2"]))
            await reconciler.apply(await changes(["read", "read2"]))
            await one_person_for_both(store, first, second)
