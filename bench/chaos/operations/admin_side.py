"""The admin, as the admin UI and a deploy act: the admin API through the leader (a standby
answers 409 `not_leader`: the call goes to the other replica), and a mappings edit rolled out
by restarting the replicas one at a time. Acks have side `admin`."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from bson import ObjectId
from pymongo.errors import PyMongoError

from bench.chaos.env import Environment, Replica, chaos_mappings
from bench.chaos.operations.binding import Bindings
from bench.chaos.operations.records import Ack, skip
from bench.chaos.schedule import Step
from settings import parse_mappings
from tests.support.service import Reply

API_WAIT = 60.0       # how long an admin call keeps looking for the leader
CALL_TIMEOUT = 20.0   # one call (a stopped replica never answers)
REMERGE_WAIT = 150.0  # a restart, a takeover and the remerge of every linked record


class AdminSide:
    def __init__(self, env: Environment, bindings: Bindings) -> None:
        self.env = env
        self.bindings = bindings
        self.hops: list[str] = []  # the last call's answers, `replica:status` (a 409 then a 200...)

    def api(self, method: str, path: str, json_body: Any = None, *, first: Replica | None = None) -> Reply:
        """One admin call on the leader: the lease names it (or ask `first`); a 409
        `not_leader`, a refused connection or a timeout sends the call to the other replica,
        until API_WAIT."""
        deadline = time.monotonic() + API_WAIT
        reply = Reply(599, "no replica answered")
        replicas = self.env.replicas
        first = first or self.env.leader()
        index = replicas.index(first) if first is not None else 0
        self.hops = []
        while time.monotonic() < deadline:
            replica = replicas[index % len(replicas)]
            index += 1
            if replica.stopped or not replica.service.running:
                continue
            try:
                reply = replica.service.api(method, path, json_body=json_body, timeout=CALL_TIMEOUT)
            except OSError as exc:
                reply = Reply(599, f"{type(exc).__name__}: {exc}")
            self.hops.append(f"{replica.name}:{reply.status}")
            if not _retry_elsewhere(reply):
                return reply
            time.sleep(0.5)
        return reply

    # retry ---------------------------------------------------------------------------------------
    def retry(self, step: Step) -> list[Ack]:
        """Retry one open failed sync log of the run's (picked by the drawn fraction), or none."""
        open_logs = self._open_failed_logs()
        if not open_logs:
            return skip(step, "admin", "no open failed sync log")
        log = open_logs[min(len(open_logs) - 1, int(float(step.args["pick"]) * len(open_logs)))]
        log_id = str(log["_id"])
        reply = self.api("POST", f"/api/sync-logs/{log_id}/retry")
        at = time.time()
        status = "ok" if reply.status == 200 else "rejected"
        job = log.get("job") or {}
        fields = {"log_id": log_id, "job": job.get("kind"), "reply": reply.body, "hops": self.hops}
        slots: list[str | None] = [*self._slots_of([log, *self._logs(_new_log_ids(reply.body))])]
        return [Ack(step.id, step.kind, "admin", slot, at, status, fields=fields,
                    detail="" if status == "ok" else str(reply.body)[:200]) for slot in slots or [None]]

    def _open_failed_logs(self) -> list[dict[str, Any]]:
        # null matches a missing field and an explicit null (a new log carries `retried_by: null`)
        query = {"status": "failed", "resolved": None, "retried_by": None, "retry_queued": None}
        try:
            return list(self.env.db.sync_logs.find(query).sort("_id", 1))
        except PyMongoError:
            return []

    def _logs(self, ids: list[str]) -> list[dict[str, Any]]:
        try:
            return list(self.env.db.sync_logs.find({"_id": {"$in": [ObjectId(i) for i in ids]}}))
        except PyMongoError:
            return []

    def _slots_of(self, logs: list[dict[str, Any]]) -> list[str]:
        """The run's slots whose records these logs name (Salesforce id or local id)."""
        keys = {str(k)[:15] if str(k).startswith(("00Q", "003", "001")) else str(k)
                for lg in logs for k in (lg.get("sf_id"), lg.get("local_id")) if k}
        out: list[str] = []
        for entity in self.bindings.entities.values():
            self.bindings.refresh(entity)
            ids = {str(i)[:15] for i in (entity.sf_id, entity.lead_id) if i}
            if entity.local_id is not None:
                ids.add(str(entity.local_id))
            if ids & keys:
                out.append(entity.slot)
        return out

    # import --------------------------------------------------------------------------------------
    def import_record(self, step: Step) -> list[Ack]:
        entity = self.bindings.bound(step.target, sf=True)
        if entity is None or not entity.sf_id:
            return skip(step, "admin", "no Salesforce record yet")
        self.bindings.refresh(entity)  # linked already? (the oracle's merge is exact only then)
        reply = self.api("POST", "/api/import", {"sf_id": entity.sf_id})
        ok = reply.status == 200
        return [Ack(step.id, step.kind, "admin", entity.slot, time.time(), "ok" if ok else "rejected",
                    entity.sobject, {"sf_id": entity.sf_id, "reply": reply.body, "hops": self.hops},
                    "" if ok else str(reply.body)[:200])]

    # mapping edit --------------------------------------------------------------------------------
    def edit_mappings(self, step: Step) -> list[Ack]:
        """Write the new mappings file for every replica, restart them one at a time (standby
        first), then wait until the leader's remerge saved the new mappings' hash."""
        text = chaos_mappings(title_merge=str(step.args["title_merge"]),
                              mobile_phone=bool(step.args["mobile_phone"]))
        for entity in self.bindings.entities.values():
            self.bindings.refresh(entity)  # which records are linked: the remerge merges those
        started = time.time()
        for replica in self.env.replicas:
            replica.service.mappings = text
            replica.service.mappings_path.write_text(text)
        leader = self.env.leader()
        for replica in sorted(self.env.replicas, key=lambda r: r is leader):
            _restart(replica)
        digest = parse_mappings(text).content_hash()
        applied = self._wait_hash(digest)
        fields = {"mappings": text, "started": started, "change": step.args["change"]}
        return [Ack(step.id, step.kind, "admin", None, time.time(), "ok" if applied else "rejected",
                    fields=fields, detail="" if applied else "the remerge did not save the new hash")]

    def _wait_hash(self, digest: str) -> bool:
        deadline = time.monotonic() + REMERGE_WAIT
        while time.monotonic() < deadline:
            try:
                doc = self.env.db.sync_state.find_one({"_id": "mappings"})
            except PyMongoError:
                doc = None
            value = (doc or {}).get("value") or {}
            if isinstance(value, dict) and value.get("hash") == digest:
                return True
            time.sleep(0.3)
        return False


def _restart(replica: Replica) -> None:
    """SIGTERM and start again with the file as it is now (a killed replica just starts)."""
    if replica.stopped:
        return  # SIGSTOPped by a fault: not drawn then (admin_ops), left to its heal
    if replica.service.running:
        with contextlib.suppress(AssertionError):  # killed after the timeout
            replica.service.stop(timeout=20)
    replica.service.start(ready_timeout=90)


def _retry_elsewhere(reply: Reply) -> bool:
    body = reply.body if isinstance(reply.body, dict) else {}
    return reply.status in (599, 502, 503) or (reply.status == 409 and body.get("error") == "not_leader")


def _new_log_ids(body: Any) -> list[str]:
    items = body.get("items") if isinstance(body, dict) else None
    return [str(i) for item in items or [] if isinstance(item, dict) for i in item.get("new_log_ids") or []]


__all__ = ["AdminSide"]
