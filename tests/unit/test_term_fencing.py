"""Issue 11 item 4, the wiring: a leader term's fence is the one captured when it began, and a
write refused for it (`FencedError`) ends the term as lost -- logged, never a crash, never a
restart of the task or source that met it."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from listener.budget import Mode
from reconciler.errors import FencedError
from reconciler.pacing import Backoff
from service.readiness import Health, Role
from service.supervised import Policy, SupervisedTasks, TaskSpec
from service.switch import SourceSwitch
from service.term import LeaderTerm
from tests.support.eventually import eventually
from tests.support.service_fakes import FakeLease, FakeModes, FakeSource


def quick_backoff() -> Backoff:
    return Backoff(base=0.05, cap=0.05, floor=0.05)


class Fenced(FakeSource):
    """A source whose first write is refused: a newer term leads."""

    async def run(self, stop: asyncio.Event) -> None:
        self.runs += 1
        raise FencedError("save_state replay:x: refused, a term newer than 1 holds it")


def healthy() -> Health:
    return Health(phase="", mongo_ok=True, salesforce_ok=True)


class TestTermFence:
    async def test_the_fence_is_captured_when_the_term_begins_and_dropped_when_it_ends(self) -> None:
        lease = FakeLease(free=True, ttl=0.6)
        term = LeaderTerm(lease, healthy())
        seen = []

        async def work(term_stop: asyncio.Event) -> None:
            seen.append(term.fence())
            lease.term += 5  # the lease's live term moves on: the term's own fence does not
            seen.append(term.fence())
            term.end("test")

        stop = asyncio.Event()
        task = asyncio.create_task(term.serve(stop, work))
        await eventually(lambda: len(seen) == 2)
        stop.set()
        await asyncio.wait_for(task, 3)
        assert seen[0] is not None and seen[0] == seen[1] and seen[0].term == 1
        assert term.fence() is None


class TestFencedEndsTheTerm:
    async def test_a_fenced_task_ends_the_term_instead_of_restarting(self) -> None:
        """Also when the refusal comes wrapped in a task group's error (the watcher's loops)."""
        lease, health = FakeLease(free=True, ttl=0.6), healthy()
        term = LeaderTerm(lease, health)
        runs = 0
        terms = 0

        async def flusher(stop: asyncio.Event) -> None:
            nonlocal runs
            runs += 1
            lease.free = False  # another replica took the lease over
            raise ExceptionGroup("a task group", [FencedError("outbox claim: term 1 is over")])

        async def work(term_stop: asyncio.Event) -> None:
            nonlocal terms
            terms += 1
            tasks = SupervisedTasks([TaskSpec("outbound", flusher, Policy.RESTART)], health=health,
                                    on_end_term=term.end, on_fenced=term.fenced, backoff=quick_backoff)
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
            await eventually(lambda: term.role is Role.STANDBY, timeout=3.0)
            stop.set()
            await asyncio.wait_for(task, 3)
        assert runs == terms == 1  # not restarted: the term ended, and this replica stands by
        fenced = [e for e in logs if e["event"] == "lease_term_fenced"]
        assert fenced and fenced[0]["term"] == 1
        assert any(e["event"] == "lease_term_ended" and e["reason"] == "lease lost" for e in logs)

    async def test_a_fenced_source_ends_the_term(self) -> None:
        source = Fenced("stream")
        ended: list[Exception] = []
        stop = asyncio.Event()

        def on_fenced(error: Exception) -> None:
            ended.append(error)
            stop.set()

        switch = SourceSwitch(FakeModes(Mode.STREAMING), {Mode.STREAMING: source},
                              drain_seconds=lambda: 1.0, on_fenced=on_fenced)
        with capture_logs() as logs:
            await asyncio.wait_for(switch.run(stop), 3)
        assert source.runs == 1 and len(ended) == 1 and isinstance(ended[0], FencedError)
        assert any(e["event"] == "source_fenced" for e in logs)
