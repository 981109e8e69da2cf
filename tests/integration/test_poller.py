"""The poller against the emulator's REST/SOQL and a real SecantusDB, through the real reconciler."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from listener.reader import RecordReader
from listener.salesforce import SalesforceClient
from listener.sources.polling import DEFAULT_POLL_OVERLAP, Poller, Watermark
from reconciler.errors import RetriableError
from reconciler.inbound import Reconciler
from reconciler.ports import ChangeKind, RejectedEvent, SalesforceChange
from reconciler.store import Store
from reconciler.store.state_keys import watermark_key
from tests.support.mappings import LEAD_NAME_MAPPINGS as MAPPINGS
from tests.support.org_rig import Org, org_and_store
from tests.support.sinks import FlakySink, RecordingSink

BASE = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def stamp(seconds: int) -> str:
    return (BASE + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class CountingSink:
    """Counts changes without applying them: the cost test measures REST calls, not MongoDB."""

    changes: int = 0

    async def apply(self, changes: Sequence[SalesforceChange]) -> None:
        self.changes += len(changes)

    async def reject(self, events: Sequence[RejectedEvent]) -> None:
        raise AssertionError(f"unexpected rejects: {events}")


@dataclass
class Rig:
    org: Org
    store: Store
    sink: RecordingSink
    sf: SalesforceClient
    now: list[datetime]

    def poller(self, overlap: timedelta = DEFAULT_POLL_OVERLAP) -> Poller:
        return Poller(self.sf, self.store, self.sink, MAPPINGS, ["Lead"], clock=lambda: self.now[0],
                      overlap=overlap)


@pytest.fixture
async def rig(mongo_uri: str, database_name: str) -> AsyncIterator[Rig]:
    async with org_and_store(mongo_uri, database_name) as (org, settings, store), \
            SalesforceClient(settings) as sf:
        sink = RecordingSink(Reconciler(store, MAPPINGS, fetcher=RecordReader(sf, MAPPINGS)))
        yield Rig(org, store, sink, sf, [BASE + timedelta(minutes=5)])


def lead(last: str, at: int, **extra: Any) -> dict[str, Any]:
    return {"LastName": last, "Company": "Acme", "SystemModstamp": stamp(at), "LastModifiedDate": stamp(at),
            **extra}


class TestSameSecond:
    async def test_a_change_in_the_watermark_second_is_not_missed(self, rig: Rig) -> None:
        """A record modified in the watermark's own second is polled; the one applied is skipped."""
        [first] = await rig.org.seed("Lead", [lead("First", 10)])
        poller = rig.poller()
        await poller.run_once()
        assert [c.sf_id for c in rig.sink.applied] == [first]
        assert await poller.watermark("Lead") == Watermark(BASE + timedelta(seconds=10), first)

        [second] = await rig.org.seed("Lead", [lead("Second", 10)])  # same second as the watermark
        rig.sink.applied.clear()
        await poller.run_once()
        assert [c.sf_id for c in rig.sink.applied] == [second]
        person = await rig.store.db.people.find_one({"crm.id": second})
        assert person is not None and person["last_name"] == "Second"


class TestAFailedApply:
    async def test_the_next_pass_applies_what_a_failed_pass_read(self, rig: Rig) -> None:
        """Chaos seed 50321, A14: a stream's closing poll read a new Account and its apply was
        refused (the leader term had just ended: fenced); the same process's next term polled
        again over the overlap, found the pair remembered as applied, skipped it, and moved the
        watermark past it: the Account never reached the platform. A pair is applied only once
        the sink has taken it."""
        [sf_id] = await rig.org.seed("Lead", [lead("Kept", 10, OwnerId="005000000000001AAA")])
        sink = FlakySink(rig.sink)
        sink.fail_on(sf_id)
        poller = Poller(rig.sf, rig.store, sink, MAPPINGS, ["Lead"], clock=lambda: rig.now[0])
        with pytest.raises(RetriableError):
            await poller.run_once()
        await poller.run_once()
        assert [c.sf_id for c in sink.journal.applied()] == [sf_id]
        assert await rig.store.db.people.find_one({"crm.id": sf_id}) is not None


class TestDeletions:
    async def test_deleted_records_are_seen_through_query_all(self, rig: Rig) -> None:
        """A deleted Lead reaches the reconciler as a DELETE from queryAll."""
        [sf_id] = await rig.org.seed("Lead", [lead("Gone", 10)])
        poller = rig.poller()
        await poller.run_once()
        await rig.org.delete("Lead", sf_id)  # stamped with the emulator's wall clock
        rig.now[0] = datetime.now(UTC) + timedelta(seconds=2)
        rig.sink.applied.clear()
        await poller.run_once()
        [change] = rig.sink.applied
        assert (change.sf_id, change.kind) == (sf_id, ChangeKind.DELETE)
        person = await rig.store.db.people.find_one({"crm.id": sf_id})
        assert person is not None and person["crm"].get("deleted") is True


