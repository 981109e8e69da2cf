"""The source switch runs what the mode asks for and hands marks from one source to the next."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

from listener.budget import Mode
from reconciler.watermark import Watermark
from service.switch import SourceSwitch
from tests.support.eventually import eventually
from tests.support.service_fakes import FakeModes, FakeSource

MARK = {"Lead": Watermark(datetime(2024, 5, 1, 10, 0, tzinfo=UTC))}


class TestSwitching:
    async def test_each_source_starts_from_the_marks_the_previous_one_left(self) -> None:
        """streaming -> polling -> streaming: each new source is handed the last one's marks."""
        stream, poller = FakeSource("stream", marks={}), FakeSource("poller", marks=MARK)
        modes = FakeModes(Mode.STREAMING)
        switch = SourceSwitch(modes, {Mode.STREAMING: stream, Mode.POLLING: poller},
                              drain_seconds=lambda: 1.0)
        stop = asyncio.Event()
        task = asyncio.create_task(switch.run(stop))
        await eventually(lambda: stream.ready)
        assert switch.running is stream and stream.taken_over == []  # a first start: nothing handed over

        modes.set(Mode.POLLING)
        await eventually(lambda: poller.ready)
        assert not stream.ready and switch.running is poller and poller.taken_over == [{}]

        modes.set(Mode.STREAMING)
        await eventually(lambda: stream.runs == 2 and stream.ready)
        assert stream.taken_over == [MARK]
        stop.set()
        await asyncio.wait_for(task, 2)
        assert switch.running is None and not stream.ready

    async def test_a_mode_without_a_source_runs_none_and_keeps_the_last_marks(self) -> None:
        """polling -> paused -> streaming: nothing runs while paused; the stream still resumes
        from the poller's marks."""
        stream, poller = FakeSource("stream"), FakeSource("poller", marks=MARK)
        modes = FakeModes(Mode.POLLING)
        switch = SourceSwitch(modes, {Mode.STREAMING: stream, Mode.POLLING: poller},
                              drain_seconds=lambda: 1.0)
        stop = asyncio.Event()
        task = asyncio.create_task(switch.run(stop))
        await eventually(lambda: poller.ready)
        modes.set(Mode.PAUSED)
        await eventually(lambda: switch.running is None and not poller.ready)
        modes.set(Mode.STREAMING)
        await eventually(lambda: stream.ready)
        assert stream.taken_over == [MARK]
        stop.set()
        await asyncio.wait_for(task, 2)


class SlowToStop(FakeSource):
    """A source whose batch in flight takes `finish_seconds` to finish after its stop is set."""

    finish_seconds: float = 0.5
    finished_after_stop: bool = False
    ended: bool = False

    async def run(self, stop: asyncio.Event) -> None:
        self.runs += 1
        self.ready = True
        try:
            await stop.wait()
            await asyncio.sleep(self.finish_seconds)
            self.finished_after_stop = True
        finally:
            self.ready, self.ended = False, True


class TestNothingDetached:
    async def test_cancelling_the_switch_while_a_source_finishes_cancels_the_source_too(self) -> None:
        """Issue 11, item 4: the switch waits for a stopping source inside a bounded wait; if the
        switch itself is cancelled meanwhile (the term or the process giving up), the source is
        cancelled and has ended when the cancellation returns -- it does not go on detached
        (it used to, under `asyncio.shield`)."""
        source = SlowToStop("stream")
        switch = SourceSwitch(FakeModes(Mode.STREAMING), {Mode.STREAMING: source}, drain_seconds=lambda: 10.0)
        stop = asyncio.Event()
        task = asyncio.create_task(switch.run(stop))
        await eventually(lambda: source.ready)
        stop.set()
        await asyncio.sleep(0.05)  # the switch is now waiting for the source to finish
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert source.ended
        await asyncio.sleep(source.finish_seconds + 0.2)
        assert not source.finished_after_stop

    async def test_a_source_that_outlives_its_drain_share_is_cancelled_and_ended(self) -> None:
        """Past 0.6 x the drain time the source is cancelled, and has ended when the switch returns."""
        source = SlowToStop("stream")
        source.finish_seconds = 5.0
        switch = SourceSwitch(FakeModes(Mode.STREAMING), {Mode.STREAMING: source}, drain_seconds=lambda: 0.5)
        stop = asyncio.Event()
        task = asyncio.create_task(switch.run(stop))
        await eventually(lambda: source.ready)
        stop.set()
        await asyncio.wait_for(task, 2)
        assert source.ended and not source.finished_after_stop
