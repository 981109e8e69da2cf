"""Inbound benchmark (issue 4, "Measure"): the real path, end to end.

    emulator (own process) --CometD--> CdcStream --> Reconciler --> Store --> SecantusDB (own process)
                          (--Pub/Sub gRPC--> PubSubStream with `--api pubsub`)

One run, one fresh SecantusDB and one fresh emulated org, in phases:

1. baseline: raw `bulk_write` upserts per second on the same server (`bench._common`);
2. link: one `Poller.run_once` over the org's generated Leads makes the linked People;
3. polling cost: every one of those Leads changed without an event (control API,
   `?emit_event=false`), then one `Poller.run_once`; REST calls counted by the client and by
   the org's request log;
4. latency: the stream live, Leads updated over REST (composite PATCH under another client
   name, so the events are not echoes) at a steady rate; commitTimestamp -> `_sync.written_at`,
   and commitTimestamp -> the sink's `apply` returned;
5. backlog: the stream stopped, N updates published, the stream started again from its stored
   replay id; events applied per second, REST calls, peak RSS of this process (the emulator and
   the database run elsewhere), MongoDB commands per micro-batch.

    python -m bench.inbound [--api cometd|pubsub] [--records 10000] [--backlog 100000] [--rate 200]
                            [--seconds 20] [--raw 20000] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import math
import pstats
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from bench._common import (
    RAW_BATCH,
    Row,
    _raw_doc,
    bench_mappings,
    clear_emulator_requests,
    emulator_process,
    emulator_requests,
    fmt,
    fresh_secantus,
    peak_rss_mb,
    percentile,
    rate,
    raw_upsert_rate,
    reset_peak_rss,
    rest_calls,
    salesforce_settings,
    table,
    workdir,
)
from listener.budget import BudgetGovernor
from listener.reader import RecordReader
from listener.salesforce import SalesforceClient
from listener.sources.cometd import CdcStream, StreamOptions
from listener.sources.polling import Poller
from reconciler.inbound import Reconciler
from reconciler.outbox import Outbox
from reconciler.ports import RejectedEvent, SalesforceChange
from reconciler.store import Store
from service.logs import configure_logging, reset_logging
from settings import BudgetSettings, SyncSettings
from tests.support.secantus import free_port

if TYPE_CHECKING:
    from listener.sources.pubsub import PubSubStream

SERVICE = "salesforce-sync"        # the service's client name (its own writes are echoes)
GENERATOR = "bench-generator"      # another integration changing the org: its events are real
API_VERSION = "62.0"
OBJECTS = ["Lead"]
COMPOSITE_MAX = 200                # records per composite/sobjects call
TARGET_RATIO = 0.5                 # pipeline >= half the raw upsert rate
TARGET_P99_MS = 250.0
TARGET_POLL_CALLS = 7.0            # REST calls per 10,000 changed records, polling
TARGET_RSS_MB = 150.0
PER = 10_000


@dataclass(frozen=True)
class Options:
    records: int
    backlog: int
    rate: int
    seconds: float
    raw: int
    batch_size: int
    batch_wait_ms: int
    profile: Path | None
    api: str = "cometd"               # the stream API: cometd | pubsub


# --- the sink, counted ----------------------------------------------------------------------------


def commit_ms(change: SalesforceChange) -> int | None:
    """The event's `ChangeEventHeader.commitTimestamp` (epoch ms), None for polled records."""
    try:
        value = change.raw["data"]["payload"]["ChangeEventHeader"]["commitTimestamp"]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    return value if isinstance(value, int) else None


