"""The whole service, inbound: emulator (REST + CometD or Pub/Sub) -> supervisor -> SecantusDB, with mode
switches; every test runs once per stream API (`SFSYNC_SYNC__STREAM_API`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from emulator.state import SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET
from listener.budget import Mode
from listener.salesforce import SalesforceClient
from listener.sources import CdcStream, Poller, PubSubStream
from reconciler.ports import ChangeSink
from service.admin import AdminServer
from service.process import ServiceSlot, start_admin_surface
from service.supervisor import Service
from settings import (
    AdminSettings,
    AuthFlow,
    MongoSettings,
    SalesforceSettings,
    Settings,
    SyncSettings,
)
from tests.support.emulator import RunningEmulator, running_emulator
from tests.support.eventually import eventually
from tests.support.mappings import LEAD_NAME_MAPPINGS as MAPPINGS
from tests.support.sinks import RecordingSink
from tests.support.stream_rig import StreamingFaults

TOKEN = "e2e-admin-token-0123456789abcdefghij"


def stream_of(service: Service) -> CdcStream | PubSubStream | None:
    """The CDC stream the service built (None before it has connected)."""
    source = service.sources.get(Mode.STREAMING)
    return source if isinstance(source, CdcStream | PubSubStream) else None


def poller_of(service: Service) -> Poller | None:
    source = service.sources.get(Mode.POLLING)
    return source if isinstance(source, Poller) else None


@dataclass
class Running:
    api: str
    settings: Settings
    emu: RunningEmulator
    http: aiohttp.ClientSession
    slot: ServiceSlot
    admin: AdminServer
    service: Service = field(init=False)
    stop: asyncio.Event = field(init=False)
    task: asyncio.Task[None] = field(init=False)
    sinks: list[RecordingSink] = field(default_factory=list)  # one per service life

    @property
    def observed(self) -> RecordingSink:
        """What reached the reconciler of the current service."""
        return self.sinks[-1]

    @property
    def faults(self) -> StreamingFaults:
        return StreamingFaults(self.api, self.emu, self.http)

    async def stop_service(self) -> None:
        """What SIGTERM does: the service stops, its offsets committed."""
        self.stop.set()
        await asyncio.wait_for(self.task, 15)

    async def start_service(self) -> None:
        """A new service's life over the same settings, database and org, until it streams."""
        def wrap(sink: ChangeSink) -> ChangeSink:
            self.sinks.append(RecordingSink(sink))
            return self.sinks[-1]

        self.service = self.slot.current = Service(self.settings, MAPPINGS, limits_interval=0.2,
                                                   sink_wrapper=wrap)
        self.stop = asyncio.Event()
        task = self.task = asyncio.create_task(self.service.run(self.stop))
        service, pubsub = self.service, self.emu.pubsub

        def streaming() -> bool:
            # over Pub/Sub also that the server holds the subscription (its cursor placed)
            return (stream := stream_of(service)) is not None and stream.ready and (
                pubsub is None or len(pubsub.streams) > 0)
        await eventually(lambda: task.done() or streaming())
        if task.done():
            task.result()

    async def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self.http.request(method, f"{self.emu.base_url}/_emulator/{path}", json=body) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def create_lead(self, last: str) -> str:
        records = {"Lead": [{"LastName": last, "Company": "Acme"}]}
        body = await self.control("POST", "seed", {"records": records})
        sf_id: str = body["ids"]["Lead"][0]
        return sf_id

    async def last_name(self, sf_id: str) -> str | None:
        assert self.service.store is not None
        doc = await self.service.store.db.people.find_one({"crm.id": sf_id})
        return None if doc is None else doc.get("last_name")

    async def readyz(self) -> int:
        async with self.http.get(f"{self.admin.url}/readyz") as r:
            return r.status


@pytest.fixture(params=["cometd", "pubsub"])
async def running(request: pytest.FixtureRequest, mongo_uri: str,
                  database_name: str) -> AsyncIterator[Running]:
    api = request.param
    async with running_emulator(pubsub=api == "pubsub") as emu, aiohttp.ClientSession() as http:
        await http.post(f"{emu.base_url}/_emulator/seed",
                        json={"emit_events": False,
                              "records": {"Lead": [{"LastName": "Existing", "Company": "Acme"}]}})
        settings = Settings(
            _env_file=None,
            salesforce=SalesforceSettings(login_url=emu.base_url, auth_flow=AuthFlow.CLIENT_CREDENTIALS,
                                          client_id=SAMPLE_CLIENT_ID,
                                          client_secret=SecretStr(SAMPLE_CLIENT_SECRET),
                                          pubsub_endpoint=emu.pubsub_endpoint or "127.0.0.1:1"),
            mongodb=MongoSettings(uri=SecretStr(mongo_uri), database=database_name),
            sync=SyncSettings(objects=["Lead"], frequency_minutes=1, batch_size=50, batch_wait_ms=20,
                              stream_api=api),
            admin=AdminSettings(host="127.0.0.1", port=0, token=SecretStr(TOKEN)),
        )
        slot = ServiceSlot()
        admin = await start_admin_surface(settings, slot)
        run = Running(api, settings, emu, http, slot, admin)
        try:
            await run.start_service()
            yield run
        finally:
            if hasattr(run, "task"):
                run.stop.set()
                await asyncio.wait_for(run.task, 15)
            await admin.stop()


