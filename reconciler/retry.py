"""Automatic retry of transient failures (`retriable` failed sync logs: UNABLE_TO_LOCK_ROW...).

Every `interval` (default 20 minutes) the scheduler asks the jobs module to re-run the failed
jobs that are retriable and below `max_attempts`; never while the API budget is below its
reserve (a retry spends calls: it waits for the budget like any optional call). Permanent
failures (a missing required field, a validation rule) are left for an admin.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Protocol

import structlog

from reconciler.errors import RetriableError
from reconciler.pacing import every
from reconciler.ports import Budget

log = structlog.get_logger(__name__)


class RetryTransient(Protocol):
    """Re-run due retriable failed jobs below `max_attempts`; return how many were re-run."""

    async def __call__(self, *, max_attempts: int) -> int: ...


class AutoRetryScheduler:
    def __init__(self, jobs: RetryTransient, budget: Budget, *,
                 interval: timedelta = timedelta(minutes=20), max_attempts: int = 10) -> None:
        self._jobs, self._budget = jobs, budget
        self.interval, self.max_attempts = interval, max_attempts
        self.runs = 0

    async def run_once(self) -> int:
        """One round; 0 without calling the jobs when the budget forbids optional calls."""
        if not self._budget.allows_optional_calls():
            log.info("auto_retry_waiting_for_budget", mode=self._budget.mode)
            return 0
        self.runs += 1
        retried = await self._jobs(max_attempts=self.max_attempts)
        if retried:
            log.info("auto_retry_done", retried=retried)
        return retried

    async def run(self, stop: asyncio.Event) -> None:
        async for _ in every(self.interval.total_seconds(), stop, first_at_once=False):
            try:
                await self.run_once()
            except RetriableError as exc:
                log.warning("auto_retry_failed", error=str(exc))
