"""Background tasks are watched while they run (issue 11, item 2): an unexpected exit -- an
exception, a `FatalError` too, or returning while not asked to stop -- is logged with its
traceback, counted in /metrics, named by /readyz while the task is down, and then either
restarts the task with backoff or ends the leader term."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from listener.metrics import METRICS
from reconciler.errors import FatalError
from reconciler.pacing import Backoff
from service.readiness import Health, LeaseStatus, Role, ready_reason
from service.supervised import Policy, SupervisedTasks, TaskSpec, stop_tasks
from service.term import LeaderTerm
from tests.support.eventually import eventually
from tests.support.service_fakes import FakeLease, FakeSource

LEADER = LeaseStatus(owner="me", held=True, holder="me", role=Role.LEADER)
RUNNING = FakeSource("stream", ready=True)


@pytest.fixture(autouse=True)
def _fresh_metrics() -> Iterator[None]:
    METRICS.reset()
    yield
    METRICS.reset()


def quick_backoff() -> Backoff:
    return Backoff(base=0.3, cap=0.3, floor=0.3)


class FailsOnce:
    """A task that raises `error` on its first run, then runs until stopped."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.runs = 0

    async def run(self, stop: asyncio.Event) -> None:
        self.runs += 1
        if self.runs == 1:
            if self.error is not None:
                raise self.error
            return  # returned while not asked to stop
        await stop.wait()


def ready(health: Health) -> tuple[bool, str]:
    return ready_reason(health, LEADER, RUNNING, "streaming")


class TestRestartPolicy:
    async def test_a_fatal_error_is_logged_counted_reported_and_the_task_restarts(self) -> None:
        """FatalError in the flusher: `task_failed` with its traceback, the failure counted,
        /readyz 503 naming the task while it waits, then the task runs again and /readyz is 200."""
        health = Health(phase="", mongo_ok=True, salesforce_ok=True)
        flusher = FailsOnce(FatalError("credentials revoked"))
        tasks = SupervisedTasks([TaskSpec("outbound", flusher.run, Policy.RESTART)], health=health,
                                backoff=quick_backoff)
        stop = asyncio.Event()
        with capture_logs() as logs:
            tasks.start(stop)
            await eventually(lambda: flusher.runs == 1)
            await eventually(lambda: not ready(health)[0])
            assert ready(health) == (False, "task outbound down: FatalError: credentials revoked")
            await eventually(lambda: flusher.runs == 2)
            assert ready(health) == (True, "")
            stop.set()
            await tasks.stop(1.0)
        failed = [e for e in logs if e["event"] == "task_failed"]
        assert len(failed) == 1
        assert failed[0]["task"] == "outbound" and failed[0]["log_level"] == "error"
        assert isinstance(failed[0]["exc_info"], FatalError)
        assert failed[0]["policy"] == "restart"
        assert METRICS.get("sfsync_task_failures_total", task="outbound") == 1
        assert "sfsync_task_failures_total" in METRICS.render()

    async def test_returning_while_not_asked_to_stop_is_a_failure(self) -> None:
        """A task that simply returns is down too: logged, counted, restarted."""
        health = Health(phase="", mongo_ok=True, salesforce_ok=True)
        watcher = FailsOnce(None)
        tasks = SupervisedTasks([TaskSpec("local-watch", watcher.run)], health=health, backoff=quick_backoff)
        stop = asyncio.Event()
        with capture_logs() as logs:
            tasks.start(stop)
            await eventually(lambda: watcher.runs == 2)
            stop.set()
            await tasks.stop(1.0)
        failed = [e for e in logs if e["event"] == "task_failed"]
        assert [e["reason"] for e in failed] == ["returned while not asked to stop"]
        assert METRICS.get("sfsync_task_failures_total", task="local-watch") == 1
        assert health.down == {}

    async def test_a_task_that_stops_when_asked_is_not_a_failure(self) -> None:
        """Stopping is quiet: no log line, no count."""
        health = Health(phase="", mongo_ok=True, salesforce_ok=True)
        steady = FailsOnce(None)
        steady.runs = 1  # skip the failing first run
        tasks = SupervisedTasks([TaskSpec("auto-retry", steady.run)], health=health, backoff=quick_backoff)
        stop = asyncio.Event()
        with capture_logs() as logs:
            tasks.start(stop)
            await eventually(lambda: steady.runs == 2)
            stop.set()
            await tasks.stop(1.0)
        assert [e for e in logs if e["event"].startswith("task_")] == []
        assert METRICS.get("sfsync_task_failures_total", task="auto-retry") == 0


class TestEndTermPolicy:
    async def test_a_fatal_error_in_the_governor_ends_the_term_and_the_lease_is_released(self) -> None:
        """The governor's policy ends the term: intake stops, the lease is released, /readyz says
        why while this replica waits before standing by, then it leads a new term."""
        lease, health = FakeLease(free=True, ttl=0.6), Health(phase="", mongo_ok=True, salesforce_ok=True)
        term = LeaderTerm(lease, health)
        governor = FailsOnce(FatalError("limits refused"))
        terms = 0

        async def work(term_stop: asyncio.Event) -> None:
            nonlocal terms
            terms += 1
            tasks = SupervisedTasks([TaskSpec("governor", governor.run, Policy.END_TERM)], health=health,
                                    on_end_term=term.end, backoff=quick_backoff)
            tasks_stop = asyncio.Event()
            tasks.start(tasks_stop)
            try:
                await term_stop.wait()
            finally:
                tasks_stop.set()
                await tasks.stop(0.5)

        stop = asyncio.Event()
        with capture_logs() as logs:
            task = asyncio.create_task(term.serve(stop, work))
            await eventually(lambda: lease.releases == 1)
            assert term.role is not Role.LEADER
            ok, reason = ready_reason(health, term.status(), None, "streaming")
            assert not ok and "governor" in reason and "FatalError: limits refused" in reason
            await eventually(lambda: terms == 2 and term.role is Role.LEADER, timeout=3.0)
            stop.set()
            await asyncio.wait_for(task, 2)
        failed = [e for e in logs if e["event"] == "task_failed"]
        assert len(failed) == 1 and failed[0]["policy"] == "end_term"
        assert isinstance(failed[0]["exc_info"], FatalError)
        assert next(e for e in logs if e["event"] == "lease_term_ended")["reason"].startswith("task governor")
        assert METRICS.get("sfsync_task_failures_total", task="governor") == 1


class TestStopTasks:
    async def test_an_error_raised_while_stopping_is_logged_not_dropped(self) -> None:
        """`stop_tasks` used to gather with return_exceptions=True and drop what it got."""
        async def fails_on_stop(stop: asyncio.Event) -> None:
            await stop.wait()
            raise FatalError("lost on the way out")

        stop = asyncio.Event()
        task = asyncio.create_task(fails_on_stop(stop), name="outbound")
        await asyncio.sleep(0)
        stop.set()
        with capture_logs() as logs:
            await stop_tasks([task], 1.0)
        failed = [e for e in logs if e["event"] == "task_failed_while_stopping"]
        assert len(failed) == 1 and failed[0]["task"] == "outbound"
        assert isinstance(failed[0]["exc_info"], FatalError)
