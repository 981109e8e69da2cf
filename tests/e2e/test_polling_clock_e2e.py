"""Issue 11 item 3 through the WHOLE service process, in polling mode: Salesforce's clock away from
the host's, and a transaction that commits after a later-stamped record was polled.

The org's API budget is moved below the polling threshold, so the service polls (every second:
`SFSYNC_SYNC__POLL_SECONDS=1`, so several passes fit in a test) and does not stream. The org's
clock is moved with `POST /_emulator/clock`; a transaction is held open with
`POST /_emulator/transactions` (the record stamped, invisible to queries until committed).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from pymongo.database import Database

from reconciler.soql import parse_sf_datetime
from tests.support.mappings import sample_mappings
from tests.support.service import (
    Doc,
    SalesforceOrg,
    ServiceFactory,
    ServiceProcess,
    lead_fields,
    person_of,
    running_pipeline,
    wait_for,
)

POLLING_USED = 80_000  # of the emulator's 100,000: below the polling threshold, above the reserve
SYNC_DEADLINE = 60.0   # a pass a second, plus the safety lag and the offset being learned


@pytest.fixture(scope="module")
def service(service_factory: ServiceFactory, org: SalesforceOrg,
            db: Database[Doc]) -> Iterator[ServiceProcess]:
    """The service polling once a second (the budget kept at the polling level)."""
    with running_pipeline(service_factory(sample_mappings()), org, db, SFSYNC_SYNC__POLL_SECONDS="1",
                          SFSYNC_BUDGET__CHECK_SECONDS="0.5") as running:
        org.control("POST", "budget", {"used": POLLING_USED})
        wait_for(lambda: running.status()["mode"] == "polling", timeout=30, what="polling mode")
        yield running


@pytest.fixture
def org_clock(org: SalesforceOrg) -> Iterator[None]:
    """The org's clock is back on the host's after the test."""
    yield
    org.control("POST", "clock", {"offset_seconds": 0})


def passes(service: ServiceProcess) -> int:
    return len(service.log_events("poll_pass"))


def synced(db: Database[Doc], ids: list[str]) -> set[str]:
    return {d["crm"]["id"] for d in db.people.find({"crm.id": {"$in": ids}}, {"crm.id": 1})}


def create_continuously(org: SalesforceOrg, service: ServiceProcess, label: str,
                        min_passes: int = 3) -> list[str]:
    """Create a Lead every 100 ms until the service has made `min_passes` polling passes."""
    created: list[str] = []
    first = passes(service)
    deadline = time.monotonic() + SYNC_DEADLINE
    while passes(service) - first < min_passes:
        assert time.monotonic() < deadline, f"fewer than {min_passes} polling passes in {SYNC_DEADLINE:g}s"
        created.append(org.create("Lead", lead_fields(label)))
        time.sleep(0.1)  # pacing of the creations, not a proof of anything
    return created


def watermark(service: ServiceProcess) -> datetime | None:
    raw: Any = service.status()["watermarks"].get("Lead")
    return parse_sf_datetime(raw) if isinstance(raw, str) else None


class TestClockSkewWhilePolling:
    def test_every_record_created_across_passes_is_synced(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc], org_clock: None
    ) -> None:
        """Salesforce's clock 3 s behind, then 3 s ahead of the host, Leads created all the
        while across several passes each: every one becomes a Person."""
        created: list[str] = []
        for offset in (-3, 3):
            org.control("POST", "clock", {"offset_seconds": offset})
            created += create_continuously(org, service, f"skew{'m' if offset < 0 else 'p'}")

        try:
            wait_for(lambda: synced(db, created) == set(created), timeout=SYNC_DEADLINE,
                     what=f"all {len(created)} Leads synced")
        except AssertionError as exc:
            missing = sorted(set(created) - synced(db, created))
            raise AssertionError(f"{exc}; never synced: {missing}") from None
        assert service.status()["mode"] == "polling"


class TestHeldTransactionWhilePolling:
    def test_a_record_committed_after_a_later_stamped_one_was_polled_is_synced(
        self, service: ServiceProcess, org: SalesforceOrg, db: Database[Doc]
    ) -> None:
        """A Lead stamped but invisible while a later-stamped Lead is polled and the watermark
        moves past its stamp; once committed, a later pass's overlap re-read syncs it."""
        reply = org.control("POST", "transactions", {"sobject": "Lead", "fields": lead_fields("held")})
        assert reply.status == 200, reply.body
        held = reply.body
        stamp = parse_sf_datetime(held["SystemModstamp"])
        assert stamp is not None

        def org_second_passed() -> bool:
            now = parse_sf_datetime(org.control("GET", "clock").body["now"])
            return now is not None and int(now.timestamp()) > int(stamp.timestamp())

        wait_for(org_second_passed, timeout=10, what="the org's clock past the held stamp's second")
        later = org.create("Lead", lead_fields("later"))
        wait_for(lambda: person_of(db, later), timeout=SYNC_DEADLINE, what="the later Lead synced")

        def past_the_stamp() -> bool:
            mark = watermark(service)
            return mark is not None and mark > stamp

        wait_for(past_the_stamp, timeout=SYNC_DEADLINE, what="the Lead watermark past the held stamp")
        assert person_of(db, held["id"]) is None  # invisible to every pass so far

        committed = org.control("POST", f"transactions/{held['hold']}/commit", {})
        assert committed.status == 200, committed.body
        wait_for(lambda: person_of(db, held["id"]), timeout=SYNC_DEADLINE, what="the held Lead synced")
