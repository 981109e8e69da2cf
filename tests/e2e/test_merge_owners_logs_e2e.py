"""Issue 10 end to end, through the REAL service process: merge behaviours decide live edits in
both directions from the Salesforce shadow, owners go out through `[[users]]`, and retries and
later fixes leave sync logs that tell the truth.

One emulated org, one SecantusDB database and one `python -m listener run` serve the module;
every test works on records of its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
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
    linked_lead,
    logs_of,
    platform_edit,
    unique,
    wait_for,
    wait_person,
    wait_pipeline,
    wait_record,
)

INTEGRATION_USER = "005000000000003AAA"  # the emulator's integration user: not in [[users]]
UNMAPPED_LOCAL_USER = "u-unmapped"

MAPPINGS = sample_mappings(
    {
        "people.title": {"merge": "salesforce_unless_blank"},
        "people.city": {"merge": "local_unless_blank"},
    },
    users={"u-2": OTHER_MAPPED_OWNER},
)


@pytest.fixture(scope="module")
def service(
    service_factory: ServiceFactory, org: SalesforceOrg, db: Database[Doc]
) -> Iterator[ServiceProcess]:
    """The service, running, with the inbound pipeline proven."""
    running = service_factory(MAPPINGS)
    running.start()
    wait_pipeline(org, db)
    yield running
    running.stop()


def new_person(db: Database[Doc], tag: str, **fields: Any) -> tuple[str, Doc]:
    """A Person created on the platform (unlinked), waited for until the service links it to the
    Lead it created: (Lead id, the Person)."""
    name = unique(tag)
    result = db.people.insert_one({
        "first_name": "Mary", "last_name": name, "email": f"{name}@example.com",
        "company_name": "Platform Co", "updated_at": datetime.now(UTC), **fields})

    def linked() -> Doc | None:
        doc = db.people.find_one({"_id": result.inserted_id}) or {}
        return doc if doc.get("crm", {}).get("id") else None

    person = wait_for(linked, timeout=DEADLINE, what=f"the new Person {name} linked to a Lead")
    return str(person["crm"]["id"]), person


def wait_log(service: ServiceProcess, record: str, what: str, **match: Any) -> Mapping[str, Any]:
    """The newest sync log of `record` (a Salesforce or local id) matching every `match` value."""
    def probe() -> Mapping[str, Any] | None:
        found = logs_of(service.sync_logs(record=record), **match)
        return found[0] if found else None
    return wait_for(probe, timeout=DEADLINE, what=f"{what} for {record}")


def log_by_id(service: ServiceProcess, lead_id: str, log_id: str) -> Mapping[str, Any]:
    (item,) = [i for i in service.sync_logs(record=lead_id) if i["id"] == log_id]
    return item


# --- merge behaviours decide live edits ---------------------------------------------------------------

class TestSalesforceUnlessBlankOnPlatformEdits:
    def test_a_field_salesforce_holds_is_not_sent_and_a_skipped_log_says_why(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """Title is salesforce_unless_blank and Salesforce holds "CTO": a platform edit of it sends
        nothing, Salesforce keeps its value, and one `skipped` log names the field."""
        lead_id, person = linked_lead(org, db, "sfholds", Title="CTO")
        since = time.time()
        platform_edit(db, person, title="Intern")
        skipped = wait_log(service, lead_id, "a skipped log", source="local", type="skipped")
        assert skipped["status"] == "success"
        assert "title" in skipped["fields"], skipped
        later_platform_marker(org, db, lead_id, person)  # a write of Title would have come before it
        assert org.record("Lead", lead_id).get("Title") == "CTO"
        assert all("Title" not in record for record in org.service_writes(lead_id, since=since))
        assert len(logs_of(service.sync_logs(record=lead_id), type="skipped")) == 1

    def test_the_same_field_blank_in_salesforce_is_sent(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """Title blank in Salesforce: the platform's edit fills it."""
        lead_id, person = linked_lead(org, db, "sfblank")
        assert not org.record("Lead", lead_id).get("Title")
        platform_edit(db, person, title="Intern")
        wait_record(org, lead_id, lambda r: r.get("Title") == "Intern", "Title Intern")
        assert not logs_of(service.sync_logs(record=lead_id), type="skipped")


