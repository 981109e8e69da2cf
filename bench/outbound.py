"""Outbound benchmark: REST calls per 1,000 local edits to linked People, and their latency.

    .venv/bin/python -m bench.outbound [--edits 1000] [--poll-interval 10] [--concurrency 16]

The real service pieces run in this process: `Store`, the local-change watcher (change
streams on SecantusDB), the durable `Outbox`, the `OutboundFlusher` and a `SalesforceClient`
against the emulator (its own process). The People are linked by a real backfill first. This
script plays the platform: it edits `title` on linked People straight in MongoDB.

Two phases, in one service instance (as a mode switch happens in production):
- streaming: a burst of `--edits` edits, as fast as MongoDB takes them;
- polling (low API budget): `--edits` edits spread evenly over one polling interval, flushed
  once per interval.
REST calls are counted from the emulator's request log. Latency runs from the edit's
acknowledgement by MongoDB to the arrival at Salesforce of the call that carries it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bench._common import (
    Row,
    bench_mappings,
    clear_emulator_requests,
    emulator_process,
    emulator_requests,
    fmt,
    fresh_secantus,
    percentile,
    quiet_logs,
    rate,
    rest_calls,
    salesforce_settings,
    table,
    workdir,
)
from listener.backfill import backfill
from listener.reader import RecordReader
from listener.salesforce import SalesforceClient
from reconciler.inbound import Reconciler
from reconciler.local_changes import LocalChangeWatcher
from reconciler.merge import bench_merge
from reconciler.outbound import FlushPolicy, OutboundFlusher
from reconciler.outbox import Outbox
from reconciler.store import Store
from settings import Mappings

DATABASE = "bench_outbound"
STREAMING_TARGET = 6.0   # REST calls per 1,000 edits
POLLING_TARGET = 5.5
WAIT_LIMIT_S = 120.0


@dataclass
class BenchBudget:
    """A budget whose mode the bench sets: the bench measures the flusher in each mode, not
    the governor's switching (that has its own tests)."""

    mode: str = "streaming"

    def allows_optional_calls(self) -> bool:
        return self.mode != "paused"


@dataclass
class Phase:
    name: str
    edits: int
    edit_times: dict[str, float] = field(default_factory=dict)   # sf id -> acknowledged at
    calls: list[dict[str, Any]] = field(default_factory=list)    # REST calls logged in the phase
    first_edit: float = 0.0
    delivered: dict[str, float] = field(default_factory=dict)    # sf id -> arrived at Salesforce

    @property
    def latencies_ms(self) -> list[float]:
        return [(self.delivered[i] - t) * 1000 for i, t in self.edit_times.items() if i in self.delivered]

    @property
    def call_sizes(self) -> list[int]:
        """Records per composite/sobjects call, in order."""
        return [len((c.get("body") or {}).get("records") or []) if isinstance(c.get("body"), dict) else -1
                for c in self.calls if str(c["path"]).endswith("/composite/sobjects")]


class Platform:
    """The sales-engagement platform: it writes People directly, as its users edit them.

    The platform is not the service, so it has its own driver client (the one driver import
    outside `reconciler.store`, like the raw baseline in `_common`)."""

    def __init__(self, uri: str) -> None:
        from motor.motor_asyncio import AsyncIOMotorClient

        self._client: Any = AsyncIOMotorClient(uri, tz_aware=True)
        self.people = self._client[DATABASE]["people"]

    async def linked_people(self) -> list[tuple[Any, str]]:
        docs = await self.people.find({"crm.id": {"$exists": True}}, {"crm.id": 1}).sort("crm.id", 1) \
            .to_list(None)
        return [(d["_id"], d["crm"]["id"]) for d in docs]

    async def edit(self, local_id: Any, title: str) -> None:
        await self.people.update_one({"_id": local_id},
                                     {"$set": {"title": title, "updated_at": datetime.now(UTC)}})

    def close(self) -> None:
        self._client.close()


async def link_people(base_url: str, store: Store, mappings: Mappings) -> int:
    """The real backfill links every Lead to a Person (its calls are not counted)."""
    async with SalesforceClient(salesforce_settings(base_url)) as sf:
        writable = {"Lead": await sf.field_writability("Lead")}
        reader = RecordReader(sf, mappings)
        reconciler = Reconciler(store, mappings, fetcher=reader, writable=writable.__getitem__)
        result = await backfill(reader, store, reconciler, ["Lead"])
    return result.records


