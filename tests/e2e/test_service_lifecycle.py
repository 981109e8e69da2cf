"""The service process's life: ready when it runs, SIGTERM stops it within 10 s with offsets
committed, a restart resumes with no change lost, an edited mappings file re-merges, and a bad
configuration stops start-up with one clear line.

One emulated org and one database for the module; the tests stop and start the same service.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo.database import Database

from tests.support.mappings import sample_mappings
from tests.support.service import (
    STOP_TIMEOUT,
    Doc,
    SalesforceOrg,
    ServiceFactory,
    ServiceProcess,
    http,
    lead_fields,
    linked_lead,
    platform_edit,
    wait_person,
    wait_pipeline,
    wait_record,
)

LEAD_CHANNEL = "/data/LeadChangeEvent"

# The sample mappings without the fields this module does not need, and without City: the
# re-merge test adds it later (ADDED_MAPPINGS).
BASE_MAPPINGS = sample_mappings({
    field: None for field in ("people.title", "people.phone", "people.city", "people.company_crm_id",
                              "companies.industry", "companies.city")
})

# Two fields added later, one per merge behaviour that decides at a merge.
ADDED_MAPPINGS = """
[people.city]
lead = "City"
contact = "MailingCity"
merge = "local_unless_blank"
[people.notes]
lead = "Description"
contact = "Description"
merge = "salesforce_unless_blank"
"""


@pytest.fixture(scope="module")
def service(
    service_factory: ServiceFactory, org: SalesforceOrg, db: Database[Doc]
) -> Iterator[ServiceProcess]:
    running = service_factory(BASE_MAPPINGS)
    running.start()
    wait_pipeline(org, db)
    yield running
    running.stop()


@pytest.fixture
def live(service: ServiceProcess) -> ServiceProcess:
    """The module's service, started again if an earlier test left it stopped."""
    if not service.running:
        service.start()
    return service


def committed_replay_id(db: Database[Doc], channel: str) -> int | None:
    """The replay id stored for `channel` (sync_state `replay:<channel>`)."""
    state = db.sync_state.find_one({"_id": f"replay:{channel}"}) or {}
    value = (state.get("value") or {}).get("replay_id")
    return int(value) if value is not None else None


def first_name_is(value: str) -> Callable[[dict[str, Any]], bool]:
    return lambda record: record.get("FirstName") == value


class TestReadiness:
    def test_health_readiness_and_status_while_running(self, live: ServiceProcess) -> None:
        """Running: /healthz and /readyz answer 200, the mode is streaming, /api needs the token."""
        assert http("GET", f"{live.admin_url}/healthz").status == 200
        assert http("GET", f"{live.admin_url}/readyz").status == 200
        assert live.status()["mode"] == "streaming"
        assert http("GET", f"{live.admin_url}/api/status").status == 401