@dataclass
class CountingSink:
    """The real Reconciler, counted: changes whose `apply` returned, and when (while timing)."""

    inner: Reconciler
    applied: int = 0
    batches: int = 0
    rejected: int = 0
    busy: float = 0.0          # seconds spent inside the Reconciler's `apply`
    timing: dict[str, tuple[int, float]] | None = None  # sf_id -> (commit ms, apply returned, s)

    async def apply(self, changes: Sequence[SalesforceChange]) -> None:
        started = time.perf_counter()
        await self.inner.apply(changes)
        self.busy += time.perf_counter() - started
        done = time.time()
        self.applied += len(changes)
        self.batches += 1
        if self.timing is not None:
            for change in changes:
                if (ms := commit_ms(change)) is not None:
                    self.timing[change.sf_id] = (ms, done)

    async def reject(self, events: Sequence[RejectedEvent]) -> None:
        await self.inner.reject(events)
        self.rejected += len(events)


class CommandCounter:
    """MongoDB round-trips by command name, counted while `on`, and the time with at least one
    in flight (`busy`): the lookup's slices overlap, so their round-trips do not add up."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.on = False
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.micros: Counter[str] = Counter()  # round-trip time by command and collection
        self.requests: dict[int, str] = {}
        self.busy = 0.0                         # seconds with a command in flight
        self._lock = threading.Lock()           # the driver's threads report the events
        self._in_flight = 0
        self._since = 0.0

    def clear(self) -> None:
        self.counts.clear()
        self.micros.clear()
        self.busy = 0.0

    def sent(self, request_id: int, key: str) -> None:
        with self._lock:
            self.requests[request_id] = key
            self.counts[key] += 1
            if self._in_flight == 0:
                self._since = self.clock()
            self._in_flight += 1

    def answered(self, request_id: int, micros: int | None) -> None:
        with self._lock:
            key = self.requests.pop(request_id, None)
            if key is None:
                return
            if micros is not None:
                self.micros[key] += micros
            self._in_flight -= 1
            if self._in_flight == 0:
                self.busy += self.clock() - self._since


def command_key(name: str, command: Any) -> str:
    """`update people`, `insert sync_logs`... (getMore names its collection under `collection`)."""
    target = command.get("collection") if name == "getMore" else command.get(name)
    return f"{name} {target}" if isinstance(target, str) else name


def monitor_commands() -> CommandCounter:
    """pymongo command monitoring, registered before any client exists. Diagnostics only: the
    driver import stays local, as in `bench._common.raw_upsert_rate`."""
    from pymongo import monitoring

    counter = CommandCounter()

    class Listener(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if counter.on:
                counter.sent(event.request_id, command_key(event.command_name, event.command))

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            counter.answered(event.request_id, event.duration_micros)

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            counter.answered(event.request_id, None)

    monitoring.register(Listener())
    return counter


# --- the rig --------------------------------------------------------------------------------------


@dataclass
class Rig:
    base_url: str
    store: Store
    sf: SalesforceClient       # the service's client
    gen: SalesforceClient      # the other integration making changes
    http: aiohttp.ClientSession
    sink: CountingSink
    poller: Poller
    opts: Options
    ids: list[str] = field(default_factory=list)
    pubsub_endpoint: str = ""  # the emulator's Pub/Sub API, with `--api pubsub`

    async def people(self, query: dict[str, Any]) -> int:
        count: int = await self.store.db.people.count_documents(query)
        return count


@asynccontextmanager
async def rig(opts: Options, work: Path, f: Figures) -> AsyncIterator[Rig]:
    """Fresh SecantusDB and org (each its own process), the baselines, then the service's parts."""
    args: tuple[str, ...] = ("--records", str(opts.records), "--api-max", "10000000",
                             "--events-max", "100000000")
    pubsub_port = free_port()
    if opts.api == "pubsub":
        args += ("--pubsub-port", str(pubsub_port))
    with fresh_secantus(work) as uri, emulator_process(work, *args) as base_url:
        f.raw_rate = await raw_upsert_rate(uri, "bench_raw", opts.raw)
        f.raw_people_rate, f.raw_update_rate = await raw_rates_like_people(uri, opts.raw)
        store = await Store.connect(uri, "bench_inbound")
        async with AsyncExitStack() as stack:
            stack.push_async_callback(store.close)
            await store.ensure_indexes()
            governor = BudgetGovernor(BudgetSettings())
            sf = await stack.enter_async_context(
                SalesforceClient(salesforce_settings(base_url, client_name=SERVICE),
                                 on_usage=governor.record_usage))
            gen = await stack.enter_async_context(
                SalesforceClient(salesforce_settings(base_url, client_name=GENERATOR)))
            http = await stack.enter_async_context(aiohttp.ClientSession())
            outbox = Outbox(store.outbox)
            await outbox.ensure_indexes()
            reconciler = Reconciler(store, bench_mappings(), fetcher=RecordReader(sf, bench_mappings()),
                                    outbox=outbox, client_name=SERVICE, budget=governor)
            sink = CountingSink(reconciler)
            poller = Poller(sf, store, sink, bench_mappings(), OBJECTS)
            yield Rig(base_url, store, sf, gen, http, sink, poller, opts,
                      pubsub_endpoint=f"127.0.0.1:{pubsub_port}")


