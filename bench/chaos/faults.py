"""Injecting the schedule's faults and healing them.

Process faults act on the replica that holds the lease (found through `sync_state`'s lease
document, whose owner names the pid); the rest go through the emulator's control API
(`/_emulator/...`, `/_emulator/streaming/...`, `/_emulator/chaos/...`). Every fault is healed
before the quiet period: processes running and not stopped, MongoDB up, budget and retention
restored, injected faults cleared, the org's clock back on the host's (`clock_skew` moves it
a few seconds ahead or behind through `POST /_emulator/clock`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from bench.chaos.env import LEASE_SECONDS, Environment, Replica
from bench.chaos.operations import Ack, Operations
from bench.chaos.schedule import Step

# The service's writes: `composite/sobjects` (creates, updates) and `/composite` (late updates sent
# only if their record is unmodified since read, issue 14). Faults that model Salesforce failing the
# service's writes hit both: this prefix covers both paths (the seeds' schedules are unchanged).
WRITES = "/services/data/v62.0/composite"
DATA = "/services/data/v62.0/"
RETENTION_DEFAULT = 72 * 3600.0


@dataclass
class FaultRecord:
    step: str
    kind: str
    at: float
    status: str  # injected | healed | skipped
    detail: str = ""
    target: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"step": self.step, "kind": self.kind, "at": round(self.at, 3), "status": self.status,
                "detail": self.detail, "target": self.target}


@dataclass
class Faults:
    env: Environment
    ops: Operations
    killed: dict[str, Replica] = field(default_factory=dict)   # fault id -> replica
    stopped: dict[str, Replica] = field(default_factory=dict)
    acks: list[Ack] = field(default_factory=list)              # silent Salesforce writes (gap/overflow)
    skews: dict[str, float] = field(default_factory=dict)      # open clock_skew faults, in order
    kill_when_committed: bool = False  # a kill waits for the newest event's offset (runner.run)

    def inject(self, step: Step) -> FaultRecord:
        try:
            detail = getattr(self, f"_{step.kind}")(step)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"[:300]
            return FaultRecord(step.id, step.kind, time.time(), "skipped", detail, step.target)
        status = "skipped" if detail.startswith("skipped") else "injected"
        return FaultRecord(step.id, step.kind, time.time(), status, detail, step.target)

    def heal(self, step: Step) -> FaultRecord:
        fid = str(step.args["fault"])
        detail = "nothing to heal"
        if step.kind == "kill_leader" and fid in self.killed:
            replica = self.killed.pop(fid)
            replica.service.launch()
            detail = f"restarted {replica.name}"
        elif step.kind == "stop_leader" and fid in self.stopped:
            replica = self.stopped.pop(fid)
            other = self.env.wait_leader(timeout=LEASE_SECONDS * 5, not_this=replica)
            self._cont(replica)
            detail = (f"SIGCONT {replica.name} after {other.name} took over" if other
                      else f"SIGCONT {replica.name}; no takeover seen")
        elif step.kind == "budget_swing":
            self.env.org.control("POST", "budget", {"used": 0})
            detail = "budget used=0"
        elif step.kind == "replay_retention":
            self.env.org.control("POST", "chaos/retention", {"seconds": RETENTION_DEFAULT})
            detail = "retention 72h"
        elif step.kind == "clock_skew":
            self.skews.pop(fid, None)  # back to the skew still open, if another one is
            offset = list(self.skews.values())[-1] if self.skews else 0.0
            self.env.org.control("POST", "clock", {"offset_seconds": offset})
            detail = f"org clock offset {offset:g}s"
        return FaultRecord(step.id, step.kind, time.time(), "healed", detail)

    def heal_all(self) -> list[FaultRecord]:
        records: list[FaultRecord] = []
        for fid in list(self.stopped):
            records.append(self.heal(Step(f"{fid}-heal", "stop_leader", "heal", None, {"fault": fid})))
        for fid in list(self.killed):
            records.append(self.heal(Step(f"{fid}-heal", "kill_leader", "heal", None, {"fault": fid})))
        if not self.env.mongo.running:
            self.env.mongo.start()
        self.env.org.control("DELETE", "faults")
        self.env.org.control("POST", "budget", {"used": 0})
        self.env.org.control("POST", "chaos/retention", {"seconds": RETENTION_DEFAULT})
        self.skews.clear()
        self.env.org.control("POST", "clock", {"offset_seconds": 0})
        for replica in self.env.replicas:
            if not replica.service.running:
                replica.service.launch()
                proc = replica.service.process
                code = proc.returncode if proc is not None else "?"
                records.append(FaultRecord("final-heal", "restart", time.time(), "healed",
                                           f"{replica.name} was not running (exit {code})"))
        return records

    # process faults ----------------------------------------------------------------------------
    def _leader(self) -> Replica | None:
        return self.env.wait_leader(timeout=LEASE_SECONDS * 3)

    def _kill_leader(self, step: Step) -> str:
        leader = self._leader()
        if leader is None or leader.pid is None:
            return "skipped: no leader"
        waited = wait_committed(self.env) if self.kill_when_committed else ""
        os.kill(leader.pid, signal.SIGKILL)
        leader.service.process.wait(timeout=10)  # type: ignore[union-attr]
        self.killed[step.id] = leader
        return f"SIGKILL {leader.name}{waited}"

    def _stop_leader(self, step: Step) -> str:
        leader = self._leader()
        if leader is None or leader.pid is None:
            return "skipped: no leader"
        os.kill(leader.pid, signal.SIGSTOP)
        leader.stopped = True
        self.stopped[step.id] = leader
        return f"SIGSTOP {leader.name}"

    def _cont(self, replica: Replica) -> None:
        if replica.pid is not None:
            with contextlib.suppress(OSError):
                os.kill(replica.pid, signal.SIGCONT)
        replica.stopped = False

    def _restart_mongo(self, step: Step) -> str:
        self.env.mongo.stop()
        time.sleep(float(step.args.get("down_s", 1.0)))
        self.env.mongo.start()
        return f"SecantusDB down {step.args.get('down_s')}s, same data directory"

    # emulator faults ---------------------------------------------------------------------------
    def _control(self, method: str, path: str, body: Any = None) -> Any:
        reply = self.env.org.control(method, path, body)
        if reply.status >= 300:
            raise RuntimeError(f"{method} /_emulator/{path}: {reply.status} {reply.body}")
        return reply.body

    def _cometd_drop(self, step: Step) -> str:
        body = self._control("POST", "streaming/drop")
        return f"dropped {body}"

    def _rest_5xx(self, step: Step) -> str:
        count, status = int(step.args["count"]), int(step.args["status"])
        path = str(step.args.get("path", "composite/sobjects"))
        prefix = WRITES if path == "composite/sobjects" else DATA + path
        self._control("POST", "faults", {"path_prefix": prefix, "status": status, "count": count})
        return f"next {count} calls under {prefix} answer {status}"

    def _lock_row(self, step: Step) -> str:
        count = int(step.args["count"])
        self._control("POST", "chaos/lock-row", {"path_prefix": WRITES, "count": count})
        return f"next {count} composite calls answer UNABLE_TO_LOCK_ROW"

    def _apply_then_drop(self, step: Step) -> str:
        self._control("POST", "faults", {"path_prefix": WRITES, "apply_then_drop": True, "count": 1})
        return "next composite call applied, response lost"

    def _token_expiry(self, step: Step) -> str:
        return f"expired {self._control('POST', 'tokens/expire')}"

    def _budget_swing(self, step: Step) -> str:
        used = 80_000 if step.args["level"] == "polling" else 95_000
        self._control("POST", "budget", {"used": used})
        return f"api used {used}/100000 ({step.args['level']})"

    def _silent(self, step: Step) -> Ack | None:
        ack = self.ops.silent_update(step)
        if ack is not None:
            self.acks.append(ack)
        return ack

    def _cdc_gap(self, step: Step) -> str:
        ack = self._silent(step)
        if ack is None or ack.status != "ok":
            return "skipped: target not bound"
        entity = self.ops.entities[str(step.target)]
        self._control("POST", "streaming/gap", {"entity": entity.sobject, "change_type": "GAP_UPDATE",
                                                "record_ids": [entity.sf_id]})
        return f"silent update of {entity.sf_id} + GAP_UPDATE"

    def _cdc_overflow(self, step: Step) -> str:
        ack = self._silent(step)
        if ack is None or ack.status != "ok":
            return "skipped: target not bound"
        entity = self.ops.entities[str(step.target)]
        self._control("POST", "streaming/overflow", {"entity": entity.sobject,
                                                     "commit_timestamp_ms": int(ack.at * 1000)})
        return f"silent update of {entity.sf_id} + GAP_OVERFLOW"

    def _replay_retention(self, step: Step) -> str:
        body = self._control("POST", "chaos/retention", {"seconds": 0.5})
        self._control("POST", "streaming/forget-clients")
        return f"retention 0.5s ({body}); clients forgotten: they resubscribe from a pruned replay id"

    def _clock_skew(self, step: Step) -> str:
        offset = float(step.args["offset_s"])
        self._control("POST", "clock", {"offset_seconds": offset})
        self.skews[step.id] = offset
        return f"org clock {'ahead of' if offset > 0 else 'behind'} the host by {abs(offset):g}s"

    def _poison_event(self, step: Step) -> str:
        lead = next((e for e in self.ops.entities.values() if e.sobject == "Lead" and e.sf_id), None)
        record_id = lead.sf_id if lead else "00Q000000000000AAA"
        header: dict[str, Any] = {
            "entityName": "Lead", "recordIds": [record_id], "changeType": "UPDATE",
            "changeOrigin": "com/salesforce/api/rest/62.0;client=chaos-poison", "transactionKey": "chaos",
            "sequenceNumber": 1, "commitTimestamp": int(time.time() * 1000), "commitNumber": 1,
            "commitUser": "005000000000001AAA", "nulledFields": [], "diffFields": [],
            "changedFields": ["Title"],
        }
        payload: dict[str, Any] = {"ChangeEventHeader": header, "Title": "POISON-NEVER-APPLY"}
        variant = step.args["variant"]
        if variant == "future_commit":
            header["commitTimestamp"] = 10**16  # year ~318857: out of datetime's range
        elif variant == "int_lastmodified":
            payload["LastModifiedDate"] = 10**16
            header["changedFields"] = ["Title", "LastModifiedDate"]
        else:
            payload.pop("ChangeEventHeader")
        event = {"schema": "chaos", "payload": payload}
        body = self._control("POST", "streaming/publish", {"channel": "/data/LeadChangeEvent", "data": event})
        return f"poison {variant} on {record_id} replayId {body.get('replayId')}"


def wait_committed(env: Environment, timeout: float = 10.0) -> str:
    """Until a replay id as new as the newest event's is committed (`sync_state`, as recorded)."""
    newest = int(env.org.control("GET", "streaming/stats").body["last_replay_id"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        writes = list(env.recorder.writes) if env.recorder is not None else []
        if max((_replay_id(w.value) for w in writes if w.key.startswith("replay:")), default=0) >= newest:
            return f" after replay id {newest} was committed"
        time.sleep(0.02)
    return f" (replay id {newest} not committed within {timeout:g}s)"


def _replay_id(value: Any) -> int:
    """The replay id of one recorded `replay:<channel>` write (an insert, or an update's fields)."""
    if not isinstance(value, dict):
        return 0
    found = value.get("replay_id", value.get("value.replay_id"))
    if found is None and isinstance(value.get("value"), dict):
        found = value["value"].get("replay_id")
    return found if isinstance(found, int) else 0


__all__ = ["FaultRecord", "Faults"]
