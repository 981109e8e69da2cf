"""The source switch runs what the mode asks for and hands marks from one source to the next."""

from __future__ import annotations

import asyncio
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
