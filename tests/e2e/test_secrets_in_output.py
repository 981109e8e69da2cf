"""Secrets never reach the output (issue 14): the real process, configured with a client secret,
an admin token and a MongoDB password, run through refused credentials and real traffic, and
every line it wrote to stdout/stderr scanned for each secret (plain and URL-encoded) and for
any Salesforce access token. Redaction itself is unit-tested (tests/unit/test_logs.py); this is
its wiring, end to end.

The MongoDB password is real: a user is created on the session's SecantusDB (it checks SCRAM
credentials when they are given), so the service's traffic runs authenticated.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from tests.support.mappings import sample_mappings
from tests.support.secantus import SecantusServer
from tests.support.service import (
    CLIENT_SECRET,
    Doc,
    SalesforceOrg,
    ServiceFactory,
    ServiceProcess,
    linked_lead,
    platform_edit,
    wait_for,
    wait_pipeline,
    wait_record,
)

TAG = uuid.uuid4().hex[:10]
ADMIN_TOKEN = f"admin-token-{TAG}-{uuid.uuid4().hex}"  # >= 32 characters
MONGO_USER = f"sfsync{TAG}"
MONGO_PASSWORD = f"mongo-pw@{TAG}"       # '@' must be URL-encoded in the URI: both forms scanned
WRONG_CLIENT_SECRET = f"wrong-client-secret-{TAG}"
WRONG_MONGO_PASSWORD = f"wrong-mongo-pw-{TAG}"
SECRETS = [CLIENT_SECRET, ADMIN_TOKEN, MONGO_PASSWORD, WRONG_CLIENT_SECRET, WRONG_MONGO_PASSWORD]
ACCESS_TOKEN = re.compile(r"00D[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?![A-Za-z0-9._\-]{8,}")

MAPPINGS = sample_mappings({f: None for f in ("people.title", "people.phone", "people.city",
                                              "people.company_crm_id", "companies.industry",
                                              "companies.city")})


def leaks(lines: list[str]) -> list[str]:
    """Every (secret, line) where a secret, plain or URL-encoded, or an access token shows."""
    found: list[str] = []
    for number, line in enumerate(lines, 1):
        for secret in SECRETS:
            if secret in line or quote(secret, safe="") in line:
                found.append(f"line {number} shows {secret!r}: {line[:300]}")
        if ACCESS_TOKEN.search(line):
            found.append(f"line {number} shows an access token: {line[:300]}")
    return found


@dataclass
class Outputs:
    """What each run printed, by name."""

    runs: dict[str, list[str]]

    def leaks(self) -> dict[str, list[str]]:
        return {name: hits for name, lines in self.runs.items() if (hits := leaks(lines))}


@pytest.fixture(scope="module")
def mongo_user(secantus: SecantusServer) -> Iterator[str]:
    """A URI authenticating as a user with MONGO_PASSWORD (created for this module)."""
    client: MongoClient[Doc] = MongoClient(secantus.uri, serverSelectionTimeoutMS=10_000)
    client.admin.command("createUser", MONGO_USER, pwd=MONGO_PASSWORD, roles=["root"])
    try:
        yield _uri(secantus, MONGO_PASSWORD)
    finally:
        client.admin.command("dropUser", MONGO_USER)
        client.close()


def _uri(secantus: SecantusServer, password: str) -> str:
    return (f"mongodb://{MONGO_USER}:{quote(password, safe='')}@127.0.0.1:{secantus.port}/"
            "?directConnection=true&authSource=admin")


def _configured(service: ServiceProcess, mongo_uri: str, **env: str) -> ServiceProcess:
    service.mongo_uri = mongo_uri
    service.admin_token = ADMIN_TOKEN
    service.extra_env.update(env)
    return service


def _until_refused(service: ServiceProcess, what: str) -> None:
    """Launch, wait until the process exits or logs the refusal (`what` in an error or warning
    line), then stop it."""
    service.launch()

    def refused() -> bool:
        assert service.process is not None
        if service.process.poll() is not None:
            return True
        return any(what in line.lower() and ('"error"' in line or '"warning"' in line)
                   for line in service.log_lines())

    try:
        wait_for(refused, timeout=40, what=f"the service to log or exit on {what}")
    finally:
        service.stop()


@pytest.fixture(scope="module")
def outputs(service_factory: ServiceFactory, org: SalesforceOrg, db: Database[Doc], mongo_user: str,
            secantus: SecantusServer) -> Outputs:
    runs: dict[str, list[str]] = {}

    # `sfsync check-config`, every secret configured.
    config = _configured(service_factory(MAPPINGS), mongo_user)
    config.workdir.mkdir(parents=True, exist_ok=True)
    config.mappings_path.write_text(MAPPINGS)
    checked = subprocess.run([sys.executable, "-m", "listener", "check-config"], cwd=config.workdir,
                             env=config.env(), capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    runs["check-config"] = (checked.stdout + checked.stderr).splitlines()

    # Salesforce refuses the client secret.
    refused = _configured(service_factory(MAPPINGS), mongo_user,
                          SFSYNC_SALESFORCE__CLIENT_SECRET=WRONG_CLIENT_SECRET)
    _until_refused(refused, "invalid")
    runs["wrong client secret"] = refused.log_lines()

    # MongoDB refuses the password.
    refused_db = _configured(service_factory(MAPPINGS), _uri(secantus, WRONG_MONGO_PASSWORD))
    _until_refused(refused_db, "auth")
    runs["wrong mongodb password"] = refused_db.log_lines()

    # Real traffic both ways, a token expiry, admin calls with a good and a wrong token.
    live = _configured(service_factory(MAPPINGS), mongo_user, SFSYNC_LOG__LEVEL="DEBUG")
    live.start()
    wait_pipeline(org, db)
    lead_id, person = linked_lead(org, db, "secret")
    org.control("POST", "tokens/expire")
    org.control("POST", "streaming/drop")
    platform_edit(db, person, last_name="Expired")
    wait_record(org, lead_id, lambda r: r.get("LastName") == "Expired", "LastName Expired")
    assert live.api("GET", "/api/status").status == 200
    assert len(live.sync_logs()) > 0
    live.admin_token = "not-the-token"
    assert live.api("GET", "/api/status").status == 401
    live.admin_token = ADMIN_TOKEN
    cli = subprocess.run([sys.executable, "-m", "listener", "status"], cwd=live.workdir, env=live.env(),
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    runs["sfsync status"] = (cli.stdout + cli.stderr).splitlines()
    live.stop()
    runs["service with traffic"] = live.log_lines()
    return Outputs(runs)


class TestSecretsNeverInOutput:
    def test_every_run_printed_something(self, outputs: Outputs) -> None:
        """The scan has material: each run wrote output; the refusals were logged; the traffic
        run (DEBUG) wrote a lot and authenticated twice (the expired token was renewed)."""
        runs = outputs.runs
        assert all(runs.values()), {k: len(v) for k, v in runs.items()}
        assert any("invalid client credentials" in line for line in runs["wrong client secret"])
        assert any("authentication failed" in line for line in runs["wrong mongodb password"])
        assert len(runs["service with traffic"]) > 50
        assert sum('"salesforce_authenticated"' in line for line in runs["service with traffic"]) >= 2

    def test_no_secret_or_access_token_in_any_line(self, outputs: Outputs) -> None:
        """Not one line of stdout/stderr, of any run, shows a configured secret (plain or
        URL-encoded) or a Salesforce access token."""
        assert outputs.leaks() == {}


def test_leak_scan_finds_what_it_looks_for() -> None:
    """The scanner itself: a secret plain, URL-encoded, or an access token is found."""
    token = "00D000000000001!AQ" + "x" * 20
    assert leaks(["nothing here", "uri mongodb://u:" + quote(MONGO_PASSWORD, safe="") + "@h",
                  f"secret={CLIENT_SECRET}", f"Bearer {token}"]) == [
        f"line 2 shows {MONGO_PASSWORD!r}: uri mongodb://u:{quote(MONGO_PASSWORD, safe='')}@h",
        f"line 3 shows {CLIENT_SECRET!r}: secret={CLIENT_SECRET}",
        f"line 4 shows an access token: Bearer {token}",
    ]
