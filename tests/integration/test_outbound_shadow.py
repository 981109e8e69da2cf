"""The flusher re-decides queued writes against the Salesforce shadow and keeps it (issue 10),
over a real MongoDB-wire server and a fake Salesforce API."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reconciler.inbound import Reconciler
from reconciler.jobs import JobOutcome, Jobs
from reconciler.merge import HELD_SALESFORCE, SAME_VALUE
from reconciler.outbound import OutboundFlusher
from reconciler.outbound_shadow import ShadowGate
from reconciler.outbox import Outbox
from reconciler.ports import ChangeKind, ChangeSource, OutboundWrite, RecordResult, ResendGuard
from reconciler.store import Store
from reconciler.sync_logs import SyncLog
from settings import parse_mappings
from tests.integration.test_outbound import FakeBudget, FakeSalesforce
from tests.support.clock import Clock
from tests.support.mappings import sample_mappings
from tests.support.salesforce_changes import INBOUND_EDITS, change, mappings_toml

MAPPINGS = parse_mappings(mappings_toml({"people.email": {"merge": "salesforce_unless_blank"}}))
T1 = datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC)
T2 = T1 + timedelta(seconds=1)


@dataclass
class QueryingSalesforce(FakeSalesforce):
    """Also answers `SELECT ... WHERE Id IN (...)` from `records` and counts the queries."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)

    def query(self, soql: str, *, include_deleted: bool = False) -> AsyncIterator[list[dict[str, Any]]]:
        self.queries.append(soql)

        async def pages() -> AsyncIterator[list[dict[str, Any]]]:
            yield [r for i, r in self.records.items() if f"'{i}'" in soql]
        return pages()


@dataclass
class Rig:
    store: Store
    outbox: Outbox
    sf: QueryingSalesforce
    flusher: OutboundFlusher

    async def logs(self) -> list[dict[str, Any]]:
        return (await self.store.find_sync_logs(limit=500))[0]

    async def doc(self, local_id: str) -> dict[str, Any]:
        found = await self.store.db.people.find_one({"_id": local_id})
        assert found is not None
        return dict(found)


@pytest.fixture
def rig(store: Store) -> Rig:
    clock, sf = Clock(), QueryingSalesforce()
    outbox = Outbox(store.outbox, clock=clock)
    flusher = OutboundFlusher(outbox, sf, store, FakeBudget(), client_name="salesforce-sync", clock=clock,
                              writable={"Lead": {}}, gate=ShadowGate(sf, store, MAPPINGS))
    return Rig(store, outbox, sf, flusher)


def sf_id(n: int) -> str:
    return f"00Q{n:012d}AAA"


async def person(store: Store, n: int, *, shadow: dict[str, Any] | None, **fields: Any) -> None:
    """A linked Person whose platform edits (stamped at T1) are queued; `shadow` = Lead fields."""
    sync: dict[str, Any] = {"written_at": T1, "field_times": dict.fromkeys(fields, T1)}
    if shadow is not None:
        sync["sf"] = {"Lead": {k: {"v": v, "at": T1 - timedelta(seconds=5)} for k, v in shadow.items()}}
    await store.db.people.insert_one({"_id": f"p-{n}", "updated_at": T1, "crm": {"object": "Lead",
                                      "id": sf_id(n)}, "_sync": sync, **fields})


def edit(n: int, **fields: Any) -> OutboundWrite:
    return OutboundWrite(sobject="Lead", sf_id=sf_id(n), collection="people", local_id=f"p-{n}",
                         fields=fields, reason="local_edit")


class TestSalesforceUnlessBlankLive:
    async def test_nothing_is_sent_where_salesforce_holds_a_value(self, rig: Rig) -> None:
        """A platform edit to a salesforce_unless_blank field Salesforce holds: no call, one skipped log."""
        await person(rig.store, 1, shadow={"Email": "sf@x.com"}, email="new@x.com")
        await rig.outbox.enqueue([edit(1, Email="new@x.com")])
        await rig.flusher.flush()
        assert rig.sf.calls == [] and await rig.outbox.depth() == 0
        logs = await rig.logs()
        assert [(x["type"], x["status"], x["source"]) for x in logs] == [("skipped", "success", "local")]
        assert logs[0]["fields"]["email"]["reason"] == HELD_SALESFORCE

    async def test_it_is_sent_where_salesforce_is_blank(self, rig: Rig) -> None:
        await person(rig.store, 1, shadow={"Email": None}, email="new@x.com")
        await rig.outbox.enqueue([edit(1, Email="new@x.com")])
        await rig.flusher.flush()
        assert [c.records for c in rig.sf.calls] == [[{"Email": "new@x.com", "Id": sf_id(1)}]]


class TestQueuedValueSuperseded:
    async def test_an_older_queued_value_does_not_overwrite_a_newer_salesforce_edit(self, rig: Rig) -> None:
        """Queued at T1; Salesforce's edit of T2 was applied since (platform and shadow hold it):
        the queued value is dropped, no call."""
        await person(rig.store, 1, shadow={"FirstName": "Sf"}, first_name="Sf")
        await rig.store.db.people.update_one({"_id": "p-1"},
                                             {"$set": {"_sync.sf.Lead.FirstName.at": T2}})
        await rig.outbox.enqueue([edit(1, FirstName="Queued")])
        await rig.flusher.flush()
        assert rig.sf.calls == [] and await rig.outbox.depth() == 0


class TestShadowKept:
    async def test_a_write_updates_the_shadow_and_logs_salesforces_old_value(self, rig: Rig) -> None:
        """Outbound logs read `old -> new` from the shadow; the value written becomes the shadow,
        at the value's platform time, with when Salesforce took it (`sent`)."""
        await person(rig.store, 1, shadow={"FirstName": "Ann"}, first_name="Anna")
        await rig.outbox.enqueue([edit(1, FirstName="Anna")])
        before = datetime.now(UTC).replace(microsecond=0)
        await rig.flusher.flush()
        doc = await rig.doc("p-1")
        shadow = doc["_sync"]["sf"]["Lead"]["FirstName"]
        assert (shadow["v"], shadow["at"]) == ("Anna", T1)
        assert before <= shadow["sent"].replace(tzinfo=UTC) <= datetime.now(UTC)
        assert doc["updated_at"] == T1  # not a platform edit, nor a service write the watcher sees
        (entry,) = await rig.logs()
        assert entry["fields"]["FirstName"] == {"old": "Ann", "new": "Anna"}

    async def test_missing_shadows_are_filled_by_one_query_per_batch(self, rig: Rig) -> None:
        """Records linked before the shadow: one query for all of them, then the rules decide."""
        for n in (1, 2, 3):
            await person(rig.store, n, shadow=None, email=f"new{n}@x.com")
            rig.sf.records[sf_id(n)] = {"Id": sf_id(n), "Email": None if n == 3 else f"sf{n}@x.com"}
        await rig.outbox.enqueue([edit(n, Email=f"new{n}@x.com") for n in (1, 2, 3)])
        await rig.flusher.flush()
        assert len(rig.sf.queries) == 1
        assert [c.records for c in rig.sf.calls] == [[{"Email": "new3@x.com", "Id": sf_id(3)}]]
        assert (await rig.doc("p-1"))["_sync"]["sf"]["Lead"]["Email"]["v"] == "sf1@x.com"
        assert len([x for x in await rig.logs() if x["type"] == "skipped"]) == 2


