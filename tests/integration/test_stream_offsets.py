"""Offsets only after apply: a replay id is stored only once the sink applied every event it
covers, so a batch the sink failed is redelivered, never skipped (issue 14).

The real stream against the emulator's CometD server and a real SecantusDB; the seams are a
sink that fails on demand (`FlakySink`) and a state store that journals every offset it writes
(`JournalingStateStore`), both writing to one `Journal` so the order of "applied" and
"committed" can be checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from emulator.state import SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET
from listener.salesforce import SalesforceClient
from listener.sources.cometd import CdcStream, StreamOptions
from listener.sources.polling import Poller
from reconciler.errors import RetriableError
from reconciler.inbound import Reconciler
from reconciler.ports import ChangeSource
from reconciler.store import Store
from reconciler.store.state_keys import replay_key
from settings import AuthFlow, SalesforceSettings
from tests.support.emulator import RunningEmulator, running_emulator
from tests.support.eventually import eventually
from tests.support.mappings import LEAD_NAME_MAPPINGS as MAPPINGS
from tests.support.sinks import FlakySink, Journal, JournalingStateStore

CHANNEL = "/data/LeadChangeEvent"
KEY = replay_key(CHANNEL)
CLIENT_NAME = "salesforce-sync"


class SinkCrashed(Exception):
    """Not a SyncError: the sink died, the stream's task ends with it (a process crash)."""


@dataclass
class Rig:
    emu: RunningEmulator
    http: aiohttp.ClientSession
    store: Store
    sf: SalesforceClient
    sink: FlakySink
    offsets: JournalingStateStore
    poller: Poller
    tasks: list[tuple[asyncio.Event, asyncio.Task[None]]] = field(default_factory=list)

    @property
    def journal(self) -> Journal:
        return self.sink.journal

    async def create_leads(self, *last_names: str) -> list[str]:
        """Leads created in one control call: their events are published back to back."""
        records = {"Lead": [{"LastName": n, "Company": "Acme"} for n in last_names]}
        async with self.http.post(f"{self.emu.base_url}/_emulator/seed",
                                  json={"emit_events": True, "records": records}) as r:
            assert r.status == 200, await r.text()
            ids: list[str] = (await r.json())["ids"]["Lead"]
            return ids

    async def start(self) -> asyncio.Task[None]:
        options = StreamOptions(client_name=CLIENT_NAME, api_version="62.0", batch_size=50,
                                batch_wait_ms=50, stall_timeout=2.0)
        stream = CdcStream(sf=self.sf, store=self.offsets, sink=self.sink, catch_up=self.poller,
                           objects=["Lead"], options=options)
        stop = asyncio.Event()
        task = asyncio.create_task(stream.run(stop))
        self.tasks.append((stop, task))

        async def ready() -> bool:
            if task.done():
                task.result()
            return stream.ready
        await eventually(ready)
        return task

    async def stop_all(self) -> None:
        for stop, task in self.tasks:
            stop.set()
            await asyncio.gather(asyncio.wait_for(task, 10), return_exceptions=True)
        self.tasks.clear()

    async def stored(self) -> int | None:
        state = await self.store.load_state(KEY)
        return None if state is None else int(state["replay_id"])

    async def has_person(self, sf_id: str) -> bool:
        return bool(await self.store.db.people.count_documents({"crm.id": sf_id}) == 1)

    async def settled(self) -> int:
        """A first Lead applied and its replay id stored: the stream resumes from a stored
        offset from now on (no handover poll can stand in for a redelivery)."""
        [first] = await self.create_leads("Settled")
        await eventually(lambda: self.has_person(first))
        last = self.emu.state.bus.last_replay_id
        await eventually(lambda: _is(self.stored(), last))
        return last


@pytest.fixture
async def rig(mongo_uri: str, database_name: str) -> AsyncIterator[Rig]:
    async with running_emulator() as emu, aiohttp.ClientSession() as http:
        settings = SalesforceSettings(
            login_url=emu.base_url, auth_flow=AuthFlow.CLIENT_CREDENTIALS, client_id=SAMPLE_CLIENT_ID,
            client_secret=SecretStr(SAMPLE_CLIENT_SECRET), client_name=CLIENT_NAME)
        store = await Store.connect(mongo_uri, database_name)
        await store.ensure_indexes()
        try:
            async with SalesforceClient(settings) as sf:
                sink = FlakySink(Reconciler(store, MAPPINGS, client_name=CLIENT_NAME))
                offsets = JournalingStateStore(store, sink.journal)
                rig = Rig(emu, http, store, sf, sink, offsets, Poller(sf, offsets, sink, MAPPINGS, ["Lead"]))
                try:
                    yield rig
                finally:
                    await rig.stop_all()
        finally:
            await store.client.drop_database(database_name)
            await store.close()


class TestOffsetsFollowTheSink:
    @pytest.mark.parametrize(
        ("failure", "restart"),
        [
            pytest.param(RetriableError("MongoDB stepped down"), False, id="sink-raises-retriable"),
            pytest.param(SinkCrashed("sink died mid-batch"), True, id="sink-dies-mid-batch"),
        ],
    )
    async def test_a_batch_the_sink_failed_is_not_committed_and_is_redelivered(
            self, rig: Rig, failure: Exception, restart: bool) -> None:
        """The sink applies the first of two events and fails on the second: no replay id at or
        past the failed event is stored until the sink applied it; the stream (reconnected, or
        restarted after a crash) gets it again from the stored offset -- over CometD, not by a
        poll -- and applies it; the stored offset then covers both."""
        task = await rig.start()
        settled = await rig.settled()

        first, second = await rig.create_leads("Applied", "Failed")
        rig.sink.fail_on(second, failure)
        await eventually(lambda: second in {c.sf_id for c in rig.journal.failed()})
        assert rig.journal.commits_ahead_of_apply() == []
        if restart:
            with pytest.raises(SinkCrashed):
                await asyncio.wait_for(asyncio.shield(task), 15)
            stored = await rig.stored()
            assert stored is not None and stored < _replay_of(rig, second)
            await rig.start()

        await eventually(lambda: rig.has_person(second), timeout=30)
        last = rig.emu.state.bus.last_replay_id
        await eventually(lambda: _is(rig.stored(), last))

        assert [c.sf_id for c in rig.journal.failed()][-1:] == [second]
        redelivered = rig.journal.applied(second)
        assert redelivered and {c.source for c in redelivered} == {ChangeSource.STREAM}
        assert rig.journal.applied(first)
        assert rig.journal.commits_ahead_of_apply() == []
        committed = rig.journal.committed(KEY)
        assert committed == sorted(committed) and committed[0] >= settled  # never backwards


def _replay_of(rig: Rig, sf_id: str) -> int:
    ids = {c.replay_id for c in rig.journal.failed() if c.sf_id == sf_id}
    assert len(ids) == 1 and None not in ids, ids
    return int(ids.pop())  # type: ignore[arg-type]


async def _is(value: Any, expected: Any) -> bool:
    return bool((await value) == expected)
