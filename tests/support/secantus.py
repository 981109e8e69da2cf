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


def wait_for_port(process: subprocess.Popen[bytes], port: int, timeout: float, *, name: str,
                  log_path: Path | str) -> None:
    """Wait until `process` accepts connections on 127.0.0.1:`port`. RuntimeError if it exits
    first or does not open the port within `timeout` seconds (it is stopped then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}; see {log_path}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    stop_process(process)
    raise RuntimeError(f"{name} did not open port {port} within {timeout}s")


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; nothing if not running."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@dataclass
class SecantusServer:
    port: int
    storage: Path
    process: subprocess.Popen[bytes]

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.storage, ignore_errors=True)


def _daemon() -> str:
    candidate = Path(sys.executable).with_name("secantusd-py")
    return str(candidate) if candidate.exists() else "secantusd-py"


def spawn_secantus(port: int, storage: Path, log_path: Path, timeout: float = 20.0
                   ) -> subprocess.Popen[bytes]:
    """`secantusd-py` on 127.0.0.1:`port` over the data directory `storage` (kept as it is: a
    restart on the same directory sees the same data), its output appended to `log_path`;
    returns once it accepts connections."""
    storage.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [_daemon(), "--host", "127.0.0.1", "--port", str(port),
             "--storage-path", str(storage), "--log-level", "WARNING"],
            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
        )
    wait_for_port(process, port, timeout, name="secantusd-py", log_path=log_path)
    return process


def start_secantus(storage: Path | None = None, timeout: float = 20.0, *, port: int | None = None
                   ) -> SecantusServer:
    """Start `secantusd-py` on a loopback port (a free one unless given) and wait until it accepts
    connections; `stop()` removes its data directory."""
    port = port or free_port()
    storage = storage or Path(tempfile.mkdtemp(prefix="secantus-"))
    storage.parent.mkdir(parents=True, exist_ok=True)
    process = spawn_secantus(port, storage, storage.parent / f"secantus-{port}.log", timeout)
    return SecantusServer(port=port, storage=storage, process=process)