class TestStartup:
    async def test_first_start_backfills_then_streams(self, running: Running) -> None:
        """An empty database is backfilled, then the service streams and reports ready."""
        assert await running.service.store.db.people.count_documents({"last_name": "Existing"}) == 1  # type: ignore[union-attr]
        assert running.service.governor.current is Mode.STREAMING
        assert await running.readyz() == 200
        sf_id = await running.create_lead("Live")
        await eventually(lambda: _is(running.last_name(sf_id), "Live"))
        status = running.service.status()
        assert status["mode"] == "streaming"
        assert status["budget"]["max"] == 100_000


class TestModeSwitch:
    async def test_budget_low_then_back_applies_each_change_once(self, running: Running) -> None:
        """Budget low -> polling -> budget back -> streaming: changes made meanwhile apply once."""
        service = running.service
        stream, poller = stream_of(service), poller_of(service)
        assert stream is not None and poller is not None
        warmup = await running.create_lead("Warmup")  # so a replay id is stored
        await eventually(lambda: _is(running.last_name(warmup), "Warmup"))
        await eventually(lambda: bool(stream.status()["replay_ids"]))
        pass_before = poller.last_pass

        await running.control("POST", "budget", {"used": 80_000, "max": 100_000})
        await eventually(lambda: service.source == "poller" and poller.last_pass is not pass_before)
        assert service.governor.current is Mode.POLLING
        assert service.status()["mode"] == "polling"

        during = await running.create_lead("DuringPolling")
        await running.control("PATCH", f"records/Lead/{during}", {"LastName": "EditedDuringPolling"})

        await running.control("POST", "budget", {"used": 1_000})
        await eventually(lambda: service.source == "stream" and stream.ready)
        await eventually(lambda: _is(running.last_name(during), "EditedDuringPolling"))
        # Anything double-applied would arrive before a later event: the stream applies in
        # replay-id order, so once a Lead created now is applied, nothing earlier is still due.
        marker = await running.create_lead("Marker")
        await eventually(lambda: _is(running.last_name(marker), "Marker"))
        seen = [(c.kind.value, c.source.value, c.fields.get("LastName"))
                for c in running.observed.applied_to(during)]
        # Replayed from the stored replay id, each event once; the poll had run before them.
        assert seen == [("create", "stream", "DuringPolling"), ("update", "stream", "EditedDuringPolling")]
        # Once. Over Pub/Sub the first change after a LATEST subscription comes by the poll that
        # its first response triggers (which then skips the event it covered).
        first_after_latest = "poll" if running.api == "pubsub" else "stream"
        assert [c.source.value for c in running.observed.applied_to(warmup)] == [first_after_latest]


class TestShutdown:
    async def test_stop_finishes_within_ten_seconds(self, running: Running) -> None:
        """Setting stop (what SIGTERM does) ends the service well within 10 s, offsets committed."""
        sf_id = await running.create_lead("Last")
        await eventually(lambda: _is(running.last_name(sf_id), "Last"))
        started = time.monotonic()
        running.stop.set()
        await asyncio.wait_for(running.task, 10)
        assert time.monotonic() - started < 10