async def raw_rates_like_people(uri: str, count: int) -> tuple[float, float]:
    """Like `bench._common.raw_upsert_rate`, into a collection indexed as the store indexes
    `people`: (upserts/s of new documents, updates/s of those documents by `_id`).

    The bare baseline has one secondary index; SecantusDB maintains every index of a document
    on every write, even when the indexed fields do not change, and an update of an existing
    document costs it about twice an insert. The second figure is what the pipeline does per
    event (one `UpdateOne` by `_id` of a linked Person), with nothing else around it.
    """
    from pymongo import UpdateOne

    store = await Store.connect(uri, "bench_raw_people")
    try:
        await store.ensure_indexes()
        people = store.db.people
        started = time.perf_counter()
        for start in range(0, count, RAW_BATCH):
            ops = [UpdateOne({"crm.id": f"00Q{n:015d}"}, {"$set": _raw_doc(n)}, upsert=True)
                   for n in range(start, min(start + RAW_BATCH, count))]
            await people.bulk_write(ops, ordered=False)
        upserts = rate(count, time.perf_counter() - started)
        ids = [d["_id"] for d in await people.find({}, {"_id": 1}).to_list(None)]
        started = time.perf_counter()
        for start in range(0, len(ids), RAW_BATCH):
            now = time.time()
            ops = [UpdateOne({"_id": i}, {"$set": {"title": f"Raw {start}", "updated_at": now,
                                                   "_sync.written_at": now}})
                   for i in ids[start:start + RAW_BATCH]]
            await people.bulk_write(ops, ordered=False)
        updates = rate(len(ids), time.perf_counter() - started)
        await store.client.drop_database("bench_raw_people")
    finally:
        await store.close()
    return upserts, updates


