"""One run: start everything, play the schedule, heal, wait for the quiet period, check.

The quiet period waits on observable conditions only: every fault healed, a replica holding the
lease and ready, then a barrier (a Lead created now reaches MongoDB; a Person created now reaches
Salesforce; CDC is ordered and the outbox drains, so what came before has been handled), the
outbox empty, and the records unchanged between two reads. Then the idle check: for IDLE
seconds the service writes nothing on either side (a loop or an applied echo would).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo.errors import PyMongoError

from bench.chaos.env import LEASE_SECONDS, Environment
from bench.chaos.faults import Faults
from bench.chaos.operations import OTHER_APP, Ack, Operations
from bench.chaos.oracle import Model, Observed, check
from bench.chaos.report import RunLog, Summary, render, write_violations
from bench.chaos.schedule import FAULT_KINDS, MAPPED_OWNERS, build_schedule

BARRIER_TIMEOUT = 150.0  # polling mode is one pass a minute; a paused budget one limits check a minute
IDLE = 3.0
PACE = 0.05  # seconds between steps


@dataclass
class RunResult:
    summary: Summary
    run_dir: Path | None
    text: str

    @property
    def ok(self) -> bool:
        return not self.summary.violations


def run(seed: int, ops: int, *, minutes: float | None = None, faults: tuple[str, ...] = FAULT_KINDS,
        keep: bool = False, base_dir: Path | None = None, echo: bool = True,
        barrier_timeout: float = BARRIER_TIMEOUT) -> RunResult:
    started = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-", dir=base_dir))
    steps = build_schedule(seed, ops, faults)
    runlog = RunLog(run_dir)
    runlog.write({"event": "schedule", "seed": seed, "ops": ops, "faults": list(faults), "steps": len(steps),
                  "schedule_sha": hashlib.sha256(json.dumps([s.as_json() for s in steps], sort_keys=True)
                                                 .encode()).hexdigest()[:16]})
    env = Environment(run_dir / "env", database=f"chaos_{seed}")
    (run_dir / "env").mkdir()
    summary = Summary(seed, ops, 0)
    acks: list[Ack] = []
    fault_records: list[dict[str, Any]] = []
    barrier_ids: set[str] = set()
    ops_obj = Operations(env)
    injector = Faults(env, ops_obj)
    try:
        env.start()
        ok, detail, ids = barrier(env, ops_obj, timeout=60)
        barrier_ids |= ids
        runlog.write({"event": "pipeline", "ok": ok, "detail": detail})
        deadline = started + minutes * 60 if minutes else None
        first_fault = last_fault = None
        for step in steps:
            if deadline is not None and time.monotonic() > deadline and step.side not in ("heal",):
                if step.side != "fault":
                    runlog.write({"event": "time_limit", "at_step": step.id})
                    break
                continue
            if step.side == "fault":
                record = injector.inject(step)
                fault_records.append(record.as_json())
                runlog.write({"event": "fault", **step.as_json(), **record.as_json()})
                for ack in injector.acks:
                    acks.append(ack)
                    runlog.write({"event": "ack", **ack.as_json()})
                injector.acks.clear()
                if record.status == "injected":
                    summary.faults[step.kind] += 1
                    first_fault = first_fault or time.monotonic()
                    last_fault = time.monotonic()
                else:
                    summary.faults_skipped += 1
            elif step.side == "heal":
                record = injector.heal(step)
                fault_records.append(record.as_json())
                runlog.write({"event": "heal", **step.as_json(), **record.as_json()})
            else:
                summary.ops_run += 1
                step_acks = ops_obj.run(step)
                runlog.write({"event": "op", **step.as_json()})
                for ack in step_acks:
                    acks.append(ack)
                    summary.acks[ack.status] += 1
                    runlog.write({"event": "ack", **ack.as_json()})
            time.sleep(PACE)
        if first_fault is not None and last_fault is not None:
            summary.fault_window_s = last_fault - first_fault
        for record in injector.heal_all():
            fault_records.append(record.as_json())
            runlog.write({"event": "heal", **record.as_json()})
        quiet_started = time.monotonic()
        leader = env.wait_leader(timeout=LEASE_SECONDS * 6)
        ok, detail, ids = barrier(env, ops_obj, timeout=barrier_timeout) if leader else (
            False, "no replica took the lease", set())
        barrier_ids |= ids
        settle(env, timeout=30)
        summary.quiet_s = time.monotonic() - quiet_started
        idle_writes, idle_local = idle_check(env)
        runlog.write({"event": "quiet", "barrier_ok": ok, "detail": detail, "quiet_s": summary.quiet_s,
                      "idle_writes": idle_writes, "idle_local_changes": idle_local})
        observed = gather(env, ops_obj, acks, fault_records, ok, detail, idle_writes, idle_local, barrier_ids)
        model = Model()
        model.feed(acks, ops_obj.entities, fault_records)
        summary.violations = check(observed, model)
        summary.service_writes = sum(1 for w in observed.writes
                                     if "client=salesforce-sync" in str(w.get("client")))
        dump(run_dir, ops_obj, observed)
    finally:
        runlog.close()
        env.stop()
    summary.wall_s = time.monotonic() - started
    write_violations(run_dir, summary)
    failed = bool(summary.violations)
    kept = run_dir if failed or keep else None
    text = render(summary, kept)
    (run_dir / "summary.txt").write_text(text + "\n")
    if kept is None:
        shutil.rmtree(run_dir, ignore_errors=True)
    if echo:
        print(text, flush=True)
    return RunResult(summary, kept, text)


# --- the quiet period ---------------------------------------------------------------------------

def barrier(env: Environment, ops: Operations, *, timeout: float) -> tuple[bool, str, set[str]]:
    """A Lead created now reaches MongoDB and a Person created now reaches Salesforce."""
    deadline = time.monotonic() + timeout
    tag = uuid.uuid4().hex[:8]
    ids: set[str] = set()
    try:
        lead_id = env.org.create("Lead", {"LastName": f"Barrier{tag}", "Company": "Barrier Ltd",
                                          "Email": f"barrier.{tag}@chaos.example.com",
                                          "OwnerId": MAPPED_OWNERS[0]}, client=OTHER_APP)
    except AssertionError as exc:
        return False, f"barrier Lead refused: {exc}", ids
    ids.add(lead_id)
    if not _wait(lambda: env.db.people.find_one({"crm.id": lead_id}) is not None, deadline, env=env):
        return False, f"barrier Lead {lead_id} did not reach MongoDB within {timeout:.0f}s{_dead(env)}", ids
    local_id = ObjectId()
    now = datetime.now(UTC)
    _retry(lambda: env.db.people.insert_one({
        "_id": local_id, "first_name": "Barrier", "last_name": f"Barrier{tag}", "company_name": "Barrier Co",
        "email": f"barrier.p.{tag}@platform.example.com", "owner_crm_id": MAPPED_OWNERS[0], "owner_id": "u-1",
        "created_at": now, "updated_at": now}))

    def crossed() -> bool:
        doc = env.db.people.find_one({"_id": local_id}, {"crm": 1})
        crm = (doc or {}).get("crm") or {}
        if crm.get("id"):
            ids.add(str(crm["id"]))
            return True
        return False

    if not _wait(crossed, deadline, env=env):
        why = f"barrier Person {local_id} did not reach Salesforce within {timeout:.0f}s{_dead(env)}"
        return False, why, ids
    if not _wait(lambda: env.db.outbox.count_documents({}) == 0, deadline, env=env):
        return False, f"the outbox did not drain{_dead(env)}", ids
    return True, "barrier crossed both ways, outbox empty", ids


def _dead(env: Environment) -> str:
    dead = [f"{r.name} exited {r.service.process.returncode}" for r in env.replicas
            if r.service.process is not None and r.service.process.poll() is not None]
    return f" ({', '.join(dead)})" if dead else ""


def settle(env: Environment, *, timeout: float) -> bool:
    """Until the records read the same twice a second apart and the outbox is empty."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            snap = _snapshot(env)
        except PyMongoError:
            snap = None
        if snap is not None and snap == last and env.db.outbox.count_documents({}) == 0:
            return True
        last = snap
        time.sleep(1.0)
    return False


