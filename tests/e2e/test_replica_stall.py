"""Issue 11, Done-when: two replicas, Salesforce changes flowing; the leader is paused (SIGSTOP)
past its lease TTL, the standby takes over, the old leader resumes (SIGCONT). Shown:

- no offset went backwards: every `sync_state` offset (replay ids, watermarks) is sampled every
  few milliseconds from before the stall until the end, and never decreases;
- no change applied twice: one `create` sync log per new Lead, at most one `update` log per edit;
- none lost: every Lead created and every edit made, before, during and after the stall,
  reaches MongoDB;
- the old leader's late writes are refused and logged (`term_write_refused` / `lease_term_fenced`
  or `lease_lost` in its own log), and it stands by.

Deadlines are generous and every wait is on an observable condition.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database

from tests.e2e.test_replicas import LEASE_SECONDS, lease_of, replica
from tests.support.service import (
    Doc,
    SalesforceOrg,
    ServiceFactory,
    ServiceProcess,
    lead_fields,
    wait_for,
    wait_person,
    wait_pipeline,
)

REFUSALS = ("term_write_refused", "lease_term_fenced", "stream_fenced", "source_fenced")


class OffsetRecorder:
    """Samples every offset in `sync_state` on its own connection until stopped."""

    def __init__(self, uri: str, database: str) -> None:
        self._client: MongoClient[Doc] = MongoClient(uri)
        self._coll = self._client[database].sync_state
        self.samples: dict[str, list[Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for doc in self._coll.find({"value": {"$exists": True}}):
                point = offset_point(str(doc["_id"]), doc.get("value") or {})
                if point is None:
                    continue
                seen = self.samples.setdefault(str(doc["_id"]), [])
                if not seen or seen[-1] != point:
                    seen.append(point)
            self._stop.wait(0.02)

    def backwards(self) -> dict[str, tuple[Any, Any]]:
        """Keys whose offset ever moved back: (before, after)."""
        out: dict[str, tuple[Any, Any]] = {}
        for key, points in self.samples.items():
            for before, after in itertools.pairwise(points):
                if after < before:
                    out[key] = (before, after)
        return out

    @contextmanager
    def running(self) -> Iterator[OffsetRecorder]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(5)
            self._client.close()


def offset_point(key: str, value: dict[str, Any]) -> Any:
    """A comparable position for the offsets that must only move forward."""
    if key.startswith("replay:") and isinstance(value.get("replay_id"), int):
        return value["replay_id"]
    if key.startswith("watermark:") and value.get("ts") is not None:
        return (value["ts"], str(value.get("id") or ""))
    return None


class Traffic:
    """Creates a Lead and edits the one before it, every `every` seconds, until stopped."""

    def __init__(self, org: SalesforceOrg, every: float = 0.25) -> None:
        self._org, self._every = org, every
        self.created: list[str] = []
        self.edited: dict[str, str] = {}  # lead id -> the LastName it was edited to
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            lead_id = self._org.create("Lead", lead_fields("stall"))
            if self.created:
                previous = self.created[-1]
                name = f"Edited{uuid.uuid4().hex[:8]}"
                self._org.ui_update("Lead", previous, {"LastName": name})
                self.edited[previous] = name
            self.created.append(lead_id)
            self._stop.wait(self._every)

    @contextmanager
    def flowing(self) -> Iterator[Traffic]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(10)


def refusals(service: ServiceProcess) -> list[dict[str, Any]]:
    return [e for e in service.log_events() if e.get("event") in REFUSALS]


class TestLeaderStall:
    def test_a_paused_leader_writes_nothing_after_the_takeover(
        self, service_factory: ServiceFactory, org: SalesforceOrg, db: Database[Doc], mongo_uri: str,
    ) -> None:
        database = f"e2e_{uuid.uuid4().hex[:12]}"
        own_db = db.client[database]
        first, second = replica(service_factory, database), replica(service_factory, database)
        first.start()
        wait_pipeline(org, own_db)
        second.start()
        assert lease_of(first)["held"] and not lease_of(second)["held"]
        assert first.process is not None

        with OffsetRecorder(mongo_uri, database).running() as offsets, Traffic(org).flowing() as traffic:
            wait_for(lambda: len(traffic.created) >= 8, timeout=60, what="traffic before the stall")
            os.kill(first.process.pid, signal.SIGSTOP)
            try:
                stalled_at = len(traffic.created)
                wait_for(lambda: lease_of(second)["held"], timeout=LEASE_SECONDS * 6, interval=0.1,
                         what="the standby to take the lease over")
                wait_for(lambda: len(traffic.created) >= stalled_at + 8, timeout=60,
                         what="traffic while the old leader is paused")
                wait_person(own_db, traffic.created[-2], what="a Lead created after the takeover",
                            timeout=60)
            finally:
                os.kill(first.process.pid, signal.SIGCONT)
            wait_for(lambda: first.log_events("lease_lost") or refusals(first), timeout=60,
                     what="the old leader to notice its term is over")
            new_owner = lease_of(second)["owner"]
            wait_for(lambda: lease_of(first)["holder"] == new_owner and not lease_of(first)["held"],
                     timeout=60, what="the old leader to stand by")
            resumed_at = len(traffic.created)
            wait_for(lambda: len(traffic.created) >= resumed_at + 8, timeout=60,
                     what="traffic after the old leader resumed")

        # none lost: every Lead and every edit reached MongoDB (through the new leader)
        for lead_id in traffic.created:
            wait_person(own_db, lead_id, what="every Lead created", timeout=90)
        for lead_id, name in traffic.edited.items():
            wait_person(own_db, lead_id, lambda p, n=name: p.get("last_name") == n,  # type: ignore[misc]
                        what=f"the edit to {name}", timeout=90)

        # nothing doubled: one create log per Lead, at most one update log per edit
        kinds_by_lead = {}
        for lead_id in traffic.created:
            logs = list(own_db.sync_logs.find({"sf_id": lead_id, "source": "salesforce",
                                               "status": "success"}))
            kinds_by_lead[lead_id] = sorted(str(entry["type"]) for entry in logs)
        print("kinds:", kinds_by_lead)
        for lead_id, kinds in kinds_by_lead.items():
            firsts = kinds.count("create") + kinds.count("merge")
            assert firsts == 1 and kinds.count("update") <= 1, (lead_id, kinds)

        # the new leader resumed the stream from the replay ids: no takeover backfill (its import
        # merge once pushed older local values over edits made just before the stall)
        assert second.log_events("backfill_starting") == []

        assert offsets.backwards() == {}, offsets.backwards()
        assert any(len(points) > 1 for points in offsets.samples.values())  # offsets did move

        # the old leader: its term ended; whatever it tried to write after that was refused, logged
        assert lease_of(first)["held"] is False and lease_of(second)["held"] is True
        late = refusals(first)
        print("old leader's refusals:", [(e["event"], e.get("operation")) for e in late])
        assert first.log_events("lease_lost") or late
        assert not any(e.get("event") == "fenced_write_landed_late" for e in first.log_events())
