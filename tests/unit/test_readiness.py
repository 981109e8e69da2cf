"""/readyz and /api/status are functions of what the parts report."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.readiness import (
    Health,
    LeaseStatus,
    Role,
    StatusParts,
    StoreSnapshot,
    ready_reason,
    status_document,
)
from tests.support.service_fakes import FakeSource

OK = Health(phase="", mongo_ok=True, salesforce_ok=True)
LEADER = LeaseStatus(owner="me", held=True, holder="me", role=Role.LEADER)
RUNNING = FakeSource("stream", ready=True)


class TestReadyReason:
    @pytest.mark.parametrize(("health", "lease", "running", "expected"), [
        (Health(), LeaseStatus(), None, (False, "starting")),
        (Health(phase="", mongo_ok=False, salesforce_ok=True), LEADER, RUNNING,
         (False, "mongodb unreachable")),
        (Health(phase="", mongo_ok=True), LEADER, RUNNING, (False, "salesforce unreachable")),
        (OK, LeaseStatus(owner="me", holder="them", role=Role.STANDBY), None,
         (True, "standby: another replica holds the sync lease (them)")),
        (OK, LeaseStatus(owner="me", role=Role.STANDBY), None,
         (True, "standby: another replica holds the sync lease (unknown)")),
        (OK, LEADER, RUNNING, (True, "")),
        (OK, LEADER, FakeSource("poller", ready=False), (False, "no inbound source running (mode polling)")),
        (OK, LEADER, None, (False, "no inbound source running (mode polling)")),
    ])
    def test_the_first_reason_wins(self, health: Health, lease: LeaseStatus, running: FakeSource | None,
                                   expected: tuple[bool, str]) -> None:
        """Start-up phase, then MongoDB, Salesforce, standby, and finally a running source."""
        assert ready_reason(health, lease, running, "polling") == expected


class TestStatusDocument:
    def test_stored_offsets_parsed_by_kind_and_live_replay_ids_win(self) -> None:
        """Replay ids and watermarks come from `sync_state` by key kind; a source's live replay
        ids override the stored ones; inbound depth adds every source's queue."""
        stored = StoreSnapshot(state={
            "replay:/data/LeadChangeEvent": {"replay_id": 5},
            "replay:/data/ContactChangeEvent": {"replay_id": 7},
            "watermark:Lead": {"ts": "2024-05-01T10:00:00Z"},
            "lease:sync": {"owner": "me"},
            "mappings": {"hash": "x"},
        }, outbox_depth=3)
        stream = FakeSource("stream", replay_ids={"/data/LeadChangeEvent": 9}, queue_depth=2)
        budget = {"mode": "streaming", "used": 10, "max": 100, "remaining_pct": 90.0,
                  "events_exhausted": False}
        doc = status_document(StatusParts(
            budget=budget, running="stream", sources=[stream, FakeSource("poller")], stored=stored,
            lease=LEADER, instance_url="https://x", last_event_at=datetime(2024, 5, 1, tzinfo=UTC)))
        assert doc == {
            "mode": "streaming", "source": "stream",
            "budget": {"used": 10, "max": 100, "remaining_pct": 90.0}, "events_exhausted": False,
            "replay_ids": {"/data/LeadChangeEvent": 9, "/data/ContactChangeEvent": 7},
            "watermarks": {"Lead": "2024-05-01T10:00:00Z"},
            "queue_depth": {"inbound": 2, "outbox": 3},
            "instance_url": "https://x", "last_event_at": "2024-05-01T00:00:00+00:00",
            "lease": {"owner": "me", "held": True, "holder": "me"},
            "failures_by_code": {},
        }
