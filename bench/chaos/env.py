"""The processes of a run: the emulator, SecantusDB (restartable on the same data directory) and
two replicas of the real service; plus two recorders that run beside the schedule: every write
of `sync_state` (a change stream, polling as a fallback) and the leader lease."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from bench.chaos.plants import service_env
from tests.support.emulator import EmulatorProcess
from tests.support.secantus import free_port, spawn_secantus, stop_process
from tests.support.service import Reply, SalesforceOrg, ServiceProcess, http

LEASE_SECONDS = 3.0
ROOT = Path(__file__).resolve().parents[2]  # the tree this bench (and the service it runs) is in
CHAOS_MAPPINGS = """
[people.first_name]
lead = "FirstName"
contact = "FirstName"
[people.last_name]
lead = "LastName"
contact = "LastName"
[people.email]
lead = "Email"
contact = "Email"
[people.title]
lead = "Title"
contact = "Title"
[people.phone]
lead = "Phone"
contact = "Phone"
merge = "local_unless_blank"
[people.company_name]
lead = "Company"
merge = "salesforce_unless_blank"
[people.city]
lead = "City"
contact = "MailingCity"
[people.state]
lead = "State"
contact = "MailingState"
direction = "to_salesforce"
[people.lead_source]
lead = "LeadSource"
contact = "LeadSource"
direction = "from_salesforce"
[people.score]
lead = "Score__c"
direction = "from_salesforce"
[people.owner_crm_id]
lead = "OwnerId"
contact = "OwnerId"
[people.company_crm_id]
contact = "AccountId"
direction = "from_salesforce"

[companies.name]
account = "Name"
[companies.domain]
account = "Website"
[companies.industry]
account = "Industry"
merge = "salesforce_unless_blank"
[companies.city]
account = "BillingCity"
direction = "to_salesforce"

[[users]]
local = "u-1"
salesforce = "005000000000001AAA"
[[users]]
local = "u-2"
salesforce = "005000000000002AAA"

[rules]
create_person_from_salesforce = true
create_in_salesforce = "lead"
on_salesforce_owner_change = "update_owner"
"""


class ChaosOrg(SalesforceOrg):
    """The org as the run's users see it; a session the token-expiry fault killed is renewed."""

    def rest(self, method: str, path: str, *, json_body: Any = None,
             client: str | None = "chaos-other-app") -> Reply:
        """Retried like any integration would: a lost response, a 5xx or a row lock (the run's
        own faults hit every client of the org). Only idempotent calls reach a retry here: the
        run's creates go to `sobjects/<Object>`, which no fault targets."""
        reply = Reply(599, "no attempt")
        for attempt in range(8):
            try:
                reply = super().rest(method, path, json_body=json_body, client=client)
            except OSError as exc:
                reply = Reply(599, f"{type(exc).__name__}: {exc}")
            if reply.status == 401:
                self._token = None
            elif not (reply.status >= 500 or "UNABLE_TO_LOCK_ROW" in str(reply.body)):
                return reply
            time.sleep(0.1 * (attempt + 1))
        return reply


class Mongo:
    """SecantusDB on a fixed port and data directory: `restart()` keeps both."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.storage = work / "secantus"
        self.log_path = work / "secantus.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self, timeout: float = 30.0) -> None:
        self.process = spawn_secantus(self.port, self.storage, self.log_path, timeout)

    def stop(self) -> None:
        stop_process(self.process, timeout=15)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Replica:
    name: str
    service: ServiceProcess
    stopped: bool = False  # SIGSTOPped

    @property
    def pid(self) -> int | None:
        proc = self.service.process
        return proc.pid if proc is not None and proc.poll() is None else None


@dataclass
class StateWrite:
    at: float
    key: str
    value: Any


@dataclass
class StateRecorder:
    """Every write of `sync_state`, from a change stream (a polling diff when that fails)."""

    uri: str
    database: str
    writes: list[StateWrite] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    mode: str = "stream"
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sync-state-recorder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        token: Any = None
        failures = 0
        while not self._stop.is_set():
            client: MongoClient[dict[str, Any]] = MongoClient(self.uri, serverSelectionTimeoutMS=2000,
                                                              tz_aware=True)
            try:
                coll = client[self.database].sync_state
                if self.mode == "stream":
                    with coll.watch(full_document="updateLookup", resume_after=token,
                                    max_await_time_ms=200) as stream:
                        while not self._stop.is_set():
                            change = stream.try_next()
                            if change is None:
                                continue
                            token = stream.resume_token
                            self._record(change)
                else:
                    self._poll(coll)
            except PyMongoError as exc:
                failures += 1
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                if failures >= 5 and self.mode == "stream" and token is None:
                    self.mode = "poll"
                time.sleep(0.3)
            finally:
                client.close()

    def _record(self, change: dict[str, Any]) -> None:
        key = str(change.get("documentKey", {}).get("_id"))
        doc = change.get("fullDocument")
        if change.get("operationType") in ("insert", "replace") and doc is not None:
            value = doc.get("value", {k: v for k, v in doc.items() if k != "_id"})
        elif change.get("operationType") == "update":
            value = dict(change.get("updateDescription", {}).get("updatedFields", {}))
        else:
            value = None
        self.writes.append(StateWrite(time.time(), key, value))

    def _poll(self, coll: Any) -> None:
        last: dict[str, Any] = {}
        while not self._stop.is_set():
            for doc in coll.find({}):
                key = str(doc["_id"])
                value = doc.get("value", {k: v for k, v in doc.items() if k != "_id"})
                if last.get(key) != value:
                    last[key] = value
                    self.writes.append(StateWrite(time.time(), key, value))
            time.sleep(0.05)


def replica_path() -> str:
    """The replicas' `PYTHONPATH`: this tree first. They run in their own work directories, so a
    relative entry (`PYTHONPATH=.`) would miss it and the service would be imported from wherever
    the interpreter's installed copy points (another checkout)."""
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([str(ROOT), *(str(Path(p).resolve()) for p in inherited)])


