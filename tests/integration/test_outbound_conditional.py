"""A late write is sent only if Salesforce has not modified its record since the flusher read it
(`If-Unmodified-Since` through `/composite`): a Salesforce user's edit made between that read and
our write is not overwritten (real SecantusDB, the org emulator over HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId

from reconciler.inbound import Reconciler
from reconciler.outbound import FlushPolicy, OutboundFlusher
from reconciler.outbound_shadow import ShadowGate
from reconciler.outbox import Outbox
from reconciler.ports import (
    ChangeKind,
    ChangeSource,
    OutboundWrite,
    RecordResult,
    ResendGuard,
    SalesforceChange,
)
from reconciler.store import Store
from tests.integration.test_outbound_lost_response import MAPPINGS, Budget, Org, running_org
from tests.integration.test_outbound_stale_shadow import edit_as_user, platform_title_edit
from tests.support.clock import Clock

COMPOSITE = "/services/data/v62.0/composite"


@pytest.fixture(name="org")
async def org_fixture() -> AsyncIterator[Org]:
    async with running_org() as running:
        yield running


class UserEditsJustBeforeTheWrite:
    """The REST client, with a Salesforce user's edit landing right before the flusher's write
    call, after the gate read the record: the race of chaos seeds 1582 and 1679, made
    deterministic. Every other call goes to the real client."""

    def __init__(self, org: Org, sf_id: str, *, every_time: bool = False, **fields: Any) -> None:
        self._org, self._sf_id, self._fields, self._every_time = org, sf_id, fields, every_time
        self.edited = False
        self.edits = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._org.client, name)

    async def _edit_once(self) -> None:
        if not self.edited or self._every_time:
            self.edited = True
            self.edits += 1
            await self._next_second()
            await edit_as_user(self._org, self._sf_id, **{k: f"{v}{self.edits}" if self._every_time else v
                                                          for k, v in self._fields.items()})

    async def _next_second(self) -> None:
        """Until the org's clock is past the record's `LastModifiedDate` (whole seconds): an edit
        in the same second as the flusher's read is the documented limit, not this race."""
        org = self._org.emulator.state.org
        async with asyncio.timeout(10):
            while org.now() <= org.tables["Lead"][self._sf_id]["LastModifiedDate"]:
                await asyncio.sleep(0.02)

    async def update(self, sobject: str, records: Sequence[dict[str, Any]], *,
                     before_resend: ResendGuard | None = None) -> list[RecordResult]:
        await self._edit_once()
        return await self._org.client.update(sobject, records)

    async def update_if_unmodified(self, sobject: str, records: Sequence[tuple[dict[str, Any], datetime]],
                                   *, before_resend: ResendGuard | None = None) -> list[RecordResult]:
        await self._edit_once()
        return await self._org.client.update_if_unmodified(sobject, records)