def _snapshot(env: Environment) -> str:
    digest = hashlib.sha256()
    for name in ("people", "companies"):
        for doc in env.db[name].find({}, {"updated_at": 1}).sort("_id", 1):
            digest.update(f"{doc['_id']}:{doc.get('updated_at')}".encode())
    digest.update(str(_last_seq(env)).encode())
    return digest.hexdigest()


def _last_seq(env: Environment) -> int:
    writes = env.org.control("GET", "chaos/writes?after=0").body["writes"]
    return int(writes[-1]["seq"]) if writes else 0


def idle_check(env: Environment) -> tuple[int, int]:
    """Service writes to Salesforce and local record changes during IDLE quiet seconds."""
    seq = _last_seq(env)
    since = datetime.now(UTC)
    time.sleep(IDLE)
    writes = [w for w in env.org.control("GET", f"chaos/writes?after={seq}").body["writes"]
              if "client=salesforce-sync" in str(w.get("client"))]
    changed = sum(env.db[name].count_documents({"updated_at": {"$gt": since}})
                  for name in ("people", "companies"))
    return len(writes), changed


def gather(env: Environment, ops: Operations, acks: list[Ack], faults: list[dict[str, Any]], barrier_ok: bool,
           barrier_detail: str, idle_writes: int, idle_local: int, barrier_ids: set[str]) -> Observed:
    people = list(env.db.people.find({}))
    companies = list(env.db.companies.find({}))
    ids: set[str] = set()
    for entity in ops.entities.values():
        ids |= {i for i in (entity.sf_id, entity.lead_id) if i}
    for doc in people + companies:
        crm = doc.get("crm") or {}
        if crm.get("id"):
            ids.add(str(crm["id"]))
    records: dict[str, dict[str, Any]] = {}
    for sf_id in ids:
        sobject = {"00Q": "Lead", "003": "Contact", "001": "Account"}.get(sf_id[:3])
        if sobject is None:
            continue
        reply = env.org.control("GET", f"records/{sobject}/{sf_id}")
        if reply.status == 200:
            records[sf_id[:15]] = dict(reply.body)
    writes = env.org.control("GET", "chaos/writes?after=0").body["writes"]
    assert env.recorder is not None
    return Observed(
        acks=acks, entities=ops.entities, sf_records=records, people=people, companies=companies,
        sync_logs=list(env.db.sync_logs.find({})), writes=writes, state_writes=list(env.recorder.writes),
        faults=faults, barrier_ok=barrier_ok, barrier_detail=barrier_detail, idle_writes=idle_writes,
        idle_local_changes=idle_local, barrier_ids=barrier_ids)


