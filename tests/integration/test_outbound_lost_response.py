"""A create whose response is lost is applied once in Salesforce (the org emulator, real HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from bson import ObjectId
from pydantic import SecretStr
from structlog.testing import capture_logs

from emulator.org import INTEGRATION_USER_ID
from emulator.state import SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET
from listener.salesforce import RetryPolicy, SalesforceClient
from listener.salesforce_time import SalesforceClock, clocked_transport
from reconciler.errors import OutcomeUnknownError
from reconciler.inbound import Reconciler
from reconciler.outbound import OutboundFlusher
from reconciler.outbound_shadow import ShadowGate
from reconciler.outbox import Outbox
from reconciler.ports import ChangeKind, ChangeSource, OutboundWrite, SalesforceChange
from reconciler.soql import parse_sf_datetime
from reconciler.store import Store
from settings import AuthFlow, SalesforceSettings, parse_mappings
from tests.support.emulator import RunningEmulator, running_emulator
from tests.support.mappings import sample_mappings

COLLECTIONS = "/services/data/v62.0/composite/sobjects"
FAST = RetryPolicy(attempts=4, base=0.001, cap=0.005)
BACKOFF = timedelta(milliseconds=20)
CLIENT_TIMEOUT_S = 2.0
ANSWER_LATE_MS = 4000  # the applied write is answered this late: past the client timeout
MAPPINGS = parse_mappings(sample_mappings())  # Phone and Email most_recent, Company unless blank


@dataclass
class Budget:
    mode: str = "streaming"

    def allows_optional_calls(self) -> bool:
        return True


@dataclass
class Org:
    emulator: RunningEmulator
    client: SalesforceClient

    async def fault(self, **fault: Any) -> None:
        """Inject a fault through the emulator's control API."""
        async with aiohttp.ClientSession() as session:
            answer = await session.post(f"{self.emulator.base_url}/_emulator/faults", json=fault)
            assert answer.status == 200

    async def rows(self, soql: str) -> list[dict[str, Any]]:
        return [r async for page in self.client.query(soql) for r in page]

    async def seed_as_user(self, lead: dict[str, Any]) -> str:
        """Create a Lead as a Salesforce UI user (not the integration user); its id."""
        async with aiohttp.ClientSession() as session:
            answer = await session.post(f"{self.emulator.base_url}/_emulator/seed",
                                        json={"records": {"Lead": [lead]}})
            assert answer.status == 200
            return str((await answer.json())["ids"]["Lead"][0])

    def posts(self) -> int:
        return sum(1 for r in self.emulator.state.requests.entries
                   if r["method"] == "POST" and r["path"] == COLLECTIONS)


@pytest.fixture
async def org() -> AsyncIterator[Org]:
    async with running_org() as running:
        yield running


@asynccontextmanager
async def running_org() -> AsyncIterator[Org]:
    """The org emulator and a REST client of it."""
    settings = SalesforceSettings(
        login_url="http://127.0.0.1", auth_flow=AuthFlow.CLIENT_CREDENTIALS,
        client_id=SAMPLE_CLIENT_ID, client_secret=SecretStr(SAMPLE_CLIENT_SECRET),
    )
    async with running_emulator() as em:
        settings = settings.model_copy(update={"login_url": em.base_url})
        # A short timeout -- a lost response is noticed in seconds, not a minute -- yet far above
        # what a normal call takes on two busy cores, so only the injected latency times out.
        async with SalesforceClient(settings, retry=FAST, timeout=CLIENT_TIMEOUT_S) as client:
            yield Org(em, client)


def flusher_for(store: Store, org: Org) -> tuple[Outbox, OutboundFlusher]:
    """The flusher as the service builds it: with the shadow gate, which re-decides a recovered
    create's values against the record the lost call made."""
    outbox = Outbox(store.outbox)
    flusher = OutboundFlusher(outbox, org.client, store, Budget(), client_name="salesforce-sync",
                              backoff_base=BACKOFF, backoff_cap=BACKOFF,
                              gate=ShadowGate(org.client, store, MAPPINGS))
    return outbox, flusher


async def new_person(store: Store, outbox: Outbox, **fields: Any) -> ObjectId:
    local_id = ObjectId()
    await store.db.people.insert_one({"_id": local_id, "last_name": fields["LastName"]})
    await outbox.enqueue([OutboundWrite("Lead", None, "people", local_id, fields, "create")])
    return local_id


