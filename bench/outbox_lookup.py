"""What an inbound read batch pays to look up its records' queued writes (`Outbox.sent_values`).

    .venv/bin/python -m bench.outbox_lookup [--queued 5000] [--claimed 1000] [--batch 200]

Every inbound batch with reads of linked records (a poll, a gap fetch, a merge's) asks the outbox, once,
what their queued writes sent (chaos seed 40427). The outbox is deepest when it matters most:
a paused budget holds every platform edit. This script fills a
real SecantusDB outbox with `--queued` pending updates, claims `--claimed` of them (what a send
whose answer was lost leaves), and times the lookup of a `--batch` of records, one in 25 of them
queued, with the service's indexes and without the `key_status` index.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import timedelta

from bench._common import Row, fmt, fresh_secantus, percentile, quiet_logs, table, workdir
from reconciler.outbox import Outbox
from reconciler.ports import OutboundWrite
from reconciler.store import Store

ROUNDS = 20


async def _timings(uri: str, args: argparse.Namespace, *, indexed: bool) -> list[float]:
    store = await Store.connect(uri, "bench_indexed" if indexed else "bench_scanned")
    outbox = Outbox(store.outbox, lease=timedelta(minutes=2))
    writes = [OutboundWrite("Lead", f"00Q{i:015d}", "people", f"p{i}", {"Title": f"title {i}"}, "local_edit")
              for i in range(args.queued)]
    for start in range(0, len(writes), 500):
        await outbox.enqueue(writes[start:start + 500])
    await outbox.claim("Lead", "update", args.claimed)
    if not indexed:
        await store.db.outbox.drop_index("key_status")
    records = [("Lead", f"00Q{i * 25 % args.queued:015d}") for i in range(args.batch)]
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        await outbox.sent_values(records)
        times.append((time.perf_counter() - started) * 1000)
    return times


async def _main(args: argparse.Namespace) -> None:
    quiet_logs()
    with workdir() as work, fresh_secantus(work) as uri:
        rows = []
        for indexed in (True, False):
            times = await _timings(uri, args, indexed=indexed)
            label = "with key_status" if indexed else "scanning (no key_status)"
            rows += [Row(f"lookup ms p50, {label}", fmt(statistics.median(times), 1)),
                     Row(f"lookup ms p95, {label}", fmt(percentile(times, 95), 1))]
    title = f"sent_values: {args.batch} records, {args.queued} queued writes, {args.claimed} claimed"
    print(table(title, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, default=5000)
    parser.add_argument("--claimed", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=200)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
