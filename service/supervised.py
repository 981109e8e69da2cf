"""Supervised tasks: long-lived tasks watched while they run, and stopped without losing errors.

A supervised task runs until its stop event is set. Any other exit is a failure: an exception
(a `FatalError` too) or returning while not asked to stop. A failure is

- logged once, `task_failed` at error level with the traceback (structlog `exc_info`), the
  task's name, the reason and the policy;
- counted in `/metrics` as `sfsync_task_failures_total{task=<name>}`;
- reported by `/readyz` (503, `task <name> down: <reason>`) until the task runs again
  (`Health.down`);
- handled by the task's `Policy`: `RESTART` runs it again after a backoff
  (`reconciler.pacing.Backoff`, reset after a healthy run of `HEALTHY_SECONDS`); `END_TERM`
  leaves it down and asks the leader term to end (`on_end_term`, `service.term.LeaderTerm.end`).
  Whatever the policy, a `FencedError` (a write refused: a newer term leads) ends the term as
  lost (`on_fenced`, `service.term.LeaderTerm.fenced`): restarting would only be refused again.

Which task gets which policy is decided where the tasks are built (`service.background`,
`service.supervisor` for the status refresh) and tabled in `service.background`.

`stop_tasks` gives tasks whose stop event is set a grace period, cancels the rest, and logs what
any of them raised on the way out (`task_failed_while_stopping`) and which had to be cancelled
(`task_stop_timeout`): nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import structlog

from listener.metrics import METRICS
from reconciler.errors import FencedError
from reconciler.pacing import Backoff
from service.readiness import Health

log = structlog.get_logger(__name__)

Runner = Callable[[asyncio.Event], Coroutine[Any, Any, None]]

FAILURES_METRIC = "sfsync_task_failures_total"
HEALTHY_SECONDS = 60.0  # a run at least this long starts the backoff over


class Policy(StrEnum):
    """What an unexpected exit of a task leads to."""

    RESTART = "restart"    # run it again after a backoff; the term goes on
    END_TERM = "end_term"  # end the leader term (the lease is released, a standby may lead)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    run: Runner
    policy: Policy = Policy.RESTART


def default_backoff() -> Backoff:
    return Backoff(base=1.0, cap=60.0, floor=0.5)


@dataclass(frozen=True)
class _Exit:
    """Why a run ended unexpectedly."""

    reason: str
    error: BaseException | None = None


class SupervisedTasks:
    """Named tasks started together on one stop event, watched while they run, stopped together."""

    def __init__(self, specs: Sequence[TaskSpec], *, health: Health,
                 on_end_term: Callable[[str], None] | None = None,
                 on_fenced: Callable[[Exception], None] | None = None,
                 backoff: Callable[[], Backoff] = default_backoff,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.specs = list(specs)
        self._health = health
        self._on_end_term = on_end_term
        self._on_fenced = on_fenced
        self._backoff, self._clock = backoff, clock
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, stop: asyncio.Event) -> None:
        self._tasks = [asyncio.create_task(self._watch(spec, stop), name=spec.name) for spec in self.specs]

    async def stop(self, grace: float) -> None:
        """Once their stop event is set: `grace` seconds to finish, then the rest is cancelled.
        Tasks that are not running are no longer down."""
        try:
            await stop_tasks(self._tasks, grace)
        finally:
            for spec in self.specs:
                self._health.down.pop(spec.name, None)

    async def _watch(self, spec: TaskSpec, stop: asyncio.Event) -> None:
        backoff = self._backoff()
        while not stop.is_set():
            started = self._clock()
            failure = await _run(spec, stop)
            if failure is None:
                return
            self._report(spec, failure, stopping=stop.is_set())
            if stop.is_set():
                return
            if isinstance(failure.error, Exception) and _fenced(failure.error) and self._on_fenced:
                self._on_fenced(failure.error)
                return
            if spec.policy is Policy.END_TERM:
                if self._on_end_term is not None:
                    self._on_end_term(f"task {spec.name} failed: {failure.reason}")
                return  # down until the term's tasks stop
            if self._clock() - started >= HEALTHY_SECONDS:
                backoff.reset()
            if await backoff.wait(stop):
                return
            self._health.down.pop(spec.name, None)
            log.info("task_restarting", task=spec.name, attempt=backoff.attempt)

    def _report(self, spec: TaskSpec, failure: _Exit, *, stopping: bool) -> None:
        log.error("task_failed", task=spec.name, reason=failure.reason, policy=spec.policy.value,
                  stopping=stopping, exc_info=failure.error)
        METRICS.inc(FAILURES_METRIC, task=spec.name)
        if not stopping:
            self._health.down[spec.name] = failure.reason


def _fenced(error: BaseException | None) -> bool:
    """A `FencedError`, or a task group's failure that holds one (the watcher's loops)."""
    if isinstance(error, BaseExceptionGroup):
        return error.subgroup(FencedError) is not None
    return isinstance(error, FencedError)


async def _run(spec: TaskSpec, stop: asyncio.Event) -> _Exit | None:
    """One run of the task: None when it stopped as asked, else why it ended."""
    try:
        await spec.run(stop)
    except Exception as exc:  # the supervisor's job: whatever a task raises is reported, not lost
        return _Exit(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, exc)
    if stop.is_set():
        return None
    return _Exit("returned while not asked to stop")


async def stop_tasks(tasks: Sequence[asyncio.Task[Any]], grace: float) -> None:
    """Let tasks whose stop event is set finish for `grace` seconds, cancel the rest, and log
    what any of them raised."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        log.warning("task_stop_timeout", task=task.get_name(), grace_seconds=round(grace, 2))
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception):
            log.error("task_failed_while_stopping", task=task.get_name(),
                      error=str(result) or type(result).__name__, exc_info=result)


__all__ = ["FAILURES_METRIC", "HEALTHY_SECONDS", "Policy", "Runner", "SupervisedTasks", "TaskSpec",
           "default_backoff", "stop_tasks"]