async def person_whose_create_is_lost(store: Store, outbox: Outbox, org: Org, **extra: str) -> ObjectId:
    """A Person Ng (Acme, ng@x.com, plus `extra`: phone / title) edited 10 s ago, its create
    queued, and the next call's answer set to be lost after Salesforce applies it."""
    local_id = ObjectId()
    created_at = datetime.now(UTC) - timedelta(seconds=10)
    person = {"last_name": "Ng", "company_name": "Acme", "email": "ng@x.com", **extra}
    await store.db.people.insert_one({
        "_id": local_id, **person, "updated_at": created_at,
        "_sync": {"written_at": created_at, "field_times": dict.fromkeys(person, created_at)}})
    fields = {"LastName": "Ng", "Company": "Acme", "Email": "ng@x.com",
              **{name.title(): value for name, value in extra.items()}}
    await outbox.enqueue([OutboundWrite("Lead", None, "people", local_id, fields, "create")])
    await org.fault(path_prefix=COLLECTIONS, count=1, apply_then_drop=True)
    return local_id


async def flush_until_empty(outbox: Outbox, flusher: OutboundFlusher) -> None:
    for _ in range(20):
        await flusher.flush()
        if await outbox.depth() == 0:
            return
        await asyncio.sleep(BACKOFF.total_seconds())
    raise AssertionError("the outbox did not drain")


class TestTheClientNeverRetriesALostCreate:
    async def test_a_create_whose_answer_is_dropped_is_sent_once(self, org: Org) -> None:
        """Connection closed after the write was applied: OutcomeUnknownError, one POST, one Lead."""
        await org.fault(path_prefix=COLLECTIONS, count=1, apply_then_drop=True)
        with pytest.raises(OutcomeUnknownError):
            await org.client.create("Lead", [{"LastName": "Ng", "Company": "Acme", "Email": "ng@x.com"}])
        assert org.posts() == 1
        assert len(await org.rows("SELECT Id FROM Lead WHERE Email = 'ng@x.com'")) == 1

    async def test_a_create_that_times_out_is_sent_once(self, org: Org) -> None:
        """The org applies it but answers after the client timeout: not retried."""
        await org.fault(path_prefix=COLLECTIONS, count=1, apply_then_drop=True, latency_ms=ANSWER_LATE_MS)
        with pytest.raises(OutcomeUnknownError, match="timed out"):
            await org.client.create("Lead", [{"LastName": "Ng", "Company": "Acme", "Email": "ng@x.com"}])
        assert org.posts() == 1

    async def test_a_refused_create_is_retried(self, org: Org) -> None:
        """503 SERVER_UNAVAILABLE proves nothing was applied: retried, one Lead."""
        await org.fault(path_prefix=COLLECTIONS, count=2, status=503)
        [result] = await org.client.create("Lead", [{"LastName": "Ng", "Company": "Acme"}])
        assert result.success and org.posts() == 3

    async def test_a_lost_update_is_retried(self, org: Org) -> None:
        """PATCH is idempotent: a dropped answer is simply sent again."""
        [created] = await org.client.create("Lead", [{"LastName": "Ng", "Company": "Acme"}])
        assert created.id is not None
        await org.fault(path_prefix=COLLECTIONS, count=1, apply_then_drop=True)
        [updated] = await org.client.update("Lead", [{"Id": created.id, "City": "Oslo"}])
        assert updated.success


class TestTheFlusherRecoversALostCreate:
    async def test_the_lost_create_is_linked_not_duplicated(self, org: Org, store: Store) -> None:
        """The Lead exists once in Salesforce and the Person is linked to it, logged as recovered."""
        outbox, flusher = flusher_for(store, org)
        local_id = await new_person(store, outbox, LastName="Ng", Company="Acme", Email="Ng@X.com")
        await org.fault(path_prefix=COLLECTIONS, count=1, apply_then_drop=True, latency_ms=ANSWER_LATE_MS)
        await flush_until_empty(outbox, flusher)

        leads = await org.rows("SELECT Id, Email FROM Lead WHERE Email = 'ng@x.com'")
        assert len(leads) == 1 and org.posts() == 1
        doc = await store.db.people.find_one({"_id": local_id})
        assert doc["crm"] == {**doc["crm"], "object": "Lead", "id": leads[0]["Id"]}
        logs, _ = await store.find_sync_logs(limit=10)
        # Item 7: an honest log: linked after a lost response, not "created"
        assert [entry["type"] for entry in logs] == ["link"]
        [linked] = logs
        assert linked["status"] == "success" and linked["sf_id"] == leads[0]["Id"]
        assert linked["note"].startswith("linked after lost response")

    async def test_only_the_writes_not_created_are_sent_again(self, org: Org, store: Store) -> None:
        """A write created by an earlier call is linked; one the org never got is re-sent once."""
        outbox, flusher = flusher_for(store, org)
        await org.fault(path_prefix=COLLECTIONS, count=1, apply_then_drop=True)
        first = await new_person(store, outbox, LastName="Ng", Company="Acme", Email="ng@x.com")
        await flusher.flush()  # created in Salesforce, answer lost
        second = await new_person(store, outbox, LastName="Li", Company="Acme", Email="li@x.com")
        await org.fault(path_prefix=COLLECTIONS, count=1, status=500)  # UNKNOWN_EXCEPTION: unknown
        await flusher.flush()  # both unknown now; the org holds only Ng
        await flush_until_empty(outbox, flusher)

        leads = await org.rows("SELECT Id, Email FROM Lead ORDER BY Email")
        assert [lead["Email"] for lead in leads] == ["li@x.com", "ng@x.com"]
        linked = {d["_id"]: d["crm"]["id"] async for d in store.db.people.find({})}
        assert linked == {second: leads[0]["Id"], first: leads[1]["Id"]}
        sent = [r["body"]["records"] for r in org.emulator.state.requests.entries
                if r["method"] == "POST" and r["path"] == COLLECTIONS and r["status"] == 200]
        assert [[rec["Email"] for rec in call] for call in sent] == [["ng@x.com"], ["li@x.com"]]

    async def test_a_write_without_email_is_resent_with_a_warning(self, org: Org, store: Store) -> None:
        """No match key: it cannot be looked for, so it is sent again (the documented gap)."""
        outbox, flusher = flusher_for(store, org)
        await org.fault(path_prefix=COLLECTIONS, count=1, status=500)
        local_id = await new_person(store, outbox, LastName="Ng", Company="Acme")
        with capture_logs() as events:
            await flush_until_empty(outbox, flusher)
        [warning] = [e for e in events if e["event"] == "outbound_create_unverifiable"]
        assert warning["local_ids"] == [str(local_id)]
        assert len(await org.rows("SELECT Id FROM Lead")) == 1  # the 500 applied nothing here


