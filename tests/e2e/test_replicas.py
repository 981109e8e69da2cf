"""Two replicas of the real service on one database and one org: the lease holder alone syncs
and alone runs admin jobs (a standby answers 409 naming the leader); after SIGKILL of the holder
the standby takes over within about the lease TTL.

The lease TTL is 3 s here (SFSYNC_SYNC__LEASE_SECONDS), so a takeover takes seconds, not 30.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.database import Database

from tests.support.mappings import sample_mappings
from tests.support.service import (
    Doc,
    SalesforceOrg,
    ServiceFactory,
    ServiceProcess,
    http,
    linked_lead,
    logs_of,
    stays,
    wait_for,
    wait_person,
    wait_pipeline,
)

LEASE_SECONDS = 3.0
TAKEOVER_DEADLINE = 30.0  # how long the test waits for a takeover (generous: 2 shared cores)
TAKEOVER_SLACK = LEASE_SECONDS  # scheduling slack allowed after the standby's try interval
MAPPINGS = sample_mappings()


def replica(service_factory: ServiceFactory, database: str | None = None) -> ServiceProcess:
    built = service_factory(MAPPINGS, database=database)
    built.extra_env["SFSYNC_SYNC__LEASE_SECONDS"] = str(LEASE_SECONDS)
    return built


def lease_of(service: ServiceProcess) -> dict[str, Any]:
    return dict(service.status()["lease"])


def requests_by(org: SalesforceOrg, client: str, *, since: float) -> list[dict[str, Any]]:
    """The REST requests one replica made since `since` (epoch seconds), told apart by the
    client name it sends in `Sforce-Call-Options`."""
    def sent_by(entry: dict[str, Any]) -> bool:
        headers = {k.lower(): str(v) for k, v in (entry.get("headers") or {}).items()}
        return f"client={client}" in headers.get("sforce-call-options", "")

    return [e for e in org.requests() if e["ts"] >= since and sent_by(e)]


def applied_batches(service: ServiceProcess) -> int:
    """How many inbound batches this process applied (its own JSON log)."""
    return sum(int(e.get("applied", 0)) for e in service.log_events("inbound_batch_applied"))


class TestReplicas:
    def test_only_the_holder_syncs_and_a_standby_takes_over_after_a_crash(
        self, service_factory: ServiceFactory, org: SalesforceOrg, db: Database[Doc],
    ) -> None:
        """One replica applies a Salesforce edit; SIGKILL it, and the other applies the next."""
        leader, standby = replica(service_factory), replica(service_factory)
        leader.start()
        wait_pipeline(org, db)
        standby.start()  # a standby is ready: /readyz 200
        held = lease_of(leader)
        assert held["held"] is True
        waiting = lease_of(standby)
        assert waiting["held"] is False and waiting["holder"] == held["owner"] != waiting["owner"]

        lead_id, person = linked_lead(org, db, "replica")
        org.ui_update("Lead", lead_id, {"LastName": "Firstedit"})
        wait_person(db, lead_id, lambda p: p.get("last_name") == "Firstedit", what="the first edit")
        mine = logs_of(leader.sync_logs(record=lead_id), source="salesforce", status="success")
        assert sorted(str(item["type"]) for item in mine) == ["create", "update"]
        assert applied_batches(standby) == 0
        assert standby.log_events("source_starting") == []

        leader.kill()  # SIGKILL: no release, the lease has to expire
        dead = db.sync_state.find_one({"_id": "lease:sync"})  # the dead holder's last renewal
        assert dead is not None and dead["owner"] == held["owner"]
        wait_for(lambda: lease_of(standby)["held"], timeout=TAKEOVER_DEADLINE,
                 what="the standby to take the lease")
        # In the order of the lease's own events, not the test's stopwatch: the standby's new
        # term starts after the dead holder's lease ran out (never while it was valid), at one
        # of its tries every TTL/3 -- the first, give or take a loaded machine's slack.
        [started] = standby.log_events("lease_term_started")
        taken_at = datetime.fromisoformat(started["timestamp"].replace("Z", "+00:00"))
        expired_at = dead["expires_at"]
        assert expired_at <= taken_at <= expired_at + timedelta(seconds=LEASE_SECONDS / 3 + TAKEOVER_SLACK)
        assert started["term"] == dead["term"] + 1
        standby.wait_ready()

        org.ui_update("Lead", lead_id, {"LastName": "Secondedit"})
        wait_person(db, lead_id, lambda p: p.get("last_name") == "Secondedit", what="the edit after takeover")
        assert applied_batches(standby) >= 1
        assert person["_id"] == wait_person(db, lead_id)["_id"]

    def test_a_holder_that_loses_the_lease_stops_syncing_and_stands_by(
        self, service_factory: ServiceFactory, org: SalesforceOrg, db: Database[Doc],
    ) -> None:
        """Another owner takes the lease: the replica stops its source, stays ready as a standby,
        applies nothing, and catches up on the missed edit when it gets the lease back."""
        database = f"e2e_{uuid.uuid4().hex[:12]}"
        own_db = db.client[database]
        service = service_factory(MAPPINGS, database=database)
        service.extra_env["SFSYNC_SYNC__LEASE_SECONDS"] = str(LEASE_SECONDS)
        service.start()
        wait_pipeline(org, own_db)
        lead_id, _ = linked_lead(org, own_db, "loser")

        own_db.sync_state.update_one({"_id": "lease:sync"}, {"$set": {
            "owner": "intruder", "expires_at": datetime.now(UTC) + timedelta(minutes=5)}})
        wait_for(lambda: lease_of(service)["holder"] == "intruder", timeout=LEASE_SECONDS * 2,
                 what="the replica to see the lease taken")
        wait_for(lambda: service.log_events("lease_lost") and service.log_events("lease_term_ended"),
                 timeout=30, what="lease_lost and lease_term_ended in the replica's log")
        assert lease_of(service)["held"] is False
        assert http("GET", f"{service.admin_url}/readyz").status == 200  # a standby is ready

        applied = applied_batches(service)
        org.ui_update("Lead", lead_id, {"LastName": "Whilestandby"})
        stays(lambda: applied_batches(service) == applied, duration=2.0, what="no apply on a standby")

        own_db.sync_state.update_one({"_id": "lease:sync"}, {"$set": {"expires_at": datetime.now(UTC)}})
        wait_person(own_db, lead_id, lambda p: p.get("last_name") == "Whilestandby",
                    what="the edit made while standing by")
        assert lease_of(service)["held"] is True
        # Over the whole standby period, not only the 2 s watched above: in the replica's own log
        # no batch was applied between the end of its term and the start of the next. (The batch's
        # log line follows its writes: the Person can show the edit a moment before it.)
        def term_events() -> list[str]:
            return [e["event"] for e in service.log_events()
                    if e["event"] in ("lease_term_ended", "lease_term_started", "inbound_batch_applied")]

        def restarted_at(events: list[str]) -> int:
            return events.index("lease_term_started", events.index("lease_term_ended"))

        wait_for(lambda: "inbound_batch_applied" in term_events()[restarted_at(term_events()):],
                 timeout=30, what="the new term's batch in the replica's log")
        events = term_events()
        assert "inbound_batch_applied" not in events[events.index("lease_term_ended"):restarted_at(events)]


STANDBY_CLIENT = "salesforce-sync-standby"


class TestStandbyAdminJobs:
    def test_a_standby_refuses_retries_and_imports_naming_the_leader_and_calls_nothing(
        self, service_factory: ServiceFactory, org: SalesforceOrg, db: Database[Doc],
    ) -> None:
        """Issue 11, item 5: POST /api/retry-failed, /api/sync-logs/{id}/retry and /api/import on a
        standby answer 409 `{"error": "not_leader", "leader": <holder>}` and make no Salesforce
        call; the planted failed log stays unretried until the leader retries it. Its own database:
        the module's replicas from the tests above may still run."""
        database = f"e2e_{uuid.uuid4().hex[:12]}"
        db = db.client[database]
        leader, standby = replica(service_factory, database), replica(service_factory, database)
        standby.extra_env["SFSYNC_SALESFORCE__CLIENT_NAME"] = STANDBY_CLIENT  # tells its calls apart
        leader.start()
        wait_pipeline(org, db)
        standby.start()
        holder = lease_of(leader)["owner"]
        assert lease_of(standby)["holder"] == holder
        lead_id, _ = linked_lead(org, db, "standbyjobs")
        planted = db.sync_logs.insert_one({
            "ts": datetime.now(UTC) - timedelta(hours=1), "source": "salesforce", "type": "update",
            "status": "failed", "object": "Lead", "sf_id": lead_id, "attempt": 1, "retriable": False,
            "error": "planted by the test", "job": {"kind": "inbound", "sobject": "Lead", "sf_id": lead_id},
        }).inserted_id

        since = time.time()
        replies = {
            "retry-failed": standby.api("POST", "/api/retry-failed"),
            "retry": standby.api("POST", f"/api/sync-logs/{planted}/retry"),
            "import": standby.api("POST", "/api/import", json_body={"sf_id": lead_id}),
        }
        for name, reply in replies.items():
            assert reply.status == 409, f"{name}: {reply.status} {reply.body}"
            assert reply.body["error"] == "not_leader" and reply.body["leader"] == holder, (name, reply.body)
        assert db.sync_logs.find_one({"_id": planted}).get("retried_by") is None  # type: ignore[union-attr]

        reply = leader.api("POST", f"/api/sync-logs/{planted}/retry")
        assert reply.status == 200 and reply.body["retried"] == 1, reply.body
        # Checked once the leader's retry -- a later, observable event -- is done, not after a
        # sleep: the standby made no call in the whole window.
        assert requests_by(org, STANDBY_CLIENT, since=since) == []
