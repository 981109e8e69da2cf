"""A takeover in streaming mode does not backfill: a leader that streamed left replay ids but no
watermark (it died before its handover wrote them); the next leader resumes the stream from the
replay ids and sends no backfill query. A first start (nothing ever synced) still backfills."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from emulator.state import SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET
from listener.budget import Mode
from listener.sources import CdcStream, PubSubStream
from reconciler.store import Store
from service.supervisor import Service
from settings import AuthFlow, MongoSettings, SalesforceSettings, Settings, SyncSettings
from tests.support.emulator import RunningEmulator, running_emulator
from tests.support.eventually import eventually
from tests.support.mappings import LEAD_NAME_MAPPINGS as MAPPINGS


def _settings(emu: RunningEmulator, mongo_uri: str, database: str, api: str) -> Settings:
    return Settings(
        _env_file=None,
        salesforce=SalesforceSettings(login_url=emu.base_url, auth_flow=AuthFlow.CLIENT_CREDENTIALS,
                                      client_id=SAMPLE_CLIENT_ID,
                                      client_secret=SecretStr(SAMPLE_CLIENT_SECRET),
                                      pubsub_endpoint=emu.pubsub_endpoint or "127.0.0.1:1"),
        mongodb=MongoSettings(uri=SecretStr(mongo_uri), database=database),
        sync=SyncSettings(objects=["Lead"], frequency_minutes=1, batch_size=50, batch_wait_ms=20,
                          stream_api=api, lease_seconds=2),
    )


def _streaming(service: Service) -> bool:
    source = service.sources.get(Mode.STREAMING)
    return isinstance(source, CdcStream | PubSubStream) and source.ready


def _queries(emu: RunningEmulator, since: int) -> list[dict[str, Any]]:
    return [e for e in list(emu.state.requests.entries)[since:] if "/query" in e["path"]]


async def _start(settings: Settings) -> tuple[Service, asyncio.Event, asyncio.Task[None]]:
    service = Service(settings, MAPPINGS, limits_interval=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    await eventually(lambda: task.done() or _streaming(service), timeout=30)
    if task.done():
        task.result()
    return service, stop, task


@pytest.fixture(params=["cometd", "pubsub"])
async def emu(request: pytest.FixtureRequest) -> AsyncIterator[RunningEmulator]:
    async with running_emulator(pubsub=request.param == "pubsub") as running:
        yield running


async def test_takeover_after_streaming_sends_no_backfill_query(emu: RunningEmulator, mongo_uri: str,
                                                                database_name: str, store: Store) -> None:
    api = "pubsub" if emu.pubsub is not None else "cometd"
    settings = _settings(emu, mongo_uri, database_name, api)
    first, _stop, task = await _start(settings)
    await _seed(emu, "Streamed")
    await eventually(lambda: _person(store, "Streamed"), timeout=20)
    assert first.store is not None
    # The leader dies while streaming: no clean stop, so no handover watermark.
    task.cancel()
    with pytest.raises(BaseException):  # noqa: B017 -- cancelled, however it surfaces
        await task
    await store.db.sync_state.delete_many({"_id": {"$regex": "^watermark:"}})
    state = await store.all_state()
    assert any(k.startswith(("replay:", "pubsub_replay:")) for k in state), state

    before = len(emu.state.requests.entries)
    second, stop2, task2 = await _start(settings)
    try:
        await _seed(emu, "After")
        await eventually(lambda: _person(store, "After"), timeout=20)
        queries = _queries(emu, before)
        assert not queries, [q["query"] for q in queries]
    finally:
        stop2.set()
        await asyncio.wait_for(task2, 15)
    del second


async def test_first_start_backfills(emu: RunningEmulator, mongo_uri: str, database_name: str,
                                     store: Store) -> None:
    await _seed(emu, "Before", emit_events=False)
    api = "pubsub" if emu.pubsub is not None else "cometd"
    service, stop, task = await _start(_settings(emu, mongo_uri, database_name, api))
    try:
        await eventually(lambda: _person(store, "Before"), timeout=20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    del service


async def _seed(emu: RunningEmulator, last: str, *, emit_events: bool = True) -> None:
    async with aiohttp.ClientSession() as http:
        body = {"emit_events": emit_events, "records": {"Lead": [{"LastName": last, "Company": "Acme"}]}}
        async with http.post(f"{emu.base_url}/_emulator/seed", json=body) as r:
            assert r.status == 200, await r.text()


async def _person(store: Store, last: str) -> bool:
    count: int = await store.db.people.count_documents({"last_name": last})
    return count == 1