class TestGracefulStop:
    def test_sigterm_exits_within_10_seconds_with_offsets_committed(
        self, live: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """SIGTERM: exit code 0 within 10 s, and the replay id of the last applied event is stored."""
        before = int(org.streaming_stats()["last_replay_id"])
        linked_lead(org, db, "stop")  # its CREATE event has a replay id above `before`
        code, took = live.stop()
        assert code == 0, live.log_tail()
        assert took < STOP_TIMEOUT
        stored = committed_replay_id(db, LEAD_CHANNEL)
        assert stored is not None and stored > before, (stored, before)
        assert live.log_events("service_stopped", start=live.starts)
        with pytest.raises(OSError):
            http("GET", f"{live.admin_url}/healthz", timeout=2)

    def test_sigterm_while_local_edits_are_in_flight_loses_none(
        self, live: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """Edits made on the platform just before SIGTERM reach Salesforce once the service is back."""
        sent = [linked_lead(org, db, f"inflight{i}") for i in range(3)]
        for index, (_, person) in enumerate(sent):
            platform_edit(db, person, first_name=f"Inflight{index}")
        code, _ = live.stop()
        assert code == 0, live.log_tail()
        live.start()
        for index, (lead_id, _) in enumerate(sent):
            wait_record(org, lead_id, first_name_is(f"Inflight{index}"), f"FirstName Inflight{index}")


class TestRestart:
    def test_changes_made_while_stopped_are_applied_after_restart(
        self, live: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """Edits in Salesforce and on the platform while the service is down all sync after restart."""
        lead_id, _ = linked_lead(org, db, "down")
        other_id, other = linked_lead(org, db, "downlocal")
        code, _ = live.stop()
        assert code == 0, live.log_tail()

        org.update("Lead", lead_id, {"FirstName": "WhileDown", "State": "MT"})
        new_fields = lead_fields("downnew")
        new_id = org.create("Lead", new_fields)
        platform_edit(db, other, first_name="LocalWhileDown")

        live.start()
        person = wait_person(db, lead_id, lambda p: p.get("first_name") == "WhileDown",
                             "the edit made while down")
        assert person["state"] == "MT"
        wait_person(db, new_id, what="the Lead created while down")
        wait_record(org, other_id, lambda r: r.get("FirstName") == "LocalWhileDown",
                    "the local edit made while down")
        assert db.people.count_documents({"email": new_fields["Email"]}) == 1

    def test_replayed_events_are_not_applied_twice(
        self, live: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A restart re-delivers nothing twice: one update log per Salesforce edit, one Person per Lead."""
        lead_id, _ = linked_lead(org, db, "once")
        org.update("Lead", lead_id, {"FirstName": "Once"})
        wait_person(db, lead_id, lambda p: p.get("first_name") == "Once", "first_name Once")
        code, _ = live.stop()
        assert code == 0, live.log_tail()
        live.start()
        wait_pipeline(org, db)
        logs = live.sync_logs(record=lead_id, source="salesforce")
        assert sorted(i["type"] for i in logs) == ["create", "update"], logs
        assert db.people.count_documents({"crm.id": lead_id}) == 1


class TestMappingEdit:
    def test_added_fields_are_merged_into_linked_records_on_restart(
        self, live: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A mapping added while stopped re-merges linked records: the merge behaviour picks each side."""
        lead_id, person = linked_lead(org, db, "remap", City="Berlin", Description="From Salesforce")
        assert "city" not in person and "notes" not in person
        # The platform holds values of its own in fields not mapped yet: nothing is sent.
        platform_edit(db, person, city="Paris", notes="Local notes")
        code, _ = live.stop()
        assert code == 0, live.log_tail()

        live.mappings = BASE_MAPPINGS + ADDED_MAPPINGS
        live.start()
        # salesforce_unless_blank: Salesforce's Description fills `notes`;
        wait_person(db, lead_id, lambda p: p.get("notes") == "From Salesforce", "notes from Salesforce")
        # local_unless_blank: the platform's city goes to Salesforce.
        wait_record(org, lead_id, lambda r: r.get("City") == "Paris", "City from the platform")
        assert wait_person(db, lead_id)["city"] == "Paris"


class TestBadConfiguration:
    def _exits(self, service: ServiceProcess, timeout: float = 20.0) -> tuple[int, str]:
        process = service.launch()
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            service.kill()
            raise AssertionError(f"service kept running with a bad configuration:\n{service.log_tail()}") \
                from None
        return code, "\n".join(service.log_lines())

    def test_invalid_mappings_file_stops_startup_with_one_clear_line(
        self, service_factory: ServiceFactory
    ) -> None:
        """A mapping with an unknown direction: exit code 2 and a line naming the field and the choices."""
        bad = service_factory('[people.first_name]\nlead = "FirstName"\ndirection = "sideways"\n',
                              database=f"e2e_{uuid.uuid4().hex[:12]}")
        code, output = self._exits(bad)
        assert code == 2, output
        assert "first_name" in output and "from_salesforce" in output, output
        assert "Traceback" not in output, output

    def test_read_only_field_mapped_outbound_is_refused(self, service_factory: ServiceFactory) -> None:
        """The formula Lead.Score__c mapped both ways: start-up stops with an error naming the field."""
        mappings = BASE_MAPPINGS + '[people.score]\nlead = "Score__c"\ndirection = "both"\n'
        bad = service_factory(mappings, database=f"e2e_{uuid.uuid4().hex[:12]}")
        started = time.monotonic()
        code, output = self._exits(bad)
        assert code != 0, output
        assert "Score__c" in output, output
        assert time.monotonic() - started < 20
