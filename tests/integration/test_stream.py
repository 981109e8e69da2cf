"""The CDC stream against the emulator and a real SecantusDB, end to end, once per stream API
(`SFSYNC_SYNC__STREAM_API`): CometD (`CdcStream`) and the Pub/Sub API (`PubSubStream`, real gRPC).

Both behave alike behind the `Source` protocol; what only one API has (Pub/Sub flow control,
keepalives, subscribe presets) is in `test_pubsub_stream.py`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from listener.budget import Mode
from listener.salesforce import ApiUsage
from listener.sources.handover import PollHandover
from reconciler.ports import ChangeSource
from tests.support.eventually import eventually
from tests.support.stream_rig import APIS, CHANNEL, StreamRig, stream_rig

# What a malformed event on the Lead channel is rejected as: CometD delivers JSON without a
# ChangeEventHeader; the Pub/Sub API cannot Avro-encode it against the Lead schema.
POISON_REASON = {"cometd": "no ChangeEventHeader", "pubsub": "undecodable Pub/Sub event"}


@pytest.fixture(params=APIS)
async def rig(request: pytest.FixtureRequest, mongo_uri: str, database_name: str) -> AsyncIterator[StreamRig]:
    async with stream_rig(request.param, mongo_uri, database_name) as rig:
        yield rig


class TestLiveUpdates:
    async def test_creates_and_updates_are_applied(self, rig: StreamRig) -> None:
        """A Lead created then updated in Salesforce shows up in MongoDB; its offset is stored."""
        await rig.start()
        sf_id = await rig.create_lead("Lovelace")
        await eventually(lambda: rig.has_person(sf_id, "Lovelace"))
        await rig.control("PATCH", f"records/Lead/{sf_id}", {"LastName": "Byron"})
        await eventually(lambda: rig.has_person(sf_id, "Byron"))
        await eventually(rig.offset_is_latest)

    async def test_poison_event_is_logged_and_consumption_goes_on(self, rig: StreamRig) -> None:
        """An event without ChangeEventHeader becomes a failed sync log; the next event applies."""
        await rig.start()
        # an offset stored first: a reconnect on a busy machine then replays from it instead of
        # subscribing for new events only (and passing over the bad event, which no poll recovers)
        before = await rig.create_lead("Before")
        await eventually(lambda: rig.has_person(before, "Before"))
        await eventually(rig.offset_is_latest)
        await rig.control("POST", "streaming/publish",
                          {"channel": CHANNEL, "data": {"payload": {"Company": "no header"}}})
        sf_id = await rig.create_lead("After")
        await eventually(lambda: rig.has_person(sf_id, "After"))
        await eventually(rig.offset_is_latest)  # the batch done: its reject is logged before
        [rejected] = rig.sink.rejected
        assert rejected.reason.startswith(POISON_REASON[rig.api])
        failed = await rig.store.db.sync_logs.count_documents({"status": "failed", "type": "event"})
        assert failed == 1


class TestRestart:
    async def test_events_published_while_down_are_delivered_after_restart(self, rig: StreamRig) -> None:
        """A restart resumes after the stored replay id: what was published meanwhile arrives by
        stream, and nothing applied before is applied again."""
        stream = await rig.start()
        first = await rig.create_lead("First")
        await eventually(lambda: rig.has_person(first))
        await eventually(rig.offset_is_latest)
        await rig.stop(stream)

        missed = [await rig.create_lead(f"Missed{i}") for i in range(3)]
        rig.sink.applied.clear()
        await rig.start()
        for i, sf_id in enumerate(missed):
            await eventually(lambda sf_id=sf_id, i=i: rig.has_person(sf_id, f"Missed{i}"))  # type: ignore[misc]
        assert sorted(c.sf_id for c in rig.sink.applied) == sorted(missed)
        assert {c.source for c in rig.sink.applied} == {ChangeSource.STREAM}


class TestResync:
    async def test_replay_id_too_old_polls_then_subscribes_for_new_events(self, rig: StreamRig) -> None:
        """A replay id out of retention: catch-up poll, subscribe for new events (-1 / LATEST),
        closing poll; nothing lost."""
        stream = await rig.start()
        first = await rig.create_lead("First")
        await eventually(lambda: rig.has_person(first))
        await eventually(rig.offset_is_latest)
        await rig.stop(stream)

        bus = rig.emu.state.bus
        bus.retention_seconds = 0.2
        stored = await rig.stored_replay_id() or 0
        await eventually(lambda: not bus.is_valid_replay_id(stored))  # its event pruned
        missed = await rig.create_lead("WhileDown")
        bus.retention_seconds = 3600

        with capture_logs() as logs:
            await rig.start()
            await eventually(lambda: rig.has_person(missed, "WhileDown"))
            after = await rig.create_lead("AfterResync")
            await eventually(lambda: rig.has_person(after, "AfterResync"))
        assert [e["event"] for e in logs].count("stream_resync") == 1
        if rig.api == "pubsub":  # refused CUSTOM, then LATEST
            assert [s["replay_preset"] for s in rig.pubsub.subscribes[-2:]] == ["CUSTOM", "LATEST"]
            assert rig.pubsub.errors.get("INVALID_ARGUMENT") == 1


    async def test_a_reconnect_before_any_new_event_subscribes_for_new_events_and_polls_again(
        self, rig: StreamRig
    ) -> None:
        """After a resync the channel is subscribed for new events (-1 / LATEST) until one of its
        events is committed; a reconnect before that subscribes for new events again, so a change
        made since the resync's closing poll (here silent: its event is never delivered) is read
        by a new closing poll (chaos CI seed 8, A3.industry: an update made between the resync's
        poll and a `403::Unknown client` reconnect never reached the platform)."""
        stream = await rig.start()
        first = await rig.create_lead("First")
        await eventually(lambda: rig.has_person(first))
        await eventually(rig.offset_is_latest)
        await rig.stop(stream)
        bus = rig.emu.state.bus
        bus.retention_seconds = 0.2
        stored = await rig.stored_replay_id() or 0
        await eventually(lambda: not bus.is_valid_replay_id(stored))
        bus.retention_seconds = 3600
        await rig.start()  # resync: catch-up poll, subscribe for new events, closing poll

        missed = await rig.create_lead("SinceTheResync", emit=False)
        async with rig.server_restart():
            pass
        await eventually(lambda: rig.has_person(missed, "SinceTheResync"))


class TestEchoes:
    async def test_our_own_writes_are_skipped_but_their_offset_advances(self, rig: StreamRig) -> None:
        """A change made with our client name comes back as an echo: not applied, offset stored."""
        await rig.start()
        await rig.past_handover()
        [result] = await rig.sf.create("Lead", [{"LastName": "Echo", "Company": "Acme"}])
        assert result.success and result.id
        await eventually(rig.offset_is_latest)
        echoes = [c for c in rig.sink.applied if c.sf_id == result.id]
        assert echoes and all(c.is_echo for c in echoes)
        assert await rig.person(result.id) is None


class TestGaps:
    async def test_gap_events_cost_one_in_query_per_object(self, rig: StreamRig) -> None:
        """GAP_UPDATE for three records: one `Id IN (...)` query fetches them all."""
        await rig.start()
        await rig.past_handover()  # over Pub/Sub the first response triggers one more poll
        ids = [await rig.create_lead(f"Gap{i}", emit=False) for i in range(3)]
        before = rig.sf.calls_made
        await rig.control("POST", "streaming/gap", {"entity": "Lead", "change_type": "GAP_UPDATE",
                                                    "record_ids": ids})
        for i, sf_id in enumerate(ids):
            await eventually(lambda sf_id=sf_id, i=i: rig.has_person(sf_id, f"Gap{i}"))  # type: ignore[misc]
        assert rig.sf.calls_made - before == 1

    async def test_overflow_polls_the_object(self, rig: StreamRig) -> None:
        """GAP_OVERFLOW: the object is polled from the event's commit time."""
        await rig.start()
        since_ms = int(time.time() * 1000) - 5000
        quiet = await rig.create_lead("Quiet", emit=False)
        await rig.control("POST", "streaming/overflow", {"entity": "Lead", "commit_timestamp_ms": since_ms})
        await eventually(lambda: rig.has_person(quiet, "Quiet"))


