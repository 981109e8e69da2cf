"""The process: starts every part in order, runs the inbound source the budget allows, stops cleanly.

Start-up: store (indexes) -> Salesforce client -> governor (first `limits`) -> reconciler ->
backfill when no watermark exists yet -> remerge when the mappings changed -> outbound
flusher, local-change watcher, auto-retry, admin HTTP -> the inbound source.

The source follows the governor's mode: `streaming` runs `CdcStream`, `polling` runs the
`Poller` every SFSYNC_SYNC__FREQUENCY_MINUTES, `paused`/`starting` run neither. A switch
stops the running source (it finishes its batch and commits) before the next one starts:

- stream -> poller: the stream leaves a watermark just before its last applied commit, so the
  poller continues from there (not from an older watermark);
- poller -> stream: the stream resumes from its stored replay id and skips the events the
  poller already covered (`CdcStream.resume_after_poll`); without a usable replay id it
  subscribes with -1 and polls around the subscription.

Shutdown (SIGTERM/SIGINT via `run_service`): stop intake, finish the batch in flight, commit
offsets, stop the background tasks, close clients -- within `SHUTDOWN_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from listener.admin import AdminServer, create_admin_app, start_admin
from listener.budget import BudgetGovernor, Mode
from listener.metrics import METRICS
from listener.poller import Poller, watermark_key
from listener.progress import Progress
from listener.salesforce import SalesforceClient
from listener.stream import CdcStream
from reconciler.backfill import backfill
from reconciler.errors import FatalError, RetriableError, SyncError
from reconciler.inbound import Reconciler
from reconciler.jobs import Jobs, retry_transient_for, runner_for
from reconciler.mapping_check import check_mappings
from reconciler.outbox import Outbox
from reconciler.ports import ChangeSink, RejectedEvent, SalesforceChange
from reconciler.remerge import remerge
from reconciler.retry import AutoRetryScheduler
from reconciler.store import Store
from settings import Mappings, Settings

log = structlog.get_logger(__name__)

SHUTDOWN_SECONDS = 10.0
STATUS_REFRESH_SECONDS = 5.0


class Service:
    """The whole service; `status()`/`ready()` feed `/api/status` and `/readyz`."""

    def __init__(self, settings: Settings, mappings: Mappings, *, limits_interval: float = 60.0,
                 admin: bool = True, sink_wrapper: Callable[[ChangeSink], ChangeSink] | None = None) -> None:
        self.settings = settings
        self.mappings = mappings
        # A seam for tests and benchmarks: observe what reaches the reconciler.
        self._sink_wrapper = sink_wrapper
        self.governor = BudgetGovernor(settings.budget, check_interval=limits_interval)
        self._admin_enabled = admin
        self.admin: AdminServer | None = None
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
        self.jobs: Jobs | None = None
        self._instance_url: str | None = None
        self.last_error: str | None = None

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
        }

    def ready(self) -> tuple[bool, str]:
        if self._not_ready:
            return False, self._not_ready
        if not self.mongo_ok:
            return False, "mongodb unreachable"
        if not self._salesforce_ok:
            return False, "salesforce unreachable"
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
                reconciler = Reconciler(store, self.mappings, sf=sf, outbox=outbox,
                                        client_name=settings.salesforce.client_name, budget=self.governor)
                self.jobs = Jobs(store, reconciler, self.mappings, sf=sf, outbox=outbox, budget=self.governor,
                                 retry_interval=timedelta(minutes=settings.sync.retry_interval_minutes),
                                 max_attempts=settings.sync.retry_max_attempts)
                self._build_sources(sf, store, reconciler)
                # The admin surface answers (healthz, 503 readyz with the reason) during backfill.
                await self._start_admin(store, sf)
                self._not_ready = "backfill or remerge in progress"
                await self._first_start(sf, store, reconciler)
                background = self._start_background(stop, sf, store, outbox)
                self._not_ready = ""
                await self._run_sources(stop)
        finally:
            await self._shutdown(background)

    def _build_sources(self, sf: SalesforceClient, store: Store, reconciler: Reconciler) -> None:
        sync = self.settings.sync
        observed = ObservedSink(reconciler)
        self._observed = observed
        sink: ChangeSink = self._sink_wrapper(observed) if self._sink_wrapper else observed
        self.poller = Poller(sf, store, sink, self.mappings, sync.objects)
        self.stream = CdcStream(
            sf=sf, store=store, sink=sink, poller=self.poller, objects=sync.objects,
            client_name=self.settings.salesforce.client_name,
            api_version=self.settings.salesforce.api_version,
            batch_size=sync.batch_size, batch_wait_ms=sync.batch_wait_ms, governor=self.governor,
        )

    async def _first_start(self, sf: SalesforceClient, store: Store, reconciler: Reconciler) -> None:
        """Backfill when no watermark exists yet; re-merge the fields a mappings edit changed."""
        objects = self.settings.sync.objects
        marks = [await store.load_state(watermark_key(o)) for o in objects]
        if not any(marks):
            log.info("backfill_starting", objects=objects)
            # A bar on a terminal, periodic `progress` log events otherwise.
            with Progress("backfill") as progress:
                async def on_page(sobject: str, page: int, records: int) -> None:
                    progress.advance(records)

                await backfill(sf, store, reconciler, self.mappings, objects, page_hook=on_page)
        # Remerge keeps the applied mappings (hash + content) in sync_state itself, and leaves the
        # hash unsaved when the budget stops it, so the next start finishes the job.
        await remerge(sf, store, reconciler, self.mappings, objects)

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
            asyncio.create_task(self._refresh_status(stop, sf), name="status"),
        ]
        tasks.append(asyncio.create_task(self._auto_retry(stop), name="auto-retry"))
        return tasks

    def _auto_retry(self, stop: asyncio.Event) -> Coroutine[Any, Any, None]:
        sync = self.settings.sync
        scheduler = AutoRetryScheduler(retry_transient_for(self), self.governor,
                                       interval=timedelta(minutes=sync.retry_interval_minutes),
                                       max_attempts=sync.retry_max_attempts)
        return scheduler.run(stop)

    async def _start_admin(self, store: Store, sf: SalesforceClient) -> None:
        if not self._admin_enabled:
            return
        admin = self.settings.admin
        app = create_admin_app(status=self, store=store, jobs=runner_for(self, store),
                               token=admin.token.get_secret_value() if admin.token else None,
                               instance_url=sf.instance_url)
        self.admin = await start_admin(app, admin.host, admin.port)

    # -- sources -----------------------------------------------------------------------------

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
            await asyncio.wait_for(asyncio.shield(task), SHUTDOWN_SECONDS * 0.6)
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
        flusher = self._flusher
        if flusher is None:
            return
        METRICS.set("sfsync_outbound_calls_total", flusher.calls_made)
        METRICS.set("sfsync_outbound_records_total", flusher.records_sent, status="success")
        METRICS.set("sfsync_outbound_records_total", flusher.records_failed, status="failed")

    async def _shutdown(self, background: list[asyncio.Task[Any]]) -> None:
        self._not_ready = "stopping"
        if background:
            _, pending = await asyncio.wait(background, timeout=SHUTDOWN_SECONDS * 0.3)
            for task in pending:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        if self.admin is not None:
            await self.admin.stop()
        if self.store is not None:
            await self.store.close()
        log.info("service_stopped")


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


async def run_service(settings: Settings, mappings: Mappings, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or `stop`); 0 on a clean stop, 1 on a fatal error.

    The admin surface starts first and outlives restarts, so `/healthz` answers and `/readyz`
    says why while MongoDB or Salesforce is unreachable. A transient failure that ends the
    service restarts it after a backoff with jitter instead of exiting the container.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    slot = ServiceSlot()
    admin = await _start_slot_admin(settings, slot)
    try:
        attempt = 0
        while True:
            service = Service(settings, mappings, admin=False)
            slot.current = service
            outcome = await _run_once(service, stop)
            if outcome is not None:
                return outcome
            attempt += 1
            delay = min(60.0, 1.0 * 2 ** min(attempt, 6)) * (0.5 + random.random() / 2)
            slot.waiting = f"restarting in {delay:.0f} s after: {service.last_error or 'a transient failure'}"
            log.warning("service_restarting", attempt=attempt, delay_seconds=round(delay, 1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return 0
    finally:
        await admin.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _start_slot_admin(settings: Settings, slot: ServiceSlot) -> AdminServer:
    admin = settings.admin
    app = create_admin_app(status=slot, store=slot, jobs=slot,
                           token=admin.token.get_secret_value() if admin.token else None,
                           instance_url=settings.salesforce.login_url)
    return await start_admin(app, admin.host, admin.port)


class ServiceSlot:
    """The admin surface's view of whichever `Service` currently runs (restarts replace it)."""

    def __init__(self) -> None:
        self.current: Service | None = None
        self.waiting: str | None = None

    def status(self) -> dict[str, Any]:
        if self.current is None:
            return {"mode": "starting"}
        return self.current.status()

    def ready(self) -> tuple[bool, str]:
        if self.current is None:
            return False, "starting"
        ready, reason = self.current.ready()
        if ready:
            self.waiting = None
        elif self.waiting:
            reason = f"{reason} ({self.waiting})"
        return ready, reason

    def _store(self) -> Store:
        if self.current is None or self.current.store is None or not self.current.mongo_ok:
            raise RetriableError("the service is starting: MongoDB is not connected yet")
        return self.current.store

    def _jobs(self) -> Any:
        if self.current is None or self.current.jobs is None:
            raise RetriableError("the service is starting: retry and import are not available yet")
        return runner_for(self.current, self._store())

    async def find_sync_logs(self, **filters: Any) -> tuple[list[dict[str, Any]], str | None]:
        return await self._store().find_sync_logs(**filters)

    async def get_sync_log(self, log_id: str) -> dict[str, Any] | None:
        return await self._store().get_sync_log(log_id)

    async def retry(self, log_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._jobs().retry(log_id)
        return result

    async def retry_failed(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._jobs().retry_failed()
        return result

    async def import_record(self, sf_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._jobs().import_record(sf_id)
        return result


async def _run_once(service: Service, stop: asyncio.Event) -> int | None:
    """One life of the service: an exit code, or None to restart after a transient failure."""
    task = asyncio.create_task(service.run(stop))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            log.info("service_stopping", timeout_seconds=SHUTDOWN_SECONDS)
            try:
                await asyncio.wait_for(task, SHUTDOWN_SECONDS)
            except TimeoutError:
                log.error("service_stop_timeout")
                return 1
        task.result()
        return 0
    except FatalError as exc:
        log.error("service_failed", error=str(exc), error_type=type(exc).__name__)
        return 1
    except RetriableError as exc:
        if stop.is_set():
            return 0
        service.last_error = str(exc)
        log.warning("service_interrupted", error=str(exc), error_type=type(exc).__name__)
        return None
    finally:
        stopper.cancel()


__all__ = ["Service", "run_service"]
