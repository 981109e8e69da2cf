"""`sfsync demo`: the real service against an emulated Salesforce org and a local MongoDB.

Starts `python -m emulator --seed sample` (with `--pubsub-port` when SFSYNC_SYNC__STREAM_API=pubsub:
the stream then runs over the Pub/Sub API) and (unless SFSYNC_MONGODB__URI is set) a SecantusDB
server as child processes, writes a demo mappings file and env file under `.sfsync-demo/`, runs
the service in this process, then edits records on both sides so the Sync Logs page shows
successes, a merge (re-import), a lead conversion and failures Salesforce rejects. Ctrl-C or
SIGTERM (or `--duration`) stops the service and kills the children by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from emulator.org import OTHER_USER_ID, OWNER_USER_ID
from emulator.sample import SAMPLE_MAPPINGS_TOML
from reconciler.errors import SyncError
from settings import Mappings, Settings, load_mappings

log = structlog.get_logger(__name__)

DEMO_DIR = Path(".sfsync-demo")
DEMO_DATABASE = "salesforce_sync_demo"
MAPPED_OWNER = OWNER_USER_ID   # mapped to u-1 in the sample mappings
OTHER_OWNER = OTHER_USER_ID
DEMO_MAPPINGS = "# Written by `sfsync demo`: the emulator's sample mappings.\n" + SAMPLE_MAPPINGS_TOML


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGTERM if the demo dies without cleaning up
    (e.g. SIGKILL), so no emulator or database outlives the demo."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Children:
    """Child processes, stopped by pid (SIGTERM, then SIGKILL) whatever happens."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as out:
            # Their own process group: Ctrl-C in the terminal reaches the demo only, which stops
            # the service first and then them (children killed first left the service hanging).
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       preexec_fn=_die_with_parent, process_group=0)
        self.processes.append(process)
        log.info("demo_child_started", pid=process.pid, program=Path(args[0]).name, log=str(log_path))
        return process

    def stop(self, grace: float = 1.5) -> None:
        """SIGTERM to each child's group, SIGKILL to what is left after `grace` seconds."""
        for process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        self.processes.clear()


async def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, within: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{what} did not open port {port} within {within:g}s")


def _secantus_daemon() -> str:
    beside = Path(sys.executable).with_name("secantusd-py")
    return str(beside) if beside.exists() else (shutil.which("secantusd-py") or "secantusd-py")


@dataclass(frozen=True)
class Backends:
    login_url: str                      # the emulator's base URL
    mongo_uri: str
    pubsub_endpoint: str | None = None  # the emulator's Pub/Sub API (`host:port`), when asked for


def stream_api() -> str:
    """`SFSYNC_SYNC__STREAM_API` from this shell (`cometd` unless set): the one SFSYNC_* variable
    the demo takes over, so `SFSYNC_SYNC__STREAM_API=pubsub sfsync demo` streams over Pub/Sub."""
    return os.environ.get("SFSYNC_SYNC__STREAM_API", "cometd").strip().lower() or "cometd"


async def start_backends(children: Children, workdir: Path, *, pubsub: bool = False) -> Backends:
    """The emulator (serving the Pub/Sub API too with `pubsub`) and MongoDB, starting what is needed."""
    emulator_port = free_port()
    pubsub_port = free_port() if pubsub else None
    emulator = children.start(
        [sys.executable, "-m", "emulator", "--host", "127.0.0.1", "--port", str(emulator_port),
         "--seed", "sample", *(["--pubsub-port", str(pubsub_port)] if pubsub_port else [])],
        workdir / "emulator.log")
    uri = os.environ.get("SFSYNC_MONGODB__URI")
    if not uri:
        db_port = free_port()
        (workdir / "db").mkdir(parents=True, exist_ok=True)
        db = children.start(
            [_secantus_daemon(), "--host", "127.0.0.1", "--port", str(db_port),
             "--storage-path", str(workdir / "db"), "--log-level", "WARNING"], workdir / "secantus.log")
        await wait_for_port(db_port, db, "secantusd-py")
        uri = f"mongodb://127.0.0.1:{db_port}/?directConnection=true"
    await wait_for_port(emulator_port, emulator, "the Salesforce emulator")
    if pubsub_port:
        await wait_for_port(pubsub_port, emulator, "the emulator's Pub/Sub API")
    return Backends(f"http://127.0.0.1:{emulator_port}", uri,
                    f"127.0.0.1:{pubsub_port}" if pubsub_port else None)


