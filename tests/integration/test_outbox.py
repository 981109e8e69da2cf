"""The durable outbox on a real MongoDB-wire server: coalescing, leased claims, recovery."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from reconciler.outbox import Outbox
from reconciler.ports import OutboundWrite
from reconciler.store import CREATE, UPDATE, Store
from tests.support.clock import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outbox(store: Store, clock: Clock) -> Outbox:
    return Outbox(store.outbox, clock=clock, lease=timedelta(minutes=2))


def update(sf_id: str, **fields: object) -> OutboundWrite:
    return OutboundWrite(sobject="Lead", sf_id=sf_id, collection="people", local_id=f"p-{sf_id}",
                         fields=dict(fields), reason="local_edit")


def create(local_id: str, **fields: object) -> OutboundWrite:
    return OutboundWrite(sobject="Lead", sf_id=None, collection="people", local_id=local_id,
                         fields=dict(fields), reason="create")


class TestCoalescing:
    async def test_a_burst_of_edits_to_one_record_is_one_write(self, outbox: Outbox, clock: Clock) -> None:
        """Edits to one record merge into one pending write; the latest value of a field wins."""
        await outbox.enqueue([update("00Q1", FirstName="Ann")])
        clock.advance(0.5)
        await outbox.enqueue([update("00Q1", FirstName="Anne", City="Paris")])
        await outbox.enqueue([update("00Q1", Title="CTO"), update("00Q1", City="Lyon")])
        pending = await outbox.pending()
        assert len(pending) == 1
        assert pending[0].write.fields == {"FirstName": "Anne", "City": "Lyon", "Title": "CTO"}
        assert pending[0].kind == UPDATE
        assert pending[0].enqueued_at == datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

    async def test_creates_coalesce_per_local_document(self, outbox: Outbox) -> None:
        """An unlinked document's create and later edits are one create."""
        await outbox.enqueue([create("p-1", LastName="Lee"), create("p-1", Company="Acme"),
                              create("p-2", LastName="Kim")])
        pending = {e.write.local_id: e for e in await outbox.pending()}
        assert set(pending) == {"p-1", "p-2"}
        assert pending["p-1"].write.fields == {"LastName": "Lee", "Company": "Acme"}
        assert pending["p-1"].kind == CREATE

    async def test_blank_values_never_enter_the_outbox(self, outbox: Outbox) -> None:
        """Blanks are dropped; an update left with nothing to send is not enqueued."""
        await outbox.enqueue([update("00Q1", FirstName="Ann", City="  ", Title=None),
                              update("00Q2", City="")])
        pending = await outbox.pending()
        assert [(e.write.sf_id, e.write.fields) for e in pending] == [("00Q1", {"FirstName": "Ann"})]

    async def test_concurrent_enqueues_for_one_record_stay_one_write(self, store: Store) -> None:
        """Replicas racing on one record's upsert end with a single pending document."""
        boxes = [Outbox(store.outbox) for _ in range(4)]
        await asyncio.gather(*(box.enqueue([update("00Q9", **{f"F{i}__c": i})])
                               for i, box in enumerate(boxes)))
        pending = await boxes[0].pending()
        assert len(pending) == 1
        assert pending[0].write.fields == {f"F{i}__c": i for i in range(4)}