OWNER_1, OWNER_2 = "005000000000001AAA", "005000000000002AAA"
T0 = T1 - timedelta(seconds=5)


def owner_flusher(rig: Rig, merge: str) -> OutboundFlusher:
    """A flusher whose `owner_crm_id` mapping (OwnerId both ways) has the merge behaviour `merge`."""
    mappings = parse_mappings(mappings_toml({"people.owner_crm_id": {"direction": "both", "merge": merge}}))
    return OutboundFlusher(rig.outbox, rig.sf, rig.store, FakeBudget(), client_name="salesforce-sync",
                           writable={"Lead": {}}, gate=ShadowGate(rig.sf, rig.store, mappings))


class TestOwnerFollowsItsMergeBehaviour:
    """Issue 10: a platform owner change goes out as `OwnerId` with the merge behaviour of the
    `owner_crm_id` mapping, decided from the shadow like any other field. The platform moved the
    Person from u-1 to u-2 at T1; the shadow holds Salesforce's owner and when it changed."""

    @pytest.mark.parametrize(("merge", "shadow", "sent", "held"), [
        ("salesforce_unless_blank", (OWNER_1, T0), False, True),   # Salesforce holds an owner
        ("local_unless_blank", (OWNER_1, T2), True, False),       # the platform's owner stands
        ("most_recent", (OWNER_1, T0), True, False),              # the platform's change is newer
        ("most_recent", (OWNER_1, T2), False, False),             # Salesforce's change is newer
        ("most_recent", (OWNER_2, T0), False, False),             # Salesforce has it already
    ])
    async def test_owner_change(self, rig: Rig, merge: str, shadow: tuple[str, datetime], sent: bool,
                                held: bool) -> None:
        value, seen_at = shadow
        await rig.store.db.people.insert_one({
            "_id": "p-1", "owner_id": "u-2", "updated_at": T1, "crm": {"object": "Lead", "id": sf_id(1)},
            "_sync": {"written_at": T1, "field_times": {"owner_id": T1},
                      "sf": {"Lead": {"OwnerId": {"v": value, "at": seen_at}}}}})
        await rig.outbox.enqueue([edit(1, OwnerId=OWNER_2)])
        await owner_flusher(rig, merge).flush()
        assert [c.records for c in rig.sf.calls] == ([[{"OwnerId": OWNER_2, "Id": sf_id(1)}]] if sent else [])
        assert await rig.outbox.depth() == 0
        skipped = [x for x in await rig.logs() if x["type"] == "skipped"]
        assert [list(x["fields"]) for x in skipped] == ([["owner_crm_id"]] if held else [])
        if held:
            assert skipped[0]["fields"]["owner_crm_id"]["reason"] == HELD_SALESFORCE


class TestAValueBlankedBeforeItsCreateWentOut:
    """Chaos seed 50321, P9.title: the platform created a Person with a title and blanked it
    0.27 s later; the queued create kept the title (blanks never enter the outbox, and a create
    went out as queued), so Salesforce was created with it, and a read of the record then filled
    the platform's blank with it: the platform's latest edit was undone. A create carries the
    platform's values as they are when it is sent, as an update does."""

    async def test_the_create_does_not_carry_it(self, rig: Rig) -> None:
        await rig.store.db.people.insert_one({"_id": "p-1", "last_name": "Lee", "company_name": "Acme",
                                              "title": "", "updated_at": T1})
        await rig.outbox.enqueue([OutboundWrite("Lead", None, "people", "p-1",
                                                {"LastName": "Lee", "Company": "Acme", "Title": "CTO"},
                                                reason="create")])
        await rig.flusher.flush()
        assert [(c.method, c.records) for c in rig.sf.calls] == [
            ("POST", [{"LastName": "Lee", "Company": "Acme"}])]


UNMAPPED_OWNER = "005000000000009AAA"  # no `[[users]]` entry (the integration user, say)


class TestAnOwnerThePlatformDoesNotFollow:
    """Chaos seed 50321, L1.owner_crm_id (and 2718, P11): a Salesforce user moved the Contact to
    a user `[[users]]` does not map; the Person kept its owner, u-2 (`update_owner` has no local
    user to give it). Then the platform edited a field the watcher does not stamp (an unmapped
    one), and a write of the record carrying `OwnerId` went out as u-2's Salesforce user, dated
    by that edit: the old owner was put back. Where the platform's owner cannot follow
    Salesforce's (an unmapped owner, or the `ignore` rule), its differing says nothing of an edit:
    only a platform change of the owner (stamped by the watcher) overwrites Salesforce's owner.

    The Salesforce owner changed at T1 (shadow); the platform's owner was set at `owner_at`; the
    platform's last edit, at T2, is unstamped unless the owner's time is T2."""

    @pytest.mark.parametrize(("salesforce_owner", "rule", "owner_at", "sent"), [
        (UNMAPPED_OWNER, "update_owner", T0, False),   # another field's edit: not the owner's
        (OWNER_1, "ignore", T0, False),                # the platform ignores owner changes
        (UNMAPPED_OWNER, "update_owner", T2, True),    # the platform moved the Person since
        (OWNER_1, "update_owner", T0, True),           # u-1 followed, then a fresh move to u-2
    ])
    async def test_a_queued_owner(self, rig: Rig, salesforce_owner: str, rule: str, owner_at: datetime,
                                  sent: bool) -> None:
        stamped = owner_at == T2
        await rig.store.db.people.insert_one({
            "_id": "p-1", "owner_id": "u-2", "owner_crm_id": salesforce_owner, "notes": "edited",
            "updated_at": T2, "crm": {"object": "Lead", "id": sf_id(1), "owner_id": salesforce_owner},
            "_sync": {"written_at": T2 if stamped else T1, "field_times": {"owner_id": owner_at},
                      "sf": {"Lead": {"OwnerId": {"v": salesforce_owner, "at": T1}}}}})
        await rig.outbox.enqueue([OutboundWrite("Lead", sf_id(1), "people", "p-1",
                                                {"OwnerId": salesforce_owner}, reason="merge")])
        mappings = parse_mappings(sample_mappings(
            {**INBOUND_EDITS, "people.owner_crm_id": {"direction": "both"}}, users={"u-2": OWNER_2},
            rules={"on_salesforce_owner_change": rule}))
        await OutboundFlusher(rig.outbox, rig.sf, rig.store, FakeBudget(), client_name="salesforce-sync",
                              writable={"Lead": {}}, gate=ShadowGate(rig.sf, rig.store, mappings)).flush()
        assert [c.records for c in rig.sf.calls] == ([[{"OwnerId": OWNER_2, "Id": sf_id(1)}]] if sent else [])

