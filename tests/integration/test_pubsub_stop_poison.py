"""The Pub/Sub source keeps issue 11's stream behaviour, as the CometD one does
(`test_stream_stop.py`, `test_stream_poison.py`): a bounded stop with nothing written after it,
fenced offset writes, and poison logged and moved past.

A scripted connection (the source's `connect` seam, `tests.support.pubsub_fakes`) delivers
Avro-encoded events; the real Reconciler (poison) and a real SecantusDB store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from listener.sources.pubsub import PubSubOptions, PubSubStream
from reconciler.errors import FencedError
from reconciler.inbound import Reconciler
from reconciler.store import Store
from reconciler.store.state_keys import pubsub_replay_key
from tests.integration.test_stream_stop import SlowSink, WriteLog
from tests.support.eventually import eventually
from tests.support.mappings import LEAD_NAME_MAPPINGS
from tests.support.pubsub_fakes import LEAD, ScriptedPubSub, lead_event, lead_id, replay
from tests.support.stream_fakes import NoCatchUp

CHANNEL = "/data/LeadChangeEvent"
KEY = pubsub_replay_key(CHANNEL)
FAR_FUTURE_MS = 10**15  # year ~33658: not a datetime


@pytest.fixture
async def store(mongo_uri: str, database_name: str) -> AsyncIterator[Store]:
    store = await Store.connect(mongo_uri, database_name)
    await store.ensure_indexes()
    try:
        yield store
    finally:
        await store.close()


def stream_with(store: Any, sink: Any, org: ScriptedPubSub, **kwargs: Any) -> PubSubStream:
    options = PubSubOptions("salesforce-sync", batch_size=50, batch_wait_ms=20, stop_deadline=0.5)
    return PubSubStream(sf=object(), store=store, sink=sink, catch_up=NoCatchUp(),  # type: ignore[arg-type]
                        objects=["Lead"], options=options, connect=org.connect, **kwargs)


async def stored(store: Store, n: int) -> bool:
    return await store.load_state(KEY) == {"replay_id": replay(n)}


class TestBoundedStop:
    @pytest.mark.parametrize("how", ["stop", "cancel"])
    async def test_nothing_is_written_after_stop_or_cancel(self, store: Store, how: str) -> None:
        """A batch stuck in apply: a stop returns about `stop_deadline` later, a cancelled run at
        once; the batch never finishes and no offset is written then or later."""
        await store.save_state(KEY, {"replay_id": replay(0)})
        sink, log = SlowSink(seconds=2.0), WriteLog(store)
        stop = asyncio.Event()
        task = asyncio.create_task(stream_with(log, sink, ScriptedPubSub([lead_event(1)])).run(stop))
        await asyncio.wait_for(sink.started.wait(), 10)
        stopped_at = time.monotonic()
        if how == "stop":
            stop.set()
            await asyncio.wait_for(task, 10)
        else:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert time.monotonic() - stopped_at < 1.5
        await asyncio.sleep(2.5)  # longer than the stuck apply
        assert sink.finished == 0
        assert [w for w in log.writes if w[0] >= stopped_at] == []
        assert await stored(store, 0)


class TestFencedOffsets:
    async def test_an_old_terms_offset_write_is_refused(self, store: Store) -> None:
        """Term 1's stream; term 2 takes the lease; term 1's next offset write is refused
        (FencedError ends the run) and the stored replay id stays term 2's."""
        old = store.lease("sync", owner="a", ttl=30)
        assert await old.acquire()
        stale = old.fence()
        assert stale is not None
        await store.save_state(KEY, {"replay_id": replay(0)}, fence=stale)
        org = ScriptedPubSub([lead_event(1)])
        task = asyncio.create_task(stream_with(store, SlowSink(seconds=0.0), org,
                                               fence=lambda: stale).run(asyncio.Event()))
        await eventually(lambda: stored(store, 1))

        new = store.lease("sync", owner="b", ttl=30, clock=lambda: datetime.now(UTC) + timedelta(seconds=31))
        assert await new.acquire()
        term2 = new.fence()
        assert term2 is not None
        await store.save_state(KEY, {"replay_id": replay(5)}, fence=term2)

        org.deliver(lead_event(2))
        with pytest.raises(FencedError):
            await asyncio.wait_for(task, 10)
        assert await stored(store, 5)