def dump(run_dir: Path, ops: Operations, obs: Observed) -> None:
    """What the oracle read, one JSON file per source (kept with the run directory on failure)."""
    items: dict[str, Any] = {
        "entities": [e.as_json() for e in ops.entities.values()],
        "sf_records": list(obs.sf_records.values()), "people": obs.people, "companies": obs.companies,
        "sync_logs": obs.sync_logs, "writes": obs.writes,
        "sync_state_writes": [{"at": w.at, "key": w.key, "value": w.value} for w in obs.state_writes],
    }
    for name, rows in items.items():
        with (run_dir / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, default=str, sort_keys=True) + "\n")


def _wait(probe: Any, deadline: float, interval: float = 0.25, env: Environment | None = None) -> bool:
    """Until `probe()` holds; False at the deadline, or at once when no replica is running."""
    while True:
        if env is not None and not any(r.service.running for r in env.replicas):
            return False
        try:
            if probe():
                return True
        except PyMongoError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _retry(action: Any, attempts: int = 50) -> None:
    for _ in range(attempts):
        try:
            action()
            return
        except PyMongoError:
            time.sleep(0.3)
    action()


def summarise_runs(results: list[RunResult]) -> str:
    total = Counter[str]()
    for r in results:
        total["ops"] += r.summary.ops_run
        total["faults"] += r.summary.faults_injected
        total["violations"] += len(r.summary.violations)
    return f"{total['ops']} ops, {total['faults']} faults, {total['violations']} violations"


__all__ = ["RunResult", "barrier", "run", "summarise_runs"]