OWNER_3, NOBODY = "005000000000003AAA", "005000000000009AAA"  # NOBODY: no `[[users]]` entry
OWNED = parse_mappings(sample_mappings({**INBOUND_EDITS, "people.owner_crm_id": {"direction": "both"}},
                                       users={"u-2": OWNER_2, "u-3": OWNER_3}))


class TestASalesforceOwnerThePlatformCannotShow:
    """Chaos seed 1291 x 2000, P69: a Salesforce user gave the Lead to a user `[[users]]` does not
    map; `update_owner` left the Person's owner (u-2) alone. A queued write carrying `OwnerId` (a
    merge's, or a whole record's) was flushed just after the platform edited another field, before
    the watcher stamped that edit: the owner, still what Salesforce held before its change, was
    dated by that edit and put back over Salesforce's newer owner (the sides diverged)."""

    async def moved_to_an_unmapped_user(self, rig: Rig) -> None:
        """u-2 (stamped T1); Salesforce's owner OWNER_2 until a user moves the Lead at T2."""
        await rig.store.db.people.insert_one({
            "_id": "p-1", "owner_id": "u-2", "first_name": "Ann", "updated_at": T1,
            "crm": {"object": "Lead", "id": sf_id(1), "owner_id": OWNER_2},
            "_sync": {"written_at": T1, "field_times": {"owner_id": T1, "first_name": T1},
                      "sf": {"Lead": {"OwnerId": {"v": OWNER_2, "at": T0},
                                      "FirstName": {"v": "Ann", "at": T0}}}}})
        await Reconciler(rig.store, OWNED, outbox=rig.outbox).apply([change(sf_id(1), {"OwnerId": NOBODY},
                                                                            at=T2)])
        assert (await rig.doc("p-1"))["owner_id"] == "u-2"

    async def flushed_with(self, rig: Rig, attempt: int = 0, **platform: Any) -> list[list[dict[str, Any]]]:
        """The platform edits `platform` now, after the inbound write (not stamped yet), and a
        write carrying the owner and the first name is flushed (`attempt` 1: sent before, so
        the Lead is read again first)."""
        now = datetime.now(UTC) + timedelta(seconds=1)
        await rig.store.db.people.update_one({"_id": "p-1"}, {"$set": {**platform, "updated_at": now}})
        rig.sf.records[sf_id(1)] = {"Id": sf_id(1), "FirstName": "Ann", "OwnerId": NOBODY,
                                    "LastModifiedDate": "2026-03-01T12:00:02.000+0000"}  # T2
        await rig.outbox.enqueue([dataclasses.replace(edit(1, FirstName="Plat", OwnerId=OWNER_2),
                                                      attempt=attempt)])
        flusher = OutboundFlusher(rig.outbox, rig.sf, rig.store, FakeBudget(), client_name="salesforce-sync",
                                  writable={"Lead": {}}, gate=ShadowGate(rig.sf, rig.store, OWNED))
        await flusher.flush()
        return [c.records for c in rig.sf.calls]

    async def test_an_edit_of_another_field_does_not_date_the_owner(self, rig: Rig) -> None:
        await self.moved_to_an_unmapped_user(rig)
        assert await self.flushed_with(rig, first_name="Plat") == [[{"FirstName": "Plat", "Id": sf_id(1)}]]

    async def test_nor_when_the_lead_is_read_again_before_the_write(self, rig: Rig) -> None:
        """A write sent before is re-decided on the Lead read again (same owner): the same."""
        await self.moved_to_an_unmapped_user(rig)
        calls = await self.flushed_with(rig, attempt=1, first_name="Plat")
        assert calls == [[{"FirstName": "Plat", "Id": sf_id(1)}]] and len(rig.sf.queries) == 1

    async def test_a_fresh_owner_change_on_the_platform_still_goes_out(self, rig: Rig) -> None:
        """The unstamped edit moved the Person to u-3: that owner is newer than Salesforce's."""
        await self.moved_to_an_unmapped_user(rig)
        calls = await self.flushed_with(rig, first_name="Plat", owner_id="u-3")
        assert calls == [[{"FirstName": "Plat", "OwnerId": OWNER_3, "Id": sf_id(1)}]]


async def retried_with_flusher(rig: Rig, log_id: str) -> JobOutcome:
    """Retry `log_id` while the flusher drains the outbox, as the running service does."""
    jobs = Jobs(rig.store, Reconciler(rig.store, MAPPINGS, outbox=rig.outbox),
                outcome_wait=timedelta(seconds=30))
    task = asyncio.create_task(jobs.retry_log(log_id))
    while not task.done():
        await rig.flusher.flush()
        await asyncio.sleep(0.05)
    return await task


def failed_update(n: int) -> SyncLog:
    job = {"kind": "outbound", "sobject": "Lead", "sf_id": sf_id(n), "collection": "people",
           "local_id": f"p-{n}"}
    return SyncLog(source="local", type="update", status="failed", object="Lead", sf_id=sf_id(n),
                   local_id=f"p-{n}", collection="people", job=job,
                   fields={"Email": {"old": None, "new": "x"}}, error="FIELD_CUSTOM_VALIDATION_EXCEPTION: no")


