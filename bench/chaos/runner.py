"""One run: start everything, play the schedule, heal, wait for the quiet period, check.

The quiet period waits on observable conditions only: every fault healed, a replica holding the
lease and ready, then a barrier (a Lead created now reaches MongoDB; a Person created now reaches
Salesforce; CDC is ordered and the outbox drains, so what came before has been handled), the
outbox drained (nothing pending or in flight), and the records unchanged between two reads.
Then the idle check: for IDLE seconds the service writes nothing on either side (a loop or an
applied echo would).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from bson import ObjectId
from pymongo.errors import PyMongoError

from bench.chaos.env import LEASE_SECONDS, Environment
from bench.chaos.faults import Faults
from bench.chaos.operations import OTHER_APP, Ack, Operations
from bench.chaos.oracle import Model, Observed, check, service_write_times
from bench.chaos.report import RunLog, Summary, render, write_violations
from bench.chaos.schedule import FAULT_KINDS, MAPPED_OWNERS, Step, build_schedule

# polling mode is one pass a minute; a paused budget one limits check a minute; a create claimed
# by a killed leader waits out its 2-minute lease (chaos seed 35107)
BARRIER_TIMEOUT = 180.0
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
        barrier_timeout: float = BARRIER_TIMEOUT, plant: str | None = None, admin: bool = True,
        kill_when_committed: bool = False) -> RunResult:
    """One run; `plant` starts the replicas with a planted bug (test-only, bench/chaos/plants.py);
    `admin` False leaves the admin operations out (the schedules seeds drew before them).

    `kill_when_committed`: a `kill_leader` waits until the stream has committed the newest
    event's replay id, so it falls between that commit and whatever follows it.
    """
    started = time.monotonic()
    state, steps = _set_up(seed, ops, faults, base_dir, plant, admin)
    state.injector.kill_when_committed = kill_when_committed
    try:
        _start(state)
        _play(state, steps, deadline=started + minutes * 60 if minutes else None)
        quiet = _quiet_period(state, barrier_timeout)
        _check(state, quiet)
    finally:
        state.runlog.close()
        state.env.stop()
    state.summary.wall_s = time.monotonic() - started
    return _report(state, keep=keep, echo=echo)


@dataclass
class _Run:
    """One run's moving parts, and what it has collected so far."""

    run_dir: Path
    runlog: RunLog
    env: Environment
    ops: Operations
    injector: Faults
    summary: Summary
    acks: list[Ack] = field(default_factory=list)
    fault_records: list[dict[str, Any]] = field(default_factory=list)
    barrier_ids: set[str] = field(default_factory=set)
    first_fault: float | None = None  # monotonic times of the first and last injected fault
    last_fault: float | None = None


class _Quiet(NamedTuple):
    barrier_ok: bool
    barrier_detail: str
    idle_writes: int
    idle_local: int


# --- start -------------------------------------------------------------------------------------

