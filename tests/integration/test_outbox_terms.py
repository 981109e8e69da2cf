"""Outbox claims belong to a leader term (issue 11, chaos class 6): a new term takes a dead
term's claims over at once instead of waiting out their 2-minute lease, and a term that is over
cannot claim."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reconciler.errors import FencedError
from reconciler.outbound import OutboundFlusher
from reconciler.outbound_shadow import Screened, ShadowGate
from reconciler.outbox import Outbox
from reconciler.ports import OutboundWrite, RecordResult, ResendGuard
from reconciler.store import Fence, OutboxEntry, Store
from tests.integration.test_outbound import Call, FakeBudget, FakeSalesforce
from tests.integration.test_outbound_shadow import MAPPINGS
from tests.support.clock import Clock


def create(local_id: str, **fields: object) -> OutboundWrite:
    return OutboundWrite(sobject="Lead", sf_id=None, collection="people", local_id=local_id,
                         fields=dict(fields), reason="create")


def update(sf_id: str, **fields: object) -> OutboundWrite:
    return OutboundWrite(sobject="Lead", sf_id=sf_id, collection="people", local_id=f"p-{sf_id}",
                         fields=dict(fields), reason="local_edit")


class TermFence:
    """The fence provider a leader term gives its writers (`LeaderTerm.fence`)."""

    def __init__(self) -> None:
        self.current: Fence | None = None

    def __call__(self) -> Fence | None:
        return self.current


async def take_lease(store: Store, owner: str) -> Fence:
    lease = store.lease("sync", owner=owner, ttl=0.3)
    assert await lease.acquire()
    fence = lease.fence()
    assert fence is not None
    return fence


class TwoTerms:
    """An old leader term holding the lease, and the new term that takes it over."""

    def __init__(self) -> None:
        self.old, self.new = TermFence(), TermFence()

    async def start(self, store: Store, clock: Clock) -> tuple[Outbox, Outbox]:
        """The two terms' outboxes (2-minute claims); the old term leads."""
        old = Outbox(store.outbox, clock=clock, lease=timedelta(minutes=2), fence=self.old)
        new = Outbox(store.outbox, clock=clock, lease=timedelta(minutes=2), fence=self.new)
        self.old.current = await take_lease(store, "old-leader")
        return old, new

    async def take_over(self, store: Store, clock: Clock) -> None:
        await store.db.sync_state.update_one({"_id": "lease:sync"}, {"$set": {"expires_at": clock()}})
        self.new.current = await take_lease(store, "new-leader")