class TestRetryWithNothingToSend:
    """A retry re-queues the record; when the shadow drops every field it carries, no call is made,
    the outbox is left, and ONE `skipped` log (attempt N+1) says which fields and why: it is the
    retry's outcome, linked from the retried row."""

    @pytest.mark.parametrize(("shadow", "reasons"), [
        ({"Email": "new@x.com", "FirstName": "Ann"},
         {"email": SAME_VALUE, "first_name": SAME_VALUE}),
        ({"Email": "sf@x.com", "FirstName": "Ann"},
         {"email": HELD_SALESFORCE, "first_name": SAME_VALUE}),
    ])
    async def test_one_skipped_log_is_the_outcome(self, rig: Rig, shadow: dict[str, Any],
                                                  reasons: dict[str, str]) -> None:
        await person(rig.store, 1, shadow=shadow, email="new@x.com", first_name="Ann")
        [failed_id] = await rig.store.insert_sync_logs([failed_update(1)])
        outcome = await retried_with_flusher(rig, failed_id)
        assert rig.sf.calls == [] and await rig.outbox.depth() == 0
        new = [x for x in await rig.logs() if x["id"] != failed_id]
        assert [(x["type"], x["status"], x["attempt"]) for x in new] == [("skipped", "success", 2)]
        assert {name: f["reason"] for name, f in new[0]["fields"].items()} == reasons
        assert (outcome.status, outcome.new_log_ids) == ("retried", [new[0]["id"]])
        assert (await rig.store.get_sync_log(failed_id) or {})["retried_by"] == new[0]["id"]
class TestCreateOfALinkedDocument:
    async def test_a_queued_create_of_a_document_linked_meanwhile_becomes_an_update(self, rig: Rig) -> None:
        """A create queued for a Person that another leader created and linked since (a new leader's
        watcher re-read an edit made before the link; chaos seed 101): no second Lead is created, the
        edit goes out as an update of the linked Lead."""
        await person(rig.store, 1, shadow={"FirstName": "Ann", "LastName": "Lee"}, first_name="Anna",
                     last_name="Lee")
        create = OutboundWrite(sobject="Lead", sf_id=None, collection="people", local_id="p-1",
                               fields={"FirstName": "Anna", "LastName": "Lee"}, reason="create")
        await rig.outbox.enqueue([create])
        await rig.flusher.flush()
        await rig.flusher.flush()
        assert [(c.method, c.records) for c in rig.sf.calls] == [
            ("PATCH", [{"FirstName": "Anna", "Id": sf_id(1)}])]
        assert await rig.outbox.depth() == 0
        assert [(x["type"], x["status"]) for x in await rig.logs()] == [("update", "success")]


class TestResentUpdate:
    """A write sent before and not confirmed (a lost response, a flusher that died before logging
    it) may be applied already, and Salesforce may have been edited since: before it is sent again
    the flusher reads the records (one query per call) into the shadow, then re-decides."""

    def resend(self, n: int, **fields: Any) -> OutboundWrite:
        return OutboundWrite(sobject="Lead", sf_id=sf_id(n), collection="people", local_id=f"p-{n}",
                             fields=fields, reason="local_edit", attempt=1)

    async def test_a_salesforce_edit_made_since_the_first_send_is_not_overwritten(self, rig: Rig) -> None:
        """Platform value of T1, sent, outcome lost; another user set FirstName at T2 (not yet seen
        inbound): the resend would overwrite it (chaos seed 25147, L20.state). Not sent."""
        await person(rig.store, 1, shadow={"FirstName": "Old"}, first_name="Plat")
        rig.sf.records[sf_id(1)] = {"Id": sf_id(1), "FirstName": "Other",
                                    "LastModifiedDate": "2026-03-01T12:00:02.000+0000"}
        await rig.outbox.enqueue([self.resend(1, FirstName="Plat")])
        await rig.flusher.flush()
        assert rig.sf.calls == [] and await rig.outbox.depth() == 0
        # What was read decides this flush only: the stored shadow stays what the inbound side
        # has read, so "Other" still reaches the platform as an edit (chaos seed 2718: stored,
        # it made the inbound side skip Salesforce's edits as values read before)
        assert (await rig.doc("p-1"))["_sync"]["sf"]["Lead"]["FirstName"]["v"] == "Old"

    async def test_a_write_the_first_send_applied_is_not_sent_again(self, rig: Rig) -> None:
        await person(rig.store, 1, shadow={"FirstName": "Old"}, first_name="Plat")
        rig.sf.records[sf_id(1)] = {"Id": sf_id(1), "FirstName": "Plat",
                                    "LastModifiedDate": "2026-03-01T12:00:02.000+0000"}
        await rig.outbox.enqueue([self.resend(1, FirstName="Plat")])
        await rig.flusher.flush()
        assert rig.sf.calls == [] and await rig.outbox.depth() == 0

    async def test_an_unchanged_record_gets_the_resend(self, rig: Rig) -> None:
        """Salesforce still holds the old value: the first send did not land; it goes out."""
        await person(rig.store, 1, shadow={"FirstName": "Old"}, first_name="Plat")
        rig.sf.records[sf_id(1)] = {"Id": sf_id(1), "FirstName": "Old",
                                    "LastModifiedDate": "2026-02-01T12:00:00.000+0000"}
        await rig.outbox.enqueue([self.resend(1, FirstName="Plat")])
        await rig.flusher.flush()
        assert [c.records for c in rig.sf.calls] == [[{"FirstName": "Plat", "Id": sf_id(1)}]]
        assert len(rig.sf.queries) == 1

    async def test_a_blank_after_our_write_stands_beside_a_fresh_edit_of_another_field(
        self, rig: Rig
    ) -> None:
        """Chaos seed 24680, P17.title: our write sent Title "Plat" (edited at T1); a Salesforce
        user blanked it at T2; at T3 the platform edited State, which the watcher has not stamped
        yet when the write is re-read. That fresh edit does not date the platform's Title (the
        value Salesforce held before its blank): the blank stands, Title is not sent again."""
        await person(rig.store, 1, shadow={"Title": "Plat"}, title="Plat")
        t3 = T2 + timedelta(seconds=1)
        await rig.store.db.people.update_one({"_id": "p-1"}, {"$set": {"state": "St", "updated_at": t3}})
        rig.sf.records[sf_id(1)] = {"Id": sf_id(1), "Title": None,
                                    "LastModifiedDate": "2026-03-01T12:00:02.000+0000"}  # T2
        await rig.outbox.enqueue([self.resend(1, Title="Plat")])
        await rig.flusher.flush()
        assert rig.sf.calls == [] and await rig.outbox.depth() == 0

    async def test_a_fresh_edit_of_the_field_itself_still_goes_out(self, rig: Rig) -> None:
        """The same, but the unstamped edit set Title to a new value: it is newer than the blank."""
        await person(rig.store, 1, shadow={"Title": "Plat"}, title="Plat")
        t3 = T2 + timedelta(seconds=1)
        await rig.store.db.people.update_one({"_id": "p-1"}, {"$set": {"title": "Newer", "updated_at": t3}})
        rig.sf.records[sf_id(1)] = {"Id": sf_id(1), "Title": None,
                                    "LastModifiedDate": "2026-03-01T12:00:02.000+0000"}  # T2
        await rig.outbox.enqueue([self.resend(1, Title="Plat")])
        await rig.flusher.flush()
        assert [c.records for c in rig.sf.calls] == [[{"Title": "Newer", "Id": sf_id(1)}]]

    async def test_a_first_send_reads_nothing(self, rig: Rig) -> None:
        await person(rig.store, 1, shadow={"FirstName": "Old"}, first_name="Plat")
        await rig.outbox.enqueue([edit(1, FirstName="Plat")])
        await rig.flusher.flush()
        assert rig.sf.queries == [] and len(rig.sf.calls) == 1


