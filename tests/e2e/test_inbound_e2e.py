"""The whole service, inbound: emulator (REST + CometD or Pub/Sub) -> supervisor -> SecantusDB, with mode
switches; every test runs once per stream API (`SFSYNC_SYNC__STREAM_API`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from emulator.state import SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET
from listener.budget import Mode
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
    emu: RunningEmulator
    http: aiohttp.ClientSession
    service: Service
    observed: RecordingSink
    stop: asyncio.Event
    task: asyncio.Task[None]
    admin: AdminServer

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
        holder: list[RecordingSink] = []

        def wrap(sink: ChangeSink) -> ChangeSink:
            holder.append(RecordingSink(sink))
            return holder[0]

        service = Service(settings, MAPPINGS, limits_interval=0.2, sink_wrapper=wrap)
        slot = ServiceSlot()
        slot.current = service
        admin = await start_admin_surface(settings, slot)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        await eventually(lambda: task.done() or ((stream := stream_of(service)) is not None and stream.ready))
        if task.done():
            task.result()
        run = Running(emu, http, service, holder[0], stop, task, admin)
        try:
            yield run
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
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
        assert [c.source.value for c in running.observed.applied_to(warmup)] == ["stream"]


class TestShutdown:
    async def test_stop_finishes_within_ten_seconds(self, running: Running) -> None:
        """Setting stop (what SIGTERM does) ends the service well within 10 s, offsets committed."""
        sf_id = await running.create_lead("Last")
        await eventually(lambda: _is(running.last_name(sf_id), "Last"))
        started = time.monotonic()
        running.stop.set()
        await asyncio.wait_for(running.task, 10)
        assert time.monotonic() - started < 10


async def _is(value: Awaitable[Any], expected: Any) -> bool:
    return bool((await value) == expected)