async def platform_edit(store: Store, outbox: Outbox, local_id: ObjectId, *, at: datetime | None = None,
                        **fields: Any) -> None:
    """What the watcher does with an edit of a Person not linked yet (made `at`, default now):
    stamp the fields' times and queue a create with every mapped field, which coalesces into the
    create already queued."""
    now = at or datetime.now(UTC)
    await store.db.people.update_one({"_id": local_id}, {"$set": {
        **fields, "updated_at": now, "_sync.written_at": now,
        **{f"_sync.field_times.{name}": now for name in fields}}})
    doc = await store.db.people.find_one({"_id": local_id})
    assert doc is not None
    create = {"LastName": doc["last_name"], "Company": doc["company_name"], "Email": doc["email"],
              "Phone": doc["phone"]}
    await outbox.enqueue([OutboundWrite("Lead", None, "people", local_id, create, "create")])


class TestALostCreateIsRecoveredWithTheEditsMadeSince:
    async def test_an_edit_coalesced_into_the_lost_create_still_reaches_salesforce(
            self, org: Org, store: Store) -> None:
        """Chaos seed 9001, P17.phone: the create's answer was lost, and a platform edit made before
        the retry coalesced into the queued create (the Person was not linked). The retry finds
        and links the record the lost call made, which holds the values sent then: the edit
        still goes out (one update), and the Lead is created once."""
        outbox, flusher = flusher_for(store, org)
        local_id = ObjectId()
        created_at = datetime.now(UTC)
        person = {"last_name": "Ng", "company_name": "Acme", "email": "ng@x.com", "phone": "+1 555 0100"}
        await store.db.people.insert_one({
            "_id": local_id, **person, "updated_at": created_at,
            "_sync": {"written_at": created_at, "field_times": dict.fromkeys(person, created_at)}})
        await outbox.enqueue([OutboundWrite("Lead", None, "people", local_id, {
            "LastName": "Ng", "Company": "Acme", "Email": "ng@x.com", "Phone": "+1 555 0100"}, "create")])
        await org.fault(path_prefix=COLLECTIONS, count=1, apply_then_drop=True)
        await flusher.flush()  # created in Salesforce, answer lost: queued again
        assert await outbox.depth() == 1

        await platform_edit(store, outbox, local_id, phone="+1 555 0199")
        await flush_until_empty(outbox, flusher)

        [lead] = await org.rows("SELECT Id, Phone FROM Lead WHERE Email = 'ng@x.com'")
        assert lead["Phone"] == "+1 555 0199"
        assert org.posts() == 1
        doc = await store.db.people.find_one({"_id": local_id})
        assert doc is not None and doc["crm"]["id"] == lead["Id"]
        assert doc["_sync"]["sf"]["Lead"]["Phone"]["v"] == "+1 555 0199"
        logs, _ = await store.find_sync_logs(limit=10)
        assert sorted((x["type"], x["status"]) for x in logs) == [("link", "success"), ("update", "success")]
        [update] = [x for x in logs if x["type"] == "update"]
        assert set(update["fields"]) == {"Phone"}