class TestClosingPoll:
    async def test_a_record_changed_again_past_the_signpost_is_read_in_full(self, rig: StreamRig) -> None:
        """A change made before a -1 subscription reaches the service only through the closing
        poll. A record changed again since, in a second the poll's signpost excludes (the org's
        clock runs ahead for that edit, so it is certain), is still read: the later edit's event
        carries only its own fields, so leaving the record to the stream loses the first change
        (chaos seed 25147, P4.city: our own write's echo moved the Lead past the signpost)."""
        sf_id = await rig.create_lead("BeforeSubscribe", emit=False)
        await rig.control("POST", "clock", {"offset_seconds": 5})
        await rig.control("PATCH", f"records/Lead/{sf_id}?emit_event=false", {"FirstName": "Later"})
        await rig.control("POST", "clock", {"offset_seconds": 0})
        handover = PollHandover(rig.poller(), rig.store)
        handover.owe_closing_poll(["Lead"])
        await handover.close_over_with_poll()
        doc = await rig.person(sf_id)
        assert doc is not None and (doc["last_name"], doc["first_name"]) == ("BeforeSubscribe", "Later")


class TestResilience:
    async def test_token_expiry_is_survived(self, rig: StreamRig) -> None:
        """Expired tokens and a dropped stream: re-authenticate through the REST client, go on."""
        await rig.start()
        await rig.control("POST", "tokens/expire")
        await rig.drop()
        sf_id = await rig.create_lead("AfterExpiry")
        await eventually(lambda: rig.has_person(sf_id, "AfterExpiry"))
        if rig.api == "pubsub":
            assert rig.pubsub.errors.get("UNAUTHENTICATED", 0) >= 1

    async def test_a_dropped_stream_resumes_from_the_offset_without_loss(self, rig: StreamRig) -> None:
        """The network drops the stream: back off, reconnect after the applied replay id; the
        events published meanwhile arrive by stream."""
        await rig.start()
        before = await rig.create_lead("Before")
        await eventually(lambda: rig.has_person(before))
        await rig.drop()
        ids = [await rig.create_lead(f"Dropped{i}") for i in range(3)]
        for i, sf_id in enumerate(ids):
            await eventually(lambda sf_id=sf_id, i=i: rig.has_person(sf_id, f"Dropped{i}"))  # type: ignore[misc]
        assert {c.source for c in rig.sink.applied if c.sf_id in ids} == {ChangeSource.STREAM}

    async def test_a_server_restart_resumes_from_the_stored_offset(self, rig: StreamRig) -> None:
        """The streaming server restarts (CometD forgets its clients; the gRPC server goes and
        comes back): reconnect, resume from the stored replay id, nothing lost or polled."""
        await rig.start()
        before = await rig.create_lead("Before")
        await eventually(lambda: rig.has_person(before))
        await eventually(rig.offset_is_latest)
        rig.sink.applied.clear()
        async with rig.server_restart():
            ids = [await rig.create_lead(f"Restart{i}") for i in range(3)]
        for i, sf_id in enumerate(ids):
            await eventually(lambda sf_id=sf_id, i=i: rig.has_person(sf_id, f"Restart{i}"))  # type: ignore[misc]
        assert sorted(c.sf_id for c in rig.sink.applied) == sorted(ids)  # nothing applied twice
        assert {c.source for c in rig.sink.applied} == {ChangeSource.STREAM}  # replayed, not polled

    async def test_events_limit_switches_the_governor_to_polling(self, rig: StreamRig) -> None:
        """The daily events allocation spent (403 / RESOURCE_EXHAUSTED): the governor is told
        and the stream's `run` returns."""
        rig.governor.record_usage(ApiUsage(used=10, max=1000))
        assert rig.governor.current is Mode.STREAMING
        stream = await rig.start()
        await rig.control("POST", "budget", {"events_used": 50_000, "events_max": 50_000})
        await rig.create_lead("Limited")
        await rig.drop()
        await eventually(lambda: _true(rig.governor.current is Mode.POLLING))
        await asyncio.wait_for(rig.task_of(stream), 10)


async def _true(value: bool) -> bool:
    return value
