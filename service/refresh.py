"""The status refresh: every few seconds, what MongoDB holds for `/api/status` and `/metrics`.

It pings MongoDB, reads all of `sync_state`, the outbox depth and the open failures per error
code into a `StoreSnapshot`,
publishes the outbox depth and the outbound counters, and updates `Health` (MongoDB reachable;
Salesforce reachable once the governor has seen a `limits` answer). It runs on every replica,
leader or standby, for the whole process life.
"""

from __future__ import annotations

import asyncio

import structlog

from listener.budget import BudgetGovernor
from listener.metrics import METRICS
from reconciler.errors import RetriableError
from reconciler.pacing import every
from reconciler.store import Store
from service.outbound_metrics import OutboundCounters
from service.readiness import Health, StoreSnapshot

log = structlog.get_logger(__name__)

STATUS_REFRESH_SECONDS = 5.0


class StatusRefresh:
    def __init__(self, store: Store, governor: BudgetGovernor, *, health: Health, snapshot: StoreSnapshot,
                 counters: OutboundCounters) -> None:
        self._store, self._governor = store, governor
        self._health, self._snapshot, self._counters = health, snapshot, counters

    async def run(self, stop: asyncio.Event) -> None:
        async for _ in every(STATUS_REFRESH_SECONDS, stop):
            await self.refresh_once()

    async def refresh_once(self) -> None:
        store, health = self._store, self._health
        try:
            await store.ping()
            self._snapshot.state = await store.all_state()
            self._snapshot.outbox_depth = await store.outbox.depth()
            self._snapshot.failures_by_code = await store.open_failures_by_code()
            METRICS.set("sfsync_queue_depth", self._snapshot.outbox_depth, queue="outbox")
            self._counters.publish()
            health.mongo_ok = True
        except RetriableError as exc:
            health.mongo_ok = False
            log.warning("status_refresh_failed", error=str(exc))
        health.salesforce_ok = self._governor.status()["max"] is not None


__all__ = ["STATUS_REFRESH_SECONDS", "StatusRefresh"]
