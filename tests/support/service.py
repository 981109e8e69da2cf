"""End-to-end harness: the REAL service (`python -m listener run`) as a subprocess against the
emulated org and SecantusDB, plus the two outside actors the tests play — Salesforce users
(`SalesforceOrg`, over the emulator's REST and control APIs) and the admin (`ServiceProcess.api`).

Everything here is synchronous (urllib, subprocess): the service, the emulator and MongoDB are
separate processes, so a test that waits with `wait_for` blocks nobody.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from tests.support.secantus import free_port

if TYPE_CHECKING:
    from pymongo.database import Database

T = TypeVar("T")

API_VERSION = "62.0"
CLIENT_ID = "sample-client-id"            # emulator.state.SAMPLE_CLIENT_ID
CLIENT_SECRET = "sample-client-secret"    # emulator.state.SAMPLE_CLIENT_SECRET
SERVICE_CLIENT_NAME = "salesforce-sync"   # the service's Sforce-Call-Options client name
TEST_CLIENT_NAME = "e2e-other-app"        # another integration editing Salesforce
MAPPED_OWNER = "005000000000001AAA"       # mapped to local user u-1 in the test mappings
OTHER_MAPPED_OWNER = "005000000000002AAA"  # mapped to local user u-2
STOP_TIMEOUT = 10.0
DEADLINE = 20.0  # how long a change may take to cross over, either way


def unique(prefix: str = "e2e") -> str:
    """A name no other test uses (tests share one org and one database per module)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


# --- waiting ------------------------------------------------------------------------------------