def demo_settings(*, login_url: str, mongo_uri: str, admin_port: int, token: str, workdir: Path,
                  pubsub_endpoint: str | None = None) -> Settings:
    """The demo's settings, also written to `<workdir>/demo.env` for `sfsync` commands; with
    `pubsub_endpoint` the stream runs over the emulator's Pub/Sub API."""
    mappings_file = workdir / "mappings.toml"
    mappings_file.write_text(DEMO_MAPPINGS, encoding="utf-8")
    values = {
        "SFSYNC_SALESFORCE__LOGIN_URL": login_url,
        "SFSYNC_SALESFORCE__AUTH_FLOW": "client_credentials",
        "SFSYNC_SALESFORCE__CLIENT_ID": "sample-client-id",
        "SFSYNC_SALESFORCE__CLIENT_SECRET": "sample-client-secret",
        "SFSYNC_MONGODB__URI": mongo_uri,
        "SFSYNC_MONGODB__DATABASE": os.environ.get("SFSYNC_MONGODB__DATABASE", DEMO_DATABASE),
        "SFSYNC_SYNC__FREQUENCY_MINUTES": "1",
        "SFSYNC_SYNC__MAPPINGS_FILE": str(mappings_file.resolve()),
        "SFSYNC_ADMIN__HOST": "127.0.0.1",
        "SFSYNC_ADMIN__PORT": str(admin_port),
        "SFSYNC_ADMIN__TOKEN": token,
        "SFSYNC_LOG__LEVEL": os.environ.get("SFSYNC_LOG__LEVEL", "WARNING"),
        "SFSYNC_LOG__FORMAT": "console",
    }
    if pubsub_endpoint:
        values["SFSYNC_SYNC__STREAM_API"] = "pubsub"
        values["SFSYNC_SALESFORCE__PUBSUB_ENDPOINT"] = pubsub_endpoint
    env_file = workdir / "demo.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    env_file.chmod(0o600)  # it holds the admin token
    # Only the env file, not this shell's SFSYNC_* variables: the demo must not reach a real org.
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SFSYNC_")}
    try:
        return Settings(_env_file=env_file)
    finally:
        os.environ.update(saved)


async def run_demo(*, duration: float | None = None, admin_port: int = 8080,
                   workdir: Path = DEMO_DIR) -> int:
    """Run the demo until Ctrl-C/SIGTERM or `duration` seconds; 0 on a clean stop."""
    from service.logs import configure_logging, settings_secrets

    _prepare(workdir)
    configure_logging(os.environ.get("SFSYNC_LOG__LEVEL", "WARNING"), "console")
    children = Children()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        backends = await start_backends(children, workdir, pubsub=stream_api() == "pubsub")
        login_url, mongo_uri = backends.login_url, backends.mongo_uri
        token = secrets.token_urlsafe(24)
        admin_port = _admin_port(admin_port)
        settings = demo_settings(login_url=login_url, mongo_uri=mongo_uri, admin_port=admin_port,
                                 token=token, workdir=workdir, pubsub_endpoint=backends.pubsub_endpoint)
        mappings = load_mappings(settings.sync.mappings_file)
        configure_logging(settings.log.level, settings.log.format.value, secrets=settings_secrets(settings))
        admin_url = f"http://127.0.0.1:{admin_port}"
        _banner(admin_url, token, backends, workdir)
        scenario = Scenario(login_url, admin_url, token, mongo_uri, settings.mongodb.database)
        return await _run_service(settings, mappings, scenario, stop, duration)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        children.stop()  # after the service: it must not see its backends vanish mid-run
        print("Demo stopped.", flush=True)