class TestSignpost:
    async def test_the_watermark_never_passes_the_signpost(self, rig: Rig) -> None:
        """Records at or after the pass's start second wait for the next pass."""
        signpost = rig.now[0]
        offset = int((signpost - BASE).total_seconds())
        before, at, after = await rig.org.seed("Lead", [
            lead("Before", offset - 3), lead("At", offset), lead("After", offset + 7)])
        poller = rig.poller()
        await poller.run_once()
        assert [c.sf_id for c in rig.sink.applied] == [before]
        mark = await poller.watermark("Lead")
        assert mark.ts is not None and mark.ts < signpost

        rig.now[0] = signpost + timedelta(seconds=30)
        rig.sink.applied.clear()
        await poller.run_once()
        assert [c.sf_id for c in rig.sink.applied] == [at, after]

    async def test_watermark_is_stored_in_the_backfill_shape(self, rig: Rig) -> None:
        """`watermark:<Object>` is {"ts": SOQL literal, "last_id": Id}, as the backfill writes it."""
        [sf_id] = await rig.org.seed("Lead", [lead("Shape", 42)])
        await rig.poller().run_once()
        assert await rig.store.load_state(watermark_key("Lead")) == {"ts": stamp(42), "last_id": sf_id}


class TestKeyset:
    async def test_a_crowded_second_is_read_once_in_pages(self, rig: Rig) -> None:
        """2,500 records of one second: each polled once over two pages; the watermark is one id."""
        ids = await rig.org.seed("Lead", [lead(f"Bulk{i}", 20) for i in range(2500)])
        counted = CountingSink()
        poller = Poller(rig.sf, rig.store, counted, MAPPINGS, ["Lead"], clock=lambda: rig.now[0])
        assert (await poller.run_once()).records == {"Lead": 2500}
        assert await rig.store.load_state(watermark_key("Lead")) == {"ts": stamp(20), "last_id": max(ids)}
        assert (await poller.run_once()).records == {"Lead": 0}
        assert counted.changes == 2500

    async def test_an_old_ids_watermark_loses_nothing(self, rig: Rig) -> None:
        """A stored `{"ts", "ids"}` watermark re-reads its second and skips exactly its ids."""
        first, second, third = sorted(await rig.org.seed("Lead", [lead(f"Old{i}", 30) for i in range(3)]))
        await rig.store.save_state(watermark_key("Lead"), {"ts": stamp(30), "ids": [first, third]})
        poller = rig.poller(overlap=timedelta(0))  # the overlap would re-read (a no-op) the rest
        await poller.run_once()
        assert [c.sf_id for c in rig.sink.applied] == [second]
        assert await rig.store.load_state(watermark_key("Lead")) == {"ts": stamp(30), "last_id": third}

    async def test_the_query_is_keyset_on_modstamp_and_id(self, rig: Rig) -> None:
        """The emulator answers the keyset query, records after (ts, last_id) only, in order."""
        ids = sorted(await rig.org.seed("Lead", [lead(f"K{i}", 40) for i in range(4)]))
        [later] = await rig.org.seed("Lead", [lead("Later", 41)])
        await rig.store.save_state(watermark_key("Lead"), {"ts": stamp(40), "last_id": ids[1]})
        await rig.poller(overlap=timedelta(0)).run_once()  # the keyset form alone, no overlap
        assert [c.sf_id for c in rig.sink.applied] == [ids[2], ids[3], later]


class TestCost:
    async def test_calls_per_pass_are_one_per_page(self, rig: Rig) -> None:
        """4,100 changed records cost 3 query calls (pages of 2,000): under 7 per 10,000."""
        await rig.org.seed("Lead", [lead(f"L{i}", 10 + i % 50) for i in range(4100)])
        counted = CountingSink()
        poller = Poller(rig.sf, rig.store, counted, MAPPINGS, ["Lead"], clock=lambda: rig.now[0])
        report = await poller.run_once()
        assert report.records == {"Lead": 4100}
        assert counted.changes == 4100
        assert report.calls == {"Lead": 3}
        assert report.total_calls * 10_000 / 4100 <= 7.5

    async def test_fetch_by_ids_is_one_in_query(self, rig: Rig) -> None:
        """Fetching records by id costs one query call per 200 ids, deleted ones included."""
        ids = await rig.org.seed("Lead", [lead(f"G{i}", 10) for i in range(3)])
        await rig.org.delete("Lead", ids[0])
        before = rig.sf.calls_made
        changes = await rig.poller().fetch_by_ids("Lead", ids)
        assert rig.sf.calls_made - before == 1
        assert sorted(c.sf_id for c in changes) == sorted(ids)
        assert {c.sf_id: c.kind for c in changes}[ids[0]] is ChangeKind.DELETE
