"""The Pub/Sub source against the emulator's Pub/Sub API (a real gRPC channel) and real SecantusDB."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr
from structlog.testing import capture_logs

from emulator.app import create_app
from emulator.pubsub import PUBSUB_KEY, PubSubService, start_pubsub
from emulator.pubsub_avro import decode_replay_id
from emulator.state import SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET, EmulatorConfig, EmulatorState
from listener.budget import BudgetGovernor, Mode
from listener.reader import RecordReader
from listener.salesforce import ApiUsage, SalesforceClient
from listener.sources.polling import Poller
from listener.sources.pubsub import PubSubOptions, PubSubStream
from reconciler.inbound import Reconciler
from reconciler.ports import ChangeSource
from reconciler.store import Store
from reconciler.store.state_keys import pubsub_replay_key
from settings import AuthFlow, BudgetSettings, SalesforceSettings
from tests.support.eventually import eventually
from tests.support.mappings import LEAD_NAME_MAPPINGS as MAPPINGS
from tests.support.sinks import RecordingSink

CHANNEL = "/data/LeadChangeEvent"
CLIENT_NAME = "salesforce-sync"
BATCH = 20


@dataclass
class Org:
    base_url: str
    state: EmulatorState
    pubsub: PubSubService
    endpoint: str


@dataclass
class Rig:
    org: Org
    http: aiohttp.ClientSession
    store: Store
    sf: SalesforceClient
    sink: RecordingSink
    governor: BudgetGovernor
    running: list[tuple[PubSubStream, asyncio.Event, asyncio.Task[None]]] = field(default_factory=list)

    async def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self.http.request(method, f"{self.org.base_url}/_emulator/{path}", json=body) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def create_lead(self, last: str, *, emit: bool = True) -> str:
        records = {"Lead": [{"LastName": last, "Company": "Acme"}]}
        body = await self.control("POST", "seed", {"emit_events": emit, "records": records})
        sf_id: str = body["ids"]["Lead"][0]
        return sf_id

    async def start(self) -> PubSubStream:
        options = PubSubOptions(client_name=CLIENT_NAME, endpoint=self.org.endpoint, batch_size=BATCH,
                                batch_wait_ms=20, subscribe_settle=0.05)
        stream = PubSubStream(sf=self.sf, store=self.store, sink=self.sink,
                              catch_up=Poller(self.sf, self.store, self.sink, MAPPINGS, ["Lead"]),
                              objects=["Lead"], options=options, governor=self.governor)
        stop = asyncio.Event()
        subscribed = len(self.org.pubsub.subscribes)
        task = asyncio.create_task(stream.run(stop))
        self.running.append((stream, stop, task))

        async def ready() -> bool:
            if task.done():
                task.result()
            # ready, and the server has placed the subscription's cursor: on a busy machine the
            # settle alone can end before the server reads the first FetchRequest
            return stream.ready and len(self.org.pubsub.subscribes) > subscribed
        await eventually(ready)
        return stream

    async def stop(self, stream: PubSubStream) -> None:
        for entry in self.running:
            if entry[0] is stream:
                entry[1].set()
                await asyncio.wait_for(entry[2], 10)
                self.running.remove(entry)
                return

    async def has_person(self, sf_id: str, last_name: str | None = None) -> bool:
        doc = await self.store.db.people.find_one({"crm.id": sf_id})
        return doc is not None and (last_name is None or doc.get("last_name") == last_name)

    async def stored_replay_id(self) -> int | None:
        """The stored offset (opaque bytes) read back as the emulator's bus position."""
        state = await self.store.load_state(pubsub_replay_key(CHANNEL))
        if state is None:
            return None
        assert isinstance(state["replay_id"], bytes)
        return decode_replay_id(state["replay_id"])


@pytest.fixture
async def org() -> AsyncIterator[Org]:
    app = create_app(EmulatorConfig())
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state: EmulatorState = app["state"]
    state.instance_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    port = await start_pubsub(app, "127.0.0.1", 0)
    try:
        yield Org(state.instance_url, state, app[PUBSUB_KEY], f"127.0.0.1:{port}")
    finally:
        await runner.cleanup()


@pytest.fixture
async def rig(org: Org, mongo_uri: str, database_name: str) -> AsyncIterator[Rig]:
    settings = SalesforceSettings(
        login_url=org.base_url, auth_flow=AuthFlow.CLIENT_CREDENTIALS, client_id=SAMPLE_CLIENT_ID,
        client_secret=SecretStr(SAMPLE_CLIENT_SECRET), client_name=CLIENT_NAME)
    store = await Store.connect(mongo_uri, database_name)
    await store.ensure_indexes()
    governor = BudgetGovernor(BudgetSettings())
    try:
        async with aiohttp.ClientSession() as http, \
                SalesforceClient(settings, on_usage=governor.record_usage) as sf:
            rig = Rig(org, http, store, sf, RecordingSink(Reconciler(
                store, MAPPINGS, fetcher=RecordReader(sf, MAPPINGS), client_name=CLIENT_NAME)), governor)
            try:
                yield rig
            finally:
                for stream, _, _ in list(rig.running):
                    await rig.stop(stream)
    finally:
        await store.close()