def _truncated() -> bytes:
    payload: bytes = lead_event(99).event.payload
    return payload[: len(payload) // 2]


# (replay id, what is wrong with it, the event)
POISON: list[tuple[int, str, Any]] = [
    (2, "payload not Avro", lead_event(2, payload=b"\x01\xff\xff{}")),
    (4, "payload cut short", lead_event(4, payload=_truncated())),
    (6, "commitTimestamp far in the future", lead_event(6, header={"commitTimestamp": FAR_FUTURE_MS})),
    (8, "LastModifiedDate far in the future (not a datetime)",
     lead_event(8, fields={"LastModifiedDate": FAR_FUTURE_MS})),
    (10, "LastModifiedDate in year 9999", lead_event(10, fields={"LastModifiedDate": 253_402_300_799_000})),
    (12, "unknown entity", lead_event(12, header={"entityName": "Opportunity"})),
    (14, "no record ids", lead_event(14, header={"recordIds": []})),
]
VALID = [1, 3, 5, 7, 9, 11, 13, 15]


class TestPoisonEvents:
    async def test_poison_is_logged_skipped_and_the_stream_goes_on(self, store: Store) -> None:
        """Valid events around every kind of poison are applied; each poison is a failed log
        naming its replay id (hex) and reason; the stored replay id moves past all of them; the
        stream goes on with what comes next."""
        assert LEAD.schema_id
        await store.save_state(KEY, {"replay_id": replay(0)})
        by_id = {rid: e for rid, _, e in POISON}
        org = ScriptedPubSub([by_id.get(rid) or lead_event(rid) for rid in range(1, 16)])
        sink = Reconciler(store, LEAD_NAME_MAPPINGS, client_name="salesforce-sync")
        stop = asyncio.Event()
        task = asyncio.create_task(stream_with(store, sink, org).run(stop))
        try:
            async def offset_is(n: int) -> bool:
                if task.done():
                    task.result()  # the stream died: show why
                return await stored(store, n)
            await eventually(lambda: offset_is(15))

            people = {d["crm"]["id"] async for d in store.db.people.find({}, {"crm.id": 1})}
            assert people == {lead_id(n) for n in VALID}
            failed = [d async for d in store.db.sync_logs.find({"status": "failed", "type": "event"})]
            logged = {d["job"]["raw"]["replay_id"]: d["error"] for d in failed}
            assert sorted(logged) == sorted(replay(rid).hex() for rid, _, _ in POISON)
            assert all(reason for reason in logged.values())

            org.deliver(lead_event(16))
            await eventually(lambda: offset_is(16))
            assert await store.db.people.count_documents({"crm.id": lead_id(16)}) == 1
            assert not task.done()
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


class TestCreateSources:
    @pytest.mark.parametrize("api", ["cometd", "pubsub"])
    async def test_the_stream_gets_the_leader_terms_fence(self, store: Store, api: str) -> None:
        """Whichever API streams, `create_sources` hands it the fence provider (as the poller)."""
        from listener.budget import BudgetGovernor, Mode
        from listener.sources import create_sources
        from settings import BudgetSettings, Settings

        salesforce = {"login_url": "http://127.0.0.1:1", "client_id": "x", "client_secret": "y",
                      "auth_flow": "client_credentials"}
        settings = Settings(_env_file=None, salesforce=salesforce,  # type: ignore[call-arg, arg-type]
                            mongodb={"uri": "mongodb://127.0.0.1:1"}, sync={"stream_api": api})

        def fence() -> None:
            return None

        sources = create_sources(settings=settings, mappings=LEAD_NAME_MAPPINGS, sf=object(),  # type: ignore[arg-type]
                                 store=store, sink=SlowSink(0.0), governor=BudgetGovernor(BudgetSettings()),
                                 fence=fence)
        stream = sources[Mode.STREAMING]
        assert type(stream).__name__ == ("PubSubStream" if api == "pubsub" else "CdcStream")
        with pytest.raises(FencedError):  # no term to write for: refused before anything is read
            await stream.run(asyncio.Event())