class Environment:
    """Everything a run starts, and stops at the end."""

    def __init__(self, work: Path, *, database: str = "chaos", plant: str | None = None) -> None:
        self.work = work
        self.database = database
        self.plant = plant  # a planted bug in both replicas (test-only: bench/chaos/plants.py)
        self.mongo = Mongo(work)
        self.emulator = EmulatorProcess(free_port(), (), work / "emulator.log")
        self.org = ChaosOrg(self.emulator.base_url)
        self.replicas: list[Replica] = []
        self.recorder: StateRecorder | None = None
        self._client: MongoClient[dict[str, Any]] | None = None

    @property
    def db(self) -> Any:
        if self._client is None:
            self._client = MongoClient(self.mongo.uri, tz_aware=True, serverSelectionTimeoutMS=5000)
        return self._client[self.database]

    def start(self) -> None:
        self.mongo.start()
        self.emulator.start()
        self.recorder = StateRecorder(self.mongo.uri, self.database)
        self.recorder.start()
        extra_env = {"SFSYNC_SYNC__LEASE_SECONDS": str(LEASE_SECONDS), "SFSYNC_SYNC__FREQUENCY_MINUTES": "1",
                     "PYTHONPATH": replica_path()}
        if self.plant is not None:
            extra_env.update(service_env(self.plant))
        for name in ("replica-a", "replica-b"):
            service = ServiceProcess(
                workdir=self.work / name, salesforce_url=self.emulator.base_url,
                mongo_uri=f"{self.mongo.uri}&retryWrites=false", database=self.database,
                mappings=CHAOS_MAPPINGS, extra_env=dict(extra_env))
            self.replicas.append(Replica(name, service))
        self.replicas[0].service.start(ready_timeout=60)
        self.wait_leader(timeout=60)
        self.replicas[1].service.start(ready_timeout=60)

    # the lease -----------------------------------------------------------------------------------
    def lease(self) -> dict[str, Any] | None:
        try:
            doc = self.db.sync_state.find_one({"_id": "lease:sync"})
        except PyMongoError:
            return None
        return dict(doc) if doc else None

    def leader(self) -> Replica | None:
        """The replica whose pid the unexpired lease names (owner = hostname-pid-random)."""
        doc = self.lease()
        if not doc:
            return None
        expires = doc.get("expires_at")
        if isinstance(expires, datetime) and expires < datetime.now(UTC):
            return None
        parts = str(doc.get("owner", "")).rsplit("-", 2)
        pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
        return next((r for r in self.replicas if r.pid is not None and r.pid == pid), None)

    def wait_leader(self, *, timeout: float, not_this: Replica | None = None) -> Replica | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None and leader is not not_this and not leader.stopped:
                return leader
            time.sleep(0.1)
        return None

    def ready(self, replica: Replica) -> bool:
        try:
            return http("GET", f"{replica.service.admin_url}/readyz", timeout=2).status == 200
        except OSError:
            return False

    # teardown ------------------------------------------------------------------------------------
    def stop(self) -> None:
        for replica in self.replicas:
            pid = replica.pid
            if pid is not None and replica.stopped:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGCONT)
                replica.stopped = False
            try:
                replica.service.stop(timeout=15)
            except AssertionError:
                pass
            finally:
                replica.service.kill()
        if self.recorder is not None:
            self.recorder.stop()
        if self._client is not None:
            self._client.close()
        self.emulator.stop()
        self.mongo.stop()


_TITLE = '[people.title]\nlead = "Title"\ncontact = "Title"\n'
_MOBILE = '[people.mobile_phone]\nlead = "MobilePhone"\ncontact = "MobilePhone"\n'


def chaos_mappings(*, title_merge: str = "most_recent", mobile_phone: bool = False) -> str:
    """The run's mappings as an admin edits them (`mapping_edit`): `people.title`'s merge
    behaviour, and `people.mobile_phone` mapped or not. The defaults are CHAOS_MAPPINGS."""
    text = CHAOS_MAPPINGS
    if title_merge != "most_recent":
        text = text.replace(_TITLE, f'{_TITLE}merge = "{title_merge}"\n')
    if mobile_phone:
        text = text.replace("[companies.name]", f"{_MOBILE}\n[companies.name]")
    return text


__all__ = ["CHAOS_MAPPINGS", "LEASE_SECONDS", "Environment", "Mongo", "Replica", "StateRecorder",
           "StateWrite", "chaos_mappings"]