class TestLiveUpdates:
    async def test_creates_and_updates_are_applied_and_the_offset_stored(self, rig: Rig) -> None:
        """A Lead created then updated shows up in MongoDB; the replay id is stored as bytes."""
        await rig.start()
        sf_id = await rig.create_lead("Lovelace")
        await eventually(lambda: rig.has_person(sf_id, "Lovelace"))
        await rig.control("PATCH", f"records/Lead/{sf_id}", {"LastName": "Byron"})
        await eventually(lambda: rig.has_person(sf_id, "Byron"))
        last = rig.org.state.bus.last_replay_id
        await eventually(lambda: _equals(rig.stored_replay_id(), last))
        assert [s["replay_preset"] for s in rig.org.pubsub.subscribes] == ["LATEST"]

    async def test_poison_event_is_logged_and_consumption_goes_on(self, rig: Rig) -> None:
        """A malformed event (undecodable on the wire) becomes a failed sync log; the next applies."""
        await rig.start()
        # an offset stored first: a reconnect on a busy machine then replays from it instead of
        # subscribing for new events only (and passing over the bad event, which no poll recovers)
        before = await rig.create_lead("Before")
        await eventually(lambda: rig.has_person(before, "Before"))
        await eventually(lambda: _equals(rig.stored_replay_id(), rig.org.state.bus.last_replay_id))
        await rig.control("POST", "streaming/publish",
                          {"channel": CHANNEL, "data": {"payload": {"Company": "no header"}}})
        sf_id = await rig.create_lead("After")
        await eventually(lambda: rig.has_person(sf_id, "After"))
        assert len(rig.sink.rejected) == 1
        assert rig.sink.rejected[0].reason.startswith("undecodable Pub/Sub event")
        failed = await rig.store.db.sync_logs.count_documents({"status": "failed", "type": "event"})
        assert failed == 1


class TestFlowControl:
    async def test_a_backlog_is_fetched_a_batch_at_a_time(self, rig: Rig) -> None:
        """A backlog larger than a batch: the server never sends more than requested, all arrive."""
        stream = await rig.start()
        first = await rig.create_lead("First")
        await eventually(lambda: _equals(rig.stored_replay_id(), rig.org.state.bus.last_replay_id))
        await rig.stop(stream)
        ids = [first] + [await rig.create_lead(f"Backlog{i}") for i in range(BATCH * 3 + 5)]
        await rig.start()
        for sf_id in ids:
            await eventually(lambda sf_id=sf_id: rig.has_person(sf_id))  # type: ignore[misc]
        stats = rig.org.pubsub.stats()
        assert stats["overdelivered"] == 0
        assert 0 < stats["largest_response"] <= BATCH * 2  # two batches requested ahead, at most
        assert rig.org.pubsub.subscribes[-1]["replay_preset"] == "CUSTOM"
        assert rig.org.pubsub.subscribes[-1]["num_requested"] == BATCH


class TestRestart:
    async def test_events_published_while_down_are_delivered_after_restart(self, rig: Rig) -> None:
        """A restart resumes after the stored replay id (CUSTOM): nothing published meanwhile is lost."""
        stream = await rig.start()
        first = await rig.create_lead("First")
        await eventually(lambda: rig.has_person(first))
        await eventually(lambda: _equals(rig.stored_replay_id(), rig.org.state.bus.last_replay_id))
        await rig.stop(stream)
        stored = await rig.stored_replay_id()

        missed = [await rig.create_lead(f"Missed{i}") for i in range(3)]
        rig.sink.applied.clear()
        await rig.start()
        for i, sf_id in enumerate(missed):
            await eventually(lambda sf_id=sf_id, i=i: rig.has_person(sf_id, f"Missed{i}"))  # type: ignore[misc]
        resumed = rig.org.pubsub.subscribes[-1]
        assert resumed["replay_preset"] == "CUSTOM" and decode_replay_id(resumed["replay_id"]) == stored
        assert {c.source for c in rig.sink.applied if c.sf_id in missed} == {ChangeSource.STREAM}


class TestResync:
    async def test_replay_id_too_old_polls_then_subscribes_latest(self, rig: Rig) -> None:
        """The server refuses the stored replay id: catch-up poll, subscribe LATEST; none lost."""
        stream = await rig.start()
        first = await rig.create_lead("First")
        await eventually(lambda: rig.has_person(first))
        await rig.stop(stream)

        bus = rig.org.state.bus
        bus.retention_seconds = 0.2
        await asyncio.sleep(0.4)
        missed = await rig.create_lead("WhileDown")
        assert not bus.is_valid_replay_id(await rig.stored_replay_id() or 0)
        bus.retention_seconds = 3600

        with capture_logs() as logs:
            await rig.start()
            await eventually(lambda: rig.has_person(missed, "WhileDown"))
            after = await rig.create_lead("AfterResync")
            await eventually(lambda: rig.has_person(after, "AfterResync"))
        assert any(e["event"] == "stream_resync" for e in logs)
        assert [s["replay_preset"] for s in rig.org.pubsub.subscribes[-2:]] == ["CUSTOM", "LATEST"]
        assert rig.org.pubsub.errors.get("INVALID_ARGUMENT") == 1