def sf_datetime(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.000+0000")


async def a_late_title_edit(org: Org, store: Store) -> tuple[str, ObjectId, Outbox, Clock]:
    """A Lead last modified a minute ago (Title "Old"), and the platform's Title edit of 10 s ago,
    queued then: late enough that the flusher reads the Lead again before deciding it."""
    sf_id = await org.seed_as_user({"LastName": "Ng", "Company": "Acme", "Title": "Old"})
    a_minute_ago = datetime.now(UTC) - timedelta(minutes=1)
    await edit_as_user(org, sf_id, LastModifiedDate=sf_datetime(a_minute_ago))
    edited = datetime.now(UTC) - timedelta(seconds=10)
    local_id = await platform_title_edit(store, sf_id, edited)
    clock = Clock()
    clock.now = edited
    outbox = Outbox(store.outbox, clock=clock)
    await outbox.enqueue([OutboundWrite("Lead", sf_id, "people", local_id, {"Title": "Platform"},
                                        "local_edit")])
    return sf_id, local_id, outbox, clock


async def lead_title(org: Org, sf_id: str) -> str:
    [lead] = await org.rows(f"SELECT Title FROM Lead WHERE Id = '{sf_id}'")
    return str(lead["Title"])


class TestALateWriteIsConditional:
    async def test_a_salesforce_edit_after_the_read_survives_on_both_sides(self, org: Org,
                                                                          store: Store) -> None:
        """Chaos seeds 1582 (A59.domain) and 1679 (Q37.name/city): the late platform edit was
        re-decided against the record read again, then a Salesforce user's edit landed before our
        write, which overwrote it, and the inbound side took the user's edit for a value our write
        replaced. Sent only if the record is unmodified since the read, the write is refused;
        queued again, it is re-decided against the user's newer edit: nothing goes out."""
        sf_id, local_id, outbox, clock = await a_late_title_edit(org, store)
        racing = UserEditsJustBeforeTheWrite(org, sf_id, Title="User")
        flusher = OutboundFlusher(outbox, racing, store, Budget(), client_name="salesforce-sync",
                                  gate=ShadowGate(org.client, store, MAPPINGS))

        await flusher.flush()

        assert racing.edited and await lead_title(org, sf_id) == "User"
        assert await outbox.depth() == 1  # not written, not acked: queued to be re-decided
        logs, _ = await store.find_sync_logs(limit=10)
        assert [log for log in logs if log.get("status") == "failed"] == []

        clock.now = datetime.now(UTC) + timedelta(minutes=10)  # past its backoff
        await flusher.flush()

        assert await outbox.depth() == 0
        assert await lead_title(org, sf_id) == "User"
        await Reconciler(store, MAPPINGS).apply([SalesforceChange(
            sobject="Lead", sf_id=sf_id, kind=ChangeKind.UPDATE, fields={"Title": "User"},
            changed_at=datetime.now(UTC), source=ChangeSource.POLL)])
        doc = await store.db.people.find_one({"_id": local_id})
        assert doc is not None and doc["title"] == "User"

    async def test_a_record_modified_before_every_write_is_given_up_not_resent_forever(
            self, org: Org, store: Store) -> None:
        """A Salesforce user edits another field (Phone) right before each of our writes: Title
        is re-decided and sent again each time, refused each time. Each refusal counts as an
        attempt (with the backoff): after `max_attempts` the write is an open failed log, retriable."""
        sf_id, _, outbox, clock = await a_late_title_edit(org, store)
        racing = UserEditsJustBeforeTheWrite(org, sf_id, every_time=True, Phone="555-01")
        flusher = OutboundFlusher(outbox, racing, store, Budget(), client_name="salesforce-sync",
                                  policy=FlushPolicy(max_attempts=3),
                                  gate=ShadowGate(org.client, store, MAPPINGS))

        for _ in range(4):
            await flusher.flush()
            clock.now += timedelta(hours=1)  # past any backoff

        assert await outbox.depth() == 0 and racing.edits == 3 and await lead_title(org, sf_id) == "Old"
        logs, _ = await store.find_sync_logs(limit=10)
        [failed] = [log for log in logs if log.get("status") == "failed"]
        assert failed["error"].startswith("GAVE_UP: 3 attempts failed")
        assert "PRECONDITION_FAILED" in failed["error"]

    async def test_a_late_write_nobody_raced_is_written_through_composite(self, org: Org,
                                                                          store: Store) -> None:
        """The conditional path costs one `/composite` call for up to 25 late writes, and writes."""
        sf_id, _, outbox, _ = await a_late_title_edit(org, store)
        flusher = OutboundFlusher(outbox, org.client, store, Budget(), client_name="salesforce-sync",
                                  gate=ShadowGate(org.client, store, MAPPINGS))

        await flusher.flush()

        assert await outbox.depth() == 0 and await lead_title(org, sf_id) == "Platform"
        composite = [r for r in org.emulator.state.requests.entries if r["path"] == COMPOSITE]
        assert len(composite) == 1 and flusher.calls_made == 1


class TestTheClientsConditionalUpdate:
    async def test_each_record_answers_written_modified_since_or_its_error(self, org: Org) -> None:
        """30 records in two `/composite` calls (25 subrequests at most), results in input order."""
        a_minute_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        ids = [await org.seed_as_user({"LastName": f"N{i}", "Company": "Acme"}) for i in range(30)]
        for sf_id in ids:
            await edit_as_user(org, sf_id, LastModifiedDate=sf_datetime(a_minute_ago))
        records = [({"Id": sf_id, "Title": "T"}, a_minute_ago) for sf_id in ids]
        records[3] = ({"Id": ids[3], "Title": "T"}, a_minute_ago - timedelta(seconds=1))  # modified since
        records[28] = ({"Id": ids[28], "LastName": None}, a_minute_ago)
        before = len(org.emulator.state.requests.entries)

        results = await org.client.update_if_unmodified("Lead", records)

        calls = [r for r in list(org.emulator.state.requests.entries)[before:] if r["path"] == COMPOSITE]
        assert len(calls) == 2
        assert [r.id for r in results] == ids
        assert results[3].precondition_failed and not results[3].success
        assert [e.status_code for e in results[28].errors] == ["REQUIRED_FIELD_MISSING"]
        assert not results[28].precondition_failed
        assert all(r.success for i, r in enumerate(results) if i not in (3, 28))
        titles = {r["Id"]: r.get("Title") for r in await org.rows(
            f"SELECT Id, Title FROM Lead WHERE Id IN ('{ids[3]}', '{ids[4]}')")}
        assert (titles[ids[3]], titles[ids[4]]) == (None, "T")