@asynccontextmanager
async def streaming(r: Rig) -> AsyncIterator[tuple[CdcStream | PubSubStream, asyncio.Task[None]]]:
    """The stream running (as the supervisor builds it); stopped, offsets committed, on exit."""
    stream: CdcStream | PubSubStream
    # imported only with `--api pubsub`, as the service does: gRPC and Avro are 13 MiB of RSS
    from listener.sources.pubsub import PubSubOptions, PubSubStream
    if r.opts.api == "pubsub":
        stream = PubSubStream(sf=r.sf, store=r.store, sink=r.sink, catch_up=r.poller, objects=OBJECTS,
                              options=PubSubOptions(client_name=SERVICE, endpoint=r.pubsub_endpoint,
                                                    batch_size=r.opts.batch_size,
                                                    batch_wait_ms=r.opts.batch_wait_ms))
    else:
        options = StreamOptions(client_name=SERVICE, api_version=API_VERSION, batch_size=r.opts.batch_size,
                                batch_wait_ms=r.opts.batch_wait_ms)
        stream = CdcStream(sf=r.sf, store=r.store, sink=r.sink, catch_up=r.poller, objects=OBJECTS,
                           options=options)
    stop = asyncio.Event()
    task = asyncio.create_task(stream.run(stop))
    try:
        yield stream, task
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def until(check: Callable[[], bool], task: asyncio.Task[None] | None, *, within: float,
                what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if task is not None and task.done():
            task.result()
            raise RuntimeError(f"the stream stopped before {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(0.01)


async def update_titles(gen: SalesforceClient, ids: Sequence[str], title: str, *,
                        concurrency: int = 4) -> None:
    """Composite PATCH of `Title` on `ids`, 200 a call, a few calls in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def call(chunk: Sequence[str]) -> None:
        async with gate:
            results = await gen.update("Lead", [{"Id": i, "Title": title} for i in chunk])
        failed = [r for r in results if not r.success]
        if failed:
            raise RuntimeError(f"generator update failed: {failed[0].errors}")

    await asyncio.gather(*(call(ids[s:s + COMPOSITE_MAX]) for s in range(0, len(ids), COMPOSITE_MAX)))


def service_calls(requests: Sequence[dict[str, Any]]) -> int:
    """REST calls in the org's request log made under the service's client name."""
    tag = f"client={SERVICE}"
    return sum(1 for r in rest_calls(requests)
               if any(k.lower() == "sforce-call-options" and tag in str(v)
                      for k, v in (r.get("headers") or {}).items()))


# --- phases ---------------------------------------------------------------------------------------


@dataclass
class Figures:
    raw_rate: float = 0.0
    raw_people_rate: float = 0.0
    raw_update_rate: float = 0.0
    link_records: int = 0
    link_seconds: float = 0.0
    poll_records: int = 0
    poll_calls: int = 0
    poll_logged: int = 0
    live_events: int = 0
    live_written_ms: list[float] = field(default_factory=list)
    live_applied_ms: list[float] = field(default_factory=list)
    live_achieved_rate: float = 0.0
    stream_events: int = 0
    stream_calls: int = 0
    stream_logged: int = 0
    backlog_events: int = 0
    backlog_seconds: float = 0.0
    backlog_batches: int = 0
    backlog_busy: float = 0.0
    peak_rss: float = 0.0
    rss_reset: bool = False
    commands: Counter[str] = field(default_factory=Counter)
    command_micros: Counter[str] = field(default_factory=Counter)
    mongo_busy: float = 0.0   # seconds of the drain with a MongoDB command in flight
    profile: str = ""


async def link(r: Rig, f: Figures) -> None:
    """First poll: every generated Lead becomes a linked Person (what the events will update)."""
    await r.poller.wait_until_covered()  # the signpost (now less the safety lag) is past every Lead
    started = time.perf_counter()
    report = await r.poller.run_once()
    f.link_seconds = time.perf_counter() - started
    f.link_records = report.records.get("Lead", 0)
    async for page in r.sf.query("SELECT Id FROM Lead ORDER BY Id"):
        r.ids.extend(str(rec["Id"]) for rec in page)
    linked = await r.people({"crm.id": {"$exists": True}})
    if linked != r.opts.records or len(r.ids) != r.opts.records:
        raise RuntimeError(f"link: {linked} People linked for {len(r.ids)} of {r.opts.records} Leads")


async def polling_cost(r: Rig, f: Figures) -> None:
    """Every linked Lead changed with no event, then one poll pass."""
    gate = asyncio.Semaphore(16)

    async def patch(sf_id: str) -> None:
        url = f"{r.base_url}/_emulator/records/Lead/{sf_id}?emit_event=false"
        async with gate, r.http.patch(url, json={"Title": "Polled"}) as resp:
            if resp.status != 200:
                raise RuntimeError(f"control PATCH failed: {resp.status} {await resp.text()}")

    await asyncio.gather(*(patch(i) for i in r.ids))
    await r.poller.wait_until_covered()  # the signpost (now less the safety lag) is past every patch
    await clear_emulator_requests(r.base_url)
    report = await r.poller.run_once()
    f.poll_records = report.records.get("Lead", 0)
    f.poll_calls = report.total_calls
    f.poll_logged = service_calls(await emulator_requests(r.base_url))
    applied = await r.people({"title": "Polled"})
    if f.poll_records != len(r.ids) or applied != len(r.ids):
        raise RuntimeError(f"poll: saw {f.poll_records}, applied {applied} of {len(r.ids)} changes")


async def live_latency(r: Rig, f: Figures) -> None:
    """The stream live; `rate` updates a second for `seconds`, each a distinct record's Title."""
    opts = r.opts
    ticks_per_second = 20
    per_tick = max(1, round(opts.rate / ticks_per_second))
    ticks = max(1, round(opts.seconds * ticks_per_second))
    total = per_tick * ticks
    async with streaming(r) as (stream, task):
        await until(lambda: stream.ready, task, within=60, what="the stream to connect")
        # one event first: a LATEST subscription's handover ends with its first response (a
        # Pub/Sub stream polls once more then), which is start-up, not the live path measured
        warmed = r.sink.applied
        await update_titles(r.gen, r.ids[:1], "Warm-up")
        await until(lambda: r.sink.applied > warmed, task, within=60, what="the warm-up event")
        await clear_emulator_requests(r.base_url)
        calls_before, applied_before = r.sf.calls_made, r.sink.applied
        r.sink.timing = {}
        started = time.monotonic()
        sends: list[asyncio.Task[None]] = []
        for tick in range(ticks):
            await asyncio.sleep(max(0.0, started + tick / ticks_per_second - time.monotonic()))
            chunk = [r.ids[(tick * per_tick + k) % len(r.ids)] for k in range(per_tick)]
            sends.append(asyncio.create_task(update_titles(r.gen, chunk, f"Live {tick}")))
        await asyncio.gather(*sends)
        f.live_achieved_rate = rate(total, time.monotonic() - started)
        await until(lambda: r.sink.applied - applied_before >= total, task, within=120,
                    what=f"{total} live events to apply")
        timing, r.sink.timing = r.sink.timing, None
        f.live_events = r.sink.applied - applied_before
        f.stream_events += f.live_events
        f.stream_calls += r.sf.calls_made - calls_before
        f.stream_logged += service_calls(await emulator_requests(r.base_url))
    f.live_applied_ms = [(done - ms / 1000) * 1000 for ms, done in timing.values()]
    docs = r.store.db.people.find({"crm.id": {"$in": list(timing)}}, {"crm.id": 1, "_sync.written_at": 1})
    async for doc in docs:
        ms, _ = timing[doc["crm"]["id"]]
        f.live_written_ms.append(doc["_sync"]["written_at"].timestamp() * 1000 - ms)
    if len(f.live_written_ms) != len(timing):
        raise RuntimeError(f"latency: {len(f.live_written_ms)} documents for {len(timing)} records")


async def backlog(r: Rig, f: Figures, counter: CommandCounter) -> None:
    """Stream down, `backlog` updates published, stream up from its replay id: drain it."""
    n = len(r.ids)
    rounds = math.ceil(r.opts.backlog / n)
    last = r.opts.backlog - (rounds - 1) * n
    for k in range(rounds):
        await update_titles(r.gen, r.ids[: n if k < rounds - 1 else last], f"Backlog {k}")
    await clear_emulator_requests(r.base_url)
    gc.collect()
    f.rss_reset = reset_peak_rss()
    calls_before, applied_before, batches_before = r.sf.calls_made, r.sink.applied, r.sink.batches
    busy_before = r.sink.busy
    profiler = cProfile.Profile() if r.opts.profile else None
    counter.clear()
    counter.on = True
    if profiler:
        profiler.enable()
    started = time.perf_counter()
    async with streaming(r) as (_, task):
        await until(lambda: r.sink.applied - applied_before >= r.opts.backlog, task, within=1800,
                    what=f"a {r.opts.backlog}-event backlog to apply")
        f.backlog_seconds = time.perf_counter() - started
        f.peak_rss = peak_rss_mb()
        if profiler:
            profiler.disable()
        counter.on = False
        f.backlog_events = r.sink.applied - applied_before
        f.backlog_batches = r.sink.batches - batches_before
        f.backlog_busy = r.sink.busy - busy_before
        f.commands = Counter(counter.counts)
        f.command_micros = Counter(counter.micros)
        f.mongo_busy = counter.busy
        f.stream_events += f.backlog_events
        f.stream_calls += r.sf.calls_made - calls_before
        f.stream_logged += service_calls(await emulator_requests(r.base_url))
    final = await r.people({"title": f"Backlog {rounds - 1}"})
    if final != last:
        raise RuntimeError(f"backlog: {final} People carry the last round's Title, expected {last}")
    if profiler and r.opts.profile:
        profiler.dump_stats(str(r.opts.profile))
        text = io.StringIO()
        # the service's own code and its CometD client; asyncio's loop would fill the list
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(
            r"(listener|reconciler|settings|aiocometd_ng|aiosfstream_ng)/", 30)
        f.profile = text.getvalue()


# --- the table ------------------------------------------------------------------------------------


def per_10k(count: int, events: int) -> float:
    return count * PER / events if events else float("nan")


def rows(f: Figures, opts: Options) -> list[Row]:
    throughput = rate(f.backlog_events, f.backlog_seconds)
    ratio = throughput / f.raw_rate if f.raw_rate else 0.0
    p50w, p99w = percentile(f.live_written_ms, 50), percentile(f.live_written_ms, 99)
    p50a, p99a = percentile(f.live_applied_ms, 50), percentile(f.live_applied_ms, 99)
    poll = per_10k(max(f.poll_calls, f.poll_logged), f.poll_records)
    stream = per_10k(max(f.stream_calls, f.stream_logged), f.stream_events)
    mongo = sum(f.commands.values())
    batches = max(f.backlog_batches, 1)
    by_command = [
        Row(f"    {name}", f"{count / batches:.2f} x {f.command_micros[name] / count / 1000:.1f} ms")
        for name, count in sorted(f.commands.items())]
    waited = f.mongo_busy
    return [
        Row("raw bulk_write upserts/s (same server)", fmt(f.raw_rate)),
        Row("  raw upserts/s, collection indexed as people", fmt(f.raw_people_rate)),
        Row("  raw updates/s by _id, same collection", fmt(f.raw_update_rate)),
        Row("pipeline CDC events applied/s (backlog replay)", fmt(throughput),
            f">= {TARGET_RATIO:.0%} of raw", ratio >= TARGET_RATIO),
        Row("  pipeline / raw upserts; / raw updates as people",
            f"{ratio:.2f}; {throughput / f.raw_update_rate if f.raw_update_rate else 0:.2f}"),
        Row(f"latency p50, commit -> _sync.written_at ({opts.rate}/s)", f"{p50w:.0f} ms"),
        Row("latency p99, commit -> _sync.written_at", f"{p99w:.0f} ms", f"<= {TARGET_P99_MS:.0f} ms",
            p99w <= TARGET_P99_MS),
        Row("latency p50 / p99, commit -> apply returned", f"{p50a:.0f} / {p99a:.0f} ms"),
        Row("  live rate achieved / events", f"{f.live_achieved_rate:.0f}/s / {f.live_events:,}"),
        Row("polling: REST calls per 10,000 changed records", f"{poll:.1f}", f"<= {TARGET_POLL_CALLS:.0f}",
            poll <= TARGET_POLL_CALLS),
        Row("  poll pass: records / client calls / org log", f"{f.poll_records:,} / {f.poll_calls} / "
            f"{f.poll_logged}"),
        Row("streaming: REST calls per 10,000 CDC events", f"{stream:.1f}", "0", stream == 0),
        Row("  events / client calls / org log", f"{f.stream_events:,} / {f.stream_calls} / "
            f"{f.stream_logged}"),
        Row(f"peak RSS replaying a {f.backlog_events:,}-event backlog", f"{f.peak_rss:.0f} MB",
            f"<= {TARGET_RSS_MB:.0f} MB", f.peak_rss <= TARGET_RSS_MB),
        Row("  backlog drain time / micro-batches", f"{f.backlog_seconds:.1f} s / {f.backlog_batches:,}"),
        Row("  time inside Reconciler.apply (share of drain)",
            f"{f.backlog_busy:.1f} s ({f.backlog_busy / max(f.backlog_seconds, 1e-9):.0%})"),
        Row("  MongoDB commands per micro-batch", f"{mongo / max(f.backlog_batches, 1):.2f}"),
        Row("  per micro-batch, by command: count x mean round-trip", ""),
        *by_command,
        Row("  time with a MongoDB command in flight (share of drain)",
            f"{waited:.1f} s ({waited / max(f.backlog_seconds, 1e-9):.0%})"),
        Row("link: first poll of new Leads, records/s", f"{rate(f.link_records, f.link_seconds):,.0f}"),
    ]


async def run(opts: Options) -> str:
    counter = monitor_commands()
    f = Figures()
    with workdir() as work, (work / "service.log").open("w+") as service_log:
        # the service's own logging, as deployed (JSON at INFO), into the run's temp directory
        configure_logging("INFO", "json", stream=service_log)
        try:
            async with rig(opts, work, f) as r:
                await link(r, f)
                await polling_cost(r, f)
                await live_latency(r, f)
                await backlog(r, f, counter)
        except BaseException:
            service_log.seek(0)
            print("".join(service_log.readlines()[-20:]), file=sys.stderr)  # the temp dir goes next
            raise
        finally:
            reset_logging()
    scale = (f"scale: {opts.records:,} linked Leads, backlog {opts.backlog:,} events, live {opts.rate}/s "
             f"for {opts.seconds:.0f} s, raw baseline {opts.raw:,} upserts, micro-batch "
             f"{opts.batch_size}/{opts.batch_wait_ms} ms"
             + ("" if f.rss_reset else "; peak RSS covers the whole run (VmHWM reset not allowed)"))
    path = "Pub/Sub API -> PubSubStream" if opts.api == "pubsub" else "CometD -> CdcStream"
    text = table(f"Inbound: emulator -> {path} -> Reconciler -> SecantusDB", rows(f, opts))
    return "\n".join([text, scale] + ([f.profile] if f.profile else []))


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.inbound", description=__doc__.split("\n")[0])
    parser.add_argument("--api", choices=["cometd", "pubsub"], default="cometd",
                        help="the stream API (as SFSYNC_SYNC__STREAM_API)")
    parser.add_argument("--records", type=int, default=10_000, help="linked Leads (and records polled)")
    parser.add_argument("--backlog", type=int, default=100_000, help="events published while down")
    parser.add_argument("--rate", type=int, default=200, help="live events per second (latency)")
    parser.add_argument("--seconds", type=float, default=20.0, help="live phase length")
    parser.add_argument("--raw", type=int, default=20_000, help="upserts in the raw baseline")
    parser.add_argument("--batch-size", type=int, default=200,
                        help="stream micro-batch (as SFSYNC_SYNC__BATCH_SIZE)")
    parser.add_argument("--batch-wait-ms", type=int, default=SyncSettings().batch_wait_ms,
                        help="as SFSYNC_SYNC__BATCH_WAIT_MS")
    parser.add_argument("--profile", type=Path, default=None, help="cProfile the backlog replay into FILE")
    a = parser.parse_args(argv)
    if min(a.records, a.backlog, a.rate, a.raw) < 1 or a.seconds <= 0:
        parser.error("sizes must be positive")
    return Options(a.records, a.backlog, a.rate, a.seconds, a.raw, a.batch_size, a.batch_wait_ms, a.profile,
                   a.api)


def main(argv: Sequence[str] | None = None) -> int:
    print(asyncio.run(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
