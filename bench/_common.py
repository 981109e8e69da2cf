"""What every bench script shares: fresh servers, the raw-upsert baseline, peak RSS, the table.

The servers (SecantusDB and the emulator) run as separate processes, so the peak RSS this
process reports is the service's own: the emulator's records and the database's cache are
not in it. Everything a run creates lives under one temp directory, removed at the end.
"""

from __future__ import annotations

import logging
import math
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from settings import AuthFlow, Mappings, SalesforceSettings, parse_mappings
from tests.support.emulator import EmulatorProcess
from tests.support.secantus import SecantusServer, free_port, start_secantus

RAW_BATCH = 1_000  # UpdateOne upserts per bulk_write in the baseline
CLIENT_ID = "sample-client-id"  # the emulator's built-in connected app (emulator.state)
CLIENT_SECRET = "sample-client-secret"

# Mapped like a typical deployment's People <-> Leads; both generated owners are mapped users,
# so every generated Lead becomes a Person.
BENCH_MAPPINGS = """
[people.first_name]
lead = "FirstName"
[people.last_name]
lead = "LastName"
[people.email]
lead = "Email"
[people.title]
lead = "Title"
[people.phone]
lead = "Phone"
[people.company_name]
lead = "Company"
merge = "salesforce_unless_blank"
[people.city]
lead = "City"
[people.state]
lead = "State"
[people.country]
lead = "Country"
[people.owner_crm_id]
lead = "OwnerId"

[[users]]
local = "u-1"
salesforce = "005000000000001AAA"
[[users]]
local = "u-2"
salesforce = "005000000000002AAA"

[rules]
create_person_from_salesforce = true
create_in_salesforce = "lead"
"""


def bench_mappings() -> Mappings:
    return parse_mappings(BENCH_MAPPINGS)


# --- figures ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """The `pct`-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within 0..100, not {pct}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Row:
    """One line of a bench table: what was measured, its value, the target, whether it is met."""

    figure: str
    value: str
    target: str = ""
    met: bool | None = None

    @property
    def verdict(self) -> str:
        return "" if self.met is None else ("ok" if self.met else "MISSED")


def table(title: str, rows: Sequence[Row]) -> str:
    """A plain aligned table: figure left-aligned, value right-aligned, target and verdict."""
    header = Row("figure", "value", "target")
    lines = [(r.figure, r.value, r.target, r.verdict) for r in (header, *rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(4)]

    def render(line: tuple[str, str, str, str]) -> str:
        cells = (line[0].ljust(widths[0]), line[1].rjust(widths[1]), line[2].ljust(widths[2]), line[3])
        return "  ".join(cells).rstrip()

    rule = "-" * len(render(("", "", "", "")).ljust(sum(widths) + 6))
    return "\n".join([title, rule, render(lines[0]), rule, *(render(line) for line in lines[1:]), rule])


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


# --- memory -------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a later phase's peak is its own.
    False when the kernel does not allow it (the peak then covers the whole run)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# --- processes ----------------------------------------------------------------------------------


@contextmanager
def workdir() -> Iterator[Path]:
    """One temp directory for the run's databases and logs; removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="sfsync-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def fresh_secantus(work: Path) -> Iterator[str]:
    """A new SecantusDB server on an empty store; yields its URI (retryable writes off)."""
    server: SecantusServer = start_secantus(work / "secantus")
    try:
        yield f"{server.uri}&retryWrites=false"
    finally:
        server.stop()


@contextmanager
def emulator_process(work: Path, *args: str, timeout: float = 180.0) -> Iterator[str]:
    """`python -m emulator` in its own process (its org stays out of our RSS); yields the URL."""
    handle = EmulatorProcess(free_port(), args, work / "emulator.log")
    handle.start(timeout=timeout)  # generating --records N happens before the port opens
    try:
        yield handle.base_url
    finally:
        handle.stop()


def salesforce_settings(base_url: str, *, client_name: str = "salesforce-sync") -> SalesforceSettings:
    return SalesforceSettings(
        login_url=base_url, auth_flow=AuthFlow.CLIENT_CREDENTIALS, client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET, client_name=client_name,
    )


# --- the emulator's request log (the control API costs no API calls) ----------------------------


async def emulator_requests(base_url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/_emulator/requests") as resp:
        resp.raise_for_status()
        body = await resp.json()
    return list(body["requests"])


async def clear_emulator_requests(base_url: str) -> None:
    async with aiohttp.ClientSession() as session, session.delete(f"{base_url}/_emulator/requests") as resp:
        resp.raise_for_status()


def rest_calls(requests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The REST API calls among logged requests (OAuth and CometD are not API calls)."""
    return [r for r in requests if str(r.get("path", "")).startswith("/services/data/")]


# --- the raw bulk-upsert baseline ---------------------------------------------------------------


def _raw_doc(n: int) -> dict[str, Any]:
    """A document shaped like an imported Person (same field count, similar sizes)."""
    return {
        "first_name": "Alex", "last_name": f"Bench{n}", "email": f"alex.{n}@bench{n % 500}.example.com",
        "company_name": f"Bench Co {n % 500}", "owner_crm_id": "005000000000001AAA", "owner_id": "u-1",
        "crm.object": "Lead", "crm.owner_id": "005000000000001AAA", "crm.linked_at": time.time(),
        "_sync.written_at": time.time(), "updated_at": time.time(),
    }


async def raw_upsert_rate(uri: str, database: str, count: int) -> float:
    """Upserts per second of bare `bulk_write` (batches of 1,000 UpdateOne upserts on a unique
    key), the ceiling any import through this server and driver can reach.

    The baseline must bypass the store, so this is the one driver import outside
    `reconciler.store`; it uses the same driver (Motor) the store uses, for a like-for-like ratio.
    """
    from motor.motor_asyncio import AsyncIOMotorClient
    from pymongo import UpdateOne

    client: Any = AsyncIOMotorClient(uri, tz_aware=True)
    try:
        coll = client[database]["raw_upserts"]
        # the same unique sparse index the store puts on people.crm.id
        await coll.create_index("crm.id", unique=True, sparse=True)
        started = time.perf_counter()
        for start in range(0, count, RAW_BATCH):
            ops = [UpdateOne({"crm.id": f"00Q{n:015d}"}, {"$set": _raw_doc(n)}, upsert=True)
                   for n in range(start, min(start + RAW_BATCH, count))]
            await coll.bulk_write(ops, ordered=False)
        elapsed = time.perf_counter() - started
        await client.drop_database(database)
    finally:
        client.close()
    return rate(count, elapsed)


def quiet_logs() -> None:
    """Warnings and errors only, on stderr: the table on stdout stays readable."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