async def edit_all(platform: Platform, phase: Phase, people: Sequence[tuple[Any, str]], *,
                   concurrency: int, spread_s: float = 0.0) -> None:
    """Edit each person once; `spread_s` > 0 paces the edits evenly over that many seconds."""
    queue: asyncio.Queue[tuple[int, Any, str]] = asyncio.Queue()
    for n, (local_id, sf_id) in enumerate(people):
        queue.put_nowait((n, local_id, sf_id))
    phase.first_edit = time.time()
    start = time.perf_counter()

    async def worker() -> None:
        while not queue.empty():
            n, local_id, sf_id = queue.get_nowait()
            if spread_s:
                await asyncio.sleep(max(0.0, start + spread_s * n / len(people) - time.perf_counter()))
            await platform.edit(local_id, f"{phase.name} title {n}")
            phase.edit_times[sf_id] = time.time()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def wait_delivered(flusher: OutboundFlusher, target: int, limit_s: float) -> bool:
    deadline = time.perf_counter() + limit_s
    while flusher.records_sent + flusher.records_failed < target:
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def record_deliveries(phase: Phase, requests: Sequence[dict[str, Any]]) -> None:
    phase.calls = rest_calls(requests)
    for call in phase.calls:
        body = call.get("body")
        if call.get("method") != "PATCH" or not isinstance(body, dict):
            continue
        for record in body.get("records") or []:
            sf_id = record.get("Id")
            if sf_id in phase.edit_times and sf_id not in phase.delivered:
                phase.delivered[sf_id] = float(call["ts"])


async def wait_for_watch(platform: Platform, flusher: OutboundFlusher, outbox: Outbox,
                         canary: tuple[Any, str]) -> None:
    """The watcher opens its change stream in the background: edit one canary person until an
    edit gets through, then let the outbox drain, so no measured edit is missed or joined."""
    deadline = time.perf_counter() + WAIT_LIMIT_S
    attempt = 0
    while await outbox.depth() == 0 and flusher.records_sent + flusher.records_failed == 0:
        if time.perf_counter() > deadline:
            raise RuntimeError("the local-change watcher never picked up an edit")
        await platform.edit(canary[0], f"canary {attempt}")
        attempt += 1
        for _ in range(10):
            await asyncio.sleep(0.1)
            if await outbox.depth():
                break
    if not await wait_delivered(flusher, 1, WAIT_LIMIT_S):
        raise RuntimeError("the canary edit never reached Salesforce")
    for _ in range(int(WAIT_LIMIT_S / 0.1)):
        if not await outbox.depth():
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the outbox did not drain after the canary edit")


async def run_phase(phase: Phase, base_url: str, platform: Platform, flusher: OutboundFlusher,
                    people: Sequence[tuple[Any, str]], *, concurrency: int, spread_s: float,
                    limit_s: float) -> None:
    await clear_emulator_requests(base_url)
    already = flusher.records_sent + flusher.records_failed
    await edit_all(platform, phase, people, concurrency=concurrency, spread_s=spread_s)
    if not await wait_delivered(flusher, already + len(people), limit_s):
        print(f"warning: {phase.name}: only {flusher.records_sent + flusher.records_failed - already} "
              f"of {len(people)} edits reached Salesforce within {limit_s:.0f} s")
    record_deliveries(phase, await emulator_requests(base_url))


@dataclass
class OutboundFigures:
    streaming: Phase
    polling: Phase
    warmup_calls: list[dict[str, Any]]
    poll_interval_s: float
    merge_rate: float


