"""`Service`: one process life of the sync, wired from the modules that each do one part.

- `service.assembly`: connect, check, build the reconciler, jobs and sources; the first start;
- `service.term`: the leader lease, term by term;
- `service.switch`: the source the budget mode asks for, and the handover between sources;
- `service.background`: the leader's flusher, watcher, auto-retry and `limits` checks;
- `service.refresh`, `service.readiness`: what `/readyz` and `/api/status` answer.

The admin HTTP surface is not the service's: `service.process` starts it first and points it at
whichever `Service` runs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from listener.budget import BudgetGovernor, Mode
from listener.salesforce import SalesforceClient
from listener.salesforce_time import SalesforceClock, clocked_transport
from listener.sources import Source
from reconciler.errors import FencedError, RetriableError, SyncError
from reconciler.jobs import AdminJobs
from reconciler.pacing import run_until_stopped
from reconciler.store import Store
from service.admin.ports import JobRunner, NotLeaderError
from service.assembly import SinkWrapper, SyncParts, assemble, first_start
from service.background import leader_tasks
from service.observed import ObservedSink
from service.outbound_metrics import OutboundCounters
from service.readiness import (
    Health,
    LeaseStatus,
    Role,
    StatusParts,
    StoreSnapshot,
    ready_reason,
    status_document,
)
from service.refresh import StatusRefresh
from service.supervised import Policy, SupervisedTasks, TaskSpec
from service.switch import SourceSwitch
from service.term import SHUTDOWN_SECONDS, LeaderTerm
from service.term_jobs import TermJobs
from settings import ConfigError, Mappings, Settings
from settings.redaction import redact_text

log = structlog.get_logger(__name__)

SYNC_LEASE = "sync"


async def connect_store(settings: Settings) -> Store:
    """The store; a URI the driver refuses is a configuration error (one line, no secret)."""
    try:
        return await Store.connect(
            settings.mongodb.uri.get_secret_value(), settings.mongodb.database,
            sync_log_retention_days=settings.mongodb.sync_log_retention_days)
    except SyncError:
        raise
    except Exception as exc:  # the driver's own URI errors (InvalidURI, ConfigurationError, ValueError)
        raise ConfigError(f"SFSYNC_MONGODB__URI: the MongoDB driver refuses it: "
                          f"{redact_text(str(exc))}") from None


class Service:
    """The whole service; `status()`/`ready()` feed `/api/status` and `/readyz`."""

    def __init__(self, settings: Settings, mappings: Mappings, *, limits_interval: float | None = None,
                 sink_wrapper: SinkWrapper | None = None) -> None:
        self.settings, self.mappings = settings, mappings
        interval = settings.budget.check_seconds if limits_interval is None else limits_interval
        self.governor = BudgetGovernor(settings.budget, check_interval=interval)
        self.health = Health()
        self.stored = StoreSnapshot()
        self.outbound = OutboundCounters()
        self.store: Store | None = None
        self.parts: SyncParts | None = None
        self._sink_wrapper = sink_wrapper  # observes what reaches the reconciler (tests, bench)
        self._term: LeaderTerm | None = None
        self._switch: SourceSwitch | None = None
        self._jobs = TermJobs()  # admin jobs, run inside the current leader term
        self.failed_while = ""  # the start-up phase this life ended in ("connecting to Salesforce")

    # -- admin surface -----------------------------------------------------------------------

    @property
    def sources(self) -> dict[Mode, Source]:
        return self.parts.sources if self.parts else {}

    @property
    def source(self) -> str | None:
        """The name of the running source, if any."""
        running = self._switch.running if self._switch else None
        return running.name if running else None

    def status(self) -> dict[str, Any]:
        parts = self.parts
        return status_document(StatusParts(
            budget=self.governor.status(), running=self.source, sources=list(self.sources.values()),
            stored=self.stored, lease=self._lease(), instance_url=parts.instance_url if parts else None,
            last_event_at=parts.observed.last_event_at if parts else None))

    def ready(self) -> tuple[bool, str]:
        return ready_reason(self.health, self._lease(), self._switch.running if self._switch else None,
                            self.governor.mode)

    def sync_log_store(self) -> Store:
        if self.store is None or not self.health.mongo_ok:
            raise RetriableError("the service is starting: MongoDB is not connected yet")
        return self.store

    def job_runner(self) -> JobRunner:
        """Retries and imports (merges that spend API calls) for the admin API -- on the leader
        only: a standby raises `NotLeaderError` (409 naming the holder), so two replicas never
        apply merges side by side; a job runs inside the term (`service.term_jobs`)."""
        if self.parts is None:
            raise RetriableError("the service is starting: retry and import are not available yet")
        self.sync_log_store()
        lease = self._lease()
        if lease.role is not Role.LEADER:
            raise NotLeaderError(lease.holder)
        return self._jobs

    def _lease(self) -> LeaseStatus:
        return self._term.status() if self._term else LeaseStatus()

    @property
    def connected(self) -> bool:
        """MongoDB and Salesforce answered and the parts are built (this life got that far)."""
        return self.parts is not None

    # -- life --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: connect, build the parts, then lead terms whenever the lease allows.
        Shutdown (SIGTERM/SIGINT via `run_service`): stop intake, finish the batch in flight,
        commit offsets, stop the background tasks, release the lease, close clients -- within
        `SHUTDOWN_SECONDS`."""
        settings, health = self.settings, self.health
        store = self.store = await connect_store(settings)
        term = self._term = LeaderTerm(store.lease(SYNC_LEASE, ttl=settings.sync.lease_seconds), health)
        refresh = SupervisedTasks([], health=health)
        try:
            health.phase = "connecting to MongoDB"
            await store.ensure_indexes()
            health.mongo_ok = True
            health.phase = "connecting to Salesforce"
            sf_clock = SalesforceClock()  # Salesforce's time, from every response's Date header
            async with SalesforceClient(settings.salesforce, on_usage=self.governor.record_usage,
                                        transport=clocked_transport(sf_clock)) as sf:
                parts = self.parts = await assemble(settings, self.mappings, self.governor, store, sf,
                                                    self._sink_wrapper, sf_clock=sf_clock, fence=term.fence)
                health.salesforce_ok = self.governor.status()["max"] is not None
                self._switch = SourceSwitch(self.governor, parts.sources,
                                            drain_seconds=lambda: term.drain_seconds, on_fenced=term.fenced)
                watcher = StatusRefresh(store, self.governor, health=health, snapshot=self.stored,
                                        counters=self.outbound)
                refresh = SupervisedTasks([TaskSpec("status", watcher.run, Policy.RESTART)], health=health)
                refresh.start(stop)
                await term.serve(stop, self._lead)
        finally:
            self.failed_while = health.phase  # what a restart says it was doing
            health.phase = "stopping"
            await refresh.stop(SHUTDOWN_SECONDS * 0.3)
            await store.close()
            log.info("service_stopped")

    async def _lead(self, term_stop: asyncio.Event) -> None:
        """One leadership term: first start, background tasks, the source, admin jobs -- until
        `term_stop`; then they stop in order: intake (the switch returns), admin jobs, then the
        background tasks -- each bounded, cancelled past its share of the drain time, and ended
        before the term stands by."""
        assert self.parts is not None and self._switch is not None and self._term is not None
        tasks_stop = asyncio.Event()
        tasks: SupervisedTasks | None = None
        self._jobs.open(AdminJobs(self.parts.jobs), term_stop, on_fenced=self._term.fenced)
        try:
            self.health.phase = "backfill or remerge in progress"
            try:
                started, _ = await run_until_stopped(
                    term_stop, first_start(self.parts, self.mappings, self.settings.sync.objects))
            except FencedError as exc:  # a newer term leads: this one ends, logged, no crash
                started = False
                self._term.fenced(exc)
            if started:
                tasks = leader_tasks(self.settings, self.mappings, self.governor, self.parts, self.outbound,
                                     health=self.health, end_term=self._term.end, fenced=self._term.fenced)
                tasks.start(tasks_stop)
                self.health.phase = ""
                await self._switch.run(term_stop)
        finally:
            await self._jobs.close(self._term.drain_seconds * 0.1)
            tasks_stop.set()
            if tasks is not None:
                await tasks.stop(self._term.drain_seconds * 0.3)


__all__ = ["SHUTDOWN_SECONDS", "ObservedSink", "Service"]