class MovableOffset:
    """Salesforce's clock minus this host's, as the service last learned it, and the latest
    `Date` Salesforce sent: set by the test."""

    def __init__(self, seconds: float, latest: datetime | None = None) -> None:
        self.offset = timedelta(seconds=seconds)
        self.latest = latest

    def offset_at(self, salesforce_time: datetime) -> timedelta:
        return self.offset


async def write_ours_through_the_gate(store: Store, sf_clock: MovableOffset) -> None:
    """Person 1 (shadow FirstName "Ann") edited to "Ours", flushed through the shadow gate with
    `sf_clock`: the write records `sent` on Salesforce's clock as that clock tells it."""
    clock, sf = Clock(), QueryingSalesforce()
    outbox = Outbox(store.outbox, clock=clock)
    flusher = OutboundFlusher(outbox, sf, store, FakeBudget(), client_name="salesforce-sync", clock=clock,
                              writable={"Lead": {}}, gate=ShadowGate(sf, store, MAPPINGS, sf_clock))
    await person(store, 1, shadow={"FirstName": "Ann"}, first_name="Ours")
    await outbox.enqueue([edit(1, FirstName="Ours")])
    await flusher.flush()


class TestSalesforceClockMovedAfterOurWrite:
    """Salesforce's clock ran 1 s behind when the flusher wrote FirstName, then stepped 4 s ahead
    and slews back (it never goes back) before another user's edit of the same field, made after
    our write, is applied. That edit's time, moved onto this host's clock with the offset known
    when it is applied, falls before our write: it must still be applied, not dropped as the
    value our write replaced (chaos seed 2718, P23.last_name: a bulk update 1.2 s after the
    service created the Lead never reached the platform)."""

    async def test_an_edit_made_after_our_write_is_applied(self, store: Store) -> None:
        sf_clock = MovableOffset(-1)
        await write_ours_through_the_gate(store, sf_clock)
        after_write = datetime.now(UTC) + sf_clock.offset  # Salesforce's time, past our write
        sf_clock.offset = timedelta(seconds=4)  # stepped ahead; it slews back, never goes back
        theirs = change(sf_id(1), {"FirstName": "Theirs"},
                        at=after_write.replace(microsecond=0) + timedelta(seconds=1))
        await Reconciler(store, MAPPINGS, sf_clock=sf_clock).apply([theirs])
        doc = await store.db.people.find_one({"_id": "p-1"})
        assert doc is not None and doc["first_name"] == "Theirs"


class TestSalesforceClockBehindTheOffsetLearned:
    """Salesforce's clock slews back after a skew heals (it never steps back), so the offset
    learned from earlier responses runs ahead of it: our write's time on Salesforce's clock,
    taken as host now + that offset, fell in the next second. Another user's edit of the same
    field a moment after our write, stamped in the second Salesforce took our write in, was then
    taken for the value our write replaced: dropped on the platform, kept in Salesforce (chaos
    seed 11376, P12.first_name: 0.07 s after the service created the Lead). The `Date` of the
    write's answer, Salesforce's own reading, bounds our write's time."""

    async def test_an_edit_in_the_second_salesforce_took_our_write_in_is_applied(self, store: Store) -> None:
        # Salesforce's latest `Date` is a second behind host now + the offset learned (0)
        org_second = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
        sf_clock = MovableOffset(0, latest=org_second)
        await write_ours_through_the_gate(store, sf_clock)
        theirs = change(sf_id(1), {"FirstName": "Theirs"}, at=org_second)
        await Reconciler(store, MAPPINGS, sf_clock=sf_clock).apply([theirs])
        doc = await store.db.people.find_one({"_id": "p-1"})
        assert doc is not None and doc["first_name"] == "Theirs"


class TestAConflictThePlatformWon:
    """Chaos seed 11376, P6.city: the platform and a Salesforce user edited City 4 ms apart. The
    platform's write waited through a leader change; the new leader's flusher read the Lead again
    and, dating Salesforce's value by the Lead's `LastModifiedDate` (moved on by a later edit of
    other fields), dropped the platform's value as older. The edit's own event came in after,
    dated before the platform's edit: the platform's value stands by the most recent value, and
    nothing was left to send it. The sides stayed apart."""

    async def test_the_inbound_side_queues_the_platforms_newer_value(self, rig: Rig) -> None:
        await person(rig.store, 1, shadow={"FirstName": "Ann"}, first_name="Ours")  # edited at T1
        theirs = change(sf_id(1), {"FirstName": "Theirs"}, at=T1 - timedelta(milliseconds=500))
        await Reconciler(rig.store, MAPPINGS, outbox=rig.outbox).apply([theirs])
        assert (await rig.doc("p-1"))["first_name"] == "Ours"
        await rig.flusher.flush()
        assert [r.get("FirstName") for call in rig.sf.calls for r in call.records] == ["Ours"]

    async def test_a_salesforce_blank_is_not_answered(self, rig: Rig) -> None:
        """A Salesforce user blanked the field after the platform's edit: the platform keeps its
        data (blanks are never written) and Salesforce its blank; nothing is sent."""
        await person(rig.store, 1, shadow={"FirstName": "Ann"}, first_name="Ours")
        theirs = change(sf_id(1), {"FirstName": None}, at=T2)
        await Reconciler(rig.store, MAPPINGS, outbox=rig.outbox).apply([theirs])
        await rig.flusher.flush()
        assert rig.sf.calls == [] and await rig.outbox.depth() == 0


