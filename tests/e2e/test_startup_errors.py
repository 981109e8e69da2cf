"""Start-up failures of the real CLI: one line, no traceback, no secret, a documented exit code.

Exit codes (service/cli.py): 2 configuration (a bad value, a refused credential, a port in use),
3 unreachable after retries (`SFSYNC_SYNC__GIVE_UP_SECONDS`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.cli_process import (
    ADMIN_TOKEN,
    CLIENT_SECRET,
    assert_clean_failure,
    cli_env,
    run_cli,
)
from tests.support.secantus import SecantusServer, free_port
from tests.support.service import SalesforceOrg

MONGO_PASSWORD = "Mongo-Pw-77"
KEY_PASSWORD = "kf-pass-55"
SECRETS = (ADMIN_TOKEN, MONGO_PASSWORD, KEY_PASSWORD)


class TestConfigurationFailures:
    """A bad value stops `sfsync run` with one line naming the variable, exit 2."""

    def test_mongodb_uri_with_the_wrong_scheme(self, tmp_path: Path) -> None:
        """`mongo://nope` (here with a password and a secret option) is refused before connecting."""
        env = cli_env(tmp_path, MONGODB__URI=f"mongo://admin:{MONGO_PASSWORD}@nope/"
                                              f"?tlsCertificateKeyFilePassword={KEY_PASSWORD}")
        result = run_cli(["run"], env, tmp_path)
        assert_clean_failure(result, 2, "SFSYNC_MONGODB__URI", SECRETS)

    def test_mongodb_uri_the_driver_refuses(self, tmp_path: Path) -> None:
        """A URI with the right scheme that the driver still refuses (a bad port) is exit 2 too."""
        env = cli_env(tmp_path, MONGODB__URI=f"mongodb://admin:{MONGO_PASSWORD}@localhost:notaport/")
        result = run_cli(["run"], env, tmp_path)
        assert_clean_failure(result, 2, "SFSYNC_MONGODB__URI", SECRETS)

    def test_admin_port_in_use(self, tmp_path: Path) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            env = cli_env(tmp_path, ADMIN__PORT=str(port), MONGODB__URI="mongodb://127.0.0.1:1/")
            result = run_cli(["run"], env, tmp_path)
        line = assert_clean_failure(result, 2, "SFSYNC_ADMIN__PORT", SECRETS)
        assert str(port) in line

    def test_short_admin_token(self, tmp_path: Path) -> None:
        short = "too-short-token"
        env = cli_env(tmp_path, ADMIN__TOKEN=short)
        result = run_cli(["run"], env, tmp_path)
        line = assert_clean_failure(result, 2, "SFSYNC_ADMIN__TOKEN", [*SECRETS, short])
        assert "32" in line


class TestCredentialsRefused:
    def test_wrong_client_secret_exits_2(self, tmp_path: Path, org: SalesforceOrg,
                                         secantus: SecantusServer) -> None:
        """Salesforce refuses the credentials: a configuration failure, one line, exit 2."""
        wrong = "wrong-client-secret-123"
        env = cli_env(tmp_path, SALESFORCE__LOGIN_URL=org.base_url, SALESFORCE__CLIENT_SECRET=wrong,
                      MONGODB__URI=secantus.uri, MONGODB__DATABASE="startup_wrong_secret")
        result = run_cli(["run"], env, tmp_path)
        assert_clean_failure(result, 2, "Salesforce", [*SECRETS, wrong, CLIENT_SECRET])


class TestUnreachableSalesforce:
    def test_retried_readyz_says_why_then_exit_3(self, tmp_path: Path, secantus: SecantusServer) -> None:
        """An unreachable LOGIN_URL is retried with backoff (no crash); /readyz 503 names
        Salesforce; with SFSYNC_SYNC__GIVE_UP_SECONDS set it ends with one line and exit 3."""
        port = free_port()
        env = cli_env(tmp_path, SALESFORCE__LOGIN_URL=f"http://127.0.0.1:{free_port()}",
                      MONGODB__URI=secantus.uri, MONGODB__DATABASE="startup_unreachable_sf",
                      ADMIN__PORT=str(port), SYNC__GIVE_UP_SECONDS="6")
        process = subprocess.Popen([sys.executable, "-m", "service", "run"], env=env, cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            reason = _wait_not_ready_reason(port, "Salesforce")
            assert "Salesforce" in reason and ADMIN_TOKEN not in reason
            stdout, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        from tests.support.cli_process import CliResult

        result = CliResult(process.returncode, stdout, stderr)
        assert_clean_failure(result, 3, "Salesforce", [*SECRETS, CLIENT_SECRET])
        assert "service_restarting" in stdout  # retried before giving up


def _wait_not_ready_reason(port: int, word: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
        except urllib.error.HTTPError as exc:
            last = str(json.loads(exc.read()).get("reason"))
            if word in last:
                return last
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"/readyz never named {word}; last reason {last!r}")