class TestEchoes:
    async def test_our_own_writes_are_skipped_but_their_offset_advances(self, rig: Rig) -> None:
        """A change made with our client name comes back as an echo: not applied, offset stored."""
        await rig.start()
        [result] = await rig.sf.create("Lead", [{"LastName": "Echo", "Company": "Acme"}])
        assert result.success and result.id
        last = rig.org.state.bus.last_replay_id
        await eventually(lambda: _equals(rig.stored_replay_id(), last))
        echoes = [c for c in rig.sink.applied if c.sf_id == result.id]
        assert echoes and all(c.is_echo for c in echoes)
        assert await rig.store.db.people.find_one({"crm.id": result.id}) is None


class TestGaps:
    async def test_gap_events_cost_one_in_query(self, rig: Rig) -> None:
        """GAP_UPDATE for three records: one `Id IN (...)` query fetches them all."""
        await rig.start()
        ids = [await rig.create_lead(f"Gap{i}", emit=False) for i in range(3)]
        before = rig.sf.calls_made
        await rig.control("POST", "streaming/gap", {"entity": "Lead", "change_type": "GAP_UPDATE",
                                                    "record_ids": ids})
        for i, sf_id in enumerate(ids):
            await eventually(lambda sf_id=sf_id, i=i: rig.has_person(sf_id, f"Gap{i}"))  # type: ignore[misc]
        assert rig.sf.calls_made - before == 1

    async def test_overflow_polls_the_object(self, rig: Rig) -> None:
        """GAP_OVERFLOW: the object is polled from the event's commit time."""
        await rig.start()
        since_ms = int(time.time() * 1000) - 5000
        quiet = await rig.create_lead("Quiet", emit=False)
        await asyncio.sleep(2.05)  # the poll's signpost: Salesforce's now less 1 s, its second excluded
        await rig.control("POST", "streaming/overflow", {"entity": "Lead", "commit_timestamp_ms": since_ms})
        await eventually(lambda: rig.has_person(quiet, "Quiet"))


class TestResilience:
    async def test_token_expiry_is_survived(self, rig: Rig) -> None:
        """Expired tokens and a dropped stream: UNAUTHENTICATED, re-authenticate, resubscribe, go on."""
        await rig.start()
        await rig.control("POST", "tokens/expire")
        await rig.control("POST", "pubsub/drop")
        sf_id = await rig.create_lead("AfterExpiry")
        await eventually(lambda: rig.has_person(sf_id, "AfterExpiry"))
        assert rig.org.pubsub.errors.get("UNAUTHENTICATED", 0) >= 1

    async def test_dropped_stream_resumes_from_the_offset_without_loss(self, rig: Rig) -> None:
        """UNAVAILABLE: back off, resubscribe after the applied replay id; events arrive by stream."""
        await rig.start()
        before = await rig.create_lead("Before")
        await eventually(lambda: rig.has_person(before))
        await rig.control("POST", "pubsub/drop")
        ids = [await rig.create_lead(f"Dropped{i}") for i in range(3)]
        for i, sf_id in enumerate(ids):
            await eventually(lambda sf_id=sf_id, i=i: rig.has_person(sf_id, f"Dropped{i}"))  # type: ignore[misc]
        assert {c.source for c in rig.sink.applied if c.sf_id in ids} == {ChangeSource.STREAM}

    async def test_keepalive_advances_an_idle_channels_offset(self, rig: Rig) -> None:
        """With nothing to deliver, a keepalive's latest replay id becomes the stored offset."""
        await rig.control("POST", "pubsub/config", {"keepalive_seconds": 0.2})
        await rig.start()
        await rig.control("POST", "streaming/publish",  # another channel's event moves the bus on
                          {"channel": "/data/ContactChangeEvent", "data": {"payload": {}}})
        last = rig.org.state.bus.last_replay_id
        await eventually(lambda: _equals(rig.stored_replay_id(), last))

    async def test_events_limit_switches_the_governor_to_polling(self, rig: Rig) -> None:
        """RESOURCE_EXHAUSTED on the delivery allocation: the governor is told and the source stops."""
        rig.governor.record_usage(ApiUsage(used=10, max=1000))
        assert rig.governor.current is Mode.STREAMING
        stream = await rig.start()
        await rig.control("POST", "budget", {"events_used": 50_000, "events_max": 50_000})
        await rig.create_lead("Limited")
        await eventually(lambda: _true(rig.governor.current is Mode.POLLING))
        task = next(t for s, _, t in rig.running if s is stream)
        await asyncio.wait_for(task, 10)


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return bool((await value) == expected)


async def _true(value: bool) -> bool:
    return value