class TestAnEditMadeWhileTheLostCreateWasInFlight:
    async def test_it_goes_out_over_the_value_the_lost_create_sent(self, org: Org, store: Store) -> None:
        """Chaos seed 11376, Q4.domain: the platform edited the Person while its create was in
        flight (claimed, not applied yet); the create's answer was lost. The retry's claim carries
        the edit (coalesced meanwhile) but sends nothing: it finds and links the record. Sent
        again as an update, the record is read: the value the lost create sent is the write's
        own, not a Salesforce edit dated by the Lead's `LastModifiedDate` (later than the
        platform's edit), so the edit goes out instead of waiting for an inbound change that
        never comes (the platform then took its own older value back as Salesforce's)."""
        outbox, flusher = flusher_for(store, org)
        local_id = await person_whose_create_is_lost(store, outbox, org, phone="+1 555 0100")
        claimed_at = datetime.now(UTC)
        await flusher.flush()  # created in Salesforce, answer lost: queued again

        # made before the call landed: stamped a whole second before the Lead's LastModifiedDate
        await platform_edit(store, outbox, local_id, at=claimed_at - timedelta(seconds=1),
                            phone="+1 555 0199")
        await flush_until_empty(outbox, flusher)

        [lead] = await org.rows("SELECT Id, Phone FROM Lead WHERE Email = 'ng@x.com'")
        assert lead["Phone"] == "+1 555 0199"
        assert org.posts() == 1


class TestARecoveredCreateKeepsSalesforcesLaterEdits:
    async def test_a_salesforce_edit_made_after_the_lost_create_is_not_overwritten(
            self, org: Org, store: Store) -> None:
        """Chaos seed 16180, P3.title: the create's answer was lost and a Salesforce user edited
        the new Lead's title before the retry found and linked it. Sent again as an update, the
        write's values are decided against the Lead read again: what the lost create sent is the
        write's own, what differs is Salesforce's later edit, which stands (most recent value)."""
        outbox, flusher = flusher_for(store, org)
        local_id = await person_whose_create_is_lost(store, outbox, org, title="Platform")
        await flusher.flush()  # created in Salesforce, answer lost: queued again
        [lead] = await org.rows("SELECT Id FROM Lead WHERE Email = 'ng@x.com'")
        async with aiohttp.ClientSession() as session:  # a Salesforce user edits the new Lead
            answer = await session.patch(f"{org.emulator.base_url}/_emulator/records/Lead/{lead['Id']}",
                                         json={"Title": "Sf"})
            assert answer.status == 200

        await flush_until_empty(outbox, flusher)

        [lead] = await org.rows("SELECT Id, Title FROM Lead WHERE Email = 'ng@x.com'")
        assert lead["Title"] == "Sf"
        doc = await store.db.people.find_one({"_id": local_id})
        assert doc is not None and doc["crm"]["id"] == lead["Id"]
        # The shadow stores the write's own values read back (their echoes are no edits: chaos
        # seed 16180, P3.last_name), not Salesforce's edit, which still reaches the platform
        shadow = doc["_sync"]["sf"]["Lead"]
        assert shadow["LastName"]["v"] == "Ng" and shadow.get("Title", {}).get("v") != "Sf"


class TestARecoveredCreatesOwnValuesReadBack:
    async def test_a_read_before_the_re_sent_update_is_no_salesforce_edit(self, org: Org,
                                                                          store: Store) -> None:
        """Chaos seed 13579, P15.title: the create's answer was lost; the platform then blanked
        the title (a blank is never sent: the queued create lost the field). The retry found and
        linked the Lead, and before its re-sent update read the Lead again, a poll read it: with
        no shadow for the new link, the create's own title looked like a Salesforce edit and
        filled the platform's blank (an echo logged as a Salesforce change). The values every
        lost attempt sent are the write's own, as the re-sent update already knows."""
        outbox, flusher = flusher_for(store, org)
        local_id = await person_whose_create_is_lost(store, outbox, org, title="Platform")
        await flusher.flush()  # created in Salesforce, answer lost: queued again
        now = datetime.now(UTC)
        await store.db.people.update_one({"_id": local_id}, {"$set": {  # the platform blanks it
            "title": None, "updated_at": now, "_sync.written_at": now, "_sync.field_times.title": now}})
        untitled = {"LastName": "Ng", "Company": "Acme", "Email": "ng@x.com"}  # the queued create, coalesced
        await outbox.enqueue([OutboundWrite("Lead", None, "people", local_id, untitled, "create")])
        await asyncio.sleep(BACKOFF.total_seconds())
        await flusher.flush()  # found and linked; queued again as an update of the Lead

        [lead] = await org.rows("SELECT Id, LastName, Company, Email, Title, LastModifiedDate FROM Lead "
                                "WHERE Email = 'ng@x.com'")
        polled = SalesforceChange(sobject="Lead", sf_id=lead["Id"], kind=ChangeKind.UPSERT,
                                  fields={k: v for k, v in lead.items() if k not in ("attributes", "Id")},
                                  changed_at=parse_sf_datetime(lead["LastModifiedDate"]),
                                  source=ChangeSource.POLL)
        await Reconciler(store, MAPPINGS).apply([polled])

        doc = await store.db.people.find_one({"_id": local_id})
        assert doc is not None and doc["crm"]["id"] == lead["Id"]
        assert doc.get("title") is None
        logs, _ = await store.find_sync_logs(limit=10)
        assert [x for x in logs if x["source"] == "salesforce" and x["type"] == "update"] == []


