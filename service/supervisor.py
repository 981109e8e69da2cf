"""The process: starts every part in order, runs the inbound source the budget allows, stops cleanly.

Start-up: store (indexes) -> Salesforce client -> governor (first `limits`) -> reconciler ->
backfill when no watermark exists yet -> remerge when the mappings changed -> outbound
flusher, local-change watcher, auto-retry -> the inbound source. The admin HTTP surface is not
the service's: `service.process` starts it first and points it at whichever `Service` runs.

The source follows the governor's mode: `streaming` runs `CdcStream`, `polling` runs the
`Poller` every SFSYNC_SYNC__FREQUENCY_MINUTES, `paused`/`starting` run neither. A switch
stops the running source (it finishes its batch and commits) before the next one starts:

- stream -> poller: the stream leaves a watermark just before its last applied commit, so the
  poller continues from there (not from an older watermark);
- poller -> stream: the stream resumes from its stored replay id and skips the events the
  poller already covered (`CdcStream.resume_after_poll`); without a usable replay id it
  subscribes with -1 and polls around the subscription.

Replicas: several processes may run against one MongoDB. After connecting (store, Salesforce)
each one stands by until it holds the `sync` leader lease in `sync_state`
(`reconciler.store._lease`); only the holder backfills, runs the source, the outbound flusher,
the local-change watcher, auto-retry and the governor's `limits` checks. The holder renews every
TTL/3 (SFSYNC_SYNC__LEASE_SECONDS); when it cannot renew for TTL/2, or finds the lease taken, it
stops the term in order -- intake first, the batch in flight finished and its offsets committed,
then the flusher and the rest, all within TTL/6 -- and stands by again. A clean shutdown releases
the lease, so a standby takes over at its next try (within TTL/3); after a crash, within ~TTL.

A standby is *ready* (`/readyz` 200): it is healthy, it serves the admin API (which reads
MongoDB) and it is what makes a rolling update of several replicas possible -- were standbys
503, Kubernetes would never count them available. `ready()` gives the reason
`standby: another replica holds the sync lease (<owner>)`, and `/api/status` shows
`lease: {owner, held, holder}`.

Shutdown (SIGTERM/SIGINT via `run_service`): stop intake, finish the batch in flight, commit
offsets, stop the background tasks, release the lease, close clients -- within `SHUTDOWN_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from listener.backfill import backfill
from listener.budget import BudgetGovernor, Mode
from listener.metrics import METRICS
from listener.reader import RecordReader
from listener.salesforce import SalesforceClient
from listener.sources.cometd import CdcStream, StreamOptions
from listener.sources.polling import Poller
from reconciler.errors import FatalError, RetriableError, SyncError
from reconciler.inbound import Reconciler
from reconciler.jobs import Jobs, retry_transient_for
from reconciler.mapping_check import check_mappings
from reconciler.outbox import Outbox
from reconciler.ports import ChangeSink, RejectedEvent, SalesforceChange
from reconciler.remerge import remerge
from reconciler.retry import AutoRetryScheduler
from reconciler.store import Store
from reconciler.store.state_keys import watermark_key
from service.progress import Progress
from settings import Mappings, Settings

if TYPE_CHECKING:
    from reconciler.store._lease import Lease

log = structlog.get_logger(__name__)

SHUTDOWN_SECONDS = 10.0
STATUS_REFRESH_SECONDS = 5.0
SYNC_LEASE = "sync"


class Service:
    """The whole service; `status()`/`ready()` feed `/api/status` and `/readyz`."""

    def __init__(self, settings: Settings, mappings: Mappings, *, limits_interval: float = 60.0,
                 sink_wrapper: Callable[[ChangeSink], ChangeSink] | None = None) -> None:
        self.settings = settings
        self.mappings = mappings
        # A seam for tests and benchmarks: observe what reaches the reconciler.
        self._sink_wrapper = sink_wrapper
        self.governor = BudgetGovernor(settings.budget, check_interval=limits_interval)
        self.store: Store | None = None
        self.stream: CdcStream | None = None
        self.poller: Poller | None = None
        self.source: str | None = None
        self._state_cache: dict[str, dict[str, Any]] = {}
        self._outbox_depth = 0
        self.mongo_ok = False
        self._salesforce_ok = False
        self._not_ready = "starting"
        self._observed: ObservedSink | None = None
        self._flusher: Any = None
        self._flusher_seen: tuple[Any, int, int, int] = (None, 0, 0, 0)
        self.jobs: Jobs | None = None
        self._instance_url: str | None = None
        self.last_error: str | None = None
        self.lease: Lease | None = None
        self._role: str | None = None  # "standby" | "leader" once the lease has been tried
        self._lease_holder: str | None = None
        self._drain_seconds = SHUTDOWN_SECONDS

    # -- admin surface -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        budget = self.governor.status()
        stream = self.stream.status() if self.stream else {}
        replay_ids = {k.removeprefix("replay:"): v.get("replay_id") for k, v in self._state_cache.items()
                      if k.startswith("replay:")}
        replay_ids.update(stream.get("replay_ids", {}))
        return {
            "mode": self.governor.mode,
            "source": self.source,
            "budget": {k: budget[k] for k in ("used", "max", "remaining_pct")},
            "events_exhausted": budget["events_exhausted"],
            "replay_ids": replay_ids,
            "watermarks": {k.removeprefix("watermark:"): v.get("ts") for k, v in self._state_cache.items()
                           if k.startswith("watermark:")},
            "queue_depth": {"inbound": stream.get("queue_depth", 0), "outbox": self._outbox_depth},
            "instance_url": self._instance_url,
            "last_event_at": self._observed.last_event_at.isoformat()
            if self._observed and self._observed.last_event_at else None,
            "lease": self._lease_status(),
        }

    def _lease_status(self) -> dict[str, Any]:
        lease = self.lease
        held = lease is not None and self._role == "leader" and lease.held()
        return {"owner": lease.owner if lease else None, "held": held,
                "holder": lease.owner if held and lease else self._lease_holder}

    def ready(self) -> tuple[bool, str]:
        if self._not_ready:
            return False, self._not_ready
        if not self.mongo_ok:
            return False, "mongodb unreachable"
        if not self._salesforce_ok:
            return False, "salesforce unreachable"
        if self._role == "standby":
            return True, f"standby: another replica holds the sync lease ({self._lease_holder or 'unknown'})"
        if self.source == "stream" and self.stream is not None and self.stream.ready:
            return True, ""
        if self.source == "poller" and self.poller is not None and self.poller.running:
            return True, ""
        return False, f"no inbound source running (mode {self.governor.mode})"

    # -- life --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        store = await Store.connect(settings.mongodb.uri.get_secret_value(), settings.mongodb.database,
                                    sync_log_retention_days=settings.mongodb.sync_log_retention_days)
        self.store = store
        background: list[asyncio.Task[Any]] = []
        lease = self.lease = store.lease(SYNC_LEASE, ttl=settings.sync.lease_seconds)
        try:
            self._not_ready = "connecting to MongoDB"
            await store.ensure_indexes()
            self.mongo_ok = True
            self._not_ready = "connecting to Salesforce"
            async with SalesforceClient(settings.salesforce, on_usage=self.governor.record_usage) as sf:
                await self.governor.check(sf.limits)
                self._instance_url = sf.instance_url
                objects = settings.sync.objects
                check_mappings(self.mappings, objects, {o: await sf.describe(o) for o in objects})
                self._salesforce_ok = self.governor.status()["max"] is not None
                outbox = Outbox(store.outbox)
                await outbox.ensure_indexes()
                reconciler = Reconciler(store, self.mappings, fetcher=RecordReader(sf, self.mappings),
                                        outbox=outbox, client_name=settings.salesforce.client_name,
                                        budget=self.governor)
                self.jobs = Jobs(store, reconciler,
                                 retry_interval=timedelta(minutes=settings.sync.retry_interval_minutes),
                                 max_attempts=settings.sync.retry_max_attempts)
                self._build_sources(sf, store, reconciler)
                background = [asyncio.create_task(self._refresh_status(stop, sf), name="status")]
                try:
                    while await self._stand_by(stop, lease):
                        await self._lead(stop, lease, sf, store, reconciler, outbox)
                finally:
                    await self._release(lease)
        finally:
            await self._shutdown(background)

    # -- the leader lease --------------------------------------------------------------------

    async def _stand_by(self, stop: asyncio.Event, lease: Lease) -> bool:
        """Try the lease every TTL/3 until this replica holds it (True) or `stop` (False)."""
        if self._role is None:
            self._not_ready = "trying the sync lease"
        while not stop.is_set():
            try:
                if await lease.acquire():
                    log.info("lease_acquired", owner=lease.owner, ttl_seconds=lease.ttl)
                    self._lease_holder = lease.owner
                    return True
                holder = await lease.holder()
                if self._role != "standby" or (holder and holder.owner != self._lease_holder):
                    log.info("standing_by", owner=lease.owner, holder=holder.owner if holder else None)
                self._lease_holder = holder.owner if holder else None
                self._role, self._not_ready, self.mongo_ok = "standby", "", True
            except RetriableError as exc:
                self.mongo_ok = False
                log.warning("lease_try_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), lease.renew_every)
        return False

    async def _lead(self, stop: asyncio.Event, lease: Lease, sf: SalesforceClient, store: Store,
                    reconciler: Reconciler, outbox: Outbox) -> None:
        """One leadership term: backfill/remerge, background tasks, the source -- until `stop`
        or the lease is lost, then stop them in order (intake, then the rest)."""
        self._role = "leader"
        term_stop = asyncio.Event()  # intake stops: on `stop` or when the lease is lost
        tasks_stop = asyncio.Event()  # the rest stops once intake has
        keeper = asyncio.create_task(self._keep(lease, stop, term_stop), name="lease")
        background: list[asyncio.Task[Any]] = []
        try:
            self._not_ready = "backfill or remerge in progress"
            if await _unless(term_stop, self._first_start(sf, store, reconciler)):
                background = self._start_background(tasks_stop, sf, store, outbox)
                self._not_ready = ""
                await self._run_sources(term_stop)
        finally:
            tasks_stop.set()
            await _stop_tasks(background, self._drain_seconds * 0.3)
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            self._role, self._drain_seconds = None, SHUTDOWN_SECONDS
        if not stop.is_set():
            self._not_ready = "lease lost, standing by"
            log.warning("lease_term_ended", owner=lease.owner)

    async def _keep(self, lease: Lease, stop: asyncio.Event, term_stop: asyncio.Event) -> None:
        """Renew every TTL/3 (sooner after a failure); end the term when the lease is lost."""
        wait = lease.renew_every
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(wait, lease.seconds_left()))
                if stop.is_set():
                    return
                try:
                    # bounded: a renewal hanging on an unreachable MongoDB must not outlive the lease
                    taken = not await asyncio.wait_for(lease.acquire(), max(0.01, lease.seconds_left()))
                    wait = lease.renew_every
                except (SyncError, TimeoutError) as exc:
                    taken, wait = False, max(0.2, lease.renew_every / 4)
                    log.warning("lease_renew_failed", owner=lease.owner,
                                error=str(exc) or type(exc).__name__)
                if taken or not lease.held():
                    log.warning("lease_lost", owner=lease.owner, taken=taken)
                    # a standby may take over TTL/3 (skew) after TTL/2: stop within what is left
                    self._drain_seconds = min(SHUTDOWN_SECONDS, lease.ttl / 6)
                    return
        finally:
            term_stop.set()

    async def _release(self, lease: Lease) -> None:
        """A clean stop hands the lease over at once; a failure leaves it to expire."""
        self._role = None
        try:
            if await lease.release():
                log.info("lease_released", owner=lease.owner)
        except SyncError as exc:
            log.warning("lease_release_failed", owner=lease.owner, error=str(exc))

    def _build_sources(self, sf: SalesforceClient, store: Store, reconciler: Reconciler) -> None:
        sync = self.settings.sync
        observed = ObservedSink(reconciler)
        self._observed = observed
        sink: ChangeSink = self._sink_wrapper(observed) if self._sink_wrapper else observed
        self.poller = Poller(sf, store, sink, self.mappings, sync.objects)
        self.stream = CdcStream(
            sf=sf, store=store, sink=sink, catch_up=self.poller, objects=sync.objects,
            options=StreamOptions.from_settings(self.settings), governor=self.governor,
        )

    async def _first_start(self, sf: SalesforceClient, store: Store, reconciler: Reconciler) -> None:
        """Backfill when no watermark exists yet; re-merge the fields a mappings edit changed."""
        objects = self.settings.sync.objects
        reader = RecordReader(sf, self.mappings)
        marks = [await store.load_state(watermark_key(o)) for o in objects]
        if not any(marks):
            log.info("backfill_starting", objects=objects)
            # A bar on a terminal, periodic `progress` log events otherwise.
            with Progress("backfill") as progress:
                async def on_page(sobject: str, page: int, records: int) -> None:
                    progress.advance(records)

                await backfill(reader, store, reconciler, objects, page_hook=on_page)
        # Remerge keeps the applied mappings (hash + content) in sync_state itself, and leaves the
        # hash unsaved when the budget stops it, so the next start finishes the job.
        await remerge(reader, store, reconciler, self.mappings, objects)

    def _start_background(self, stop: asyncio.Event, sf: SalesforceClient, store: Store,
                          outbox: Outbox) -> list[asyncio.Task[Any]]:
        from reconciler.local_changes import LocalChangeWatcher
        from reconciler.outbound import FlushPolicy, OutboundFlusher

        sync = self.settings.sync
        flusher = OutboundFlusher(outbox, sf, store, self.governor,
                                  client_name=self.settings.salesforce.client_name,
                                  policy=FlushPolicy.from_settings(sync))
        self._flusher = flusher
        watcher = LocalChangeWatcher(store, self.mappings, outbox, objects=sync.objects)
        tasks = [
            asyncio.create_task(self.governor.run(stop, sf.limits), name="governor"),
            asyncio.create_task(flusher.run(stop), name="outbound"),
            asyncio.create_task(watcher.run(stop), name="local-watch"),
        ]
        tasks.append(asyncio.create_task(self._auto_retry(stop), name="auto-retry"))
        return tasks

    def _auto_retry(self, stop: asyncio.Event) -> Coroutine[Any, Any, None]:
        sync = self.settings.sync
        scheduler = AutoRetryScheduler(retry_transient_for(self), self.governor,
                                       interval=timedelta(minutes=sync.retry_interval_minutes),
                                       max_attempts=sync.retry_max_attempts)
        return scheduler.run(stop)

    async def _run_sources(self, stop: asyncio.Event) -> None:
        """Run the source the mode asks for; switch on every mode change; return on `stop`."""
        previous: str | None = None
        while not stop.is_set():
            mode = self.governor.current
            source_stop = asyncio.Event()
            task = self._start_source(mode, previous, source_stop)
            previous = self.source if task is not None else previous
            waits = [asyncio.create_task(stop.wait()),
                     asyncio.create_task(self.governor.wait_for_change(mode))]
            if task is not None:
                waits.append(task)
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waits[:2]:
                waiter.cancel()
            source_stop.set()
            if task is not None:
                await self._finish_source(task)
                if self.governor.current is mode and not stop.is_set():
                    await asyncio.sleep(1.0)  # the source ended by itself; do not spin
            self.source = None

    def _start_source(self, mode: Mode, previous: str | None, source_stop: asyncio.Event
                      ) -> asyncio.Task[None] | None:
        assert self.stream is not None and self.poller is not None
        log.info("source_starting", mode=mode.value, previous=previous)
        if mode is Mode.STREAMING:
            self.source = "stream"
            return asyncio.create_task(self._stream_after(previous, source_stop), name="stream")
        if mode is Mode.POLLING:
            self.source = "poller"
            minutes = self.settings.sync.frequency_minutes
            return asyncio.create_task(self.poller.run_every(minutes, source_stop), name="poller")
        return None

    async def _stream_after(self, previous: str | None, source_stop: asyncio.Event) -> None:
        assert self.stream is not None and self.poller is not None
        if previous == "poller":
            self.stream.resume_after_poll({o: await self.poller.watermark(o) for o in self.stream.objects})
        await self.stream.run(source_stop)

    async def _finish_source(self, task: asyncio.Task[None]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(task), self._drain_seconds * 0.6)
        except TimeoutError:
            log.warning("source_stop_timeout", source=self.source)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except FatalError:
            raise
        except SyncError as exc:
            log.warning("source_failed", source=self.source, error=str(exc), error_type=type(exc).__name__)

    # -- status and shutdown -----------------------------------------------------------------

    async def _refresh_status(self, stop: asyncio.Event, sf: SalesforceClient) -> None:
        assert self.store is not None
        while not stop.is_set():
            try:
                await self.store.ping()
                self._state_cache = await self.store.all_state()
                self._outbox_depth = await self.store.outbox.depth()
                METRICS.set("sfsync_queue_depth", self._outbox_depth, queue="outbox")
                self._publish_outbound_metrics()
                self.mongo_ok = True
            except RetriableError as exc:
                self.mongo_ok = False
                log.warning("status_refresh_failed", error=str(exc))
            self._salesforce_ok = self.governor.status()["max"] is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), STATUS_REFRESH_SECONDS)

    def _publish_outbound_metrics(self) -> None:
        # The flusher counts for its own life (one leader term); the process counters add what it
        # did since the last look, so they never go down when a new term starts a new flusher.
        flusher = self._flusher
        if flusher is None:
            return
        now = (flusher.calls_made, flusher.records_sent, flusher.records_failed)
        before = self._flusher_seen if self._flusher_seen[0] is flusher else (flusher, 0, 0, 0)
        calls, sent, failed = (n - b for n, b in zip(now, before[1:], strict=True))
        METRICS.inc("sfsync_outbound_calls_total", calls)
        METRICS.inc("sfsync_outbound_records_total", sent, status="success")
        METRICS.inc("sfsync_outbound_records_total", failed, status="failed")
        self._flusher_seen = (flusher, *now)

    async def _shutdown(self, background: list[asyncio.Task[Any]]) -> None:
        self._not_ready = "stopping"
        await _stop_tasks(background, SHUTDOWN_SECONDS * 0.3)
        if self.store is not None:
            await self.store.close()
        log.info("service_stopped")


async def _stop_tasks(tasks: list[asyncio.Task[Any]], grace: float) -> None:
    """Let tasks whose stop event is set finish for `grace` seconds, then cancel the rest."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _unless(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> bool:
    """Run `work` unless `stop` is set first (then cancel it); True when it completed."""
    task = asyncio.create_task(work)
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return False
    task.result()
    return True


class ObservedSink:
    """Counts what reaches the reconciler, for `/metrics` and the status strip's last event time."""

    def __init__(self, inner: ChangeSink) -> None:
        self._inner = inner
        self.last_event_at: datetime | None = None

    async def apply(self, changes: Sequence[SalesforceChange]) -> None:
        await self._inner.apply(changes)
        now = datetime.now(UTC)
        for change in changes:
            METRICS.inc("sfsync_events_applied_total", object=change.sobject)
        if changes:
            newest = max(change.changed_at for change in changes)
            self.last_event_at = newest if self.last_event_at is None else max(newest, self.last_event_at)
            METRICS.set("sfsync_replay_lag_seconds", max(0.0, (now - newest).total_seconds()))

    async def reject(self, events: Sequence[RejectedEvent]) -> None:
        await self._inner.reject(events)
        METRICS.inc("sfsync_sync_failures_total", len(events), source="salesforce")


__all__ = ["ObservedSink", "Service"]
