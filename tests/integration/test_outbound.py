"""The outbound flusher against a real MongoDB-wire server and a fake Salesforce API."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId

from reconciler.errors import BudgetExhaustedError, RetriableError, SkippableError
from reconciler.outbound import FlushPolicy, OutboundFlusher
from reconciler.outbox import Outbox
from reconciler.ports import OutboundWrite, RecordError, RecordResult, ResendGuard
from reconciler.store import Store
from tests.support.clock import Clock

Rule = Callable[[str, str, dict[str, Any]], RecordResult | None]


@dataclass
class Call:
    method: str
    sobject: str
    records: list[dict[str, Any]]
    unmodified_since: list[datetime] | None = None  # a conditional update's dates, per record


@dataclass
class FakeSalesforce:
    """Records every composite call and answers per record, by position (like the real API)."""

    calls: list[Call] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    fail_next: list[Exception] = field(default_factory=list)
    describes: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: int = 0

    @property
    def instance_url(self) -> str:
        return "http://127.0.0.1:1"

    @property
    def calls_made(self) -> int:
        return len(self.calls)

    def query(self, soql: str, *, include_deleted: bool = False) -> AsyncIterator[list[dict[str, Any]]]:
        raise NotImplementedError

    async def describe(self, sobject: str) -> dict[str, Any]:
        return self.describes.get(sobject, {"fields": []})

    async def create(self, sobject: str, records: Sequence[dict[str, Any]], *,
                     before_resend: ResendGuard | None = None) -> list[RecordResult]:
        return self._answer("POST", sobject, records)

    async def update(self, sobject: str, records: Sequence[dict[str, Any]], *,
                     before_resend: ResendGuard | None = None) -> list[RecordResult]:
        return self._answer("PATCH", sobject, records)

    async def update_if_unmodified(self, sobject: str, records: Sequence[tuple[dict[str, Any], datetime]],
                                   *, before_resend: ResendGuard | None = None) -> list[RecordResult]:
        """As `update` (this org's records are never modified by anyone else), dates recorded."""
        results = self._answer("PATCH", sobject, [r for r, _ in records])
        self.calls[-1].unmodified_since = [at for _, at in records]
        return results

    def _answer(self, method: str, sobject: str, records: Sequence[dict[str, Any]]) -> list[RecordResult]:
        self.calls.append(Call(method, sobject, [dict(r) for r in records]))
        if self.fail_next:
            raise self.fail_next.pop(0)
        assert len(records) <= 200, "sObject Collections take at most 200 records"
        return [self._one(method, sobject, r) for r in records]

    def _one(self, method: str, sobject: str, record: dict[str, Any]) -> RecordResult:
        for rule in self.rules:
            result = rule(method, sobject, record)
            if result is not None:
                return result
        if method == "POST" and sobject == "Lead":
            missing = [f for f in ("LastName", "Company") if not record.get(f)]
            if missing:
                message = f"Required fields are missing: [{', '.join(missing)}]"
                return RecordResult(False, None, [RecordError("REQUIRED_FIELD_MISSING", message, missing)])
        if method == "POST":
            self.created += 1
            return RecordResult(True, f"00Q{self.created:012d}AAA")
        return RecordResult(True, record["Id"])


@dataclass
class FakeBudget:
    mode: str = "streaming"
    allowed: bool = True

    def allows_optional_calls(self) -> bool:
        return self.allowed


@dataclass
class Rig:
    store: Store
    outbox: Outbox
    sf: FakeSalesforce
    budget: FakeBudget
    clock: Clock
    flusher: OutboundFlusher

    async def logs(self, **filters: str) -> list[dict[str, Any]]:
        items, _ = await self.store.find_sync_logs(limit=500, **filters)
        return items


@pytest.fixture
def rig(store: Store) -> Rig:
    clock, sf, budget = Clock(), FakeSalesforce(), FakeBudget()
    outbox = Outbox(store.outbox, clock=clock)
    flusher = OutboundFlusher(outbox, sf, store, budget, client_name="salesforce-sync",
                              writable={"Lead": {"IsConverted": False}}, clock=clock)
    return Rig(store, outbox, sf, budget, clock, flusher)


async def waits_of(outbox: Outbox, clock: Clock) -> dict[Any, float]:
    """Each pending write's wait, in seconds, by its local id."""
    return {e.write.local_id: (e.next_attempt_at - clock()).total_seconds() for e in await outbox.pending()}


class LongestJitter(random.Random):
    """Full jitter that always draws the longest wait: backoffs become exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


def lead_update(n: int, **fields: Any) -> OutboundWrite:
    return OutboundWrite(sobject="Lead", sf_id=f"00Q{n:012d}XYZ", collection="people",
                         local_id=f"p-{n}", fields=fields or {"City": "Paris"}, reason="local_edit")


class TestBatching:
    async def test_450_pending_writes_take_three_calls(self, rig: Rig) -> None:
        """Pending writes go out 200 a call: 450 updates are 200 + 200 + 50."""
        await rig.outbox.enqueue([lead_update(i) for i in range(450)])
        assert await rig.flusher.flush() == 3
        assert [len(c.records) for c in rig.sf.calls] == [200, 200, 50]
        assert await rig.outbox.depth() == 0
        assert len(await rig.logs(status="success")) == 450

    async def test_objects_and_kinds_are_separate_calls(self, rig: Rig) -> None:
        """Lead updates, Lead creates and Account updates never share a call."""
        await rig.outbox.enqueue([
            lead_update(1),
            OutboundWrite("Lead", None, "people", "p-new", {"LastName": "Lee", "Company": "Acme"},
                          "create"),
            OutboundWrite("Account", "001000000000001AAA", "companies", "c-1", {"Name": "Acme"},
                          "local_edit"),
        ])
        await rig.flusher.flush()
        assert sorted((c.method, c.sobject, len(c.records)) for c in rig.sf.calls) == [
            ("PATCH", "Account", 1), ("PATCH", "Lead", 1), ("POST", "Lead", 1)]

    async def test_a_burst_of_edits_is_one_record_in_one_call(self, rig: Rig) -> None:
        """Ten edits to one record before the flush are one record in one call, latest values."""
        for i in range(10):
            await rig.outbox.enqueue([lead_update(7, City=f"City {i}", **{f"F{i}__c": i})])
        await rig.flusher.flush()
        assert len(rig.sf.calls) == 1
        [record] = rig.sf.calls[0].records
        assert record["City"] == "City 9" and record["F0__c"] == 0 and record["F9__c"] == 9
        assert record["Id"] == "00Q000000000007XYZ"

    async def test_api_calls_per_thousand_local_edits(self, rig: Rig) -> None:
        """1,000 edits to 100 records between flushes cost one call (the bench's figure)."""
        for round_ in range(10):
            await rig.outbox.enqueue([lead_update(i, Title=f"t{round_}") for i in range(100)])
        await rig.flusher.flush()
        assert rig.flusher.calls_made == rig.sf.calls_made == 1
        assert {r["Title"] for r in rig.sf.calls[0].records} == {"t9"}


class TestRecordOutcomes:
    async def test_one_rejected_record_fails_alone(self, rig: Rig) -> None:
        """A per-record failure is a failed log with its job; the other records succeed."""
        rejected = RecordResult(False, None, [RecordError("FIELD_CUSTOM_VALIDATION_EXCEPTION",
                                                          "City is not allowed")])
        rig.sf.rules.append(lambda m, s, r: rejected if r.get("City") == "Nowhere" else None)
        await rig.outbox.enqueue([lead_update(1), lead_update(2, City="Nowhere"), lead_update(3)])
        await rig.flusher.flush()
        [failed] = await rig.logs(status="failed")
        assert failed["error"] == "FIELD_CUSTOM_VALIDATION_EXCEPTION: City is not allowed"
        assert failed["source"] == "local" and failed["type"] == "update"
        assert failed["sf_id"] == "00Q000000000002XYZ" and failed["retriable"] is False
        assert failed["job"] == {"kind": "outbound", "sobject": "Lead", "sf_id": "00Q000000000002XYZ",
                                 "collection": "people", "local_id": "p-2"}
        successes = await rig.logs(status="success")
        assert sorted(s["sf_id"] for s in successes) == ["00Q000000000001XYZ", "00Q000000000003XYZ"]
        assert successes[0]["fields"] == {"City": {"old": None, "new": "Paris"}}
        assert await rig.outbox.depth() == 0  # the failed log is what gets retried

    async def test_a_lock_error_is_marked_retriable(self, rig: Rig) -> None:
        """UNABLE_TO_LOCK_ROW is transient: the failed log is retriable."""
        rig.sf.rules.append(lambda m, s, r: RecordResult(False, None, [RecordError(
            "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record")]))
        await rig.outbox.enqueue([lead_update(1)])
        await rig.flusher.flush()
        [failed] = await rig.logs(status="failed")
        assert failed["retriable"] is True and failed["error"].startswith("UNABLE_TO_LOCK_ROW: ")

    async def test_a_lead_without_required_fields_fails_with_salesforce_error(self, rig: Rig) -> None:
        """A Lead create missing Company is sent, and Salesforce's error names the field."""
        await rig.outbox.enqueue([OutboundWrite("Lead", None, "people", "p-1", {"LastName": "Lee"},
                                                "create")])
        await rig.flusher.flush()
        assert rig.sf.calls[0].records == [{"LastName": "Lee"}]
        [failed] = await rig.logs(status="failed")
        assert failed["type"] == "create" and "Company" in failed["error"]
        assert failed["error"].startswith("REQUIRED_FIELD_MISSING: ")

    async def test_a_create_links_the_local_document(self, rig: Rig, store: Store) -> None:
        """A successful create sets crm on the local doc as a service write (no echo)."""
        local_id = ObjectId()
        await store.db.people.insert_one({"_id": local_id, "last_name": "Lee", "updated_at": rig.clock()})
        await rig.outbox.enqueue([OutboundWrite("Lead", None, "people", local_id,
                                                {"LastName": "Lee", "Company": "Acme"}, "create")])
        await rig.flusher.flush()
        doc = await store.db.people.find_one({"_id": local_id})
        assert doc["crm"]["object"] == "Lead" and doc["crm"]["id"] == "00Q000000000001AAA"
        assert doc["_sync"]["written_at"] == doc["updated_at"]
        [log] = await rig.logs(status="success")
        assert log["type"] == "create" and log["sf_id"] == "00Q000000000001AAA"
        assert log["local_id"] == str(local_id)

    async def test_read_only_fields_are_never_sent(self, rig: Rig) -> None:
        """Fields the describe marks read-only are left out of the request."""
        await rig.outbox.enqueue([lead_update(1, City="Paris", IsConverted=True)])
        await rig.flusher.flush()
        assert rig.sf.calls[0].records == [{"City": "Paris", "Id": "00Q000000000001XYZ"}]

    async def test_writability_comes_from_the_describe(self, store: Store) -> None:
        """Without a configured map, the describe decides (updateable, not calculated)."""
        sf, clock = FakeSalesforce(), Clock()
        sf.describes["Contact"] = {"fields": [
            {"name": "Email", "updateable": True, "createable": True},
            {"name": "Score__c", "updateable": True, "calculated": True},
            {"name": "CreatedDate", "updateable": False}]}
        outbox = Outbox(store.outbox, clock=clock)
        flusher = OutboundFlusher(outbox, sf, store, FakeBudget(), client_name="x", clock=clock)
        await outbox.enqueue([OutboundWrite("Contact", "003000000000001AAA", "people", "p-1",
                                            {"Email": "a@b.c", "Score__c": 3, "CreatedDate": "x"}, "merge")])
        await flusher.flush()
        assert sf.calls[0].records == [{"Email": "a@b.c", "Id": "003000000000001AAA"}]


class TestWholeCallFailures:
    async def test_a_transient_failure_keeps_the_writes_with_backoff(self, rig: Rig) -> None:
        """RetriableError: nothing logged, writes stay pending, due again after the backoff."""
        rig.sf.fail_next.append(RetriableError("HTTP 503"))
        await rig.outbox.enqueue([lead_update(i) for i in range(3)])
        assert await rig.flusher.flush() == 0
        assert await rig.logs() == []
        pending = await rig.outbox.pending()
        assert len(pending) == 3 and {e.write.attempt for e in pending} == {1}
        assert all(e.next_attempt_at > rig.clock() for e in pending)
        assert await rig.flusher.flush() == 0 and len(rig.sf.calls) == 1  # not due yet
        rig.clock.advance(10)
        assert await rig.flusher.flush() == 1
        assert await rig.outbox.depth() == 0

    async def test_each_write_waits_by_its_own_failed_calls(self, store: Store) -> None:
        """Chaos seed 1194 x 2000, P150-P152: three fresh creates shared a call with a Person's
        create an admin had retried eight times (each retry a new attempt of a record Salesforce
        refused, not a failed call). The call's answer was lost and all four waited the backoff
        of the eighth attempt (237 s), past the run's quiet period. The backoff grows with each
        write's own failed calls since it was queued (`failures`), not with the call's largest
        attempt."""
        clock, sf = Clock(), FakeSalesforce()
        outbox = Outbox(store.outbox, clock=clock)
        flusher = OutboundFlusher(outbox, sf, store, FakeBudget(), client_name="salesforce-sync",
                                  writable={"Lead": {}}, clock=clock, rng=LongestJitter())
        sf.fail_next.append(RetriableError("HTTP 503"))
        await outbox.enqueue([lead_update(1), dataclasses.replace(lead_update(2), attempt=8)])
        await flusher.flush()
        waits = await waits_of(outbox, clock)
        assert waits == {"p-1": 5.0, "p-2": 5.0}  # base 5 s: the first failed call of each
        sf.fail_next.append(RetriableError("HTTP 503"))
        clock.advance(5)
        await flusher.flush()
        waits = await waits_of(outbox, clock)
        assert waits == {"p-1": 10.0, "p-2": 10.0}  # the second

    async def test_a_call_refused_as_a_whole_logs_each_write_with_its_fields(self, rig: Rig) -> None:
        """A SkippableError for the whole call: each write's failed log names the fields it
        carried, so only a later success sending them resolves it."""
        rig.sf.fail_next.append(SkippableError("INVALID_SESSION_ID: refused"))
        await rig.outbox.enqueue([lead_update(1, City="Paris", Title="CTO")])
        await rig.flusher.flush()
        [failed] = await rig.logs(status="failed")
        assert set(failed["fields"]) == {"City", "Title"}

    async def test_budget_exhausted_waits_without_counting_an_attempt(self, rig: Rig) -> None:
        """REQUEST_LIMIT_EXCEEDED: the writes wait for the budget, attempt unchanged."""
        rig.sf.fail_next.append(BudgetExhaustedError("REQUEST_LIMIT_EXCEEDED"))
        await rig.outbox.enqueue([lead_update(1)])
        await rig.flusher.flush()
        [entry] = await rig.outbox.pending()
        assert entry.write.attempt == 0 and await rig.logs() == []

    async def test_below_the_reserve_nothing_is_sent_or_lost(self, rig: Rig) -> None:
        """With optional calls forbidden no call is made and every write stays queued."""
        rig.budget.allowed, rig.budget.mode = False, "paused"
        await rig.outbox.enqueue([lead_update(i) for i in range(250)])
        assert await rig.flusher.flush() == 0
        assert await rig.flusher.tick() is False
        assert rig.sf.calls == [] and await rig.outbox.depth() == 250
        rig.budget.allowed, rig.budget.mode = True, "streaming"
        await rig.flusher.flush()
        assert await rig.outbox.depth() == 0 and len(rig.sf.calls) == 2


class TestFlushTiming:
    async def test_streaming_waits_for_the_burst_to_settle(self, rig: Rig) -> None:
        """A few pending writes go out once the oldest has waited max_wait (2 s by default)."""
        await rig.outbox.enqueue([lead_update(1)])
        assert await rig.flusher.tick() is False
        rig.clock.advance(2)
        assert await rig.flusher.tick() is True
        assert len(rig.sf.calls) == 1

    async def test_a_full_batch_goes_at_once(self, rig: Rig) -> None:
        """200 pending writes flush without waiting."""
        await rig.outbox.enqueue([lead_update(i) for i in range(200)])
        assert await rig.flusher.tick() is True

    async def test_a_burst_of_1000_edits_costs_five_full_calls(self, rig: Rig) -> None:
        """1,000 edits to 1,000 records go out as 5 calls of 200, no partial batch in between."""
        for start in range(0, 1000, 123):  # arriving in uneven slices, ticked in between
            await rig.outbox.enqueue([lead_update(i) for i in range(start, min(start + 123, 1000))])
            await rig.flusher.tick()
            rig.clock.advance(0.25)
        rig.clock.advance(2)
        await rig.flusher.tick()
        assert [len(c.records) for c in rig.sf.calls] == [200] * 5
        assert await rig.outbox.depth() == 0

    async def test_the_partial_batch_waits_for_its_own_oldest_write(self, rig: Rig) -> None:
        """After a full batch the remainder goes only once its own oldest write waited max_wait."""
        await rig.outbox.enqueue([lead_update(i) for i in range(150)])
        rig.clock.advance(1.5)
        await rig.outbox.enqueue([lead_update(i) for i in range(150, 246)])
        assert await rig.flusher.tick() is True
        assert [len(c.records) for c in rig.sf.calls] == [200]
        rig.clock.advance(1)  # the first write would have waited 2.5 s; the remainder's 1 s
        assert await rig.flusher.tick() is False
        rig.clock.advance(1)
        assert await rig.flusher.tick() is True
        assert [len(c.records) for c in rig.sf.calls] == [200, 46]

    async def test_polling_sends_full_batches_and_carries_the_rest(self, store: Store) -> None:
        """Edits straddling an interval boundary (609 + 391) cost 5 calls, not 6."""
        clock, sf = Clock(), FakeSalesforce()
        outbox = Outbox(store.outbox, clock=clock)
        flusher = OutboundFlusher(outbox, sf, store, FakeBudget(mode="polling"), client_name="x",
                                  policy=FlushPolicy(poll_interval=timedelta(seconds=10)), clock=clock)
        await outbox.enqueue([lead_update(i) for i in range(600)])
        clock.advance(9.5)
        await outbox.enqueue([lead_update(i) for i in range(600, 609)])
        clock.advance(0.5)
        assert await flusher.tick() is True
        assert [len(c.records) for c in sf.calls] == [200, 200, 200]
        await outbox.enqueue([lead_update(i) for i in range(609, 1000)])
        clock.advance(5)
        assert await flusher.tick() is False  # not this interval's turn
        clock.advance(5)
        assert await flusher.tick() is True
        assert [len(c.records) for c in sf.calls] == [200] * 5 and await outbox.depth() == 0

    async def test_polling_mode_flushes_once_per_interval(self, store: Store) -> None:
        """With the budget low, writes go out once per polling interval."""
        clock, sf = Clock(), FakeSalesforce()
        outbox = Outbox(store.outbox, clock=clock)
        flusher = OutboundFlusher(outbox, sf, store, FakeBudget(mode="polling"), client_name="x",
                                  policy=FlushPolicy(poll_interval=timedelta(minutes=5)), clock=clock)
        await outbox.enqueue([lead_update(i) for i in range(300)])
        clock.advance(60)
        assert await flusher.tick() is False
        clock.advance(240)
        assert await flusher.tick() is True
        assert len(sf.calls) == 2 and await outbox.depth() == 0


class TestRunLoop:
    async def test_the_loop_sends_what_is_queued_and_stops_on_request(self, store: Store) -> None:
        """Running with the real clock, queued writes go out after the burst wait; stop ends it."""
        sf = FakeSalesforce()
        outbox = Outbox(store.outbox)
        flusher = OutboundFlusher(outbox, sf, store, FakeBudget(), client_name="x",
                                  policy=FlushPolicy(max_wait=timedelta(milliseconds=100)),
                                  tick=timedelta(milliseconds=20))
        stop = asyncio.Event()
        task = asyncio.create_task(flusher.run(stop))
        await outbox.enqueue([lead_update(i) for i in range(3)])
        for _ in range(100):
            if await outbox.depth() == 0:
                break
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 2)
        assert len(sf.calls) == 1 and len(sf.calls[0].records) == 3
        assert await outbox.depth() == 0


def capped_rig(store: Store, max_attempts: int) -> Rig:
    clock, sf, budget = Clock(), FakeSalesforce(), FakeBudget()
    outbox = Outbox(store.outbox, clock=clock)
    flusher = OutboundFlusher(outbox, sf, store, budget, client_name="salesforce-sync",
                              writable={"Lead": {}}, clock=clock,
                              policy=FlushPolicy(max_attempts=max_attempts))
    return Rig(store, outbox, sf, budget, clock, flusher)


class TestAWriteThatKeepsFailingIsGivenUp:
    async def test_after_n_retriable_failures_it_is_an_open_failed_log_and_costs_no_more_calls(
        self, store: Store
    ) -> None:
        """Item 8: the third whole-call failure (max 3) makes the write an open failed sync log
        with the last error, out of the queue: later flushes make no call for it."""
        rig = capped_rig(store, 3)
        rig.sf.fail_next.extend(RetriableError(f"HTTP 503 #{n}") for n in range(1, 10))
        await rig.outbox.enqueue([lead_update(1)])
        for _ in range(6):
            await rig.flusher.flush()
            rig.clock.advance(600)
        assert len(rig.sf.calls) == 3
        [failed] = await rig.logs(status="failed")
        assert failed["retried_by"] is None and failed["job"]["kind"] == "outbound"
        assert "3 attempts" in failed["error"] and "HTTP 503 #3" in failed["error"]
        assert await rig.outbox.depth() == 0 and await rig.outbox.pending() == []

    async def test_a_retry_of_the_failed_log_sends_it_again(self, store: Store) -> None:
        """Item 8: the retry path re-queues it (what `Jobs` does: a fresh write, reason retry,
        attempt carried on): it is sent, with a fresh count, and the parked write is gone."""
        rig = capped_rig(store, 1)
        rig.sf.fail_next.append(RetriableError("HTTP 503"))
        await rig.outbox.enqueue([lead_update(1)])
        await rig.flusher.flush()
        rig.clock.advance(600)
        await rig.flusher.flush()
        [failed] = await rig.logs(status="failed")
        retry = OutboundWrite(sobject="Lead", sf_id=failed["sf_id"], collection="people",
                              local_id="p-1", fields={"City": "Paris"}, reason="retry",
                              attempt=failed["attempt"])
        await rig.outbox.enqueue([retry])
        assert await rig.flusher.flush() == 1
        assert len(rig.sf.calls) == 2
        assert await store.db.outbox.count_documents({}) == 0

    async def test_an_expired_lease_counts_as_an_attempt(self, store: Store) -> None:
        """Item 8: a claim whose flusher died (lease expired) counts like a failed call: with a
        cap of one, the write is given up with a LEASE_EXPIRED error, never sent."""
        rig = capped_rig(store, 1)
        await rig.outbox.enqueue([lead_update(1)])
        assert len(await rig.outbox.claim("Lead", "update", 10)) == 1  # a flusher that then dies
        rig.clock.advance(rig.outbox.lease.total_seconds() + 1)
        assert await rig.outbox.recover_expired() == 1
        [entry] = await rig.outbox.pending()
        assert entry.write.attempt == 1 and entry.failures == 1
        await rig.flusher.flush()
        assert rig.sf.calls == []
        [failed] = await rig.logs(status="failed")
        assert "LEASE_EXPIRED" in failed["error"]


class TestWritesHeldForARecordGoneForGood:
    """A write held for a Lead deleted in Salesforce waits for its undelete; Salesforce empties
    its recycle bin after 15 days, and then nothing can release it. It leaves the outbox with
    one `skipped` log naming what it carried and why, instead of staying there forever."""

    async def test_a_write_held_past_the_recycle_bin_is_dropped_with_a_skipped_log(self, rig: Rig) -> None:
        await rig.outbox.enqueue([lead_update(1)])
        await rig.outbox.hold(await rig.outbox.claim("Lead", "update", 10))
        rig.clock.advance(timedelta(days=1).total_seconds())
        await rig.outbox.enqueue([lead_update(2)])
        await rig.outbox.hold(await rig.outbox.claim("Lead", "update", 10))
        rig.clock.advance(timedelta(days=14, seconds=1).total_seconds())  # the first: 15 days held

        stop = asyncio.Event()
        task = asyncio.create_task(rig.flusher.run(stop))
        for _ in range(250):  # until the first is gone (the flusher looks when it starts)
            if await rig.store.db.outbox.count_documents({"status": "held"}) == 1:
                break
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 2)

        [skipped] = await rig.logs(type="skipped")
        assert (skipped["object"], skipped["sf_id"]) == ("Lead", lead_update(1).sf_id)
        assert skipped["status"] == "success"
        assert skipped["fields"]["City"]["new"] == "Paris"
        assert "recycle bin's 15 days" in skipped["note"]
        [left] = await rig.store.db.outbox.find({"status": "held"}).to_list(None)
        assert left["sf_id"] == lead_update(2).sf_id  # held one day less: an undelete may still come
        assert rig.sf.calls == []