class TestClaims:
    async def test_a_claimed_write_is_not_claimed_again(self, outbox: Outbox) -> None:
        """Claims move writes to inflight under a lease; a second claim finds nothing."""
        await outbox.enqueue([update(f"00Q{i}", City="x") for i in range(5)])
        first = await outbox.claim("Lead", UPDATE, 3)
        second = await outbox.claim("Lead", UPDATE, 10)
        assert len(first) == 3 and len(second) == 2
        assert not {e.id for e in first} & {e.id for e in second}
        assert await outbox.claim("Lead", UPDATE, 10) == []

    async def test_replicas_claiming_at_once_split_the_work(self, store: Store) -> None:
        """Concurrent claims from several replicas never hand one write to two of them."""
        boxes = [Outbox(store.outbox) for _ in range(3)]
        await boxes[0].enqueue([update(f"00Q{i:03d}", City="x") for i in range(60)])
        claims = await asyncio.gather(*(box.claim("Lead", UPDATE, 200) for box in boxes))
        ids = [e.id for claim in claims for e in claim]
        assert len(ids) == 60 and len(set(ids)) == 60

    async def test_an_edit_during_a_send_waits_for_the_next_one(self, outbox: Outbox) -> None:
        """A record edited while its write is inflight gets a new pending write."""
        await outbox.enqueue([update("00Q1", City="Paris")])
        inflight = await outbox.claim("Lead", UPDATE, 10)
        await outbox.enqueue([update("00Q1", City="Lyon")])
        await outbox.done(inflight)
        pending = await outbox.pending()
        assert [e.write.fields for e in pending] == [{"City": "Lyon"}]

    async def test_a_failed_send_folds_into_a_newer_pending_write(self, outbox: Outbox) -> None:
        """Releasing an inflight write merges it under the newer pending one (newer wins)."""
        await outbox.enqueue([update("00Q1", City="Paris", Title="CEO")])
        inflight = await outbox.claim("Lead", UPDATE, 10)
        await outbox.enqueue([update("00Q1", City="Lyon")])
        await outbox.retry_later(inflight, timedelta(seconds=30))
        pending = await outbox.pending()
        assert len(pending) == 1
        assert pending[0].write.fields == {"City": "Lyon", "Title": "CEO"}
        assert pending[0].write.attempt == 1  # it carries a send whose outcome is unknown

    async def test_a_failed_create_folded_into_a_newer_one_is_still_looked_for(self, outbox: Outbox) -> None:
        """Chaos seed 16180, P12: a create's answer was lost while an edit of the Person queued a
        newer create; released, the failed one folds into it. The merged write still counts that
        attempt (and keeps its first send), so the flusher looks for the lost create's record
        before sending it again instead of creating a second Lead."""
        await outbox.enqueue([create("p1", LastName="Ng", Email="ng@x.com")])
        inflight = await outbox.claim("Lead", CREATE, 10)
        await outbox.enqueue([create("p1", LastName="Ng", Email="ng@x.com", Title="CEO")])
        await outbox.retry_later(inflight, timedelta(seconds=0))
        [pending] = await outbox.pending()
        assert pending.write.attempt == 1 and pending.first_sent_at is not None

    async def test_what_claims_sent_is_known_until_the_write_is_done(self, outbox: Outbox) -> None:
        """Chaos seed 40427: an inbound read weighs what a record's queued write sent (its answer
        lost, or not in yet) as the platform's own. Every claim counts, in flight or released, and
        a record's pending and in-flight writes together; a write never claimed, or done, does not."""
        await outbox.enqueue([update("00Q1", City="Paris", Title="CEO"), update("00Q2", City="Rome")])
        first = await outbox.claim("Lead", UPDATE, 10)
        await outbox.enqueue([update("00Q1", City="Lyon"), update("00Q3", City="Oslo")])
        records = [("Lead", "00Q1"), ("Lead", "00Q2"), ("Lead", "00Q3"), ("Contact", "00Q1")]
        assert await outbox.sent_values(records) == {
            ("Lead", "00Q1"): {"City": ["Paris"], "Title": ["CEO"]}, ("Lead", "00Q2"): {"City": ["Rome"]}}

        await outbox.retry_later(first, timedelta(seconds=0))  # Q1 folds into its pending Lyon
        second = await outbox.claim("Lead", UPDATE, 10)
        await outbox.retry_later([e for e in second if e.write.sf_id != "00Q2"], timedelta(seconds=0))
        await outbox.done([e for e in second if e.write.sf_id == "00Q2"])
        assert await outbox.sent_values(records) == {
            ("Lead", "00Q1"): {"City": ["Paris", "Lyon"], "Title": ["CEO"]},
            ("Lead", "00Q3"): {"City": ["Oslo"]}}

    async def test_retry_later_counts_the_attempt_and_delays(self, outbox: Outbox, clock: Clock) -> None:
        """A released write is not due until its next attempt time."""
        await outbox.enqueue([update("00Q1", City="Paris")])
        await outbox.retry_later(await outbox.claim("Lead", UPDATE, 10), timedelta(seconds=30))
        assert await outbox.claim("Lead", UPDATE, 10) == []
        clock.advance(31)
        again = await outbox.claim("Lead", UPDATE, 10)
        assert [e.write.attempt for e in again] == [1]


    async def test_a_retry_is_due_at_once(self, outbox: Outbox, clock: Clock) -> None:
        """An admin's (or the auto-retry's) re-queue of a failed write lands on the record's
        pending write, which is backing off for its own failures: the retry asked for a send now,
        so the write is due now, not after that backoff."""
        await outbox.enqueue([update("00Q1", City="Paris")])
        await outbox.retry_later(await outbox.claim("Lead", UPDATE, 10), timedelta(minutes=10))
        await outbox.enqueue([dataclasses.replace(update("00Q1", City="Lyon"), attempt=2, reason="retry")])
        [due] = await outbox.claim("Lead", UPDATE, 10)
        assert due.write.fields == {"City": "Lyon"} and due.write.attempt == 2

    async def test_an_edit_does_not_cut_a_backoff_short(self, outbox: Outbox, clock: Clock) -> None:
        await outbox.enqueue([update("00Q1", City="Paris")])
        await outbox.retry_later(await outbox.claim("Lead", UPDATE, 10), timedelta(minutes=10))
        await outbox.enqueue([update("00Q1", City="Lyon")])
        assert await outbox.claim("Lead", UPDATE, 10) == []


