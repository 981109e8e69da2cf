"""Admin jobs run inside the leader term (issue 11, item 4): refused outside a term and once the
term is ending, and a job still running when the term ends is cancelled and has ended before the
term stands by -- it never goes on detached beside the next leader."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from reconciler.errors import FencedError, RetriableError
from service.admin import NotLeaderError
from service.term_jobs import TermJobs


class BlockingJobs:
    """A `JobRunner` whose retry-all blocks until cancelled; import answers at once."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.ended = False

    async def retry(self, log_id: str) -> dict[str, Any]:
        return {"retried": 1}

    async def retry_failed(self) -> dict[str, Any]:
        self.started.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.ended = True
        return {}

    async def import_record(self, sf_id: str) -> dict[str, Any]:
        return {"imported": sf_id}


class TestTermJobs:
    async def test_outside_a_term_jobs_are_refused(self) -> None:
        """No term running: NotLeaderError (the admin API's 409)."""
        with pytest.raises(NotLeaderError):
            await TermJobs().import_record("00Q000000000001AAA")

    async def test_a_job_runs_while_the_term_runs(self) -> None:
        term_jobs = TermJobs()
        term_jobs.open(BlockingJobs(), asyncio.Event())
        assert await term_jobs.import_record("00Q1") == {"imported": "00Q1"}

    async def test_an_ending_term_refuses_new_jobs(self) -> None:
        """Once the term's stop is set, a new job is refused (503: retry on the leader)."""
        term_jobs, term_stop = TermJobs(), asyncio.Event()
        term_jobs.open(BlockingJobs(), term_stop)
        term_stop.set()
        with pytest.raises(RetriableError, match="ending"):
            await term_jobs.retry("abc")

    async def test_a_job_in_flight_when_the_term_ends_is_cancelled_and_ended(self) -> None:
        """close() waits its grace, cancels the job, and returns once it has ended; the caller
        gets a retriable error saying the term ended."""
        jobs, term_jobs = BlockingJobs(), TermJobs()
        term_jobs.open(jobs, asyncio.Event())
        caller = asyncio.create_task(term_jobs.retry_failed())
        await asyncio.wait_for(jobs.started.wait(), 1)
        await asyncio.wait_for(term_jobs.close(0.1), 2)
        assert jobs.ended
        with pytest.raises(RetriableError, match="term ended"):
            await caller
        with pytest.raises(NotLeaderError):
            await term_jobs.retry("abc")


class FencedJobs(BlockingJobs):
    """A `JobRunner` whose retry meets a refused write: a newer term holds the lease."""

    async def retry(self, log_id: str) -> dict[str, Any]:
        raise FencedError("bulk_apply people: a term newer than 1 holds the lease")


class TestAFencedJob:
    async def test_ends_the_term_and_answers_as_a_standby(self) -> None:
        """A job whose write is refused (`FencedError`) ends the term, as a source or task that
        meets one does, and its caller is told this replica no longer leads (409)."""
        fenced: list[Exception] = []
        term_jobs = TermJobs()
        term_jobs.open(FencedJobs(), asyncio.Event(), on_fenced=fenced.append)
        with pytest.raises(NotLeaderError):
            await term_jobs.retry("abc")
        assert [type(e) for e in fenced] == [FencedError]