class TestClaimsCarryTheTerm:
    async def test_a_new_term_takes_over_a_dead_terms_claims_at_once(self, store: Store) -> None:
        clock, terms = Clock(), TwoTerms()
        old, new = await terms.start(store, clock)
        await old.enqueue([update("00Q1", City="Paris"), update("00Q2", City="Lyon")])
        claimed = await old.claim("Lead", "update", 200)
        assert len(claimed) == 2  # ... and then the old leader stalls (or dies) holding them

        await terms.take_over(store, clock)
        clock.advance(1)  # seconds later, not the claims' two minutes
        assert await new.recover_expired() == 2
        retaken = await new.claim("Lead", "update", 200)
        assert sorted(e.write.sf_id for e in retaken) == ["00Q1", "00Q2"]
        assert all(e.failures == 1 for e in retaken)  # counted: a dead leader may have sent them

        # the old leader wakes up: what it claimed is no longer its own, and it claims nothing more
        await old.done(claimed)
        assert len(await new.pending()) == 0 and await store.outbox.depth() == 2
        await new.enqueue([update("00Q3", City="Nice")])
        with pytest.raises(FencedError):
            await old.claim("Lead", "update", 200)

    async def test_a_dead_terms_create_is_taken_back_only_when_its_lease_runs_out(self, store: Store) -> None:
        """Chaos seed 35107, P3: a leader checked its term, was stopped before its create call
        left, and the new term took the claim back at once, looked for the record 5 ms before the
        stalled call landed, found none and created it again: two Leads. An update sent twice is
        the same update; a create is not, so its claim is the old term's until its lease ends
        (and a stalled call that lands meanwhile is settled under it, or found by the lookup)."""
        clock, terms = Clock(), TwoTerms()
        old, new = await terms.start(store, clock)
        await old.enqueue([create("p-1", LastName="Ng"), update("00Q2", City="Lyon")])
        creates = await old.claim("Lead", "create", 200)
        assert len(creates) == 1 and len(await old.claim("Lead", "update", 200)) == 1

        await terms.take_over(store, clock)
        clock.advance(1)
        assert await new.recover_expired() == 1  # the update only
        assert await new.claim("Lead", "create", 200) == []

        clock.advance(121)  # the create's lease ran out: its leader is dead, or stalled past it
        assert await new.recover_expired() == 1
        retaken = await new.claim("Lead", "create", 200)
        assert [e.write.local_id for e in retaken] == ["p-1"]
        assert retaken[0].failures == 1  # counted: the lost create is looked for before it is sent

    async def test_a_stalled_create_landing_in_its_lease_is_settled_by_its_sender(self, store: Store) -> None:
        clock, terms = Clock(), TwoTerms()
        old, new = await terms.start(store, clock)
        await old.enqueue([create("p-1", LastName="Ng")])
        claimed = await old.claim("Lead", "create", 200)
        await terms.take_over(store, clock)
        clock.advance(5)
        assert await new.recover_expired() == 0

        await old.done(claimed)  # its call landed: the claim is still its own
        assert await store.outbox.depth() == 0
        clock.advance(200)
        assert await new.recover_expired() == 0 and await new.claim("Lead", "create", 200) == []

    async def test_a_create_queued_again_waits_for_the_one_in_flight(self, store: Store) -> None:
        """Chaos seed 35107 again, P3: the stalled leader's create landed after its term was over
        (a transport retry of UNABLE_TO_LOCK_ROW, no term check in between), its link was
        refused, and a platform edit of the still unlinked Person queued a second create, which
        the new term sent: two Leads. A create in flight holds back its document's next create
        until it is settled, or its lease runs out and the two merge (and are looked for)."""
        clock, terms = Clock(), TwoTerms()
        old, new = await terms.start(store, clock)
        await old.enqueue([create("p-1", LastName="Ng"), create("p-2", LastName="Ito")])
        assert len(await old.claim("Lead", "create", 200)) == 2

        await terms.take_over(store, clock)
        await new.enqueue([create("p-1", LastName="Ng", Title="CFO"), create("p-3", LastName="Ota")])
        clock.advance(1)
        sent = await new.claim("Lead", "create", 200)
        assert [e.write.local_id for e in sent] == ["p-3"]
        await new.done(sent)

        clock.advance(121)
        assert await new.recover_expired() == 2
        retaken = {e.write.local_id: e for e in await new.claim("Lead", "create", 200)}
        assert sorted(retaken) == ["p-1", "p-2"]
        assert retaken["p-1"].failures == 1 and retaken["p-1"].write.fields["Title"] == "CFO"

    async def test_the_live_terms_own_claims_are_not_taken_back(self, store: Store) -> None:
        clock = Clock()
        term = TermFence()
        outbox = Outbox(store.outbox, clock=clock, lease=timedelta(minutes=2), fence=term)
        term.current = await take_lease(store, "leader")
        await outbox.enqueue([update("00Q1", City="Paris")])
        assert len(await outbox.claim("Lead", "update", 200)) == 1
        clock.advance(1)
        assert await outbox.recover_expired() == 0


class TakeoverWhileScreening(ShadowGate):
    """The gate, except that another term takes the lease while it screens: the leader was
    paused (SIGSTOP) between its claim and its call, and a new term took over meanwhile."""

    def __init__(self, store: Store, sf: FakeSalesforce) -> None:
        super().__init__(sf, store, MAPPINGS)
        self._store_for_takeover = store
        self.new_term = TermFence()

    async def screen(self, sobject: str, kind: str, entries: list[OutboxEntry], *,
                     refresh_before: datetime | None = None) -> Screened:
        store = self._store_for_takeover
        await store.db.sync_state.update_one({"_id": "lease:sync"},
                                             {"$set": {"expires_at": datetime.now(UTC)}})
        self.new_term.current = await take_lease(store, "new-leader")
        return await super().screen(sobject, kind, entries, refresh_before=refresh_before)


