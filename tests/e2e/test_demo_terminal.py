"""`sfsync demo` in a real (pseudo-)terminal, as a user runs it: a taken port, the CLI hint, Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pty and /proc")


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        parent = frontier.pop()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent and int(stat.parent.name) not in found:
                found.add(int(stat.parent.name))
                frontier.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Terminal:
    """A child process on its own pseudo-terminal (it is the session leader, the terminal's
    foreground process group is its own)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - the child
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        self.pid, self.fd, self.text = pid, fd, ""
        self.code: int | None = None

    def read_until(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.text)
            if found:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout:g}s:\n{self.text}")
            if select.select([self.fd], [], [], min(left, 0.2))[0]:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"terminal closed before {pattern!r}:\n{self.text}")
                self.text += chunk.decode(errors="replace").replace("\r\n", "\n")

    def ctrl_c(self) -> None:
        """What the terminal does on Ctrl-C: SIGINT to its foreground process group."""
        os.killpg(os.tcgetpgrp(self.fd), signal.SIGINT)

    def wait(self, timeout: float) -> int | None:
        """The exit code once the child has exited (None while it runs after `timeout`)."""
        deadline = time.monotonic() + timeout
        while self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() >= deadline:
                break
            with contextlib.suppress(OSError):
                if select.select([self.fd], [], [], 0.05)[0]:
                    self.text += os.read(self.fd, 65536).decode(errors="replace")
        return self.code


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_taken_port_cli_hint_and_ctrl_c(tmp_path: Path) -> None:
    """A taken admin port gets a free one (said so); the printed CLI hint works as printed from
    another directory without the venv on PATH; Ctrl-C stops everything in <= 3 s with exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    env["PATH"] = "/usr/bin:/bin"  # the venv is not activated
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        term = Terminal([sys.executable, "-m", "service", "demo", "--port", str(port)], env, tmp_path)
        try:
            moved = term.read_until(rf"port {port} is taken.*?using (\d+)", 60)
            url = term.read_until(r"Sync Logs page : (http://\S+)/logs", 60).group(1)
            assert url.endswith(f":{moved.group(1)}")
            hint = term.read_until(r"CLI\s+: (.+?)\n", 10).group(1).strip()
            deadline = time.monotonic() + 90
            while not _ready(url):
                assert time.monotonic() < deadline, "demo never ready:\n" + term.text
                time.sleep(0.3)

            other = tmp_path / "elsewhere"
            other.mkdir()
            done = subprocess.run(["sh", "-c", hint], cwd=other, env=env, capture_output=True, text=True,
                                  timeout=60, check=False)
            assert done.returncode == 0, f"{hint!r}: {done.stdout}{done.stderr}"
            assert "ID" in done.stdout or "No sync logs" in done.stdout

            children = _descendants(term.pid)
            assert len(children) >= 2
            started = time.monotonic()
            term.ctrl_c()
            code = term.wait(10)
            elapsed = time.monotonic() - started
        finally:
            if term.wait(0) is None:
                os.kill(term.pid, signal.SIGKILL)
                term.wait(5)
    assert code == 0, f"exit {code}:\n{term.text}"
    assert elapsed <= 3.0, f"took {elapsed:.1f}s:\n{term.text}"
    assert not [pid for pid in children if _alive(pid)]