def _admin_port(wanted: int) -> int:
    """`wanted` if it is free on 127.0.0.1, else a free port (and say so): a second demo, or
    another service on 8080, must not leave the banner pointing at someone else's page."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", wanted))
            return wanted
        except OSError:
            pass
    port = free_port()
    print(f"Admin port {wanted} is taken (another service?); using {port} instead.", flush=True)
    return port


def cli_hint() -> str:
    """How to run `sfsync` so that it works as printed: the venv's script by its full path when
    it sits beside this Python (the README's set-up never activates the venv), else `python -m`."""
    script = Path(sys.executable).with_name("sfsync")
    if script.exists():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m service"


def _prepare(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    # a fresh emulated org each run: yesterday's local data would not match it
    shutil.rmtree(workdir / "db", ignore_errors=True)


async def _run_service(settings: Settings, mappings: Mappings, scenario: Scenario,
                       stop: asyncio.Event, duration: float | None) -> int:
    """The real service (`run_service`, admin surface included), stopped through its own stop
    event, so the demo goes through the same orderly shutdown as SIGTERM does in production."""
    from service.process import run_service
    from service.supervisor import SHUTDOWN_SECONDS

    service_stop = asyncio.Event()
    service = asyncio.create_task(run_service(settings, mappings, service_stop, handle_signals=False),
                                  name="sfsync-service")
    edits = asyncio.create_task(scenario.run(stop), name="sfsync-demo-scenario")
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter, service}, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        edits.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await edits
        service_stop.set()
    try:
        code = await asyncio.wait_for(service, SHUTDOWN_SECONDS + 5)
    except TimeoutError:
        log.error("demo_service_stop_timeout")
        return 1
    if code != 0:
        print("The service stopped with an error; see the log lines above.", file=sys.stderr, flush=True)
    return code


def _banner(admin_url: str, token: str, backends: Backends, workdir: Path) -> None:
    login_url, mongo_uri = backends.login_url, backends.mongo_uri
    stream = f"Pub/Sub API at {backends.pubsub_endpoint}" if backends.pubsub_endpoint else "CometD"
    print(
        "\nSalesforce Sync demo is running.\n"
        f"  Sync Logs page : {admin_url}/logs\n"
        f"  admin token    : {token}\n"
        f"  Salesforce     : {login_url} (emulated org, sample data)\n"
        f"  MongoDB        : {mongo_uri}\n"
        f"  CDC stream     : {stream}\n"
        f"  CLI            : SFSYNC_ENV_FILE={shlex.quote(str((workdir / 'demo.env').resolve()))} "
        f"{cli_hint()} logs\n"
        "Press Ctrl-C to stop.\n",
        flush=True,
    )


class Scenario:
    """Edits on both sides once the service is ready; each step is independent of the others.

    Local edits play the platform: plain writes to `people` (with `updated_at`, without the
    service's `_sync.written_at` marker), which the service must notice and send to Salesforce.
    """

    def __init__(self, emulator_url: str, admin_url: str, token: str, mongo_uri: str, database: str) -> None:
        self.emulator_url, self.admin_url, self.token = emulator_url, admin_url, token
        self.mongo_uri, self.database = mongo_uri, database

    async def run(self, stop: asyncio.Event) -> None:
        from reconciler.store import Store

        store = await Store.connect(self.mongo_uri, self.database)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                if await self._wait_ready(http, stop):
                    await self._steps(http, store, stop)
        finally:
            await store.close()

    async def _steps(self, http: aiohttp.ClientSession, store: Any, stop: asyncio.Event) -> None:
        leads = await self._sample_leads(http)
        mine = [lead["Id"] for lead in leads if lead.get("OwnerId") == MAPPED_OWNER]
        theirs = [lead["Id"] for lead in leads if lead.get("OwnerId") == OTHER_OWNER]
        steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("a new Lead in Salesforce", lambda: self._control(http, "POST", "seed", {"records": {"Lead": [{
                "FirstName": "Dana", "LastName": "Scully", "Company": "FBI", "Title": "Special Agent",
                "Email": "dana.scully@fbi.example.com", "OwnerId": MAPPED_OWNER}]}})),
        ]
        if len(mine) >= 4:
            steps += [
                ("a Lead edited in Salesforce", lambda: self._control(
                    http, "PATCH", f"records/Lead/{mine[0]}", {"Title": "VP Engineering"})),
                ("a Lead converted to a Contact", lambda: self._control(
                    http, "POST", "convert-lead", {"leadId": mine[1]})),
                ("a Person edited locally", lambda: self._edit_person(
                    store, mine[2], {"title": "Head of Data"})),
                ("a local email Salesforce rejects", lambda: self._edit_person(
                    store, mine[3], {"email": "not-an-email@@example"})),
            ]
        steps.append(("a local Person without a company (Lead create fails)",
                      lambda: self._new_person(store)))
        if theirs:
            steps.append(("a Lead re-imported (merge)", lambda: self._admin(
                http, "/api/import", {"sf_id": theirs[0]})))
        for name, step in steps:
            if stop.is_set():
                return
            try:
                await step()
                print(f"  demo: {name}", flush=True)
            except (aiohttp.ClientError, TimeoutError, RuntimeError, SyncError) as exc:
                log.warning("demo_step_failed", step=name, error=str(exc))
            await asyncio.sleep(1.5)

    async def _edit_person(self, store: Any, sf_id: str, changes: dict[str, Any]) -> None:
        from reconciler.store import RecordWrite

        for _ in range(40):  # the initial import may still be running
            found = await store.find_linked("people", [sf_id])
            if found:
                now = datetime.now(UTC)
                await store.bulk_apply("people", [RecordWrite(filter={"_id": found[0]["_id"]},
                                                              set={**changes, "updated_at": now})])
                return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"no local Person linked to {sf_id} yet")

    async def _new_person(self, store: Any) -> None:
        from reconciler.store import RecordWrite, new_object_id

        now = datetime.now(UTC)
        person = {"first_name": "Fox", "last_name": "Mulder", "email": "fox.mulder@example.com",
                  "owner_id": "u-1", "created_at": now, "updated_at": now}
        await store.bulk_apply("people", [RecordWrite(filter={"_id": new_object_id()},
                                                      set_on_insert=person, upsert=True)])

    async def _wait_ready(self, http: aiohttp.ClientSession, stop: asyncio.Event) -> bool:
        for _ in range(600):
            if stop.is_set():
                return False
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(self.admin_url + "/readyz") as response:
                    if response.status == 200:
                        return True
            await asyncio.sleep(0.5)
        log.warning("demo_service_not_ready")
        return False

    async def _sample_leads(self, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
        form = {"grant_type": "client_credentials", "client_id": "sample-client-id",
                "client_secret": "sample-client-secret"}
        async with http.post(self.emulator_url + "/services/oauth2/token", data=form) as response:
            access = (await response.json())["access_token"]
        query = "SELECT Id, OwnerId FROM Lead WHERE IsConverted = false ORDER BY CreatedDate"
        async with http.get(self.emulator_url + "/services/data/v62.0/query", params={"q": query},
                            headers={"Authorization": f"Bearer {access}"}) as response:
            body = await response.json()
        return list(body.get("records") or [])

    async def _control(self, http: aiohttp.ClientSession, method: str, path: str,
                       body: dict[str, Any]) -> Any:
        async with http.request(method, f"{self.emulator_url}/_emulator/{path}", json=body) as response:
            if response.status >= 400:
                raise RuntimeError(f"emulator {path}: {response.status} {await response.text()}")
            return await response.json()

    async def _admin(self, http: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with http.post(self.admin_url + path, json=body, headers=headers) as response:
            if response.status >= 400:
                raise RuntimeError(f"admin {path}: {response.status} {await response.text()}")
            return await response.json()