async def measure(base_url: str, uri: str, edits: int, poll_interval_s: float,
                  concurrency: int) -> OutboundFigures:
    mappings = bench_mappings()
    store = await Store.connect(uri, DATABASE)
    platform = Platform(uri)
    stop = asyncio.Event()
    try:
        await store.ensure_indexes()
        await link_people(base_url, store, mappings)
        people = await platform.linked_people()
        if len(people) < 2 * edits + 1:
            raise RuntimeError(f"backfill linked {len(people)} People, {2 * edits + 1} needed")
        await clear_emulator_requests(base_url)
        budget = BenchBudget()
        outbox = Outbox(store.outbox)
        async with SalesforceClient(salesforce_settings(base_url)) as sf:
            flusher = OutboundFlusher(outbox, sf, store, budget, client_name="salesforce-sync",
                                      policy=FlushPolicy(poll_interval=timedelta(seconds=poll_interval_s)))
            watcher = LocalChangeWatcher(store, mappings, outbox, collections=("people",), objects=("Lead",))
            tasks = [asyncio.create_task(flusher.run(stop)), asyncio.create_task(watcher.run(stop))]
            await wait_for_watch(platform, flusher, outbox, people[-1])
            warmup = rest_calls(await emulator_requests(base_url))
            streaming, polling = Phase("streaming", edits), Phase("polling", edits)
            await run_phase(streaming, base_url, platform, flusher, people[:edits],
                            concurrency=concurrency, spread_s=0.0, limit_s=WAIT_LIMIT_S)
            budget.mode = "polling"
            await run_phase(polling, base_url, platform, flusher, people[edits:2 * edits],
                            concurrency=concurrency, spread_s=poll_interval_s,
                            limit_s=2 * poll_interval_s + WAIT_LIMIT_S)
            stop.set()
            await asyncio.gather(*tasks)
    finally:
        stop.set()
        platform.close()
        await store.close()
    return OutboundFigures(streaming, polling, warmup, poll_interval_s, bench_merge(20_000))


def phase_rows(phase: Phase, target: float, extra_calls: int, note: str, *, paced: bool) -> list[Row]:
    per_1000 = (len(phase.calls) + extra_calls) * 1000 / phase.edits
    latencies = phase.latencies_ms
    last = max(phase.delivered.values(), default=phase.first_edit)
    rows = [
        Row(f"{phase.name}: edits delivered", f"{len(phase.delivered):,}/{phase.edits:,}",
            f"= {phase.edits:,}", len(phase.delivered) == phase.edits),
        Row(f"{phase.name}: composite/sobjects calls", fmt(len(phase.call_sizes))),
        Row(f"{phase.name}: records per call", " ".join(map(str, phase.call_sizes))),
        Row(f"{phase.name}: REST calls per 1,000 edits{note}", fmt(per_1000, 2), f"<= {target}",
            per_1000 <= target),
        Row(f"{phase.name}: edits/s end to end{' (paced)' if paced else ''}",
            fmt(rate(len(phase.delivered), last - phase.first_edit), 1)),
    ]
    if latencies:
        rows += [Row(f"{phase.name}: latency p50 (ms)", fmt(percentile(latencies, 50))),
                 Row(f"{phase.name}: latency p99 (ms)", fmt(percentile(latencies, 99)))]
    return rows


def rows(f: OutboundFigures) -> list[Row]:
    describes = sum(1 for c in f.warmup_calls if str(c["path"]).endswith("/describe"))
    return [
        Row("warm-up REST calls (canary edit)", fmt(len(f.warmup_calls))),
        Row("  of which describe (once per process)", fmt(describes)),
        *phase_rows(f.streaming, STREAMING_TARGET, describes, " (+ describe)", paced=False),
        Row("polling interval (s)", fmt(f.poll_interval_s, 1)),
        *phase_rows(f.polling, POLLING_TARGET, 0, "", paced=True),
        Row("merge decisions/s (reconciler.merge)", fmt(f.merge_rate)),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.outbound", description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=1_000, help="edits per phase (distinct People)")
    parser.add_argument("--poll-interval", type=float, default=10.0,
                        help="polling-mode flush interval, seconds (production: 1, 5 or 10 minutes)")
    parser.add_argument("--concurrency", type=int, default=16, help="platform edits in flight")
    args = parser.parse_args(argv)
    quiet_logs()
    wall = time.perf_counter()
    leads = 2 * args.edits + 1  # one set per phase and a canary
    with workdir() as work, fresh_secantus(work) as uri, \
            emulator_process(work, "--records", str(leads)) as base_url:
        figures = asyncio.run(measure(base_url, uri, args.edits, args.poll_interval, args.concurrency))
    title = (f"bench.outbound — {args.edits:,} edits per phase to linked People "
             f"(whole run {time.perf_counter() - wall:.0f} s)")
    print(table(title, rows(figures)))


if __name__ == "__main__":
    main()
