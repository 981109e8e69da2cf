"""The leader's background tasks: the governor's `limits` checks, the outbound flusher, the
local-change watcher and auto-retry.

They run for one leader term. They start in that order once the first start (backfill,
remerge) is done, and stop after intake has: the term sets their stop event once the source has
finished its batch and committed, lets them finish for a share of the term's drain time, then
cancels what is left (`stop_tasks`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any

from listener.budget import BudgetGovernor
from reconciler.jobs import retry_transient_for
from reconciler.local_changes import LocalChangeWatcher
from reconciler.outbound import FlushPolicy, OutboundFlusher
from reconciler.retry import AutoRetryScheduler
from service.assembly import SyncParts
from service.outbound_metrics import OutboundCounters
from settings import Mappings, Settings

Runner = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class BackgroundTasks:
    """Named runners started in order on one stop event, stopped together."""

    def __init__(self, runners: Sequence[tuple[str, Runner]]) -> None:
        self._runners = list(runners)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, stop: asyncio.Event) -> None:
        self._tasks = [asyncio.create_task(run(stop), name=name) for name, run in self._runners]

    async def stop(self, grace: float) -> None:
        """Once their stop event is set: `grace` seconds to finish, then the rest is cancelled."""
        await stop_tasks(self._tasks, grace)


async def stop_tasks(tasks: Sequence[asyncio.Task[Any]], grace: float) -> None:
    """Let tasks whose stop event is set finish for `grace` seconds, then cancel the rest."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def leader_tasks(settings: Settings, mappings: Mappings, governor: BudgetGovernor, parts: SyncParts,
                 counters: OutboundCounters) -> BackgroundTasks:
    """A term's background tasks over the connected parts; `counters` watch its flusher."""
    sync = settings.sync
    flusher = OutboundFlusher(parts.outbox, parts.sf, parts.store, governor,
                              client_name=settings.salesforce.client_name,
                              policy=FlushPolicy.from_settings(sync))
    counters.watch(flusher)
    watcher = LocalChangeWatcher(parts.store, mappings, parts.outbox, objects=sync.objects)
    auto_retry = AutoRetryScheduler(retry_transient_for(parts), governor,
                                    interval=timedelta(minutes=sync.retry_interval_minutes),
                                    max_attempts=sync.retry_max_attempts)
    limits = parts.sf.limits

    def limits_checks(stop: asyncio.Event) -> Coroutine[Any, Any, None]:
        return governor.run(stop, limits)

    return BackgroundTasks([
        ("governor", limits_checks),
        ("outbound", flusher.run),
        ("local-watch", watcher.run),
        ("auto-retry", auto_retry.run),
    ])


__all__ = ["BackgroundTasks", "Runner", "leader_tasks", "stop_tasks"]
