"""Run the real `sfsync` CLI (`python -m service`) as a subprocess with an env of its own, and
check what a start-up failure prints: one line, no traceback, no configured secret."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.mappings import sample_mappings

ADMIN_TOKEN = "cli-admin-token-0123456789abcdefghijkl"  # >= 32 characters
CLIENT_SECRET = "sample-client-secret"  # the emulator's


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cli_env(workdir: Path, **overrides: str) -> dict[str, str]:
    """A clean env (no SFSYNC_* from this shell, an empty env file) for a client-credentials
    service with the sample mappings; `overrides` are SFSYNC_ variables without the prefix."""
    workdir.mkdir(parents=True, exist_ok=True)
    mappings = workdir / "mappings.toml"
    if not mappings.exists():
        mappings.write_text(sample_mappings({}), encoding="utf-8")
    env_file = workdir / "empty.env"
    env_file.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    env.update({
        "SFSYNC_ENV_FILE": str(env_file),
        "SFSYNC_SALESFORCE__AUTH_FLOW": "client_credentials",
        "SFSYNC_SALESFORCE__CLIENT_ID": "sample-client-id",
        "SFSYNC_SALESFORCE__CLIENT_SECRET": CLIENT_SECRET,
        "SFSYNC_SYNC__MAPPINGS_FILE": str(mappings),
        "SFSYNC_ADMIN__HOST": "127.0.0.1",
        "SFSYNC_ADMIN__PORT": "0",
        "SFSYNC_ADMIN__TOKEN": ADMIN_TOKEN,
        "SFSYNC_LOG__FORMAT": "json",
    })
    env.update({f"SFSYNC_{k}": v for k, v in overrides.items()})
    return env


def run_cli(args: Iterable[str], env: Mapping[str, str], cwd: Path, *, timeout: float = 60.0) -> CliResult:
    done = subprocess.run([sys.executable, "-m", "service", *args], env=dict(env), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)
    return CliResult(done.returncode, done.stdout, done.stderr)


def assert_clean_failure(result: CliResult, code: int, must_name: str, secrets: Iterable[str]) -> str:
    """Exit `code`; stderr is one line naming `must_name`; no traceback and no secret anywhere."""
    assert result.code == code, f"exit {result.code}, wanted {code}:\n{result.output}"
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"stderr should be one line:\n{result.stderr}"
    assert must_name in lines[0], lines[0]
    for secret in secrets:
        assert secret not in result.output, f"secret {secret!r} leaked:\n{result.output}"
    return lines[0]
