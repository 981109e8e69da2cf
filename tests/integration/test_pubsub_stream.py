"""What only the Pub/Sub source has, against the emulator's Pub/Sub API (a real gRPC channel) and
real SecantusDB: subscribe presets, replay ids stored as bytes, flow control, keepalives.

The behaviour both stream APIs share (live updates, restart, resync, echoes, gaps, token
expiry, dropped streams, server restart, events limit, poison) is tested once per API in
`test_stream.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from emulator.pubsub_avro import decode_replay_id
from listener.sources.pubsub._wire import Endpoint, PubSubConnection, fetch_request, more
from reconciler.errors import RetriableError
from reconciler.store.state_keys import pubsub_replay_key
from tests.support.eventually import eventually
from tests.support.stream_rig import BATCH, CHANNEL, StreamRig, stream_rig


@pytest.fixture
async def rig(mongo_uri: str, database_name: str) -> AsyncIterator[StreamRig]:
    async with stream_rig("pubsub", mongo_uri, database_name) as rig:
        yield rig


class TestSubscribing:
    async def test_first_start_subscribes_latest_and_stores_replay_ids_as_bytes(self, rig: StreamRig) -> None:
        """No stored replay id: LATEST; once an event is applied its replay id is stored as the
        server sent it (opaque bytes)."""
        await rig.start()
        sf_id = await rig.create_lead("Lovelace")
        await eventually(lambda: rig.has_person(sf_id, "Lovelace"))
        await eventually(rig.offset_is_latest)
        state = await rig.store.load_state(pubsub_replay_key(CHANNEL))
        assert state is not None and isinstance(state["replay_id"], bytes)
        assert [s["replay_preset"] for s in rig.pubsub.subscribes] == ["LATEST"]

    async def test_a_restart_subscribes_custom_after_the_stored_replay_id(self, rig: StreamRig) -> None:
        stream = await rig.start()
        first = await rig.create_lead("First")
        await eventually(lambda: rig.has_person(first))
        await eventually(rig.offset_is_latest)
        await rig.stop(stream)
        stored = await rig.stored_replay_id()

        await rig.start()
        resumed = rig.pubsub.subscribes[-1]
        assert resumed["replay_preset"] == "CUSTOM" and decode_replay_id(resumed["replay_id"]) == stored


class TestLatestHandover:
    async def test_a_change_before_a_slow_server_holds_latest_is_polled(self, rig: StreamRig) -> None:
        """A LATEST subscription takes hold only when the server acts on it, which the client
        cannot see: a change made after the closing poll but before that moment is neither
        delivered nor polled -- unless the stream polls again once the subscription shows it
        holds (its first response)."""
        await rig.control("POST", "pubsub/config", {"hold_subscribes": True})
        stream = rig.build()
        stop = asyncio.Event()
        rig.running.append((stream, stop, asyncio.create_task(stream.run(stop))))
        await eventually(lambda: stream.ready)  # settle and closing poll done; the server not yet
        unseen = await rig.create_lead("BeforeTheCursor")
        await rig.control("POST", "pubsub/config", {"hold_subscribes": False})
        await eventually(lambda: len(rig.pubsub.subscribes) == 1)
        after = await rig.create_lead("AfterTheCursor")
        await eventually(lambda: rig.has_person(after, "AfterTheCursor"))
        await eventually(lambda: rig.has_person(unseen, "BeforeTheCursor"))


class TestFlowControl:
    async def test_a_backlog_is_fetched_a_batch_at_a_time(self, rig: StreamRig) -> None:
        """A backlog larger than a batch: the server never sends more than requested, all arrive."""
        stream = await rig.start()
        first = await rig.create_lead("First")
        await eventually(rig.offset_is_latest)
        await rig.stop(stream)
        ids = [first] + [await rig.create_lead(f"Backlog{i}") for i in range(BATCH * 3 + 5)]
        await rig.start()
        for sf_id in ids:
            await eventually(lambda sf_id=sf_id: rig.has_person(sf_id))  # type: ignore[misc]
        stats = rig.pubsub.stats()
        assert stats["overdelivered"] == 0
        assert 0 < stats["largest_response"] <= BATCH * 2  # two batches requested ahead, at most
        assert rig.pubsub.subscribes[-1]["replay_preset"] == "CUSTOM"
        assert rig.pubsub.subscribes[-1]["num_requested"] == BATCH


class TestKeepalive:
    async def test_keepalive_advances_an_idle_channels_offset(self, rig: StreamRig) -> None:
        """With nothing to deliver, a keepalive's latest replay id becomes the stored offset."""
        await rig.control("POST", "pubsub/config", {"keepalive_seconds": 0.2})
        await rig.start()
        await rig.control("POST", "streaming/publish",  # another channel's event moves the bus on
                          {"channel": "/data/ContactChangeEvent", "data": {"payload": {}}})
        await eventually(rig.offset_is_latest)


class TestWireBoundary:
    async def test_a_stream_the_server_ended_refuses_more_requests_as_retriable(self, rig: StreamRig) -> None:
        """A FetchRequest written after the server ended the stream (dropped while a batch was
        applied) is a `RetriableError` like the read's, never grpc's own exception."""
        connection = PubSubConnection(Endpoint.parse(rig.emu.pubsub_endpoint), rig.sf)
        try:
            subscription = await connection.subscribe(CHANNEL, fetch_request(CHANNEL, 1))
            await eventually(lambda: len(rig.pubsub.streams) == 1)
            await rig.drop()
            with pytest.raises(RetriableError):
                await subscription.read()
            with pytest.raises(RetriableError):
                await subscription.request(more(1))
        finally:
            await connection.close()