class TestLocalUnlessBlankOnSalesforceEdits:
    def test_a_salesforce_edit_over_platform_data_is_not_applied_and_logged_skipped(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """City is local_unless_blank and the platform holds "Porto": Salesforce's "Faro" is not
        applied, and one `skipped` log from Salesforce names the field."""
        lead_id, person = linked_lead(org, db, "localholds")
        platform_edit(db, person, city="Porto")
        wait_record(org, lead_id, lambda r: r.get("City") == "Porto", "local city Porto sent")
        org.update("Lead", lead_id, {"City": "Faro", "FirstName": "Marker"})
        person = wait_person(db, lead_id, lambda p: p.get("first_name") == "Marker", "same SF edit applied")
        assert person["city"] == "Porto"
        skipped = wait_log(service, lead_id, "a skipped log", source="salesforce", type="skipped")
        assert skipped["status"] == "success"
        assert "city" in skipped["fields"], skipped


# --- owners go out ------------------------------------------------------------------------------------

class TestOwnersGoOut:
    def test_a_person_created_with_a_mapped_owner_becomes_a_lead_owned_by_that_user(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """owner_id "u-2" is mapped to a Salesforce user: the created Lead's OwnerId is that user."""
        lead_id, _ = new_person(db, "ownedcreate", owner_id="u-2")
        assert org.record("Lead", lead_id)["OwnerId"] == OTHER_MAPPED_OWNER

    def test_a_local_owner_change_updates_the_owner_id(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A Person moved from u-1 to u-2 on the platform: the Lead follows."""
        lead_id, person = linked_lead(org, db, "ownerchange")
        assert person["owner_id"] == "u-1" and org.record("Lead", lead_id)["OwnerId"] == MAPPED_OWNER
        platform_edit(db, person, owner_id="u-2")
        wait_record(org, lead_id, lambda r: r.get("OwnerId") == OTHER_MAPPED_OWNER, "OwnerId of u-2")

    def test_an_unmapped_owner_on_an_edit_is_not_sent_and_a_failed_log_names_it(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """README: an owner with no [[users]] entry is not sent; the rest of the write goes out and
        one failed log names the unmapped user."""
        lead_id, person = linked_lead(org, db, "unmappededit")
        since = time.time()
        platform_edit(db, person, owner_id=UNMAPPED_LOCAL_USER, first_name="Sent")
        wait_record(org, lead_id, lambda r: r.get("FirstName") == "Sent", "the rest of the edit")
        failed = wait_log(service, lead_id, "a failed log", source="local", status="failed")
        assert UNMAPPED_LOCAL_USER in failed["error"], failed
        assert org.record("Lead", lead_id)["OwnerId"] == MAPPED_OWNER
        assert all("OwnerId" not in record for record in org.service_writes(lead_id, since=since))

    def test_an_unmapped_owner_on_a_create_creates_the_lead_as_the_integration_user(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """README: a create is not held back: the Lead is created owned by the integration user,
        and one failed log names the unmapped user."""
        lead_id, person = new_person(db, "unmappedcreate", owner_id=UNMAPPED_LOCAL_USER)
        assert org.record("Lead", lead_id)["OwnerId"] == INTEGRATION_USER
        # written when the create was planned, before Salesforce gave the record an id
        failed = wait_log(service, str(person["_id"]), "a failed log", source="local", status="failed")
        assert UNMAPPED_LOCAL_USER in failed["error"], failed


# --- retries and later fixes --------------------------------------------------------------------------

class TestRetryOfAStillFailingWrite:
    def test_writes_exactly_one_new_row_failed_and_linked_from_the_retried_row(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A rejected email retried without a fix: one new row, failed, and the retried row points
        at it; nothing else is written for the record."""
        lead_id, person = linked_lead(org, db, "stillfails")
        platform_edit(db, person, email="not-an-email")
        failed = wait_log(service, lead_id, "the failed write", source="local", status="failed")
        before = {i["id"] for i in service.sync_logs(record=lead_id)}

        reply = service.api("POST", f"/api/sync-logs/{failed['id']}/retry")
        assert reply.status == 200, reply.body
        retried = wait_for(lambda: log_by_id(service, lead_id, failed["id"]).get("retried_by"),
                           timeout=DEADLINE, what="the failed log marked retried")
        # A later edit of another field, sent and logged after the retry's outcome: any second
        # row the retry would write would come before it.
        marker = later_platform_marker(org, db, lead_id, person)
        marker_log = wait_log(service, lead_id, "the marker's log", source="local", status="success")
        new = [i for i in service.sync_logs(record=lead_id) if i["id"] not in before]
        assert sorted(i["id"] for i in new) == sorted([retried, marker_log["id"]]), new
        outcome = log_by_id(service, lead_id, retried)
        assert outcome["status"] == "failed" and "INVALID_EMAIL_ADDRESS" in outcome["error"]
        assert marker in str(marker_log["fields"])


class TestFailureFixedByALaterEdit:
    def test_is_resolved_and_not_retried_by_retry_all_failed(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A rejected email later fixed by a platform edit: the failure is marked resolved by the
        successful write, and "Retry all failed" leaves it alone."""
        lead_id, person = linked_lead(org, db, "fixedlater")
        platform_edit(db, person, email="not-an-email")
        failed = wait_log(service, lead_id, "the failed write", source="local", status="failed")
        good = f"{unique('fixed')}@example.com"
        platform_edit(db, person, email=good)
        wait_record(org, lead_id, lambda r: r.get("Email") == good, "the fixed email")
        resolved = wait_for(lambda: log_by_id(service, lead_id, failed["id"]).get("resolved"),
                            timeout=DEADLINE, what="the failure marked resolved")
        fix = log_by_id(service, lead_id, resolved["by"])
        assert (fix["status"], fix["source"]) == ("success", "local")

        reply = service.api("POST", "/api/retry-failed")
        assert reply.status == 200, reply.body
        assert failed["id"] not in [item["log_id"] for item in reply.body["items"]], reply.body
        assert not log_by_id(service, lead_id, failed["id"]).get("retried_by")
        assert failed["id"] not in [i["id"] for i in service.sync_logs(status="failed", open="true")]