class TestASalesforceEditAfterOurWriteDatedBeforeIt:
    """Chaos seed 8191, L5.first_name: our write sent the platform's FirstName (edited at T1);
    a Salesforce user's edit came after it on Salesforce's clock (a later second than our write's
    `sent`), but the offset it was moved onto this host's clock by (learned after the org's clock
    stepped ahead) dated it before T1. The platform's value won by the most recent value and was
    queued back to Salesforce; the shadow, "never backwards" by those host times, kept our own
    value, so the flusher dropped the write as "Salesforce already has this value" while
    Salesforce held the user's: the sides diverged. Salesforce's own clock orders the two: the
    user's value replaced ours there, whatever the host times say."""

    async def test_the_platforms_value_that_won_goes_out(self, rig: Rig) -> None:
        await person(rig.store, 1, shadow={"FirstName": "Ann"}, first_name="Ours")  # edited at T1
        await rig.store.db.people.update_one({"_id": "p-1"}, {"$set": {  # our write, taken at T2
            "_sync.sf.Lead.FirstName": {"v": "Ours", "at": T1, "sent": T2}}})
        theirs = change(sf_id(1), {"FirstName": "Theirs"}, at=T2 + timedelta(seconds=1))
        await Reconciler(rig.store, MAPPINGS, outbox=rig.outbox, sf_clock=MovableOffset(4)).apply([theirs])
        doc = await rig.doc("p-1")
        assert doc["first_name"] == "Ours"  # T2+1 s - 4 s is before T1: the platform's edit wins
        assert doc["_sync"]["sf"]["Lead"]["FirstName"]["v"] == "Theirs"
        await rig.flusher.flush()
        assert [r.get("FirstName") for call in rig.sf.calls for r in call.records] == ["Ours"]


class TestASalesforceEditReadInTheSecondOfOurWrite:
    """Chaos seed 44444, P15.title: the platform edited Title (S.24), our write sent it (taken in
    second S), a Salesforce user set Title 0.17 s later, still in second S, and a poll read the
    Lead (`LastModifiedDate` S). Dated by that whole second, Salesforce's value looked older than
    the platform's edit, so the platform's value won and was queued back; but the shadow kept our
    own write's entry (its time S.24, later than S), so the flusher dropped the write as
    "Salesforce already has this value" while Salesforce held the user's: the sides diverged. A
    read shows Salesforce's value as it is: the shadow takes it, and the platform's value that
    won goes out."""

    async def test_the_platforms_value_that_won_goes_out(self, rig: Rig) -> None:
        edited, sent = T1 + timedelta(milliseconds=240), T1 + timedelta(milliseconds=830)
        await person(rig.store, 1, shadow={"FirstName": "Ann"}, first_name="Ours")
        await rig.store.db.people.update_one({"_id": "p-1"}, {"$set": {  # our write, taken in second T1
            "_sync.field_times.first_name": edited,
            "_sync.sf.Lead.FirstName": {"v": "Ours", "at": edited, "sent": sent}}})
        theirs = change(sf_id(1), {"FirstName": "Theirs"}, at=T1, source=ChangeSource.POLL)
        await Reconciler(rig.store, MAPPINGS, outbox=rig.outbox, sf_clock=MovableOffset(0)).apply([theirs])
        doc = await rig.doc("p-1")
        assert doc["first_name"] == "Ours"  # second T1 is before the platform's edit: it wins
        assert doc["_sync"]["sf"]["Lead"]["FirstName"]["v"] == "Theirs"
        await rig.flusher.flush()
        assert [r.get("FirstName") for call in rig.sf.calls for r in call.records] == ["Ours"]


class TestAWriteQueuedBeforeTheRecordWasDeleted:
    """Chaos seed 77777, L4.first_name: the platform and a Salesforce user set FirstName 2 ms
    apart, and the user deleted the Lead; the platform's write waited (lock faults, a leader
    stop). The user's edit and the delete came in together: Salesforce's value won on the
    platform, and the document was marked deleted. The Lead was undeleted meanwhile, and the
    write, decided without the document (not linked: deleted), sent its queued value, older than
    what the platform held now: the sides swapped. Its document still says what goes out."""

    async def test_the_platforms_value_as_it_is_now_decides(self, rig: Rig) -> None:
        await person(rig.store, 1, shadow={"FirstName": "Theirs"}, first_name="Theirs")
        await rig.store.db.people.update_one({"_id": "p-1"}, {"$set": {"crm.deleted": True}})
        await rig.outbox.enqueue([edit(1, FirstName="Ours")])  # queued before the user's edit won
        await rig.flusher.flush()
        assert [r.get("FirstName") for call in rig.sf.calls for r in call.records] == []


class TestAnUnstampedEditOfAnotherFieldAfterTheWriteWasQueued:
    """Chaos seed 12289, L2.state: the platform set the field at T1 (stamped) and its write waited
    (leader changes, a paused budget); a Salesforce user's later edit (T2) reached the shadow; the
    platform then edited *another* field (T3, after the write was last queued), not yet stamped
    by the watcher when the flusher decided. The field's value differs from Salesforce's, so it was
    dated by the document's `updated_at` (T3) and overwrote the newer Salesforce edit. The value
    is still the one queued, and the unstamped edit came after it was queued: it did not make it."""

    async def test_the_queued_value_keeps_its_stamped_time(self, rig: Rig) -> None:
        await person(rig.store, 1, shadow={"FirstName": "Ann"}, first_name="Plat")  # stamped T1
        await rig.outbox.enqueue([edit(1, FirstName="Plat")])  # queued (the test clock: 2025)
        await rig.store.db.people.update_one({"_id": "p-1"}, {"$set": {
            "_sync.sf.Lead.FirstName": {"v": "Theirs", "at": T2},  # Salesforce's later edit
            "last_name": "Fresh", "updated_at": T2 + timedelta(seconds=1)}})  # unstamped, after queuing
        await rig.flusher.flush()
        assert rig.sf.calls == [] and await rig.outbox.depth() == 0

    async def test_a_fresh_edit_of_the_field_itself_still_goes_out(self, rig: Rig) -> None:
        await person(rig.store, 1, shadow={"FirstName": "Ann"}, first_name="Plat")
        await rig.outbox.enqueue([edit(1, FirstName="Plat")])
        await rig.store.db.people.update_one({"_id": "p-1"}, {"$set": {
            "_sync.sf.Lead.FirstName": {"v": "Theirs", "at": T2},
            "first_name": "Fresher", "updated_at": T2 + timedelta(seconds=1)}})  # this field, unstamped
        await rig.flusher.flush()
        assert [r.get("FirstName") for call in rig.sf.calls for r in call.records] == ["Fresher"]


