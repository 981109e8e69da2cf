"""Backfill benchmark: N Salesforce Leads into MongoDB through the real path.

    .venv/bin/python -m bench.backfill [--records 100000] [--raw-records N] [--merge-records 20000]

The emulator (`python -m emulator --records N`) and SecantusDB run as their own processes;
this process is the service: `SalesforceClient` -> `listener.backfill.backfill` ->
`Reconciler` -> `Store`. Printed beside the records/s: the raw `bulk_write` upsert rate of
the same server measured in the same run, the REST calls the emulator logged, and the
service's peak RSS during the backfill.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench._common import (
    Row,
    bench_mappings,
    clear_emulator_requests,
    current_rss_mb,
    emulator_process,
    emulator_requests,
    fmt,
    fresh_secantus,
    peak_rss_mb,
    quiet_logs,
    rate,
    raw_upsert_rate,
    reset_peak_rss,
    rest_calls,
    salesforce_settings,
    table,
    workdir,
)
from listener.backfill import backfill
from listener.reader import RecordReader
from listener.salesforce import SalesforceClient
from reconciler.inbound import Reconciler
from reconciler.merge import bench_merge
from reconciler.outbox import Outbox
from reconciler.store import Store

RECORDS_PER_CALL = 2_000  # target: at most one query page per 2,000 records (plus the describe)
RSS_TARGET_MB = 120.0
RATIO_TARGET = 0.5


@dataclass
class BackfillFigures:
    records: int
    applied: int
    failed: int
    seconds: float
    raw_rate: float
    rest_calls: int
    client_calls: int
    describe_calls: int
    rss_start_mb: float
    rss_peak_mb: float
    peak_reset: bool
    merge_rate: float


async def measure(base_url: str, uri: str, records: int, raw_records: int,
                  merge_records: int) -> BackfillFigures:
    raw = await raw_upsert_rate(uri, "bench_raw_upserts", raw_records)
    peak_reset = reset_peak_rss()  # the baseline's memory is not the service's
    rss_start = current_rss_mb()
    mappings = bench_mappings()
    store = await Store.connect(uri, "bench_backfill")
    try:
        await store.ensure_indexes()
        await clear_emulator_requests(base_url)
        async with SalesforceClient(salesforce_settings(base_url)) as sf:
            # as at start-up: one describe per synced object decides what may be written
            writable = {"Lead": await sf.field_writability("Lead")}
            reader = RecordReader(sf, mappings)
            reconciler = Reconciler(store, mappings, fetcher=reader, outbox=Outbox(store.outbox),
                                    writable=writable.__getitem__)
            started = time.perf_counter()
            result = await backfill(reader, store, reconciler, ["Lead"])
            seconds = time.perf_counter() - started
            client_calls = sf.calls_made
        rss_peak = peak_rss_mb()
    finally:
        await store.close()
    logged = rest_calls(await emulator_requests(base_url))
    return BackfillFigures(
        records=result.records, applied=reconciler.totals["applied"], failed=result.failed,
        seconds=seconds, raw_rate=raw, rest_calls=len(logged), client_calls=client_calls,
        describe_calls=sum(1 for r in logged if str(r["path"]).endswith("/describe")),
        rss_start_mb=rss_start, rss_peak_mb=rss_peak, peak_reset=peak_reset,
        merge_rate=bench_merge(merge_records),
    )


def rows(f: BackfillFigures, expected: int) -> list[Row]:
    speed = rate(f.applied, f.seconds)
    ratio = speed / f.raw_rate if f.raw_rate else 0.0
    call_budget = -(-expected // RECORDS_PER_CALL) + f.describe_calls
    peak_label = "peak RSS of the service (MiB)" if f.peak_reset else "peak RSS, whole run (MiB)"
    return [
        Row("Leads in the org", fmt(expected)),
        Row("records imported (applied)", fmt(f.applied), f"= {fmt(expected)}", f.applied == expected),
        Row("records failed", fmt(f.failed), "0", f.failed == 0),
        Row("backfill wall time (s)", fmt(f.seconds, 1)),
        Row("backfill records/s", fmt(speed)),
        Row("raw bulk_write upserts/s (same server)", fmt(f.raw_rate)),
        Row("backfill / raw", fmt(ratio, 2), f">= {RATIO_TARGET}", ratio >= RATIO_TARGET),
        Row("REST calls (emulator log)", fmt(f.rest_calls), f"<= {call_budget}", f.rest_calls <= call_budget),
        Row("  of which describe", fmt(f.describe_calls)),
        Row("REST calls (client.calls_made)", fmt(f.client_calls)),
        Row("records per REST call", fmt(rate(f.applied, f.rest_calls))),
        Row("RSS before the backfill (MiB)", fmt(f.rss_start_mb, 1)),
        Row(peak_label, fmt(f.rss_peak_mb, 1), f"<= {RSS_TARGET_MB:.0f}", f.rss_peak_mb <= RSS_TARGET_MB),
        Row("merge decisions/s (reconciler.merge)", fmt(f.merge_rate)),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.backfill", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="Leads in the emulated org")
    parser.add_argument("--raw-records", type=int, default=None,
                        help="upserts for the raw baseline (default: --records)")
    parser.add_argument("--merge-records", type=int, default=20_000, help="records for the merge-core rate")
    args = parser.parse_args(argv)
    raw_records = args.raw_records or args.records
    quiet_logs()
    wall = time.perf_counter()
    with workdir() as work, fresh_secantus(work) as uri, \
            emulator_process(work, "--records", str(args.records)) as base_url:
        figures = asyncio.run(measure(base_url, uri, args.records, raw_records, args.merge_records))
    title = (f"bench.backfill — {args.records:,} Leads, raw baseline {raw_records:,} upserts "
             f"(whole run {time.perf_counter() - wall:.0f} s)")
    print(table(title, rows(figures, args.records)))


if __name__ == "__main__":
    main()