def _set_up(seed: int, ops: int, faults: tuple[str, ...], base_dir: Path | None,
            plant: str | None = None, admin: bool = True) -> tuple[_Run, list[Step]]:
    """The run directory, the schedule (logged with its digest), the environment, not yet started."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-", dir=base_dir))
    steps = build_schedule(seed, ops, faults, admin=admin)
    runlog = RunLog(run_dir)
    runlog.write({"event": "schedule", "seed": seed, "ops": ops, "faults": list(faults), "steps": len(steps),
                  "plant": plant, "admin": admin,
                  "schedule_sha": hashlib.sha256(json.dumps([s.as_json() for s in steps], sort_keys=True)
                                                 .encode()).hexdigest()[:16]})
    env = Environment(run_dir / "env", database=f"chaos_{seed}", plant=plant)
    (run_dir / "env").mkdir()
    operations = Operations(env)
    state = _Run(run_dir, runlog, env, operations, Faults(env, operations),
                 Summary(seed, ops, 0, admin=admin))
    return state, steps


def _start(state: _Run) -> None:
    """Start the emulator, the database and the replicas; a first barrier shows the pipeline works."""
    state.env.start()
    ok, detail, ids = barrier(state.env, state.ops, timeout=60)
    state.barrier_ids |= ids
    state.runlog.write({"event": "pipeline", "ok": ok, "detail": detail})


# --- play --------------------------------------------------------------------------------------

def _play(state: _Run, steps: list[Step], *, deadline: float | None) -> None:
    """Every step in order (operations stop at the time limit; heals still run), then heal all."""
    for step in steps:
        if deadline is not None and time.monotonic() > deadline and step.side not in ("heal",):
            if step.side != "fault":
                state.runlog.write({"event": "time_limit", "at_step": step.id})
                break
            continue
        if step.side == "fault":
            _inject(state, step)
        elif step.side == "heal":
            _heal(state, step)
        else:
            _operate(state, step)
        time.sleep(PACE)
    if state.first_fault is not None and state.last_fault is not None:
        state.summary.fault_window_s = state.last_fault - state.first_fault
    for record in state.injector.heal_all():
        state.fault_records.append(record.as_json())
        state.runlog.write({"event": "heal", **record.as_json()})


def _inject(state: _Run, step: Step) -> None:
    record = state.injector.inject(step)
    state.fault_records.append(record.as_json())
    state.runlog.write({"event": "fault", **step.as_json(), **record.as_json()})
    for ack in state.injector.acks:
        state.acks.append(ack)
        state.runlog.write({"event": "ack", **ack.as_json()})
    state.injector.acks.clear()
    if record.status == "injected":
        state.summary.faults[step.kind] += 1
        state.first_fault = state.first_fault or time.monotonic()
        state.last_fault = time.monotonic()
    else:
        state.summary.faults_skipped += 1


def _heal(state: _Run, step: Step) -> None:
    record = state.injector.heal(step)
    state.fault_records.append(record.as_json())
    state.runlog.write({"event": "heal", **step.as_json(), **record.as_json()})


def _operate(state: _Run, step: Step) -> None:
    if step.side == "admin":  # counted apart: `--ops` counts the users' operations
        state.summary.admin_ops[step.kind] += 1
    else:
        state.summary.ops_run += 1
    step_acks = state.ops.run(step)
    state.runlog.write({"event": "op", **step.as_json()})
    for ack in step_acks:
        state.acks.append(ack)
        state.summary.acks[ack.status] += 1
        state.runlog.write({"event": "ack", **ack.as_json()})


# --- quiet period, check, report ---------------------------------------------------------------

def _quiet_period(state: _Run, barrier_timeout: float) -> _Quiet:
    """A leader, the barrier, settled records, then IDLE seconds watched for writes."""
    env = state.env
    quiet_started = time.monotonic()
    leader = env.wait_leader(timeout=LEASE_SECONDS * 6)
    ok, detail, ids = barrier(env, state.ops, timeout=barrier_timeout) if leader else (
        False, "no replica took the lease", set())
    state.barrier_ids |= ids
    settle(env, timeout=30)
    state.summary.quiet_s = time.monotonic() - quiet_started
    idle_writes, idle_local = idle_check(env)
    state.runlog.write({"event": "quiet", "barrier_ok": ok, "detail": detail,
                        "quiet_s": state.summary.quiet_s, "idle_writes": idle_writes,
                        "idle_local_changes": idle_local})
    return _Quiet(ok, detail, idle_writes, idle_local)


def _check(state: _Run, quiet: _Quiet) -> None:
    """Feed the model the acks, check what was observed against it, dump what the oracle read."""
    observed = gather(state.env, state.ops, state.acks, state.fault_records, quiet.barrier_ok,
                      quiet.barrier_detail, quiet.idle_writes, quiet.idle_local, state.barrier_ids)
    model = Model()
    model.feed(state.acks, state.ops.entities, state.fault_records,
               service_writes=service_write_times(observed.writes))
    state.summary.violations = check(observed, model)
    state.summary.service_writes = sum(1 for w in observed.writes
                                       if "client=salesforce-sync" in str(w.get("client")))
    dump(state.run_dir, state.ops, observed)


def _report(state: _Run, *, keep: bool, echo: bool) -> RunResult:
    """Write the violations and the summary; keep the run directory on failure (or `keep`)."""
    run_dir, summary = state.run_dir, state.summary
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


# --- the quiet period's probes -----------------------------------------------------------------

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
    if not _wait(lambda: _outbox_depth(env) == 0, deadline, env=env):
        return False, f"the outbox did not drain{_dead(env)}", ids
    return True, "barrier crossed both ways, outbox drained", ids


# What "drained" means (`Outbox.depth`): nothing waiting or in flight. A write parked as `failed`
# (its failed log explains it) or `held` (its record is deleted in Salesforce: it goes out if the
# record is undeleted; chaos seed 47881) stays in the collection, and is not waited for.
def _outbox_depth(env: Environment) -> int:
    return int(env.db.outbox.count_documents({"status": {"$in": ["pending", "inflight"]}}))


def _dead(env: Environment) -> str:
    dead = [f"{r.name} exited {r.service.process.returncode}" for r in env.replicas
            if r.service.process is not None and r.service.process.poll() is not None]
    return f" ({', '.join(dead)})" if dead else ""


def settle(env: Environment, *, timeout: float) -> bool:
    """Until the records read the same twice a second apart and the outbox is drained."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            snap = _snapshot(env)
        except PyMongoError:
            snap = None
        if snap is not None and snap == last and _outbox_depth(env) == 0:
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