class TestABlankSalesforceAlwaysHad:
    """Chaos seed 11376, P23.state (`to_salesforce`): the platform set State after the Person's
    create (which carried none); the write, sent again after a leader change, read the Lead:
    State blank, dated by the Lead's `LastModifiedDate` (our create, an owner change since), so
    the platform's value looked older than Salesforce's and was not sent. A blank for a field
    the shadow never knew is the blank the record was created with, not an edit."""

    def flusher(self, store: Store, sf: QueryingSalesforce) -> tuple[Outbox, OutboundFlusher]:
        mappings = parse_mappings(mappings_toml({"people.title": {"direction": "to_salesforce"}}))
        clock = Clock()
        outbox = Outbox(store.outbox, clock=clock)
        gate = ShadowGate(sf, store, mappings)
        return outbox, OutboundFlusher(outbox, sf, store, FakeBudget(), client_name="salesforce-sync",
                                       clock=clock, writable={"Lead": {}}, gate=gate)

    def resend(self, n: int, **fields: Any) -> OutboundWrite:
        return OutboundWrite(sobject="Lead", sf_id=sf_id(n), collection="people", local_id=f"p-{n}",
                             fields=fields, reason="local_edit", attempt=1)

    async def test_the_platforms_value_goes_out(self, store: Store) -> None:
        sf = QueryingSalesforce()
        outbox, flusher = self.flusher(store, sf)
        await person(store, 1, shadow={"FirstName": "Ann"}, title="Plat")  # edited at T1
        sf.records[sf_id(1)] = {"Id": sf_id(1), "FirstName": "Ann", "Title": None,
                                "LastModifiedDate": "2026-03-01T12:00:02.000+0000"}  # T2
        await outbox.enqueue([self.resend(1, Title="Plat")])
        await flusher.flush()
        assert [c.records for c in sf.calls] == [[{"Title": "Plat", "Id": sf_id(1)}]]

    async def test_a_blank_over_data_the_shadow_knew_is_an_edit(self, store: Store) -> None:
        """A Salesforce user blanked it after the platform's value: that stands (not sent)."""
        sf = QueryingSalesforce()
        outbox, flusher = self.flusher(store, sf)
        await person(store, 1, shadow={"FirstName": "Ann", "Title": "Old"}, title="Plat")
        sf.records[sf_id(1)] = {"Id": sf_id(1), "FirstName": "Ann", "Title": None,
                                "LastModifiedDate": "2026-03-01T12:00:02.000+0000"}
        await outbox.enqueue([self.resend(1, Title="Plat")])
        await flusher.flush()
        assert sf.calls == []


class TestABlankAnInboundReadFillsIn:
    """Chaos seed 21977, P11.phone: the platform created the Person (no Phone) and set Phone
    later; before its write went out, a gap fetch read the Lead for another field's silent edit
    and recorded Phone's blank in the shadow at the Lead's `LastModifiedDate`, after the
    platform's edit, so the flusher dropped the platform's first value as "Salesforce's value
    changed later". A blank for a field the shadow never knew is the blank the record was
    created with as far as anyone told us, whichever side reads it: no edit, no time."""

    async def test_the_platforms_first_value_goes_out(self, rig: Rig) -> None:
        await person(rig.store, 1, shadow={"FirstName": "Ann"}, title="Plat")  # edited at T1
        await rig.outbox.enqueue([edit(1, Title="Plat")])
        read = change(sf_id(1), {"FirstName": "Ann", "Company": "Co"}, at=T2, kind=ChangeKind.UPSERT,
                      source=ChangeSource.GAP)
        await Reconciler(rig.store, MAPPINGS, outbox=rig.outbox).apply([read])
        await rig.flusher.flush()
        assert [r.get("Title") for call in rig.sf.calls for r in call.records] == ["Plat"]

    async def test_a_blank_over_data_the_shadow_knew_still_stands(self, rig: Rig) -> None:
        """A Salesforce user blanked Title after the platform's value: not sent over."""
        await person(rig.store, 1, shadow={"FirstName": "Ann", "Title": "Old"}, title="Plat")
        await rig.outbox.enqueue([edit(1, Title="Plat")])
        read = change(sf_id(1), {"FirstName": "Ann", "Company": "Co"}, at=T2, kind=ChangeKind.UPSERT,
                      source=ChangeSource.GAP)
        await Reconciler(rig.store, MAPPINGS, outbox=rig.outbox).apply([read])
        await rig.flusher.flush()
        assert rig.sf.calls == []


@dataclass
class InboundDuringTheCall(QueryingSalesforce):
    """Runs `during` (an inbound apply) while the next update call is in flight: Salesforce took
    that edit first, then our write."""

    during: Callable[[], Awaitable[None]] | None = None

    async def update(self, sobject: str, records: Sequence[dict[str, Any]], *,
                     before_resend: ResendGuard | None = None) -> list[RecordResult]:
        if self.during is not None:
            during, self.during = self.during, None
            await during()
        return await super().update(sobject, records)


class TestInboundApplyDuringOurWrite:
    """The platform edited FirstName; 0.6 s later another Salesforce user edited it too, and a new
    leader's stream applied that edit to the Person while its flusher's call with the platform's
    value was in flight. Salesforce then holds our value, the platform Salesforce's later one:
    the sides must still agree (chaos seed 83, A4.domain: 3 of 7 CI runs)."""

    async def test_the_platforms_value_is_sent_again(self, store: Store) -> None:
        clock, sf = Clock(), InboundDuringTheCall()
        outbox = Outbox(store.outbox, clock=clock)
        flusher = OutboundFlusher(outbox, sf, store, FakeBudget(), client_name="salesforce-sync", clock=clock,
                                  writable={"Lead": {}}, gate=ShadowGate(sf, store, MAPPINGS))
        await person(store, 1, shadow={"FirstName": "Ann"}, first_name="Ours")
        await outbox.enqueue([edit(1, FirstName="Ours")])
        theirs = change(sf_id(1), {"FirstName": "Theirs"}, at=T1 + timedelta(seconds=0.6))
        sf.during = lambda: Reconciler(store, MAPPINGS).apply([theirs])
        await flusher.flush()
        doc = await store.db.people.find_one({"_id": "p-1"})
        assert doc is not None and doc["first_name"] == "Theirs"  # the later edit, applied inbound
        await flusher.flush()
        assert [c.records for c in sf.calls] == [[{"FirstName": "Ours", "Id": sf_id(1)}],
                                                 [{"FirstName": "Theirs", "Id": sf_id(1)}]]
        assert await outbox.depth() == 0


