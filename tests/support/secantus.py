"""Start and stop a real SecantusDB server (MongoDB wire protocol) as a separate process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SecantusServer:
    port: int
    storage: Path
    process: subprocess.Popen[bytes]

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.storage, ignore_errors=True)


def _daemon() -> str:
    candidate = Path(sys.executable).with_name("secantusd-py")
    return str(candidate) if candidate.exists() else "secantusd-py"


def start_secantus(storage: Path | None = None, timeout: float = 20.0, *, port: int | None = None
                   ) -> SecantusServer:
    """Start `secantusd-py` on a loopback port (a free one unless given) and wait until it accepts
    connections."""
    port = port or free_port()
    storage = storage or Path(tempfile.mkdtemp(prefix="secantus-"))
    storage.parent.mkdir(parents=True, exist_ok=True)
    log = open(storage.parent / f"secantus-{port}.log", "wb")  # noqa: SIM115 - lives with the process
    process = subprocess.Popen(
        [_daemon(), "--host", "127.0.0.1", "--port", str(port),
         "--storage-path", str(storage), "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"secantusd-py exited with {process.returncode}; see {log.name}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return SecantusServer(port=port, storage=storage, process=process)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"secantusd-py did not open port {port} within {timeout}s")
