"""The leader's background tasks: the governor's `limits` checks, the outbound flusher, the
local-change watcher and auto-retry -- supervised (`service.supervised`).

They run for one leader term. They start in that order once the first start (backfill,
remerge) is done, and stop after intake has: the term sets their stop event once the source has
finished its batch and committed, lets them finish for a share of the term's drain time, then
cancels what is left (`stop_tasks`, which logs whatever they raised).

What an unexpected exit (an exception, `FatalError` included, or returning while not asked to
stop) leads to, per task -- each is also logged with its traceback, counted in
`sfsync_task_failures_total{task=...}` and named by `/readyz` (503) while it is down:

| task | on an unexpected exit | why |
| --- | --- | --- |
| `governor` | end the term | (1) |
| `outbound` | restart, backoff 0.5 s ... 60 s | its work waits durably in the outbox; inbound goes on |
| `local-watch` | restart, backoff | resumes from its saved resume token / watermark |
| `auto-retry` | restart, backoff | a round is idempotent; a missed one is the next one's work |
| `status` (2) | restart, backoff | no term to end; `/api/status`, `/metrics` go stale meanwhile |

(1) The `limits` checks alone move the mode out of `paused` (no other call is made then) and
see the budget while idle: without them the reserve is not guarded. The replica steps aside
(intake stops in order, the lease is released, it waits before trying again, `LeaderTerm.end`)
and a standby leads. (2) The status refresh runs on every replica for the whole process life
(`service.supervisor`), not for a term.

The backoff starts over after a run of `HEALTHY_SECONDS` (60 s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from listener.budget import BudgetGovernor
from reconciler.jobs import retry_transient_for
from reconciler.local_changes import LocalChangeWatcher
from reconciler.outbound import FlushPolicy, OutboundFlusher
from reconciler.outbound_shadow import ShadowGate
from reconciler.retry import AutoRetryScheduler
from service.assembly import SyncParts
from service.outbound_metrics import OutboundCounters
from service.readiness import Health
from service.supervised import Policy, SupervisedTasks, TaskSpec
from settings import Mappings, Settings


def leader_tasks(settings: Settings, mappings: Mappings, governor: BudgetGovernor, parts: SyncParts,
                 counters: OutboundCounters, *, health: Health,
                 end_term: Callable[[str], None],
                 fenced: Callable[[Exception], None] | None = None) -> SupervisedTasks:
    """A term's background tasks over the connected parts; `counters` watch its flusher,
    `health` hears which is down, `end_term` ends the term (the policies tabled above);
    `fenced` ends it as lost when a task's write was refused (`FencedError`, any policy)."""
    sync = settings.sync
    flusher = OutboundFlusher(parts.outbox, parts.sf, parts.store, governor,
                              client_name=settings.salesforce.client_name,
                              policy=FlushPolicy.from_settings(sync), sf_clock=parts.sf_clock,
                              gate=ShadowGate(parts.sf, parts.store, mappings, parts.sf_clock))
    counters.watch(flusher)
    watcher = LocalChangeWatcher(parts.store, mappings, parts.outbox, objects=sync.objects,
                                 overlap=timedelta(seconds=sync.poll_overlap_seconds))
    auto_retry = AutoRetryScheduler(retry_transient_for(parts), governor,
                                    interval=timedelta(minutes=sync.retry_interval_minutes),
                                    max_attempts=sync.retry_max_attempts)
    limits = parts.sf.limits

    def limits_checks(stop: asyncio.Event) -> Coroutine[Any, Any, None]:
        return governor.run(stop, limits)

    return SupervisedTasks([
        TaskSpec("governor", limits_checks, Policy.END_TERM),
        TaskSpec("outbound", flusher.run, Policy.RESTART),
        TaskSpec("local-watch", watcher.run, Policy.RESTART),
        TaskSpec("auto-retry", auto_retry.run, Policy.RESTART),
    ], health=health, on_end_term=end_term, on_fenced=fenced)


__all__ = ["leader_tasks"]