class TestLeaseExpiry:
    async def test_writes_of_a_crashed_process_return_after_the_lease(
        self, outbox: Outbox, clock: Clock
    ) -> None:
        """Inflight writes whose lease expired become pending again; live leases are left alone."""
        await outbox.enqueue([update("00Q1", City="Paris")])
        await outbox.claim("Lead", UPDATE, 10)  # the claimer "crashes"
        assert await outbox.recover_expired() == 0
        clock.advance(121)
        assert await outbox.recover_expired() == 1
        assert [e.write.sf_id for e in await outbox.claim("Lead", UPDATE, 10)] == ["00Q1"]

    async def test_a_late_finisher_cannot_drop_a_reclaimed_write(self, outbox: Outbox, clock: Clock) -> None:
        """`done` with an expired lease leaves the write another replica now holds."""
        await outbox.enqueue([update("00Q1", City="Paris")])
        stale = await outbox.claim("Lead", UPDATE, 10)
        clock.advance(121)
        await outbox.recover_expired()
        fresh = await outbox.claim("Lead", UPDATE, 10)
        await outbox.done(stale)
        assert await outbox.depth() == 1
        await outbox.done(fresh)
        assert await outbox.depth() == 0


class TestCreatedRecords:
    async def test_edits_queued_during_a_create_become_an_update(self, outbox: Outbox) -> None:
        """After a create succeeds, the pending local-key write targets the new record."""
        await outbox.enqueue([create("p-1", LastName="Lee", Company="Acme")])
        inflight = await outbox.claim("Lead", CREATE, 10)
        await outbox.enqueue([create("p-1", Title="CTO")])
        await outbox.done(inflight)
        await outbox.created("people", "p-1", "Lead", "00Q000000000001AAA")
        pending = await outbox.pending()
        assert [(e.kind, e.write.sf_id, e.write.fields) for e in pending] == [
            (UPDATE, "00Q000000000001AAA", {"Title": "CTO"})]


class TestHeldWrites:
    async def test_writes_held_for_a_deleted_record_go_out_newest_values_first(
            self, outbox: Outbox, clock: Clock) -> None:
        """Two edits held one after the other while the Lead was deleted in Salesforce: the
        undelete releases both as one write, in which the later edit's values win (released
        oldest first, the older one became the pending write and the newer folded into it
        under it: Salesforce got the platform's older City)."""
        await outbox.enqueue([update("00Q1", City="Paris", Title="CTO")])
        await outbox.hold(await outbox.claim("Lead", UPDATE, 200))
        clock.advance(5)
        await outbox.enqueue([update("00Q1", City="Lyon")])
        await outbox.hold(await outbox.claim("Lead", UPDATE, 200))
        assert await outbox.claim("Lead", UPDATE, 200) == []

        await outbox.release_held([("Lead", "00Q1")])
        [write] = await outbox.claim("Lead", UPDATE, 200)
        assert write.write.fields == {"City": "Lyon", "Title": "CTO"}

    async def test_a_deleted_record_keeps_one_held_write_whatever_the_edits(
            self, outbox: Outbox, store: Store, clock: Clock) -> None:
        """Each edit made while the Lead stays deleted folds into the one held write (the later
        values win): a record never undeleted leaves one document, not one per edit."""
        for city, title in (("Paris", "CTO"), ("Lyon", None), ("Nice", None)):
            await outbox.enqueue([update("00Q1", City=city, **({"Title": title} if title else {}))])
            await outbox.hold(await outbox.claim("Lead", UPDATE, 200))
            clock.advance(5)
        await outbox.enqueue([update("00Q2", City="Oslo")])
        await outbox.hold(await outbox.claim("Lead", UPDATE, 200))

        held = await store.db.outbox.find({"status": "held"}).sort("sf_id").to_list(None)
        assert [(d["sf_id"], d["fields"]) for d in held] == [
            ("00Q1", {"City": "Nice", "Title": "CTO"}), ("00Q2", {"City": "Oslo"})]
        assert held[0]["enqueued_at"] == datetime(2025, 1, 1, 12, 0, tzinfo=UTC)  # the first edit's

    async def test_an_undelete_read_meanwhile_keeps_a_write_found_past_the_recycle_bin(
            self, outbox: Outbox, clock: Clock) -> None:
        """The flusher found the write held 15 days, then an undelete released it before the
        flusher dropped it: the released write stays, and goes out."""
        await outbox.enqueue([update("00Q1", City="Paris")])
        await outbox.hold(await outbox.claim("Lead", UPDATE, 200))
        clock.advance(timedelta(days=15, seconds=1).total_seconds())
        stale = await outbox.held_past_recycle_bin()
        assert [e.write.sf_id for e in stale] == ["00Q1"]
        await outbox.release_held([("Lead", "00Q1")])
        await outbox.drop_held(stale)
        assert [e.write.fields for e in await outbox.pending()] == [{"City": "Paris"}]
        assert await outbox.held_past_recycle_bin() == []
