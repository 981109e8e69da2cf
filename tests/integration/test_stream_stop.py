"""Stopping the stream is bounded and leaves nothing running (issue 11 item 4, stream side).

A batch in flight when the stream is told to stop is waited for up to `stop_deadline`, then
cancelled; once `run` has returned (or was cancelled) no offset or record write happens.
With a fence, the offset writes of a term that lost the lease are refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from listener.events import parse_message
from listener.sources.cometd import CdcStream
from listener.sources.polling import Poller
from reconciler.errors import FencedError
from reconciler.inbound import Reconciler
from reconciler.ports import RejectedEvent, SalesforceChange
from reconciler.store import Fence, Store
from reconciler.store.state_keys import replay_key, watermark_key
from tests.support.eventually import eventually
from tests.support.mappings import LEAD_NAME_MAPPINGS
from tests.support.salesforce_changes import FakeSalesforce
from tests.support.stream_fakes import CHANNEL, ScriptedSession, event, scripted_stream


@dataclass
class SlowSink:
    """Applies nothing, slowly: each apply takes `seconds` (a stalled MongoDB, say)."""

    seconds: float
    started: asyncio.Event = field(default_factory=asyncio.Event)
    finished: int = 0

    async def apply(self, changes: Sequence[SalesforceChange]) -> None:
        self.started.set()
        await asyncio.sleep(self.seconds)
        self.finished += 1

    async def reject(self, events: Sequence[RejectedEvent]) -> None:
        return None


@dataclass
class WriteLog:
    """A store wrapper (a seam) that records when each offset write happened."""

    store: Store
    writes: list[tuple[float, str]] = field(default_factory=list)

    async def load_state(self, key: str) -> dict[str, Any] | None:
        return await self.store.load_state(key)

    async def save_state(self, key: str, value: dict[str, Any], *, fence: Fence | None = None) -> None:
        await self.store.save_state(key, value, fence=fence)
        self.writes.append((time.monotonic(), key))


def stream_with(store: Any, sink: Any, session: ScriptedSession, **kwargs: Any) -> CdcStream:
    return scripted_stream(store, sink, session, batch_size=10, stop_deadline=0.5, **kwargs)


async def two_terms(store: Store) -> tuple[Fence, Fence]:
    """Owner a takes the sync lease (term 1), then owner b after a's lease expired (term 2, on a
    clock 31 s ahead): the fences of both terms, term 1's now stale."""
    old = store.lease("sync", owner="a", ttl=30)
    assert await old.acquire()
    stale = old.fence()
    assert stale is not None
    new = store.lease("sync", owner="b", ttl=30, clock=lambda: datetime.now(UTC) + timedelta(seconds=31))
    assert await new.acquire()
    current = new.fence()
    assert current is not None
    return stale, current


class TestBoundedStop:
    async def test_stop_waits_for_the_batch_up_to_the_deadline_then_cancels_it(self, store: Store) -> None:
        """A batch stuck in apply: `run` returns about `stop_deadline` after stop, the batch is
        cancelled (never finished) and no offset is written then or later."""
        await store.save_state(replay_key(CHANNEL), {"replay_id": 0})
        sink, log = SlowSink(seconds=3.0), WriteLog(store)
        stream = stream_with(log, sink, ScriptedSession([event(1)]))
        stop = asyncio.Event()
        task = asyncio.create_task(stream.run(stop))
        await asyncio.wait_for(sink.started.wait(), 10)
        stopped_at = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 10)
        returned_at = time.monotonic()
        assert returned_at - stopped_at < 1.5
        await asyncio.sleep(3.5)  # longer than the stuck apply
        assert sink.finished == 0
        assert [w for w in log.writes if w[0] >= stopped_at] == []
        assert await store.load_state(replay_key(CHANNEL)) == {"replay_id": 0}

    async def test_a_cancelled_run_leaves_nothing_running(self, store: Store) -> None:
        """The term ends (the task running the stream is cancelled) mid-batch: the batch is
        cancelled with it, and nothing writes an offset afterwards."""
        await store.save_state(replay_key(CHANNEL), {"replay_id": 0})
        sink, log = SlowSink(seconds=0.7), WriteLog(store)
        stream = stream_with(log, sink, ScriptedSession([event(1)]))
        task = asyncio.create_task(stream.run(asyncio.Event()))
        await asyncio.wait_for(sink.started.wait(), 10)
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(1.5)
        assert sink.finished == 0
        assert [w for w in log.writes if w[0] >= cancelled_at] == []
        assert await store.load_state(replay_key(CHANNEL)) == {"replay_id": 0}


class TestFencedOffsets:
    async def test_an_old_terms_offset_write_is_refused(self, store: Store) -> None:
        """The stream runs for term 1; term 2 takes the lease; the next offset write of term 1
        is refused (FencedError ends the run), the stored replay id is term 2's."""
        old = store.lease("sync", owner="a", ttl=30)
        assert await old.acquire()
        stale = old.fence()
        assert stale is not None
        await store.save_state(replay_key(CHANNEL), {"replay_id": 0}, fence=stale)

        session = ScriptedSession([event(1)])
        sink = SlowSink(seconds=0.0)
        stream = stream_with(store, sink, session, fence=lambda: stale)
        task = asyncio.create_task(stream.run(asyncio.Event()))
        await eventually(lambda: _stored(store, 1))

        new = store.lease("sync", owner="b", ttl=30, clock=lambda: datetime.now(UTC) + timedelta(seconds=31))
        assert await new.acquire()
        term2 = new.fence()
        assert term2 is not None
        await store.save_state(replay_key(CHANNEL), {"replay_id": 5}, fence=term2)

        session.deliver(event(2))
        with pytest.raises(FencedError):
            await asyncio.wait_for(task, 10)
        assert await store.load_state(replay_key(CHANNEL)) == {"replay_id": 5}


class TestFencedWatermarks:
    async def test_an_old_terms_poll_pass_writes_no_watermark(self, store: Store) -> None:
        """A poll pass for term 1 after term 2 took the lease: FencedError, watermark untouched."""
        stale, _ = await two_terms(store)
        record = {"Id": "00Q000000000001AAA", "SystemModstamp": "2024-05-01T10:00:00Z",
                  "LastModifiedDate": "2024-05-01T10:00:00Z", "IsDeleted": False, "LastName": "X"}
        sink = SlowSink(seconds=0.0)
        sf = FakeSalesforce({"Lead": [record]})
        sf.calls_made = 0  # type: ignore[attr-defined]  # the poller's call counter
        poller = Poller(sf, store, sink, LEAD_NAME_MAPPINGS,  # type: ignore[arg-type]
                        ["Lead"], fence=lambda: stale)
        with pytest.raises(FencedError):
            await poller.run_once()
        assert await store.load_state(watermark_key("Lead")) is None


class TestFencedRecords:
    async def test_an_old_terms_inbound_write_is_refused(self, store: Store) -> None:
        """The reconciler writing for term 1 after term 2 took the lease: FencedError, no record."""
        stale, _ = await two_terms(store)
        sink = Reconciler(store, LEAD_NAME_MAPPINGS, fence=lambda: stale)
        [change] = parse_one(event(1))
        with pytest.raises(FencedError):
            await sink.apply([change])
        assert await store.db.people.count_documents({}) == 0


def parse_one(message: dict[str, Any]) -> list[SalesforceChange]:
    parsed = parse_message(message, client_name="salesforce-sync", objects=["Lead"])
    assert isinstance(parsed, list)
    return parsed


async def _stored(store: Store, replay_id: int) -> bool:
    return await store.load_state(replay_key(CHANNEL)) == {"replay_id": replay_id}