class TestStreamResume:
    async def test_a_restart_resumes_from_the_stored_replay_id(self, running: Running) -> None:
        """Leads created while the service was down arrive by stream after a restart, replayed
        from the stored replay id: nothing polled, nothing applied twice."""
        first = await running.create_lead("First")
        await eventually(lambda: _is(running.last_name(first), "First"))
        await running.stop_service()
        missed = [await running.create_lead(f"Missed{i}") for i in range(3)]
        await running.start_service()
        for i, sf_id in enumerate(missed):
            await eventually(lambda sf_id=sf_id, i=i: _is(running.last_name(sf_id), f"Missed{i}"))  # type: ignore[misc]
        assert sorted(c.sf_id for c in running.observed.applied) == sorted(missed)
        assert {c.source.value for c in running.observed.applied} == {"stream"}

    async def test_a_replay_id_too_old_resyncs_by_polling(self, running: Running) -> None:
        """Down longer than the retention: the stored replay id is refused, the service polls,
        subscribes for new events, and streams on; nothing lost."""
        first = await running.create_lead("First")
        await eventually(lambda: _is(running.last_name(first), "First"))
        await running.stop_service()
        bus = running.emu.state.bus
        bus.retention_seconds = 0.2
        stored = bus.last_replay_id
        await eventually(lambda: not bus.is_valid_replay_id(stored))  # its event pruned
        missed = await running.create_lead("WhileDown")
        bus.retention_seconds = 3600
        with capture_logs() as logs:
            await running.start_service()
            await eventually(lambda: _is(running.last_name(missed), "WhileDown"))
            after = await running.create_lead("AfterResync")
            await eventually(lambda: _is(running.last_name(after), "AfterResync"))
        assert "stream_resync" in [e["event"] for e in logs]

    async def test_a_streaming_server_restart_loses_nothing(self, running: Running) -> None:
        """The emulator's streaming server restarts (CometD forgets its clients; the Pub/Sub gRPC
        server goes away and comes back on its port): the stream resumes from its offset."""
        before = await running.create_lead("Before")
        await eventually(lambda: _is(running.last_name(before), "Before"))
        async with running.faults.server_restart():
            during = [await running.create_lead(f"During{i}") for i in range(3)]
        for i, sf_id in enumerate(during):
            await eventually(lambda sf_id=sf_id, i=i: _is(running.last_name(sf_id), f"During{i}"))  # type: ignore[misc]
        assert {c.source.value for c in running.observed.applied if c.sf_id in during} == {"stream"}


class TestStreamFaults:
    async def test_token_expiry_and_a_dropped_stream_are_survived(self, running: Running) -> None:
        await running.control("POST", "tokens/expire")
        await running.faults.drop()
        sf_id = await running.create_lead("AfterExpiry")
        await eventually(lambda: _is(running.last_name(sf_id), "AfterExpiry"))

    async def test_a_poison_event_is_logged_and_the_stream_goes_on(self, running: Running) -> None:
        await running.control("POST", "streaming/publish", {"channel": "/data/LeadChangeEvent",
                                                            "data": {"payload": {"Company": "no header"}}})
        sf_id = await running.create_lead("AfterPoison")
        await eventually(lambda: _is(running.last_name(sf_id), "AfterPoison"))
        assert running.service.store is not None
        logs = running.service.store.db.sync_logs
        await eventually(lambda: _is(logs.count_documents({"status": "failed", "type": "event"}), 1))

    async def test_gap_and_overflow_events_fetch_the_records(self, running: Running) -> None:
        """GAP_UPDATE: the named records are read by id; GAP_OVERFLOW: the object is polled."""
        seeded = await running.control("POST", "seed", {"emit_events": False, "records": {
            "Lead": [{"LastName": "Gap", "Company": "Acme"}, {"LastName": "Overflowed", "Company": "Acme"}]}})
        gap, overflowed = seeded["ids"]["Lead"]
        await running.control("POST", "streaming/gap", {"entity": "Lead", "change_type": "GAP_UPDATE",
                                                        "record_ids": [gap]})
        await eventually(lambda: _is(running.last_name(gap), "Gap"))
        await asyncio.sleep(2.05)  # the poll's signpost: Salesforce's now less 1 s, its second excluded
        overflow = {"entity": "Lead", "commit_timestamp_ms": int(time.time() * 1000) - 60_000}
        await running.control("POST", "streaming/overflow", overflow)
        await eventually(lambda: _is(running.last_name(overflowed), "Overflowed"))

    async def test_our_own_writes_come_back_as_echoes_and_are_not_applied(self, running: Running) -> None:
        """On a stream past its handover (see TestModeSwitch), our own write is an echo: skipped."""
        handover = await running.create_lead("Handover")
        await eventually(lambda: _is(running.last_name(handover), "Handover"))
        async with SalesforceClient(running.settings.salesforce) as sf:
            [result] = await sf.create("Lead", [{"LastName": "Echo", "Company": "Acme"}])
        assert result.success and result.id
        await eventually(lambda: any(c.sf_id == result.id for c in running.observed.applied))
        assert all(c.is_echo for c in running.observed.applied if c.sf_id == result.id)
        assert await running.last_name(result.id) is None


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return bool((await value) == expected)