def wait_for(probe: Callable[[], T | None], *, timeout: float = 20.0, interval: float = 0.2,
             what: str = "condition") -> T:
    """Call `probe` until it returns something truthy and return that; AssertionError naming
    `what` and the last value seen once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last is not None and last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


def stays(probe: Callable[[], T], *, duration: float = 3.0, interval: float = 0.2,
          what: str = "condition") -> T:
    """Assert `probe` stays truthy for `duration` seconds (for "X never happens" checks); the
    last value."""
    deadline = time.monotonic() + duration
    while True:
        value = probe()
        assert value, f"{what} stopped holding: {value!r}"
        if time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --- HTTP ---------------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


def http(method: str, url: str, *, json_body: Any = None, form: Mapping[str, str] | None = None,
         headers: Mapping[str, str] | None = None, timeout: float = 15.0) -> Reply:
    """One HTTP request; the body parsed as JSON when it is JSON. Error statuses are returned,
    not raised."""
    data: bytes | None = None
    all_headers = dict(headers or {})
    if json_body is not None:
        data = json.dumps(json_body).encode()
        all_headers["Content-Type"] = "application/json"
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        all_headers["Content-Type"] = "application/x-www-form-urlencoded"
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw, status, reply_headers = response.read(), response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw, status, reply_headers = exc.read(), exc.code, dict(exc.headers)
    text = raw.decode("utf-8", "replace")
    try:
        body: Any = json.loads(text) if text else None
    except json.JSONDecodeError:
        body = text
    return Reply(status, body, reply_headers)


# --- Salesforce, as its users and other integrations see it ------------------------------------

class SalesforceOrg:
    """The emulated org: REST calls as another integration (`client=` another app, or none) and
    control calls as a person in the Salesforce UI; the request log the service left behind."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._token: str | None = None

    # REST, as another API client ---------------------------------------------------------------
    def token(self) -> str:
        if self._token is None:
            reply = http("POST", f"{self.base_url}/services/oauth2/token", form={
                "grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
            assert reply.status == 200, reply.body
            self._token = str(reply.body["access_token"])
        return self._token

    def rest(self, method: str, path: str, *, json_body: Any = None,
             client: str | None = TEST_CLIENT_NAME) -> Reply:
        headers = {"Authorization": f"Bearer {self.token()}"}
        if client is not None:
            headers["Sforce-Call-Options"] = f"client={client}"
        return http(method, f"{self.base_url}/services/data/v{API_VERSION}/{path.lstrip('/')}",
                    json_body=json_body, headers=headers)

    def create(self, sobject: str, fields: Mapping[str, Any], *,
               client: str | None = TEST_CLIENT_NAME) -> str:
        reply = self.rest("POST", f"sobjects/{sobject}", json_body=dict(fields), client=client)
        assert reply.status == 201, f"create {sobject} refused: {reply.body}"
        return str(reply.body["id"])

    def update(self, sobject: str, sf_id: str, fields: Mapping[str, Any], *,
               client: str | None = TEST_CLIENT_NAME) -> None:
        reply = self.rest("PATCH", f"sobjects/{sobject}/{sf_id}", json_body=dict(fields), client=client)
        assert reply.status == 204, f"update {sobject} {sf_id} refused: {reply.body}"

    def read(self, sobject: str, sf_id: str) -> dict[str, Any]:
        """The record read back through REST: every field, nulls included."""
        reply = self.rest("GET", f"sobjects/{sobject}/{sf_id}")
        assert reply.status == 200, f"read {sobject} {sf_id}: {reply.status} {reply.body}"
        return dict(reply.body)

    # control API, as a person in the UI / the test's view of the org ---------------------------
    def control(self, method: str, path: str, json_body: Any = None) -> Reply:
        return http(method, f"{self.base_url}/_emulator/{path.lstrip('/')}", json_body=json_body)

    def record(self, sobject: str, sf_id: str) -> dict[str, Any]:
        """The record as stored (no API call spent; null fields absent)."""
        reply = self.control("GET", f"records/{sobject}/{sf_id}")
        assert reply.status == 200, f"no {sobject} {sf_id}: {reply.body}"
        return dict(reply.body)

    def ui_update(self, sobject: str, sf_id: str, fields: Mapping[str, Any]) -> None:
        reply = self.control("PATCH", f"records/{sobject}/{sf_id}", dict(fields))
        assert reply.status == 200, f"UI edit of {sf_id} refused: {reply.body}"

    def convert_lead(self, lead_id: str, **extra: Any) -> dict[str, Any]:
        reply = self.control("POST", "convert-lead", {"leadId": lead_id, **extra})
        assert reply.status == 200, f"conversion of {lead_id} refused: {reply.body}"
        return dict(reply.body)

    def streaming_stats(self) -> dict[str, Any]:
        return dict(self.control("GET", "streaming/stats").body)

    def requests(self) -> list[dict[str, Any]]:
        return list(self.control("GET", "requests").body["requests"])

    def service_writes(self, sf_id: str | None = None, *, since: float = 0.0) -> list[dict[str, Any]]:
        """Records the service wrote (REST writes carrying its `client=` name) since `since`
        (epoch seconds), optionally only record `sf_id`; each is the record as sent, with
        `_method`, `_path` and `_status` of its request added."""
        out: list[dict[str, Any]] = []
        for entry in self.requests():
            if entry["ts"] < since or entry["method"] not in ("POST", "PATCH"):
                continue
            if "/sobjects" not in entry["path"]:
                continue
            if f"client={SERVICE_CLIENT_NAME}" not in _header(entry, "Sforce-Call-Options"):
                continue
            for record in _written_records(entry):
                if sf_id is None or record.get("Id") == sf_id:
                    out.append({**record, "_method": entry["method"], "_path": entry["path"],
                                "_status": entry["status"]})
        return out


def _header(entry: Mapping[str, Any], name: str) -> str:
    for key, value in (entry.get("headers") or {}).items():
        if key.lower() == name.lower():
            return str(value)
    return ""


def _written_records(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    body = entry.get("body")
    if not isinstance(body, dict):
        return []
    if "records" in body:  # composite/sobjects
        return [dict(r) for r in body["records"] if isinstance(r, dict)]
    record = dict(body)
    parts = entry["path"].rstrip("/").split("/")
    if entry["method"] == "PATCH" and len(parts) >= 2:  # sobjects/<Object>/<id>
        record.setdefault("Id", parts[-1])
    return [record]


# --- the service process ------------------------------------------------------------------------

@dataclass
class ServiceProcess:
    """`python -m listener run` with an env of its own, in its own working directory (no stray
    `.env`), logging JSON to `log_path`."""

    workdir: Path
    salesforce_url: str
    mongo_uri: str
    database: str
    mappings: str
    admin_token: str = "e2e-admin-token-0123456789abcdefghij"
    extra_env: dict[str, str] = field(default_factory=dict)
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def mappings_path(self) -> Path:
        return self.workdir / "mappings.toml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "service.log"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
        env_file = self.workdir / "service.env"
        env_file.touch()
        env.update({
            "SFSYNC_ENV_FILE": str(env_file),
            "SFSYNC_SALESFORCE__LOGIN_URL": self.salesforce_url,
            "SFSYNC_SALESFORCE__AUTH_FLOW": "client_credentials",
            "SFSYNC_SALESFORCE__CLIENT_ID": CLIENT_ID,
            "SFSYNC_SALESFORCE__CLIENT_SECRET": CLIENT_SECRET,
            "SFSYNC_SALESFORCE__CLIENT_NAME": SERVICE_CLIENT_NAME,
            "SFSYNC_MONGODB__URI": self.mongo_uri,
            "SFSYNC_MONGODB__DATABASE": self.database,
            "SFSYNC_SYNC__FREQUENCY_MINUTES": "1",
            "SFSYNC_SYNC__MAPPINGS_FILE": str(self.mappings_path),
            "SFSYNC_ADMIN__HOST": "127.0.0.1",
            "SFSYNC_ADMIN__PORT": str(self.admin_port),
            "SFSYNC_ADMIN__TOKEN": self.admin_token,
            "SFSYNC_LOG__FORMAT": "json",
            "SFSYNC_LOG__LEVEL": "INFO",
        })
        env.update(self.extra_env)
        return env

    def start(self, *, ready_timeout: float = 40.0) -> None:
        """Start the service and wait until `/readyz` answers 200."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mappings_path.write_text(self.mappings)
        self.launch()
        self.wait_ready(ready_timeout)

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the process without waiting for readiness (for start-up failure tests)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.mappings_path.exists():
            self.mappings_path.write_text(self.mappings)
        with open(self.log_path, "ab") as log:
            log.write(f'{{"event": "e2e_harness_start", "start": {self.starts + 1}}}\n'.encode())
            self.process = subprocess.Popen(
                [sys.executable, "-m", "listener", "run"], cwd=self.workdir, env=self.env(),
                stdout=log, stderr=subprocess.STDOUT,
            )
        self.starts += 1
        return self.process

    def wait_ready(self, timeout: float = 40.0) -> None:
        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"service exited with {self.process.returncode} before it was ready:\n{self.log_tail()}")
            try:
                return http("GET", f"{self.admin_url}/readyz", timeout=2).status == 200
            except OSError:
                return False

        try:
            wait_for(ready, timeout=timeout, interval=0.25, what="GET /readyz -> 200")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- service log tail ---\n{self.log_tail()}") from None

    def stop(self, *, timeout: float = STOP_TIMEOUT) -> tuple[int, float]:
        """SIGTERM; assert the process exits within `timeout` seconds (it is killed otherwise).
        Returns (exit code, seconds it took)."""
        if self.process is None or self.process.poll() is not None:
            return (self.process.returncode if self.process else 0), 0.0
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            raise AssertionError(
                f"service did not exit within {timeout:g}s of SIGTERM (killed):\n{self.log_tail()}") from None
        return code, time.monotonic() - started

    def kill(self) -> None:
        """For teardown after a failure: no assertions, just make sure it is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # logs --------------------------------------------------------------------------------------
    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []

    def log_events(self, event: str | None = None, *, start: int | None = None) -> list[dict[str, Any]]:
        """The JSON log objects (non-JSON lines skipped), optionally of one `event` name and of
        one start of the process (1 = the first)."""
        current = 0
        out: list[dict[str, Any]] = []
        for line in self.log_lines():
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(item, dict):
                continue
            if item.get("event") == "e2e_harness_start":
                current = int(item["start"])
                continue
            if start is not None and current != start:
                continue
            if event is None or item.get("event") == event:
                out.append(item)
        return out

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_lines()[-lines:])

    # admin API ---------------------------------------------------------------------------------
    def api(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
            json_body: Any = None, timeout: float = 30.0) -> Reply:
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        url = f"{self.admin_url}{path}" + (f"?{query}" if query else "")
        return http(method, url, json_body=json_body, timeout=timeout,
                    headers={"Authorization": f"Bearer {self.admin_token}"})

    def sync_logs(self, **filters: Any) -> list[dict[str, Any]]:
        """`GET /api/sync-logs` (newest first), every page."""
        items: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 200, **filters}
        while True:
            reply = self.api("GET", "/api/sync-logs", params=params)
            assert reply.status == 200, f"GET /api/sync-logs: {reply.status} {reply.body}"
            items += reply.body["items"]
            if not reply.body.get("next_cursor"):
                return items
            params["cursor"] = reply.body["next_cursor"]

    def status(self) -> dict[str, Any]:
        reply = self.api("GET", "/api/status")
        assert reply.status == 200, f"GET /api/status: {reply.status} {reply.body}"
        return dict(reply.body)


class ServiceFactory(Protocol):
    """Builds (does not start) a `ServiceProcess` over the module's org (see tests/e2e/conftest.py)."""

    def __call__(self, mappings: str, *, database: str | None = None) -> ServiceProcess: ...


def logs_of(items: Iterable[Mapping[str, Any]], **match: Any) -> list[Mapping[str, Any]]:
    """The sync logs whose keys equal every `match` value."""
    return [i for i in items if all(i.get(k) == v for k, v in match.items())]


# --- the moves both sides make, and waiting for them to cross over ------------------------------

Doc = dict[str, Any]


def lead_fields(tag: str, **extra: Any) -> dict[str, Any]:
    """A new Lead's fields: unique name and email, owned by the mapped owner (becomes a Person)."""
    name = unique(tag)
    return {"FirstName": "Ada", "LastName": name.capitalize(), "Company": f"{name} Ltd",
            "Email": f"{name}@example.com", "OwnerId": MAPPED_OWNER, **extra}


def person_of(db: Database[Doc], sf_id: str) -> Doc | None:
    """The Person linked to Salesforce record `sf_id`."""
    return db.people.find_one({"crm.id": sf_id})


def wait_person(db: Database[Doc], sf_id: str, check: Callable[[Doc], bool] = lambda _: True,
                what: str = "the Person", timeout: float = DEADLINE) -> Doc:
    def probe() -> Doc | None:
        doc = person_of(db, sf_id)
        return doc if doc is not None and check(doc) else None
    return wait_for(probe, timeout=timeout, what=f"{what} linked to {sf_id}")


def wait_record(org: SalesforceOrg, sf_id: str, check: Callable[[dict[str, Any]], bool], what: str,
                sobject: str = "Lead", timeout: float = DEADLINE) -> dict[str, Any]:
    """Wait until the Salesforce record satisfies `check` (read through the control API: no API
    calls spent, so the service's budget is untouched)."""
    def probe() -> dict[str, Any] | None:
        record = org.record(sobject, sf_id)
        return record if check(record) else None
    return wait_for(probe, timeout=timeout, what=f"{what} in {sobject} {sf_id}")


def linked_lead(org: SalesforceOrg, db: Database[Doc], tag: str, **extra: Any) -> tuple[str, Doc]:
    """A Lead created in Salesforce by a mapped owner, and the Person it became."""
    lead_id = org.create("Lead", lead_fields(tag, **extra))
    return lead_id, wait_person(db, lead_id)


def platform_edit(db: Database[Doc], person: Mapping[str, Any], **fields: Any) -> datetime:
    """What the platform does when a user edits a Person: set the fields and `updated_at`."""
    now = datetime.now(UTC)
    db.people.update_one({"_id": person["_id"]}, {"$set": {**fields, "updated_at": now}})
    return now


def later_platform_marker(org: SalesforceOrg, db: Database[Doc], lead_id: str, person: Doc) -> str:
    """A later platform edit of LastName, waited for in Salesforce: the outbox sends a record's
    changes in order, so whatever an earlier edit (or its echo) would have sent came first."""
    marker = unique("Marker")
    platform_edit(db, person, last_name=marker)
    wait_record(org, lead_id, lambda r: r.get("LastName") == marker, "the later platform edit")
    return marker


@contextmanager
def running_pipeline(service: ServiceProcess, org: SalesforceOrg, db: Database[Doc],
                     **env: str) -> Iterator[ServiceProcess]:
    """`service` started with `env` added (`SFSYNC_...` names) and its inbound pipeline proven;
    on exit the org's API budget is full again (a test may have moved it) and the service stopped."""
    service.extra_env.update(env)
    service.start()
    wait_pipeline(org, db)
    try:
        yield service
    finally:
        org.control("POST", "budget", {"used": 0})
        service.stop()


def wait_pipeline(org: SalesforceOrg, db: Database[Doc], timeout: float = 45.0) -> None:
    """Prove the inbound path is live: a Lead created now becomes a Person. A fresh Lead per
    try, since the first one may race the subscription (and an unlinked UPDATE is skipped)."""
    def one_try() -> bool:
        lead_id = org.create("Lead", lead_fields("probe"))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if person_of(db, lead_id) is not None:
                return True
            time.sleep(0.2)
        return False

    wait_for(one_try, timeout=timeout, interval=0, what="a new Lead to reach MongoDB (pipeline live)")