class TestAPausedTermSendsNothing:
    async def test_a_create_claimed_before_a_takeover_is_not_sent_after_it(self, store: Store) -> None:
        """Chaos seed 11376, P23: a leader claimed a Person's create and was stopped before its
        call; the new term took the claim back and, finding no Lead, created it; the old leader,
        resumed, sent its create too: two Leads. The term is checked right before the call."""
        term, sf = TermFence(), FakeSalesforce()
        outbox = Outbox(store.outbox, lease=timedelta(minutes=2), fence=term)
        flusher = OutboundFlusher(outbox, sf, store, FakeBudget(), client_name="salesforce-sync",
                                  gate=TakeoverWhileScreening(store, sf))
        term.current = await take_lease(store, "old-leader")
        await outbox.enqueue([OutboundWrite("Lead", None, "people", "p-1", {"LastName": "Ng"}, "create")])
        with pytest.raises(FencedError):
            await flusher.flush()
        assert sf.calls == []

    async def test_a_leader_fenced_before_its_call_hands_its_create_back_unsent(self, store: Store) -> None:
        """Nothing was sent, and the sender knows it: the new term need not wait out the claim's
        lease (a dead term's creates wait for it) nor look for a record that cannot exist."""
        term, sf = TermFence(), FakeSalesforce()
        outbox = Outbox(store.outbox, lease=timedelta(minutes=2), fence=term)
        gate = TakeoverWhileScreening(store, sf)
        flusher = OutboundFlusher(outbox, sf, store, FakeBudget(), client_name="salesforce-sync", gate=gate)
        term.current = await take_lease(store, "old-leader")
        await outbox.enqueue([OutboundWrite("Lead", None, "people", "p-1", {"LastName": "Ng"}, "create")])
        with pytest.raises(FencedError):
            await flusher.flush()

        new = Outbox(store.outbox, lease=timedelta(minutes=2), fence=gate.new_term)
        retaken = await new.claim("Lead", "create", 200)
        assert [e.write.local_id for e in retaken] == ["p-1"]
        assert retaken[0].failures == 0 and retaken[0].write.attempt == 0


class LockedThenTakenOver(FakeSalesforce):
    """The org refuses the first send whole (UNABLE_TO_LOCK_ROW: nothing applied); during the
    client's backoff another term takes the lease; the client asks before it sends again."""

    store: Store | None = None

    async def create(self, sobject: str, records: Sequence[dict[str, Any]], *,
                     before_resend: ResendGuard | None = None) -> list[RecordResult]:
        self.calls.append(Call("POST", sobject, [dict(r) for r in records]))  # refused: locked
        assert self.store is not None
        await self.store.db.sync_state.update_one({"_id": "lease:sync"},
                                                  {"$set": {"expires_at": datetime.now(UTC)}})
        await take_lease(self.store, "new-leader")
        assert before_resend is not None, "the client re-sends with no term check"
        await before_resend()
        return await super().create(sobject, records)


class TestAPausedTermSendsNothingAgain:
    async def test_a_write_retried_by_the_client_is_not_sent_after_a_takeover(self, store: Store) -> None:
        """Chaos seed 35107, P3: the client retried a create refused with UNABLE_TO_LOCK_ROW
        across the leader's SIGSTOP, and the retry landed in the next term. The term is checked
        before each re-send too; the create stays claimed (the new term waits out its lease)."""
        term, sf = TermFence(), LockedThenTakenOver()
        sf.store = store
        outbox = Outbox(store.outbox, lease=timedelta(minutes=2), fence=term)
        flusher = OutboundFlusher(outbox, sf, store, FakeBudget(), client_name="salesforce-sync")
        term.current = await take_lease(store, "old-leader")
        await outbox.enqueue([OutboundWrite("Lead", None, "people", "p-1", {"LastName": "Ng"}, "create")])
        with pytest.raises(FencedError):
            await flusher.flush()
        assert len(sf.calls) == 1
        assert await store.db.outbox.count_documents({"status": "inflight"}) == 1
