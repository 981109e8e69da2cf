"""The outbound flusher with the real REST client over a handler transport: no HTTP server, no
MongoDB (an in-memory outbox and store stand in)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId

from reconciler.outbound import OutboundFlusher
from reconciler.ports import OutboundWrite
from reconciler.store import CREATE, UPDATE, OutboxEntry, OutboxGroup
from reconciler.sync_logs import SyncLog
from tests.support.clock import Clock
from tests.support.salesforce_http import ScriptedOrg, V, body_of, sf_error, sf_json

COLLECTIONS = f"{V}/composite/sobjects"


@dataclass
class MemoryOutbox:
    """The flusher's view of the outbox, in memory: what it claims, finishes and releases."""

    pending: list[OutboxEntry]
    lease: timedelta = timedelta(minutes=2)
    finished: list[OutboxEntry] = field(default_factory=list)
    released: list[tuple[list[OutboxEntry], timedelta, bool]] = field(default_factory=list)
    rekeyed: list[tuple[str, object, str, str]] = field(default_factory=list)

    async def due_groups(self) -> list[OutboxGroup]:
        groups: dict[tuple[str, str], list[OutboxEntry]] = {}
        for entry in self.pending:
            groups.setdefault((entry.write.sobject, entry.kind), []).append(entry)
        return [OutboxGroup(s, k, len(es), min(e.enqueued_at for e in es)) for (s, k), es in groups.items()]

    async def claim(self, sobject: str, kind: str, limit: int, *,
                    sf_offset: timedelta = timedelta(0)) -> list[OutboxEntry]:
        claimed = [e for e in self.pending if (e.write.sobject, e.kind) == (sobject, kind)][:limit]
        self.pending = [e for e in self.pending if e not in claimed]
        return claimed

    async def done(self, entries: Sequence[OutboxEntry]) -> None:
        self.finished.extend(entries)

    async def retry_later(self, entries: Sequence[OutboxEntry], delay: timedelta, *,
                          count_attempt: bool = True, error: str | None = None) -> None:
        self.released.append((list(entries), delay, count_attempt))

    async def give_up(self, entries: Sequence[OutboxEntry]) -> None:
        self.finished.extend(entries)

    async def recover_expired(self) -> int:
        return 0

    async def held_past_recycle_bin(self) -> list[OutboxEntry]:
        return []

    async def drop_held(self, entries: Sequence[OutboxEntry]) -> None:
        raise AssertionError("nothing is held here")

    async def created(self, collection: str, local_id: object, sobject: str, sf_id: str) -> None:
        self.rekeyed.append((collection, local_id, sobject, sf_id))

    def fence(self) -> None:
        return None  # no leader terms here


@dataclass
class MemoryStore:
    logs: list[SyncLog] = field(default_factory=list)
    linked: list[tuple[str, Any, str, str]] = field(default_factory=list)

    async def insert_sync_logs(self, logs: Sequence[SyncLog]) -> None:
        self.logs.extend(logs)

    async def link_created(self, collection: str, local_id: Any, *, sobject: str, sf_id: str) -> bool:
        self.linked.append((collection, local_id, sobject, sf_id))
        return True

    async def find_linked(self, collection: str, sf_ids: Any) -> list[dict[str, Any]]:
        return [{"crm": {"id": sf_id}} for c, _, _, sf_id in self.linked
                if c == collection and sf_id in sf_ids]


@dataclass
class Budget:
    mode: str = "streaming"

    def allows_optional_calls(self) -> bool:
        return True


T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def entry(kind: str, local_id: str, fields: dict[str, Any], sf_id: str | None = None) -> OutboxEntry:
    reason = "create" if kind == CREATE else "local_edit"
    write = OutboundWrite("Lead", sf_id, "people", local_id, fields, reason)
    return OutboxEntry(ObjectId(), f"local:people:{local_id}", kind, write, T0, T0)


class TestOneBatch:
    async def test_a_rejected_record_fails_alone(self) -> None:
        """One call for two creates; the record Salesforce refuses is a failed log naming its error,
        the other is created and linked; both leave the outbox."""
        org = ScriptedOrg()
        org.route("POST", COLLECTIONS, lambda _: sf_json([
            {"id": "00Q000000000001AAA", "success": True, "errors": []},
            {"success": False, "errors": [{"statusCode": "REQUIRED_FIELD_MISSING",
                                           "message": "Required fields are missing: [Company]",
                                           "fields": ["Company"]}]},
        ]))
        outbox = MemoryOutbox([entry(CREATE, "p-1", {"LastName": "Ng", "Company": "Acme"}),
                               entry(CREATE, "p-2", {"LastName": "Li"})])
        store = MemoryStore()
        client, _ = org.client()
        async with client:
            flusher = OutboundFlusher(outbox, client, store, Budget(), client_name="sfsync-test",
                                      writable={"Lead": {}}, clock=Clock())
            assert await flusher.flush() == 1
        [call] = org.rest_calls
        assert body_of(call) == {"allOrNone": False, "records": [
            {"attributes": {"type": "Lead"}, "LastName": "Ng", "Company": "Acme"},
            {"attributes": {"type": "Lead"}, "LastName": "Li"}]}
        ok, failed = store.logs
        assert (ok.status, ok.sf_id, ok.local_id) == ("success", "00Q000000000001AAA", "p-1")
        assert (failed.status, failed.local_id, failed.retriable) == ("failed", "p-2", False)
        assert failed.error == "REQUIRED_FIELD_MISSING: Required fields are missing: [Company]"
        assert failed.job is not None and failed.job["kind"] == "outbound"
        assert store.linked == [("people", "p-1", "Lead", "00Q000000000001AAA")]
        assert [e.write.local_id for e in outbox.finished] == ["p-1", "p-2"] and outbox.released == []
        assert (flusher.records_sent, flusher.records_failed) == (1, 1)

    async def test_an_unavailable_org_keeps_the_writes_with_backoff(self) -> None:
        """Always 503: the client gives up, nothing is logged, the writes wait at least base/2."""
        org = ScriptedOrg()
        org.route("PATCH", COLLECTIONS, lambda _: sf_error(503, "SERVER_UNAVAILABLE"))
        outbox = MemoryOutbox([entry(UPDATE, "p-1", {"City": "Paris"}, sf_id="00Q000000000001AAA")])
        store = MemoryStore()
        client, _ = org.client()
        async with client:
            flusher = OutboundFlusher(outbox, client, store, Budget(), client_name="sfsync-test",
                                      writable={"Lead": {}}, clock=Clock(), rng=random.Random(1),
                                      backoff_base=timedelta(seconds=5))
            assert await flusher.flush() == 0
        assert len(org.rest_calls) == 4 and store.logs == [] and outbox.finished == []
        [(released, delay, counted)] = outbox.released
        assert [e.write.local_id for e in released] == ["p-1"] and counted
        assert timedelta(seconds=2.5) <= delay <= timedelta(seconds=5)