class TestRecoveryLinksOnlyWhatThisIntegrationCreated:
    async def test_a_match_created_by_another_user_is_not_linked(self, org: Org, store: Store) -> None:
        """Item 7: a Lead with the same email made by a Salesforce user (not the integration user)
        after the first send is not the lost create: the write is sent again and linked to its own."""
        outbox, flusher = flusher_for(store, org)
        local_id = await new_person(store, outbox, LastName="Ng", Company="Acme", Email="ng@x.com")
        await org.fault(path_prefix=COLLECTIONS, count=1, status=500)  # outcome unknown, nothing made
        await flusher.flush()
        someone_elses = await org.seed_as_user({"LastName": "Ng", "Company": "Other", "Email": "ng@x.com"})
        await flush_until_empty(outbox, flusher)

        leads = await org.rows("SELECT Id, CreatedById FROM Lead WHERE Email = 'ng@x.com' ORDER BY Id")
        assert len(leads) == 2
        doc = await store.db.people.find_one({"_id": local_id})
        assert doc["crm"]["id"] != someone_elses
        [ours] = [lead for lead in leads if lead["Id"] == doc["crm"]["id"]]
        assert ours["CreatedById"] == INTEGRATION_USER_ID

    async def test_a_match_created_before_the_first_send_is_not_linked(self, org: Org, store: Store) -> None:
        """Item 7: a Lead the integration user made (another path) after the enqueue but before
        this write's first send is not its lost create."""
        outbox, flusher = flusher_for(store, org)
        local_id = await new_person(store, outbox, LastName="Ng", Company="Acme", Email="ng@x.com")
        same_email = {"LastName": "Ng", "Company": "Old", "Email": "ng@x.com"}
        [earlier] = await org.client.create("Lead", [same_email])
        await asyncio.sleep(2.2)  # CreatedDate has one-second precision; 1 s skew allowance
        await org.fault(path_prefix=COLLECTIONS, count=1, status=500)
        await flusher.flush()
        await flush_until_empty(outbox, flusher)

        doc = await store.db.people.find_one({"_id": local_id})
        assert doc["crm"]["id"] != earlier.id
        assert len(await org.rows("SELECT Id FROM Lead WHERE Email = 'ng@x.com'")) == 2


class TestRecoveryOnSalesforcesClock:
    async def test_a_lost_create_is_found_when_salesforces_clock_is_behind(self, org: Org,
                                                                           store: Store) -> None:
        """Issue 11 items 7 + 10: "created after the first send" compares `CreatedDate`
        (Salesforce's clock) with the first send moved onto Salesforce's clock. With the org 30 s
        behind this host, a host-clock comparison misses the record and creates it again."""
        async with aiohttp.ClientSession() as session:
            answer = await session.post(f"{org.emulator.base_url}/_emulator/clock",
                                        json={"offset_seconds": -30})
            assert answer.status == 200
        sf_clock = SalesforceClock()
        settings = org.client._settings  # the fixture's org, through a transport that reads Date
        async with SalesforceClient(settings, retry=FAST, timeout=0.5,
                                    transport=clocked_transport(sf_clock, timeout=0.5)) as client:
            await client.limits()  # a first response: the clock learns the offset
            outbox = Outbox(store.outbox)
            flusher = OutboundFlusher(outbox, client, store, Budget(), client_name="salesforce-sync",
                                      backoff_base=BACKOFF, backoff_cap=BACKOFF, sf_clock=sf_clock)
            local_id = await new_person(store, outbox, LastName="Ng", Company="Acme", Email="ng@x.com")
            await org.fault(path_prefix=COLLECTIONS, count=1, apply_then_drop=True)
            await flush_until_empty(outbox, flusher)

        leads = await org.rows("SELECT Id FROM Lead WHERE Email = 'ng@x.com'")
        assert len(leads) == 1 and org.posts() == 1
        doc = await store.db.people.find_one({"_id": local_id})
        assert doc["crm"]["id"] == leads[0]["Id"]


    async def test_a_lost_create_is_found_after_salesforces_clock_stepped_ahead(self, org: Org,
                                                                                store: Store) -> None:
        """The first send is kept on Salesforce's clock as it was then: with the offset learned
        after a step of the org's clock (+5 s here) applied to the old send, the record the lost
        call made looks older than the send and is created again (chaos seed 1194, P38)."""
        sf_clock = SalesforceClock()
        settings = org.client._settings
        async with SalesforceClient(settings, retry=FAST, timeout=0.5,
                                    transport=clocked_transport(sf_clock, timeout=0.5)) as client:
            await client.limits()
            outbox = Outbox(store.outbox)
            flusher = OutboundFlusher(outbox, client, store, Budget(), client_name="salesforce-sync",
                                      backoff_base=BACKOFF, backoff_cap=BACKOFF, sf_clock=sf_clock)
            local_id = await new_person(store, outbox, LastName="Ng", Company="Acme", Email="ng@x.com")
            await org.fault(path_prefix=COLLECTIONS, count=1, apply_then_drop=True)
            await flusher.flush()
            assert org.posts() == 1
            async with aiohttp.ClientSession() as session:
                answer = await session.post(f"{org.emulator.base_url}/_emulator/clock",
                                            json={"offset_seconds": 5})
                assert answer.status == 200
            await client.limits()  # the clock learns the step
            await flush_until_empty(outbox, flusher)

        leads = await org.rows("SELECT Id FROM Lead WHERE Email = 'ng@x.com'")
        assert len(leads) == 1 and org.posts() == 1
        doc = await store.db.people.find_one({"_id": local_id})
        assert doc["crm"]["id"] == leads[0]["Id"]


