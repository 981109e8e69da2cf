"""Run the Salesforce org emulator for tests: in-process (`running_emulator`) or as a separate
process (`start_emulator_process`, for restart tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from tests.support.secantus import free_port, stop_process, wait_for_port

if TYPE_CHECKING:
    from emulator.pubsub import PubSubService
    from emulator.state import EmulatorConfig, EmulatorState


@dataclass
class RunningEmulator:
    base_url: str
    state: EmulatorState
    pubsub: PubSubService | None = None  # with `running_emulator(pubsub=True)`
    pubsub_endpoint: str = ""            # its `host:port`


@asynccontextmanager
async def running_emulator(config: EmulatorConfig | None = None, *,
                           pubsub: bool = False) -> AsyncIterator[RunningEmulator]:
    """The emulator on a free 127.0.0.1 port in this event loop (and its Pub/Sub API on another
    with `pubsub=True`); stopped on exit."""
    # Imported here: the benchmarks start the emulator as a process only, and the app (gRPC,
    # Avro, the org) would add 13 MiB to the RSS they report as the service's.
    from emulator.app import create_app
    from emulator.pubsub import PUBSUB_KEY, start_pubsub
    from emulator.state import EmulatorConfig
    app = create_app(config or EmulatorConfig())
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state: EmulatorState = app["state"]
    state.instance_url = f"http://127.0.0.1:{port}"
    running = RunningEmulator(state.instance_url, state)
    if pubsub:
        running.pubsub = app[PUBSUB_KEY]
        running.pubsub_endpoint = f"127.0.0.1:{await start_pubsub(app, '127.0.0.1', 0)}"
    try:
        yield running
    finally:
        await runner.cleanup()


@dataclass
class EmulatorProcess:
    """`python -m emulator` on a fixed port; `restart()` keeps the port (and loses the org's memory)."""

    port: int
    args: tuple[str, ...]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "emulator", "--host", "127.0.0.1", "--port", str(self.port),
                 *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
            )
        wait_for_port(self.process, self.port, timeout, name="emulator", log_path=self.log_path)

    def stop(self) -> None:
        stop_process(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()


def start_emulator_process(*args: str) -> EmulatorProcess:
    """Start `python -m emulator --port <free> *args` and wait until it accepts connections."""
    port = free_port()
    handle = EmulatorProcess(port, args, Path(tempfile.gettempdir()) / f"emulator-{port}.log")
    handle.start()
    return handle
