"""The emulated org's configuration and the state every route handler shares.

The state holds plain data from modules that do not import it (tokens, traffic, org, bus,
limits, cursors); the handler modules (auth, rest, control, cometd) import the state, never
the other way round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from emulator.cdc import ChangeEventBus
from emulator.limits import OrgLimits
from emulator.org import Org
from emulator.soql import QueryCursors
from emulator.tokens import TokenStore
from emulator.traffic import Faults, RequestLog

SAMPLE_CLIENT_ID = "sample-client-id"
SAMPLE_CLIENT_SECRET = "sample-client-secret"
SAMPLE_REFRESH_TOKEN = "sample-refresh-token"


class CometdHandle(Protocol):
    """What the state keeps of the running CometD server (`emulator.cometd.CometdServer`)."""

    timeout_ms: int  # the long-poll timeout: tests shorten it


@dataclass
class EmulatorConfig:
    api_version: str = "62.0"  # serves any vNN.N under /services/data and /cometd/NN.N
    token_ttl_seconds: float = 7200
    api_max: int = 100_000  # DailyApiRequests Max
    events_max: int = 50_000  # DailyDeliveredPlatformEvents Max
    retention_seconds: float = 72 * 3600  # CDC event retention
    control_enabled: bool = True
    clients: dict[str, str] = field(default_factory=lambda: {SAMPLE_CLIENT_ID: SAMPLE_CLIENT_SECRET})
    jwt_public_key_pem: bytes | None = None  # verifies JWT bearer assertions (RS256)
    username: str = "integration@example.com"
    seed: str | None = None  # "sample" or None
    records: int = 0  # extra generated records for benchmarks
    refresh_tokens: frozenset[str] = frozenset({SAMPLE_REFRESH_TOKEN})
    login_url: str | None = None  # extra accepted JWT audience (defaults to instance_url)


class EmulatorState:
    """Everything one running org holds; `app["state"]`."""

    def __init__(self, config: EmulatorConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.bus = ChangeEventBus(retention_seconds=config.retention_seconds, clock=clock)
        self.limits = OrgLimits(api_max=config.api_max, events_max=config.events_max)
        self.tokens = TokenStore(ttl_seconds=config.token_ttl_seconds, clock=clock)
        self.org = Org(self.bus, clock=clock, api_version=config.api_version)
        self.cursors = QueryCursors()
        self.faults = Faults()
        self.requests = RequestLog()
        self.cometd: CometdHandle | None = None
        self.instance_url = ""