class TestAStalledUpdateIsSentAgainWithTheEditMadeSince:
    async def test_the_value_the_stalled_attempt_wrote_is_not_a_salesforce_edit(
            self, org: Org, store: Store) -> None:
        """Chaos seed 314, L1.first_name: a leader claimed an update and stalled (SIGSTOP); the
        platform edited the field again; the stalled call then landed, and the next leader sent
        the write again, now carrying the newer value. Read back, the Lead holds the stalled
        attempt's value with a `LastModifiedDate` later than the platform's edit: the write's own
        earlier value, not a Salesforce edit, so the platform's newer value goes out."""
        outbox, flusher = flusher_for(store, org)
        sf_id = await org.seed_as_user({"LastName": "Ng", "Company": "Acme", "Title": "Old"})
        # the edit is older than the flusher's 5 s: the record is read again before the send
        earlier, edited = datetime.now(UTC) - timedelta(seconds=20), datetime.now(UTC) - timedelta(seconds=8)
        local_id = ObjectId()
        await store.db.people.insert_one({
            "_id": local_id, "last_name": "Ng", "company_name": "Acme", "title": "Earlier",
            "updated_at": earlier, "crm": {"object": "Lead", "id": sf_id},
            "_sync": {"written_at": earlier, "field_times": {"title": earlier},
                      "sf": {"Lead": {"Title": {"v": "Old", "at": earlier - timedelta(minutes=1)}}}}})
        await outbox.enqueue([OutboundWrite("Lead", sf_id, "people", local_id, {"Title": "Earlier"},
                                            "local_edit")])
        [claimed] = await Outbox(store.outbox, lease=timedelta(0)).claim("Lead", "update", 10)  # stalls

        await store.db.people.update_one({"_id": local_id}, {"$set": {
            "title": "Platform", "updated_at": edited, "_sync.written_at": edited,
            "_sync.field_times.title": edited}})
        await outbox.enqueue([OutboundWrite("Lead", sf_id, "people", local_id, {"Title": "Platform"},
                                            "local_edit")])
        [landed] = await org.client.update("Lead", [{"Id": sf_id, **claimed.write.fields}])  # resumed
        assert landed.success
        assert await outbox.recover_expired() == 1  # the stalled claim folds into the new edit
        await flush_until_empty(outbox, flusher)

        [lead] = await org.rows(f"SELECT Title FROM Lead WHERE Id = '{sf_id}'")
        assert lead["Title"] == "Platform"


