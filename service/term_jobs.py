"""Admin jobs (retry, retry-all, import) as the leader term runs them.

A job is a merge that writes records and spends API calls, so it belongs to a term like the
source and the background tasks do:

- outside a term (a standby, between terms) it is refused with `NotLeaderError` (409);
- once the term is ending (its stop event set) a new job is refused with a `RetriableError` (503);
- a job whose write is refused (`FencedError`: a newer term holds the lease) ends the term, as
  a source or background task that meets one does (`on_fenced`, `LeaderTerm.fenced`), and its
  caller is answered as by a standby (`NotLeaderError`, 409);
- a job still running when the term stops gets a grace period, then is cancelled, and
  `close()` returns only once it has ended (bounded by `CANCEL_GRACE_SECONDS`): nothing it
  started goes on detached beside the next leader. Its caller gets a `RetriableError` saying
  so; what the job had applied stays (every apply is idempotent) and it can be re-run on the
  leader.

The request handler awaits the job through `asyncio.shield`, so a client that disconnects does
not cancel a job half way; the job stays owned by the term.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from reconciler.errors import FencedError, RetriableError
from service.admin.ports import JobRunner, NotLeaderError

log = structlog.get_logger(__name__)

CANCEL_GRACE_SECONDS = 2.0

Job = Callable[[JobRunner], Awaitable[dict[str, Any]]]
OnFenced = Callable[[Exception], None]


class TermJobs:
    """A `JobRunner` over the current term's jobs; `open` when a term starts, `close` when it ends."""

    def __init__(self) -> None:
        self._jobs: JobRunner | None = None
        self._term_stop: asyncio.Event | None = None
        self._on_fenced: OnFenced | None = None
        self._running: set[asyncio.Task[dict[str, Any]]] = set()

    def open(self, jobs: JobRunner, term_stop: asyncio.Event, *, on_fenced: OnFenced | None = None) -> None:
        self._jobs, self._term_stop, self._on_fenced = jobs, term_stop, on_fenced

    async def close(self, grace: float) -> None:
        """Refuse new jobs; give running ones `grace` seconds, cancel the rest, wait until ended."""
        self._jobs = self._term_stop = self._on_fenced = None
        running = list(self._running)
        if not running:
            return
        _, pending = await asyncio.wait(running, timeout=grace)
        for task in pending:
            log.warning("admin_job_cancelled", job=task.get_name(), reason="the leader term ended")
            task.cancel()
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=CANCEL_GRACE_SECONDS)
            for task in stuck:
                log.error("admin_job_did_not_stop", job=task.get_name())

    async def retry(self, log_id: str) -> dict[str, Any]:
        return await self._run("retry", lambda jobs: jobs.retry(log_id))

    async def retry_failed(self) -> dict[str, Any]:
        return await self._run("retry-failed", lambda jobs: jobs.retry_failed())

    async def import_record(self, sf_id: str) -> dict[str, Any]:
        return await self._run("import", lambda jobs: jobs.import_record(sf_id))

    async def _run(self, name: str, job: Job) -> dict[str, Any]:
        jobs, term_stop, on_fenced = self._jobs, self._term_stop, self._on_fenced
        if jobs is None or term_stop is None:
            raise NotLeaderError(None)
        if term_stop.is_set():
            raise RetriableError("the leader term is ending; retry on the leader")
        task = asyncio.create_task(_call(job, jobs), name=f"admin-{name}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        try:
            return await asyncio.shield(task)
        except FencedError as exc:
            log.warning("admin_job_fenced", job=name, error=str(exc))
            if on_fenced is not None:
                on_fenced(exc)
            raise NotLeaderError(None) from exc
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current and current.cancelling()):
                raise RetriableError("the leader term ended while this job ran; what it applied "
                                     "stays; run it again on the leader") from None
            raise


async def _call(job: Job, jobs: JobRunner) -> dict[str, Any]:
    return await job(jobs)


__all__ = ["CANCEL_GRACE_SECONDS", "TermJobs"]
