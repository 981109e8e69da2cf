"""Paused below the reserve, the whole service (issue 14): the real process, with the org's daily
API allocation dropped below `RESERVE_PCT`, makes no REST call but `limits` -- checked in the
emulator's request log over a period measured in `limits` checks, not in seconds -- while the
platform's edits wait in the outbox; once the allocation is back they go out.

`SFSYNC_BUDGET__CHECK_SECONDS` (the governor's `limits` interval) is set to half a second so
the pause is seen, and ended, within a second instead of a minute. `SFSYNC_SYNC__BATCH_SIZE`
is 2, so the two edits make a full batch: a flusher that ignored the pause would send them at
its next tick (250 ms), not after the 2 s a partial batch waits -- the quiet period is then
meaningful however short.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
from pymongo.database import Database

from tests.support.mappings import sample_mappings
from tests.support.service import (
    DEADLINE,
    TEST_CLIENT_NAME,
    Doc,
    SalesforceOrg,
    ServiceFactory,
    ServiceProcess,
    linked_lead,
    platform_edit,
    running_pipeline,
    unique,
    wait_for,
    wait_record,
)

CHECK_SECONDS = 0.5
QUIET_CHECKS = 4  # the pause is watched for this many `limits` checks after the edits
MAPPINGS = sample_mappings({f: None for f in ("people.title", "people.phone", "people.city",
                                              "people.company_crm_id", "companies.industry",
                                              "companies.city")})


@pytest.fixture(scope="module")
def service(service_factory: ServiceFactory, org: SalesforceOrg,
            db: Database[Doc]) -> Iterator[ServiceProcess]:
    with running_pipeline(service_factory(MAPPINGS), org, db,
                          SFSYNC_BUDGET__CHECK_SECONDS=str(CHECK_SECONDS),
                          SFSYNC_SYNC__BATCH_SIZE="2") as running:  # the two edits below: one full batch
        yield running


def service_requests(org: SalesforceOrg, since: float) -> list[dict[str, Any]]:
    """Requests the service made to the org since `since` (epoch seconds): everything but the
    control API and this test's own REST calls."""
    return [entry for entry in org.requests()
            if entry["ts"] >= since and not entry["path"].startswith("/_emulator")
            and f"client={TEST_CLIENT_NAME}" not in _call_options(entry)]


def _call_options(entry: dict[str, Any]) -> str:
    return next((str(v) for k, v in (entry.get("headers") or {}).items()
                 if k.lower() == "sforce-call-options"), "")


def is_limits(entry: dict[str, Any]) -> bool:
    return bool(entry["method"] == "GET" and str(entry["path"]).rstrip("/").endswith("/limits"))


def mode_changes(service: ServiceProcess) -> list[tuple[str, str]]:
    return [(e["from"], e["to"]) for e in service.log_events("mode_changed")]


class TestPausedBelowTheReserve:
    def test_only_limits_is_called_and_edits_wait_until_the_budget_is_back(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """Below the reserve: `paused`; the service's only requests are `GET limits`, for as long
        as QUIET_CHECKS checks after two platform edits; the edits sit in the outbox and
        Salesforce is unchanged. Allocation back: the mode leaves `paused` and both edits reach
        Salesforce; the outbox drains."""
        leads = [linked_lead(org, db, "paused") for _ in range(2)]
        allocation = org.control("POST", "budget", {}).body
        org.control("POST", "budget", {"used": int(allocation["max"] * 0.95)})  # 5% left < 10%
        wait_for(lambda: ("streaming", "paused") in mode_changes(service) or
                 ("polling", "paused") in mode_changes(service), timeout=DEADLINE, what="mode paused")
        # From the first `limits` check after the pause, every request must be one.
        started = wait_for(lambda: next((e["ts"] for e in service_requests(org, 0) if is_limits(e)
                                         and e["ts"] >= _paused_at(service)), None),
                           timeout=DEADLINE, what="a limits check after the pause")

        names = {lead_id: unique("Paused").capitalize() for lead_id, _ in leads}
        edited_at = time.time()
        for lead_id, person in leads:
            platform_edit(db, person, last_name=names[lead_id])
        wait_for(lambda: db.outbox.count_documents({}) >= len(leads), timeout=DEADLINE,
                 what="the edits queued in the outbox")
        wait_for(lambda: sum(is_limits(e) for e in service_requests(org, edited_at)) >= QUIET_CHECKS,
                 timeout=DEADLINE, what=f"{QUIET_CHECKS} limits checks after the edits")

        other = [f"{e['method']} {e['path']}" for e in service_requests(org, started) if not is_limits(e)]
        assert other == [], "requests made while paused"
        assert db.outbox.count_documents({}) >= len(leads)
        for lead_id in names:
            assert org.record("Lead", lead_id)["LastName"] != names[lead_id]

        org.control("POST", "budget", {"used": 0})
        for lead_id, name in names.items():
            wait_record(org, lead_id, last_name_is(name), f"LastName {name}")
        assert any(old == "paused" for old, _ in mode_changes(service))
        wait_for(lambda: db.outbox.count_documents({}) == 0, timeout=DEADLINE, what="the outbox drained")


def last_name_is(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda record: record.get("LastName") == name


def _paused_at(service: ServiceProcess) -> float:
    """When the service logged its (last) change to `paused`, epoch seconds."""
    stamps = [e["timestamp"] for e in service.log_events("mode_changed") if e["to"] == "paused"]
    return datetime.fromisoformat(stamps[-1].replace("Z", "+00:00")).timestamp()
