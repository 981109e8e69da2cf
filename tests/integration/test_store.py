"""The MongoDB store against a real SecantusDB server: indexes, state, sync logs, bulk writes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import monitoring

from reconciler.errors import RetriableError
from reconciler.store import RecordWrite, Store
from reconciler.sync_logs import SyncLog
from tests.support.secantus import free_port


def log_at(ts: datetime, **kw: object) -> SyncLog:
    return SyncLog(source="salesforce", type="update", status="success", ts=ts, **kw)  # type: ignore[arg-type]


class TestConnection:
    async def test_ping_succeeds(self, store: Store) -> None:
        """A reachable server answers ping."""
        await store.ping()

    async def test_unreachable_server_is_retriable(self) -> None:
        """An unreachable server surfaces as RetriableError, not a driver exception."""
        store = await Store.connect(f"mongodb://127.0.0.1:{free_port()}/?directConnection=true", "x",
                                    server_selection_timeout_ms=200)
        with pytest.raises(RetriableError):
            await store.ping()
        await store.close()

    async def test_ensure_indexes_is_repeatable_and_applies_a_new_retention(self, store: Store) -> None:
        """Indexes can be ensured again, and a changed retention updates the TTL in place."""
        await store.ensure_indexes()
        store.sync_log_retention_days = 7
        await store.ensure_indexes()
        info = await store.db.sync_logs.index_information()
        assert info["ts_ttl"]["expireAfterSeconds"] == 7 * 86_400
        people = await store.db.people.index_information()
        assert people["crm_id"]["unique"]


class TestState:
    async def test_round_trip(self, store: Store) -> None:
        """Saved state loads back; all_state lists every key."""
        assert await store.load_state("watermark:Lead") is None
        await store.save_state("watermark:Lead", {"ts": "2024-05-01T10:00:00Z", "ids": ["00Q1"]})
        await store.save_state("mode", {"mode": "streaming"})
        assert await store.load_state("watermark:Lead") == {"ts": "2024-05-01T10:00:00Z", "ids": ["00Q1"]}
        assert set(await store.all_state()) == {"watermark:Lead", "mode"}


class TestSyncLogs:
    async def test_pages_newest_first_with_a_stable_cursor(self, store: Store) -> None:
        """Pages follow (ts, _id) newest first; logs inserted after the first page do not shift it."""
        base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)  # inside the TTL
        same = base + timedelta(minutes=5)
        await store.insert_sync_logs([log_at(base + timedelta(minutes=i), sf_id=f"00Q{i}") for i in range(5)]
                                     + [log_at(same, sf_id="00Qx")])
        first, cursor = await store.find_sync_logs(limit=2)
        await store.insert_sync_logs([log_at(base + timedelta(hours=1), sf_id="late")])
        second, cursor2 = await store.find_sync_logs(limit=2, cursor=cursor)
        third, cursor3 = await store.find_sync_logs(limit=2, cursor=cursor2)
        seen = [x["sf_id"] for x in first + second + third]
        assert sorted(seen) == sorted(["00Q0", "00Q1", "00Q2", "00Q3", "00Q4", "00Qx"])
        assert seen[-1] == "00Q0" and cursor3 is None
        assert all(isinstance(x["id"], str) and isinstance(x["ts"], str) for x in first)

    async def test_filters(self, store: Store) -> None:
        """status, source, type, object and record (sf or local id) filter the list."""
        now = datetime.now(UTC)
        await store.insert_sync_logs([
            log_at(now, sf_id="00Q1", object="Lead"),
            SyncLog(source="salesforce", type="create", status="failed", object="Contact", sf_id="003A",
                    local_id="L1", error="X: y", ts=now),
        ])
        failed, _ = await store.find_sync_logs(status="failed")
        assert [x["sf_id"] for x in failed] == ["003A"]
        assert [x["sf_id"] for x in (await store.find_sync_logs(record="L1"))[0]] == ["003A"]
        assert [x["sf_id"] for x in (await store.find_sync_logs(object="Lead", type="update"))[0]] == ["00Q1"]
        assert (await store.find_sync_logs(source="local"))[0] == []
        assert len((await store.find_sync_logs(cursor="garbage"))[0]) == 2

    async def test_get_and_mark(self, store: Store) -> None:
        """A log is fetched by its string id and can be marked as retried."""
        [log_id] = await store.insert_sync_logs([log_at(datetime.now(UTC))])
        await store.mark_sync_log(log_id, retried_by="abc")
        doc = await store.get_sync_log(log_id)
        assert doc is not None and doc["retried_by"] == "abc"
        assert await store.get_sync_log("not-an-id") is None


class TestRecords:
    async def test_bulk_apply_reports_per_document_failures(self, store: Store) -> None:
        """A duplicate CRM id fails that document only; upserted ids come back by position."""
        await store.db.people.insert_one({"email": "a@x.com", "crm": {"id": "003A"}})
        outcome = await store.bulk_apply("people", [
            RecordWrite(filter={"crm.id": "003B"}, set={"first_name": "B"}, upsert=True),
            RecordWrite(filter={"email": "nobody"}, set={"crm.id": "003A"}, upsert=True),
            RecordWrite(filter={"crm.id": "003C"}, set={"first_name": "C"}, upsert=True),
        ])
        assert set(outcome.upserted) == {0, 2}
        assert outcome.errors[1].startswith("DUPLICATE_VALUE")
        assert await store.db.people.count_documents({}) == 3

    async def test_unlinked_matches_ignore_case(self, store: Store) -> None:
        """Email matching ignores case and skips documents already linked."""
        await store.db.people.insert_many([{"email": "Ann@Example.com"},
                                           {"email": "ann@example.com", "crm": {"id": "003A"}}])
        found = await store.find_unlinked_matches("people", "email", ["ann@example.com"])
        assert [d["email"] for d in found] == ["Ann@Example.com"]

    async def test_iter_linked_pages(self, store: Store) -> None:
        """All documents linked to an object come back in pages."""
        await store.db.people.insert_many([{"crm": {"object": "Lead", "id": f"00Q{i}"}} for i in range(5)]
                                          + [{"crm": {"object": "Contact", "id": "003"}}, {"x": 1}])
        pages = [p async for p in store.iter_linked("people", "Lead", batch_size=2)]
        assert [len(p) for p in pages] == [2, 2, 1]

    async def test_a_lookup_that_finds_every_id_is_one_round_trip(self, counted: tuple[Store, Commands]
                                                                  ) -> None:
        """A micro-batch's lookup of its linked documents is one `find`, with no `getMore` after it
        (a reply exactly as large as its batch size leaves the cursor open for one more, empty, reply)."""
        store, commands = counted
        await store.db.people.insert_many([{"crm": {"object": "Lead", "id": f"00Q{i}"}} for i in range(7)])
        commands.names.clear()
        found = await store.find_linked("people", [f"00Q{i}" for i in range(7)])
        assert len(found) == 7
        assert commands.names == ["find"]

    async def test_a_lookup_of_more_ids_than_a_slice_finds_them_all(self, store: Store) -> None:
        """Ids are looked up in slices of `lookup_chunk` (SecantusDB's `$in` is quadratic in its
        list): a lookup of more ids than a slice holds finds every linked document once."""
        ids = [f"00Q{i:04d}" for i in range(store.lookup_chunk * 2 + 3)]
        await store.db.people.insert_many([{"crm": {"object": "Lead", "id": i}} for i in ids])
        found = await store.find_linked("people", [*ids, "00Q-missing"])
        assert sorted(d["crm"]["id"] for d in found) == ids


class Commands(monitoring.CommandListener):
    """The names of the commands sent on `people`, in order."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command.get(event.command_name) == "people" or event.command_name == "getMore":
            self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def counted(mongo_uri: str, database_name: str) -> AsyncIterator[tuple[Store, Commands]]:
    commands = Commands()
    client: Any = AsyncIOMotorClient(mongo_uri, tz_aware=True, event_listeners=[commands])
    store = Store(client, client[database_name])
    await store.ensure_indexes()
    yield store, commands
    await client.drop_database(database_name)
    client.close()


def test_public_surface_is_pinned() -> None:
    """The store package exports exactly its public names."""
    import reconciler.store

    assert sorted(reconciler.store.__all__) == [
        "BulkOutcome", "CREATE", "Fence", "Lease", "LeaseHolder", "LocalChange", "LocalChangeBatch",
        "OutboxCollection", "OutboxEntry", "OutboxGroup", "RecordVersion", "RecordWrite", "Store",
        "StreamHistoryLostError",
        "UPDATE", "WatchedCollection", "decode_cursor", "encode_cursor", "new_object_id",
        "parse_local_id", "translate_errors"]
