"""The CDC stream rig the integration tests of both stream APIs share: an in-process emulator org
(REST, CometD, and its Pub/Sub API with `api="pubsub"`), a real Store, the real Salesforce client,
a Reconciler behind a `RecordingSink`, and the stream of the chosen API (`CdcStream` over CometD
or `PubSubStream` over gRPC), started and stopped by the test.

What differs between the APIs stays here, behind one verb each: `drop` (the network loses the
stream), `server_restart` (the streaming server restarts; both in `StreamingFaults`, which the
service-level tests use too), `stored_replay_id` (read back as the emulator's bus position).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from structlog.testing import capture_logs

from emulator.pubsub import PubSubService
from emulator.pubsub_avro import decode_replay_id
from listener.budget import BudgetGovernor
from listener.reader import RecordReader
from listener.salesforce import SalesforceClient
from listener.sources.cometd import CdcStream, StreamOptions
from listener.sources.polling import Poller
from listener.sources.pubsub import PubSubOptions, PubSubStream
from reconciler.inbound import Reconciler
from reconciler.store import Store
from reconciler.store.state_keys import pubsub_replay_key, replay_key
from settings import BudgetSettings
from tests.support.emulator import RunningEmulator, running_emulator
from tests.support.eventually import eventually
from tests.support.mappings import LEAD_NAME_MAPPINGS as MAPPINGS
from tests.support.org_rig import sample_app_settings
from tests.support.sinks import RecordingSink

APIS = ["cometd", "pubsub"]  # the values of SFSYNC_SYNC__STREAM_API
CHANNEL = "/data/LeadChangeEvent"
CLIENT_NAME = "salesforce-sync"
BATCH = 20

Stream = CdcStream | PubSubStream


@dataclass
class StreamRig:
    api: str
    emu: RunningEmulator
    http: aiohttp.ClientSession
    store: Store
    sf: SalesforceClient
    sink: RecordingSink
    governor: BudgetGovernor
    running: list[tuple[Stream, asyncio.Event, asyncio.Task[None]]] = field(default_factory=list)

    @property
    def pubsub(self) -> PubSubService:
        assert self.emu.pubsub is not None, "a Pub/Sub rig only"
        return self.emu.pubsub

    async def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self.http.request(method, f"{self.emu.base_url}/_emulator/{path}", json=body) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def create_lead(self, last: str, *, emit: bool = True) -> str:
        records = {"Lead": [{"LastName": last, "Company": "Acme"}]}
        body = await self.control("POST", "seed", {"emit_events": emit, "records": records})
        sf_id: str = body["ids"]["Lead"][0]
        return sf_id

    def poller(self) -> Poller:
        return Poller(self.sf, self.store, self.sink, MAPPINGS, ["Lead"])

    def build(self) -> Stream:
        poller = self.poller()
        if self.api == "pubsub":
            options = PubSubOptions(client_name=CLIENT_NAME, endpoint=self.emu.pubsub_endpoint,
                                    batch_size=BATCH, batch_wait_ms=20, subscribe_settle=0.05)
            return PubSubStream(sf=self.sf, store=self.store, sink=self.sink, catch_up=poller,
                                objects=["Lead"], options=options, governor=self.governor)
        cometd = StreamOptions(client_name=CLIENT_NAME, api_version="62.0", batch_size=BATCH,
                               batch_wait_ms=20, stall_timeout=2.0)
        return CdcStream(sf=self.sf, store=self.store, sink=self.sink, catch_up=poller, objects=["Lead"],
                         options=cometd, governor=self.governor)

    async def start(self) -> Stream:
        """Run a new stream until it is ready (and, over Pub/Sub, the server holds its subscription)."""
        stream = self.build()
        stop = asyncio.Event()
        subscribed = len(self.emu.pubsub.subscribes) if self.emu.pubsub else 0
        task = asyncio.create_task(stream.run(stop))
        self.running.append((stream, stop, task))

        async def ready() -> bool:
            if task.done():
                task.result()
            # over Pub/Sub also that the server has placed the subscription's cursor: on a busy
            # machine the settle alone can end before the server reads the first FetchRequest
            return stream.ready and (self.emu.pubsub is None or len(self.emu.pubsub.subscribes) > subscribed)
        await eventually(ready)
        return stream

    async def past_handover(self) -> None:
        """One change applied: a stream subscribed for new events (LATEST) has finished its
        handover, which over Pub/Sub ends with a poll at the subscription's first response."""
        sf_id = await self.create_lead("Handover")
        await eventually(lambda: self.has_person(sf_id, "Handover"))

    async def stop(self, stream: Stream) -> None:
        for entry in self.running:
            if entry[0] is stream:
                entry[1].set()
                await asyncio.wait_for(entry[2], 10)
                self.running.remove(entry)
                return

    def task_of(self, stream: Stream) -> asyncio.Task[None]:
        return next(t for s, _, t in self.running if s is stream)

    async def person(self, sf_id: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await self.store.db.people.find_one({"crm.id": sf_id})
        return doc

    async def has_person(self, sf_id: str, last_name: str | None = None) -> bool:
        doc = await self.person(sf_id)
        return doc is not None and (last_name is None or doc.get("last_name") == last_name)

    async def stored_replay_id(self) -> int | None:
        """The stored offset as the emulator's bus position (Pub/Sub's opaque bytes decoded)."""
        if self.api == "pubsub":
            state = await self.store.load_state(pubsub_replay_key(CHANNEL))
            if state is None:
                return None
            assert isinstance(state["replay_id"], bytes)  # stored as the server sent them
            return decode_replay_id(state["replay_id"])
        state = await self.store.load_state(replay_key(CHANNEL))
        return None if state is None else int(state["replay_id"])

    async def offset_is_latest(self) -> bool:
        return await self.stored_replay_id() == self.emu.state.bus.last_replay_id

    async def drop(self) -> None:
        """The network drops the open stream (CometD's long poll, or every Subscribe call)."""
        await StreamingFaults(self.api, self.emu, self.http).drop()

    def server_restart(self) -> AbstractAsyncContextManager[None]:
        """The streaming server goes down on entry and is back on exit (`StreamingFaults`)."""
        return StreamingFaults(self.api, self.emu, self.http).server_restart()


@dataclass
class StreamingFaults:
    """The faults of the emulator's streaming side that each API shows its own way."""

    api: str
    emu: RunningEmulator
    http: aiohttp.ClientSession

    async def _control(self, path: str) -> None:
        async with self.http.post(f"{self.emu.base_url}/_emulator/{path}") as r:
            assert r.status == 200, await r.text()

    async def drop(self) -> None:
        """The network drops the open stream (CometD's long poll, or every Subscribe call)."""
        await self._control("pubsub/drop" if self.api == "pubsub" else "streaming/drop")

    @asynccontextmanager
    async def server_restart(self) -> AsyncIterator[None]:
        """The streaming server goes down on entry and is back on exit; the org (records, event
        bus) is unchanged, so what the body publishes waits on the bus.

        CometD: the server forgets every client (`403::Unknown client` on the next connect) and
        drops their connections. Pub/Sub: the gRPC server stops (open streams end, new calls are
        refused) and starts again on the same port."""
        if self.api == "pubsub":
            assert self.emu.pubsub is not None
            port = int(self.emu.pubsub_endpoint.rsplit(":", 1)[1])
            with capture_logs() as logs:
                await self.emu.pubsub.stop()
                yield
                # down until the stream was refused once: a reconnect attempt, not only the drop
                await eventually(lambda: [e["event"] for e in logs].count("stream_reconnect") >= 2)
            await self.emu.pubsub.start("127.0.0.1", port)
            return
        await self._control("streaming/forget-clients")
        await self._control("streaming/drop")
        yield


@asynccontextmanager
async def stream_rig(api: str, mongo_uri: str, database_name: str) -> AsyncIterator[StreamRig]:
    """A fresh org and database, and a rig for the stream of `api`; running streams stopped on exit."""
    async with running_emulator(pubsub=api == "pubsub") as emu, aiohttp.ClientSession() as http:
        settings = sample_app_settings(emu.base_url)  # client name: salesforce-sync, CLIENT_NAME
        store = await Store.connect(mongo_uri, database_name)
        await store.ensure_indexes()
        governor = BudgetGovernor(BudgetSettings())
        try:
            async with SalesforceClient(settings, on_usage=governor.record_usage) as sf:
                sink = RecordingSink(Reconciler(store, MAPPINGS, fetcher=RecordReader(sf, MAPPINGS),
                                                client_name=CLIENT_NAME))
                rig = StreamRig(api, emu, http, store, sf, sink, governor)
                try:
                    yield rig
                finally:
                    for stream, _, _ in list(rig.running):
                        await rig.stop(stream)
        finally:
            await store.close()
