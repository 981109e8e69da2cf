"""Two-way sync through the REAL service process: live edits on both sides, merge rules,
read-only fields, lead conversion, create rules, rejected writes and retry, no loops.

One emulated org, one SecantusDB database and one `python -m listener run` serve the whole
module; every test works on records of its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo.database import Database

from tests.support.mappings import sample_mappings
from tests.support.service import (
    DEADLINE,
    MAPPED_OWNER,
    OTHER_MAPPED_OWNER,
    Doc,
    SalesforceOrg,
    ServiceFactory,
    ServiceProcess,
    later_platform_marker,
    lead_fields,
    linked_lead,
    logs_of,
    person_of,
    platform_edit,
    unique,
    wait_for,
    wait_person,
    wait_pipeline,
    wait_record,
)

UNMAPPED_OWNER = "005000000000003AAA"  # the emulator's integration user: not in [[users]]

MAPPINGS = sample_mappings(
    {
        "people.title": {"direction": "from_salesforce"},   # Salesforce owns it
        "people.phone": {"direction": "to_salesforce"},     # the platform owns it
        "people.city": {"merge": "local_unless_blank"},
        # a formula field: read-only in Salesforce's describe
        "people.score": {"lead": "Score__c", "direction": "from_salesforce"},
        "companies.industry": None,
        "companies.city": None,
    },
    users={"u-2": OTHER_MAPPED_OWNER},
)


# --- the service under test ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def service(
    service_factory: ServiceFactory, org: SalesforceOrg, db: Database[Doc]
) -> Iterator[ServiceProcess]:
    """The service, running, with the inbound pipeline proven: a Lead created now becomes a Person."""
    running = service_factory(MAPPINGS)
    running.start()
    wait_pipeline(org, db)
    yield running
    running.stop()


def channels_caught_up(org: SalesforceOrg, db: Database[Doc]) -> None:
    """Every change event published so far on the Lead, Contact and Account channels has been
    handled: CDC is ordered per channel, so a record created now on each that reaches MongoDB
    comes after them (proof that nothing else happened, without a fixed sleep)."""
    lead_id = org.create("Lead", lead_fields("marker"))
    tag = unique("marker")
    contact_id = org.create("Contact", {"LastName": tag.capitalize(), "Email": f"{tag}@example.com",
                                        "OwnerId": MAPPED_OWNER})
    account_id = org.create("Account", {"Name": f"{tag} Inc", "Website": f"https://{tag}.example.com"})
    wait_person(db, lead_id, what="the Lead marker")
    wait_person(db, contact_id, what="the Contact marker")
    wait_for(lambda: db.companies.find_one({"crm.id": account_id}), timeout=DEADLINE,
             what="the Company of the Account marker")


# --- directions and merge behaviours on live edits ------------------------------------------------

class TestSalesforceEditsReachThePlatform:
    def test_edit_by_another_api_client_updates_the_person(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A REST edit by another integration (its own `client=` name) reaches the Person."""
        lead_id, _ = linked_lead(org, db, "rest")
        org.update("Lead", lead_id, {"FirstName": "Grace", "State": "CA"})
        person = wait_person(db, lead_id, lambda p: p.get("first_name") == "Grace", "first_name Grace")
        assert person["state"] == "CA"

    def test_edit_without_a_client_name_updates_the_person(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A REST edit with no `Sforce-Call-Options` at all is a foreign change and is applied."""
        lead_id, _ = linked_lead(org, db, "noclient")
        org.update("Lead", lead_id, {"FirstName": "Edsger"}, client=None)
        wait_person(db, lead_id, lambda p: p.get("first_name") == "Edsger", "first_name Edsger")

    def test_edit_in_the_salesforce_ui_updates_the_person(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A user's edit in Salesforce (empty `changeOrigin`) reaches the Person."""
        lead_id, _ = linked_lead(org, db, "ui")
        org.ui_update("Lead", lead_id, {"LastName": "Lovelace"})
        wait_person(db, lead_id, lambda p: p.get("last_name") == "Lovelace", "last_name Lovelace")


class TestPlatformEditsReachSalesforce:
    def test_platform_edit_updates_the_lead(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A Person edited on the platform (fields + `updated_at`) updates its Lead, read back via REST."""
        lead_id, person = linked_lead(org, db, "local")
        platform_edit(db, person, first_name="Barbara", state="NY")
        wait_record(org, lead_id, lambda r: r.get("FirstName") == "Barbara", "FirstName Barbara")
        record = org.read("Lead", lead_id)
        assert (record["FirstName"], record["State"]) == ("Barbara", "NY")


class TestDirections:
    def test_from_salesforce_field_edited_locally_is_not_sent(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """`title` is from_salesforce: a local edit of it never reaches the Lead."""
        lead_id, person = linked_lead(org, db, "fromsf", Title="CTO")
        since = time.time()
        platform_edit(db, person, title="Intern", first_name="Marker")
        wait_record(org, lead_id, lambda r: r.get("FirstName") == "Marker", "FirstName Marker (same edit)")
        later_platform_marker(org, db, lead_id, person)  # a write of Title would have come before it
        assert org.record("Lead", lead_id).get("Title") == "CTO"
        sent = org.service_writes(lead_id, since=since)
        assert sent and all("Title" not in record for record in sent), sent

    def test_to_salesforce_field_edited_in_salesforce_is_not_applied(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """`phone` is to_salesforce: a Salesforce edit of Phone leaves the local value alone."""
        lead_id, person = linked_lead(org, db, "tosf")
        platform_edit(db, person, phone="+1 555 0100")
        wait_record(org, lead_id, lambda r: r.get("Phone") == "+1 555 0100", "local phone sent")
        org.update("Lead", lead_id, {"Phone": "+44 20 7946 0000", "FirstName": "Marker"})
        person = wait_person(db, lead_id, lambda p: p.get("first_name") == "Marker", "same SF edit applied")
        assert person["phone"] == "+1 555 0100"


class TestMergeBehaviours:
    def test_most_recent_edit_wins_on_each_side(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """most_recent: a later local edit reaches Salesforce, a later Salesforce edit reaches the Person."""
        lead_id, person = linked_lead(org, db, "recent", State="TX")
        platform_edit(db, person, state="OR")
        wait_record(org, lead_id, lambda r: r.get("State") == "OR", "local state OR")
        org.update("Lead", lead_id, {"State": "WA"})
        wait_person(db, lead_id, lambda p: p.get("state") == "WA", "Salesforce state WA")

    def test_salesforce_unless_blank_takes_the_salesforce_value(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """salesforce_unless_blank: Salesforce's new Company replaces the local company_name."""
        lead_id, person = linked_lead(org, db, "sfwins")
        assert person["company_name"].endswith(" Ltd")
        org.update("Lead", lead_id, {"Company": "Renamed Inc"})
        wait_person(db, lead_id, lambda p: p.get("company_name") == "Renamed Inc", "company_name Renamed Inc")

    def test_local_unless_blank_keeps_a_local_value_and_fills_a_blank_one(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """local_unless_blank: a Salesforce City never replaces a local city, but fills a missing one."""
        lead_id, person = linked_lead(org, db, "localwins")
        assert not person.get("city")
        org.update("Lead", lead_id, {"City": "Lisbon"})
        wait_person(db, lead_id, lambda p: p.get("city") == "Lisbon", "blank city filled with Lisbon")

        platform_edit(db, person, city="Porto")
        wait_record(org, lead_id, lambda r: r.get("City") == "Porto", "local city Porto sent")
        org.update("Lead", lead_id, {"City": "Faro", "FirstName": "Marker"})
        person = wait_person(db, lead_id, lambda p: p.get("first_name") == "Marker", "same SF edit applied")
        assert person["city"] == "Porto"

    def test_salesforce_blank_never_overwrites_local_data(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A field nulled in Salesforce keeps the local value (blanks are never written)."""
        lead_id, person = linked_lead(org, db, "sfblank", State="NV")
        assert person["state"] == "NV"
        org.update("Lead", lead_id, {"State": None, "FirstName": "Marker"})
        person = wait_person(db, lead_id, lambda p: p.get("first_name") == "Marker", "same SF edit applied")
        assert person["state"] == "NV"

    def test_local_blank_never_overwrites_salesforce_data(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A field blanked on the platform keeps Salesforce's value."""
        lead_id, person = linked_lead(org, db, "localblank", State="UT")
        since = time.time()
        platform_edit(db, person, state="", first_name="Marker")
        wait_record(org, lead_id, lambda r: r.get("FirstName") == "Marker", "same local edit sent")
        later_platform_marker(org, db, lead_id, person)  # a write of the blank would have come before it
        assert org.record("Lead", lead_id).get("State") == "UT"
        assert all("State" not in record for record in org.service_writes(lead_id, since=since))


class TestReadOnlyFields:
    def test_formula_field_is_never_sent(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """Score__c (a formula) is in no write the service makes, for a create or an update."""
        lead_id, person = linked_lead(org, db, "formula")
        since = time.time()
        platform_edit(db, person, score=99, first_name="Marker")
        wait_record(org, lead_id, lambda r: r.get("FirstName") == "Marker", "same local edit sent")

        name = unique("newformula")
        result = db.people.insert_one({
            "first_name": "New", "last_name": name, "email": f"{name}@example.com",
            "company_name": "Formula Co", "score": 12, "updated_at": datetime.now(UTC)})
        created = wait_for(lambda: (db.people.find_one({"_id": result.inserted_id}) or {}).get("crm"),
                           timeout=DEADLINE, what="the new Person linked to a created Lead")
        writes = org.service_writes(since=since)
        assert any(r.get("Id") == lead_id for r in writes), writes
        assert any(r.get("LastName") == name for r in writes), writes
        assert all("Score__c" not in r for r in writes), writes
        assert created["object"] == "Lead"

    def test_formula_field_flows_inbound_on_reimport(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A re-import (`POST /api/import`) brings the formula's value in: read-only fields flow inbound."""
        lead_id, _ = linked_lead(org, db, "reimport", Phone="+1 555 0101", Title="CEO")
        expected = org.read("Lead", lead_id)["Score__c"]
        assert expected
        reply = service.api("POST", "/api/import", json_body={"sf_id": lead_id})
        assert reply.status == 200, reply.body
        wait_person(db, lead_id, lambda p: p.get("score") == expected, f"score {expected}")


class TestLeadConversion:
    def test_conversion_relinks_the_same_person_and_its_company(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A converted Lead: the same Person follows the Contact, its Company the Account; no duplicate."""
        domain = f"{unique('conv')}.example.com"
        lead_id, person = linked_lead(org, db, "conv", Website=f"https://{domain}")
        email = person["email"]
        result = org.convert_lead(lead_id)
        contact_id, account_id = result["contactId"], result["accountId"]

        relinked = wait_person(db, contact_id, what="the Person relinked to the Contact")
        assert relinked["_id"] == person["_id"]
        assert relinked["crm"]["object"] == "Contact"
        assert db.people.count_documents({"email": email}) == 1
        assert person_of(db, lead_id) is None
        company = wait_for(lambda: db.companies.find_one({"crm.id": account_id}), timeout=DEADLINE,
                           what="the Company linked to the Account")
        wait_person(db, contact_id, lambda p: p.get("company_id") == company["_id"], "company_id set")
        channels_caught_up(org, db)  # the conversion's events (Lead, Contact, Account) all applied
        assert db.people.count_documents({"email": email}) == 1

    def test_a_second_lead_converted_into_that_contact_folds_into_its_person(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A second Lead (its Person made) converted into the first one's Contact (Salesforce's
        "merge into an existing contact"): its Person folds into the Contact's, which records
        both Leads; no Person is left for the second Lead."""
        first_id, person = linked_lead(org, db, "conv1")
        result = org.convert_lead(first_id)
        contact_id, account_id = result["contactId"], result["accountId"]
        wait_person(db, contact_id, what="the Person relinked to the Contact")
        second_id, second = linked_lead(org, db, "conv2")
        org.convert_lead(second_id, contactId=contact_id, accountId=account_id)

        both = wait_person(db, contact_id, lambda p: second_id in (p["crm"].get("converted_from") or []),
                           "the Contact's Person recording the second Lead")
        assert both["_id"] == person["_id"] and both["crm"]["converted_from"] == [first_id, second_id]
        channels_caught_up(org, db)
        assert db.people.find_one({"_id": second["_id"]}) is None
        assert person_of(db, second_id) is None
        assert db.people.count_documents({"crm.id": contact_id}) == 1


class TestCreateRules:
    def test_lead_owned_by_a_mapped_user_creates_a_person(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A new Lead owned by a mapped user becomes a Person owned by the matching local user."""
        fields = lead_fields("created", Title="VP")
        lead_id = org.create("Lead", fields)
        person = wait_person(db, lead_id)
        assert person["crm"]["object"] == "Lead"
        assert person["owner_id"] == "u-1"
        assert (person["email"], person["last_name"], person["title"]) == (
            fields["Email"], fields["LastName"], "VP")

    def test_lead_owned_by_an_unmapped_user_creates_nothing(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A new Lead owned by a user missing from [[users]] creates no Person."""
        skipped = org.create("Lead", lead_fields("unowned", OwnerId=UNMAPPED_OWNER))
        marker, _ = linked_lead(org, db, "marker")  # created after it, so applied after it
        assert marker
        assert person_of(db, skipped) is None

    def test_owner_change_updates_the_local_owner(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A new Salesforce owner (mapped) becomes the Person's `owner_id`."""
        lead_id, person = linked_lead(org, db, "owner")
        assert person["owner_id"] == "u-1"
        org.update("Lead", lead_id, {"OwnerId": OTHER_MAPPED_OWNER})
        wait_person(db, lead_id, lambda p: p.get("owner_id") == "u-2", "owner_id u-2")

    def test_new_local_person_creates_a_lead(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A new unlinked Person on the platform becomes a Lead (create_in_salesforce = "lead")."""
        name = unique("platform")
        result = db.people.insert_one({
            "first_name": "Katherine", "last_name": name, "email": f"{name}@example.com",
            "company_name": "Platform Co", "updated_at": datetime.now(UTC)})

        def linked() -> Doc | None:
            doc = db.people.find_one({"_id": result.inserted_id}) or {}
            return doc if doc.get("crm", {}).get("id") else None

        person = wait_for(linked, timeout=DEADLINE, what="the new Person linked to a Lead")
        assert person["crm"]["object"] == "Lead"
        lead = org.read("Lead", person["crm"]["id"])
        assert (lead["LastName"], lead["Company"], lead["Email"]) == (
            name, "Platform Co", f"{name}@example.com")
        assert db.people.count_documents({"email": f"{name}@example.com"}) == 1


# --- failures and retry -----------------------------------------------------------------------------

class TestRejectedOutboundWrite:
    def test_rejected_write_is_a_failed_log_and_succeeds_on_retry(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """INVALID_EMAIL_ADDRESS: a `failed` sync log; fixed locally and retried, it succeeds."""
        lead_id, person = linked_lead(org, db, "reject")
        good = f"{unique('fixed')}@example.com"
        platform_edit(db, person, email="not-an-email")

        def failed() -> list[Any]:
            return logs_of(service.sync_logs(status="failed", record=lead_id), source="local")

        (log,) = wait_for(failed, timeout=DEADLINE, what="a failed sync log for the rejected write")
        assert "INVALID_EMAIL_ADDRESS" in log["error"]
        assert log["object"] == "Lead" and log["sf_id"] == lead_id
        assert org.record("Lead", lead_id)["Email"] == person["email"]

        # The fix is a platform edit (so it is also sent by itself); the retry re-runs the failed
        # job as a merge on top of it and must end in success, with the failure marked retried.
        platform_edit(db, person, email=good)
        reply = service.api("POST", f"/api/sync-logs/{log['id']}/retry")
        assert reply.status == 200, reply.body
        wait_record(org, lead_id, lambda r: r.get("Email") == good, "the fixed email")
        old = wait_for(lambda: next((i for i in service.sync_logs(record=lead_id)
                                     if i["id"] == log["id"] and i.get("retried_by")), None),
                       timeout=DEADLINE, what="the failed log marked retried")
        (retry_log,) = [i for i in service.sync_logs(record=lead_id) if i["id"] == old["retried_by"]]
        assert retry_log["status"] == "success"
        assert not [i for i in service.sync_logs(status="failed", record=lead_id) if not i.get("retried_by")]


# --- no loops ---------------------------------------------------------------------------------------

class TestOwnWritesNeverLoop:
    def test_applied_salesforce_edit_is_not_written_back(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """After a Salesforce edit is applied locally, the service makes no write to that record."""
        lead_id, person = linked_lead(org, db, "noloopin")
        since = time.time()
        org.update("Lead", lead_id, {"FirstName": "Inbound", "State": "ID"})
        wait_person(db, lead_id, lambda p: p.get("first_name") == "Inbound", "first_name Inbound")
        marker = later_platform_marker(org, db, lead_id, person)  # a write back would come before it
        sent = org.service_writes(lead_id, since=since)
        fields = [{k: v for k, v in r.items() if k not in ("Id", "attributes") and not k.startswith("_")}
                  for r in sent]
        assert fields == [{"LastName": marker}], sent
        # the marker's log is written once Salesforce has answered, which can come just after
        local = wait_for(lambda: logs_of(service.sync_logs(record=lead_id), source="local"),
                         timeout=DEADLINE, what="the marker's sync log")
        assert len(local) == 1, local

    def test_sent_local_edit_echo_is_not_applied_again(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A local edit is sent once, and its CDC echo leaves no second action: one log each way."""
        lead_id, person = linked_lead(org, db, "nolooput")
        before = {i["id"] for i in service.sync_logs(record=lead_id)}
        since = time.time()
        platform_edit(db, person, first_name="Outbound")
        wait_record(org, lead_id, lambda r: r.get("FirstName") == "Outbound", "FirstName Outbound")
        # a Salesforce edit after the echo: CDC is ordered, so once it is applied the echo was handled
        later = unique("Later")
        org.update("Lead", lead_id, {"LastName": later})
        wait_person(db, lead_id, lambda p: p.get("last_name") == later, "the later Salesforce edit")
        assert len(org.service_writes(lead_id, since=since)) == 1
        new = [i for i in service.sync_logs(record=lead_id) if i["id"] not in before]
        assert sorted((i["source"], i["type"], i["status"]) for i in new) == [
            ("local", "update", "success"), ("salesforce", "update", "success")], new
        final = person_of(db, lead_id)
        assert final is not None and final["first_name"] == "Outbound"