async def linked_person_whose_update_is_lost(store: Store, outbox: Outbox, org: Org,
                                             flusher: OutboundFlusher) -> tuple[str, ObjectId]:
    """A Lead (Title "Old", made by a Salesforce user) linked to a Person whose platform Title
    "Platform" went out in an update Salesforce applied and whose answer was lost: the write is
    queued again (attempt 1), and the Lead holds "Platform" at a `LastModifiedDate` the shadow never saw."""
    sf_id = await org.seed_as_user({"LastName": "Ng", "Company": "Acme", "Title": "Old"})
    earlier = datetime.now(UTC) - timedelta(seconds=20)
    local_id = ObjectId()
    await store.db.people.insert_one({
        "_id": local_id, "last_name": "Ng", "company_name": "Acme", "title": "Platform",
        "updated_at": earlier, "crm": {"object": "Lead", "id": sf_id},
        "_sync": {"written_at": earlier, "field_times": {"title": earlier},
                  "sf": {"Lead": {"LastName": {"v": "Ng", "at": None}, "Company": {"v": "Acme", "at": None},
                                  "Title": {"v": "Old", "at": earlier - timedelta(minutes=1)}}}}})
    await outbox.enqueue([OutboundWrite("Lead", sf_id, "people", local_id, {"Title": "Platform"},
                                        "local_edit")])
    # the write went out conditional (the record read again first: it waited past the flush
    # wait), a `/composite` POST, which is never sent again blind
    await org.fault(path_prefix="/services/data/v62.0/composite", count=1, apply_then_drop=True)
    await flusher.flush()
    assert await outbox.depth() == 1
    [lead] = await org.rows(f"SELECT Title FROM Lead WHERE Id = '{sf_id}'")
    assert lead["Title"] == "Platform"
    return sf_id, local_id


async def platform_titles(store: Store, outbox: Outbox, sf_id: str, local_id: ObjectId, title: str, *,
                          at: datetime) -> None:
    """The platform sets the Person's title (stamped `at`) and the watcher queues it."""
    await store.db.people.update_one({"_id": local_id}, {"$set": {
        "title": title, "updated_at": at, "_sync.written_at": at, "_sync.field_times.title": at}})
    await outbox.enqueue([OutboundWrite("Lead", sf_id, "people", local_id, {"Title": title}, "local_edit")])


async def poll(org: Org, sf_id: str) -> SalesforceChange:
    """The Lead as the poller reads it."""
    [lead] = await org.rows("SELECT Id, LastName, Company, Email, Phone, Title, LastModifiedDate "
                            f"FROM Lead WHERE Id = '{sf_id}'")
    return SalesforceChange(sobject="Lead", sf_id=sf_id, kind=ChangeKind.UPSERT,
                            fields={k: v for k, v in lead.items() if k not in ("attributes", "Id")},
                            changed_at=parse_sf_datetime(lead["LastModifiedDate"]), source=ChangeSource.POLL)


class TestALostUpdatesOwnValueReadByAnInboundRead:
    """Chaos seed 40427, P20.title: an update's answer was lost after Salesforce applied it, and
    an inbound read (a poll, a gap fetch, a re-import) reached the record before the re-sent
    write read it again: the value the lost attempt sent is the platform's own, not a
    Salesforce edit at the record's `LastModifiedDate`."""

    async def test_it_does_not_fill_a_blank_the_platform_made_since(self, org: Org, store: Store) -> None:
        """The platform blanked the title after the lost call (a blank is never sent). The new
        leader's poll took the title for a Salesforce edit and filled the blank with it: an echo
        logged as a Salesforce change."""
        outbox, flusher = flusher_for(store, org)
        sf_id, local_id = await linked_person_whose_update_is_lost(store, outbox, org, flusher)
        now = datetime.now(UTC)
        await store.db.people.update_one({"_id": local_id}, {"$set": {
            "title": None, "updated_at": now, "_sync.written_at": now, "_sync.field_times.title": now}})

        await Reconciler(store, MAPPINGS, outbox=outbox).apply([await poll(org, sf_id)])

        doc = await store.db.people.find_one({"_id": local_id})
        assert doc is not None and doc.get("title") is None
        logs, _ = await store.find_sync_logs(limit=10)
        assert [x for x in logs if x["source"] == "salesforce"] == []
        # known as Salesforce's value now, with no time: older than any platform edit
        assert doc["_sync"]["sf"]["Lead"]["Title"] == {"v": "Platform", "at": None}

    async def test_it_does_not_undo_an_edit_made_while_the_call_was_in_flight(
            self, org: Org, store: Store) -> None:
        """The platform edited the title again while the lost call was in flight: its time is
        before the Lead's `LastModifiedDate`. Taken for a Salesforce edit, the lost call's older
        value replaced the newer one on the platform, and the re-sent write then had nothing to
        send: the platform's last edit was lost on both sides."""
        outbox, flusher = flusher_for(store, org)
        before_call = datetime.now(UTC) - timedelta(seconds=1)
        sf_id, local_id = await linked_person_whose_update_is_lost(store, outbox, org, flusher)
        await platform_titles(store, outbox, sf_id, local_id, "Newer", at=before_call)

        await Reconciler(store, MAPPINGS, outbox=outbox).apply([await poll(org, sf_id)])
        doc = await store.db.people.find_one({"_id": local_id})
        assert doc is not None and doc["title"] == "Newer"
        await flush_until_empty(outbox, flusher)

        [lead] = await org.rows(f"SELECT Title FROM Lead WHERE Id = '{sf_id}'")
        assert lead["Title"] == "Newer"