STATE_MAPPINGS = parse_mappings(mappings_toml({"people.state": {"direction": "to_salesforce"}}))


class TestABlankOurCreateLeft:
    """The platform set State (`to_salesforce`) while the Person's create was in flight, so the
    edit went out later as a write read again first (a create of a document linked meanwhile, a
    re-sent write). The read finds State blank, as our create left it, under a LastModifiedDate
    later than the edit (users changed other fields): that blank is no Salesforce edit of State
    (the shadow has no entry for it), so the platform's value goes out (chaos seed 64, P3.state:
    it never reached Salesforce)."""

    async def test_the_platforms_value_is_sent(self, store: Store) -> None:
        clock, sf = Clock(), QueryingSalesforce()
        outbox = Outbox(store.outbox, clock=clock)
        flusher = OutboundFlusher(outbox, sf, store, FakeBudget(), client_name="salesforce-sync", clock=clock,
                                  writable={"Lead": {}}, gate=ShadowGate(sf, store, STATE_MAPPINGS))
        await person(store, 1, shadow={"FirstName": "Fn"}, first_name="Fn", state="St1")
        sf.records[sf_id(1)] = {"Id": sf_id(1), "FirstName": "Fn", "State": None,
                                "LastModifiedDate": "2026-03-01T12:00:02.000+0000"}
        await outbox.enqueue([dataclasses.replace(edit(1, State="St1"), attempt=1)])
        await flusher.flush()
        assert [c.records for c in sf.calls] == [[{"State": "St1", "Id": sf_id(1)}]]


class InboundBeforeTheShadow:
    """The store as the gate uses it, running `during` (an inbound apply) once, just before the
    written values are recorded as the shadow: after the call, before `remember` writes."""

    def __init__(self, store: Store, during: Callable[[], Awaitable[None]]) -> None:
        self.store = store
        self.during: Callable[[], Awaitable[None]] | None = during

    async def find_records(self, collection: str, ids: Any) -> list[dict[str, Any]]:
        return await self.store.find_records(collection, ids)

    async def record_shadow(self, collection: str, sets: Any) -> None:
        if self.during is not None:
            during, self.during = self.during, None
            await during()
        await self.store.record_shadow(collection, sets)


class TestInboundApplyBeforeOurShadow:
    """As above, but the inbound apply lands after the call returned, before the flusher records
    what it wrote (chaos seed 83, A4.domain again: the new leader's stream wrote 70 ms after the
    call, the flusher's shadow a few ms later)."""

    async def test_the_platforms_value_is_sent_again(self, store: Store) -> None:
        clock, sf = Clock(), QueryingSalesforce()
        outbox = Outbox(store.outbox, clock=clock)
        theirs = change(sf_id(1), {"FirstName": "Theirs"}, at=T1 + timedelta(seconds=0.6))
        gate_store = InboundBeforeTheShadow(store, lambda: Reconciler(store, MAPPINGS).apply([theirs]))
        flusher = OutboundFlusher(outbox, sf, store, FakeBudget(), client_name="salesforce-sync", clock=clock,
                                  writable={"Lead": {}}, gate=ShadowGate(sf, gate_store, MAPPINGS))
        await person(store, 1, shadow={"FirstName": "Ann"}, first_name="Ours")
        await outbox.enqueue([edit(1, FirstName="Ours")])
        await flusher.flush()
        await flusher.flush()
        assert [c.records for c in sf.calls] == [[{"FirstName": "Ours", "Id": sf_id(1)}],
                                                 [{"FirstName": "Theirs", "Id": sf_id(1)}]]
        assert await outbox.depth() == 0


class WatcherStampsDuringTheInboundWrite:
    """The store as the reconciler uses it: before its first People write the local watcher
    stamps the platform's edits (its real store call), so that write's compare-and-set fails
    and the record is read and merged again."""

    def __init__(self, store: Store, local_id: str, times: dict[str, datetime]) -> None:
        self._store = store
        self._local_id = local_id
        self._times: dict[str, datetime] | None = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def bulk_apply(self, collection: str, writes: Sequence[Any], **kw: Any) -> Any:
        if collection == "people" and self._times is not None:
            times, self._times = self._times, None
            await self._store.watched("people").record_field_times({self._local_id: times}, datetime.now(UTC))
        return await self._store.bulk_apply(collection, writes, **kw)


class TestAConflictWonOnATimeTheReReadGuessed:
    """Chaos seed 33331, C3.city: the platform set the field at T1 (stamped; its queued write
    dropped by a new leader's flusher, which dated Salesforce's value by the record's
    `LastModifiedDate`), then another field at T1+3 s. A Salesforce user's edit of the first
    field, dated T1+2 s (held by the leader gap), came in while that later edit was unstamped:
    the field's value differs from Salesforce's last one, so it was dated by the document's
    `updated_at` (T1+3 s), won, and was queued back. The watcher stamped the later edit before
    the inbound write; the re-read merged again on that guessed time, kept in memory only, and
    the flusher, seeing the field's stamp (T1), dropped the value as older than Salesforce's:
    the platform kept its value, Salesforce the user's."""

    async def test_the_sides_agree(self, rig: Rig) -> None:
        await person(rig.store, 1, shadow={"FirstName": "Ann"}, first_name="Ours")  # stamped at T1
        await rig.store.db.people.update_one({"_id": "p-1"}, {"$set": {  # not stamped yet
            "last_name": "Later", "updated_at": T1 + timedelta(seconds=3)}})
        racing: Any = WatcherStampsDuringTheInboundWrite(rig.store, "p-1",
                                                         {"last_name": T1 + timedelta(seconds=3)})
        theirs = change(sf_id(1), {"FirstName": "Theirs"}, at=T1 + timedelta(seconds=2))
        await Reconciler(racing, MAPPINGS, outbox=rig.outbox).apply([theirs])
        await rig.flusher.flush()
        sent = [r["FirstName"] for call in rig.sf.calls for r in call.records if "FirstName" in r]
        salesforce = sent[-1] if sent else "Theirs"
        assert (await rig.doc("p-1"))["first_name"] == salesforce
