"""The sync parts, built once Salesforce and MongoDB are connected, and the first start.

This is the one place that builds the reconciler, the job runner and the sources, and the one
place that calls backfill. Start-up: store (indexes) -> Salesforce client -> governor (first
`limits`) -> mappings checked against `describe` -> outbox, reconciler, jobs, sources (here);
then, once a term begins, backfill when nothing was ever synced (no watermark and no replay id)
and remerge when the mappings changed (`first_start`).

Every part that writes for a leader term writes through `TermStore(store, fence)` (`fence`:
`LeaderTerm.fence`, the `Fence` captured when the running term began): the reconciler (records,
sync logs), the sources (replay ids, watermarks), jobs, the flusher, the local-change watcher,
backfill and remerge; so `SyncParts.store` is that `TermStore`. `sf_clock` (fed by the client's
transport) puts polling signposts, the backfill's signposts and merge comparisons on Salesforce's
clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog

from listener.backfill import backfill
from listener.budget import BudgetGovernor, Mode
from listener.reader import RecordReader
from listener.salesforce import SalesforceClient
from listener.salesforce_time import SalesforceClock
from listener.sources import Source, create_sources
from reconciler.inbound import Reconciler
from reconciler.jobs import Jobs
from reconciler.mapping_check import check_mappings
from reconciler.outbox import Outbox
from reconciler.ports import ChangeSink
from reconciler.remerge import remerge
from reconciler.store import Store
from reconciler.store.state_keys import StateKind, of_kind, watermark_key
from reconciler.term_store import FenceProvider, TermStore
from service.observed import ObservedSink
from service.progress import Progress
from settings import Mappings, Settings

log = structlog.get_logger(__name__)

SinkWrapper = Callable[[ChangeSink], ChangeSink]  # a seam for tests and benchmarks


@dataclass(frozen=True)
class SyncParts:
    """What a connected service syncs with, for one process life (terms come and go)."""

    sf: SalesforceClient
    reader: RecordReader  # the one Salesforce read path: backfill, remerge, re-imports
    store: Store  # a `TermStore`: writes carry the running term's fence
    instance_url: str
    outbox: Outbox
    reconciler: Reconciler
    jobs: Jobs
    observed: ObservedSink  # what reaches the reconciler, counted
    sources: dict[Mode, Source]
    sf_clock: SalesforceClock | None = None


async def assemble(settings: Settings, mappings: Mappings, governor: BudgetGovernor, store: Store,
                   sf: SalesforceClient, sink_wrapper: SinkWrapper | None = None, *,
                   sf_clock: SalesforceClock | None = None, fence: FenceProvider | None = None) -> SyncParts:
    """Check the budget and the mappings against Salesforce, then build every part; with
    `fence`, every term write goes through a `TermStore` (see the module docstring)."""
    # Authenticate first: an unreachable or refusing org raises here (Retriable: the process
    # restarts with backoff; Fatal: exit 2) rather than later as a missing instance URL.
    await sf.access_token()
    await governor.check(sf.limits)
    instance_url = sf.instance_url
    objects = settings.sync.objects
    check_mappings(mappings, objects, {o: await sf.describe(o) for o in objects})
    if fence is not None:
        store = TermStore(store, fence)
    outbox = Outbox(store.outbox, fence=fence)
    await outbox.ensure_indexes()
    reader = RecordReader(sf, mappings)
    reconciler = Reconciler(store, mappings, fetcher=reader, outbox=outbox,
                            client_name=settings.salesforce.client_name, budget=governor, sf_clock=sf_clock)
    jobs = Jobs(store, reconciler, retry_interval=timedelta(minutes=settings.sync.retry_interval_minutes),
                max_attempts=settings.sync.retry_max_attempts)
    observed = ObservedSink(reconciler)
    sink: ChangeSink = sink_wrapper(observed) if sink_wrapper else observed
    sources = create_sources(settings=settings, mappings=mappings, sf=sf, store=store, sink=sink,
                             governor=governor, sf_clock=sf_clock, fence=fence)
    return SyncParts(sf=sf, reader=reader, store=store, instance_url=instance_url, outbox=outbox,
                     reconciler=reconciler, jobs=jobs, observed=observed, sources=sources,
                     sf_clock=sf_clock)



async def ever_synced(store: Store, objects: list[str]) -> bool:
    """Whether any source ever left an offset: a watermark of a synced object (backfill, poller,
    stream handover) or a replay id of any channel or topic. A stream saves replay ids while it
    runs but leaves watermarks only when it stops, so a leader that died streaming leaves replay
    ids alone: its successor resumes from them and must not backfill."""
    state = await store.all_state()
    if any(watermark_key(o) in state for o in objects):
        return True
    return any(of_kind(state, kind) for kind in (StateKind.REPLAY, StateKind.PUBSUB_REPLAY))


async def first_start(parts: SyncParts, mappings: Mappings, objects: list[str]) -> None:
    """Backfill when nothing was ever synced (`ever_synced`); re-merge the fields a mappings
    edit changed."""
    store = parts.store
    if not await ever_synced(store, objects):
        log.info("backfill_starting", objects=objects)
        # A bar on a terminal, periodic `progress` log events otherwise.
        with Progress("backfill") as progress:
            async def on_page(sobject: str, page: int, records: int) -> None:
                progress.advance(records)

            await backfill(parts.reader, store, parts.reconciler, objects, page_hook=on_page,
                           **({"clock": parts.sf_clock.safe_now} if parts.sf_clock else {}))
    # Remerge keeps the applied mappings (hash + content) in sync_state itself, and leaves the
    # hash unsaved when the budget stops it, so the next start finishes the job.
    await remerge(parts.reader, store, parts.reconciler, mappings, objects)


__all__ = ["SinkWrapper", "SyncParts", "assemble", "ever_synced", "first_start"]