class TestAWriteForADocumentWhoseRecordIsDeleted:
    """Chaos seed 18181, P1: a leader's watcher read a platform edit of a Person made before the
    Person's create linked it, and queued a create (the document was not linked when it read it);
    a Salesforce user deleted the new Lead before the flusher sent that create. A create of a
    document linked meanwhile becomes an update of the linked record, but a deleted link did
    not count: the create went out, a second Lead, and the platform's edit was lost with it. A
    write for a document whose record is deleted is held, as the watcher holds an edit made
    while it is deleted, and goes out when the record is undeleted."""

    async def deleted_person(self, store: Store, org: Org) -> tuple[str, ObjectId]:
        """A Person linked to a Lead (its shadow known) that a Salesforce user deleted."""
        sf_id = await org.seed_as_user({"LastName": "Ng", "Company": "Acme", "Email": "ng@x.com"})
        at = datetime.now(UTC) - timedelta(seconds=20)
        local_id = ObjectId()
        await store.db.people.insert_one({
            "_id": local_id, "last_name": "Ng", "company_name": "Acme", "email": "ng@x.com",
            "phone": "+1 555 0100", "updated_at": at, "crm": {"object": "Lead", "id": sf_id, "deleted": True,
                                                           "deleted_at": at},
            "_sync": {"written_at": at, "field_times": {"phone": at},
                      "sf": {"Lead": {name: {"v": value, "at": None} for name, value in
                                      {"LastName": "Ng", "Company": "Acme", "Email": "ng@x.com"}.items()}}}})
        async with aiohttp.ClientSession() as session:
            answer = await session.delete(f"{org.emulator.base_url}/_emulator/records/Lead/{sf_id}")
            assert answer.status == 200
        return sf_id, local_id

    async def undelete(self, store: Store, outbox: Outbox, org: Org, sf_id: str) -> None:
        """A Salesforce user undeletes the Lead; its UNDELETE event comes in (the record's
        non-null fields, as Salesforce sends it)."""
        async with aiohttp.ClientSession() as session:
            answer = await session.post(f"{org.emulator.base_url}/_emulator/records/Lead/{sf_id}/undelete")
            assert answer.status == 200
        [lead] = await org.rows("SELECT Id, LastName, Company, Email, Phone, Title, LastModifiedDate "
                                f"FROM Lead WHERE Id = '{sf_id}'")
        change = SalesforceChange(sobject="Lead", sf_id=sf_id, kind=ChangeKind.UNDELETE,
                                  fields={k: v for k, v in lead.items() if k != "Id" and v is not None},
                                  changed_at=parse_sf_datetime(lead["LastModifiedDate"]),
                                  source=ChangeSource.STREAM)
        await Reconciler(store, MAPPINGS, outbox=outbox).apply([change])

    async def test_a_stale_create_makes_no_second_record_and_goes_out_on_the_undelete(
            self, org: Org, store: Store) -> None:
        outbox, flusher = flusher_for(store, org)
        sf_id, local_id = await self.deleted_person(store, org)
        await outbox.enqueue([OutboundWrite("Lead", None, "people", local_id, {
            "LastName": "Ng", "Company": "Acme", "Email": "ng@x.com", "Phone": "+1 555 0100"}, "create")])
        for _ in range(3):
            await flusher.flush()
            await asyncio.sleep(BACKOFF.total_seconds())
        assert org.posts() == 0
        assert await org.rows("SELECT Id FROM Lead") == []  # the one Lead is deleted

        await self.undelete(store, outbox, org, sf_id)
        await flush_until_empty(outbox, flusher)
        assert await org.rows("SELECT Id, Phone FROM Lead") == [{"Id": sf_id, "Phone": "+1 555 0100"}]
        assert org.posts() == 0

    async def test_an_update_waits_for_the_undelete(self, org: Org, store: Store) -> None:
        outbox, flusher = flusher_for(store, org)
        sf_id, local_id = await self.deleted_person(store, org)
        await outbox.enqueue([OutboundWrite("Lead", sf_id, "people", local_id, {"Phone": "+1 555 0100"},
                                            "local_edit")])
        for _ in range(3):
            await flusher.flush()
            await asyncio.sleep(BACKOFF.total_seconds())
        logs, _ = await store.find_sync_logs(limit=10)
        assert [x for x in logs if x["status"] == "failed"] == []  # not sent to a deleted record

        await self.undelete(store, outbox, org, sf_id)
        await flush_until_empty(outbox, flusher)
        [lead] = await org.rows(f"SELECT Phone FROM Lead WHERE Id = '{sf_id}'")
        assert lead["Phone"] == "+1 555 0100"
