"""Resolving failed sync logs (design.md: a failed log gains `resolved` once a later sync of the
same record and fields succeeds) without a sync-log lookup for records that have no open failure:
SecantusDB answered that lookup by scanning every sync log, 0.4 s per inbound micro-batch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import monitoring

from reconciler.store import Store
from reconciler.sync_logs import SyncLog, failed_inbound
from reconciler.term_store import TermStore


class SyncLogReads(monitoring.CommandListener):
    """The `find` commands sent on `sync_logs`."""

    def __init__(self) -> None:
        self.finds = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == "sync_logs":
            self.finds += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def watched(mongo_uri: str, database_name: str) -> AsyncIterator[tuple[Store, SyncLogReads]]:
    reads = SyncLogReads()
    client: Any = AsyncIOMotorClient(mongo_uri, tz_aware=True, event_listeners=[reads])
    store = Store(client, client[database_name])
    await store.ensure_indexes()
    yield store, reads
    await client.drop_database(database_name)
    client.close()


@pytest.fixture
async def second_replica(mongo_uri: str, database_name: str) -> AsyncIterator[Store]:
    """Another process's store on the same database (its own connection)."""
    store = await Store.connect(mongo_uri, database_name)
    yield store
    await store.close()


def success(sf_id: str, **fields: Any) -> SyncLog:
    return SyncLog(source="salesforce", type="update", status="success", object="Lead", sf_id=sf_id,
                   fields={name: {"old": None, "new": value} for name, value in fields.items()})


async def resolved_by(store: Store, log_id: str) -> Any:
    return ((await store.get_sync_log(log_id)) or {}).get("resolved", {}).get("by")


class TestLookupOnlyWhenNeeded:
    async def test_a_success_of_records_without_open_failures_reads_no_sync_logs(
        self, watched: tuple[Store, SyncLogReads]
    ) -> None:
        store, reads = watched
        [failed_id] = await store.insert_sync_logs([failed_inbound("Lead", "00QA", "X: y")])
        await store.insert_sync_logs([success("00QB", title="CEO")])
        reads.finds = 0
        await store.insert_sync_logs([success("00QC", title="CEO"), success("00QD", title="CTO")])
        assert reads.finds == 0
        [fixed_id] = await store.insert_sync_logs([success("00QA", title="CEO")])
        assert await resolved_by(store, failed_id) == fixed_id

    async def test_a_record_whose_failures_are_all_resolved_is_not_looked_up_again(
        self, watched: tuple[Store, SyncLogReads]
    ) -> None:
        store, reads = watched
        await store.insert_sync_logs([failed_inbound("Lead", "00QA", "X: y")])
        await store.insert_sync_logs([success("00QA", title="CEO")])
        reads.finds = 0
        await store.insert_sync_logs([success("00QA", title="CFO")])
        assert reads.finds == 0

    async def test_a_failure_in_the_same_batch_as_its_fix_is_resolved(
        self, watched: tuple[Store, SyncLogReads]
    ) -> None:
        store, _ = watched
        await store.insert_sync_logs([success("00QB")])  # the open failures are known: none
        earlier = failed_inbound("Lead", "00QA", "X: y")
        earlier.ts = datetime.now(UTC) - timedelta(seconds=1)
        failed_id, fixed_id = await store.insert_sync_logs([earlier, success("00QA", title="CEO")])
        assert await resolved_by(store, failed_id) == fixed_id


class TestOtherWriters:
    async def test_a_failure_another_replica_logged_is_resolved_once_this_one_starts_a_term(
        self, store: Store, second_replica: Store
    ) -> None:
        """Replica A leads (term 1) and knows of no open failure; B takes over (term 2) and logs
        a failure; A leads again (term 3): A's success for that record resolves it."""
        start = datetime.now(UTC)
        a_leases = [store.lease("sync", owner="a", ttl=30, clock=at(start))]
        b_lease = second_replica.lease("sync", owner="b", ttl=30, clock=at(start + timedelta(seconds=31)))
        a = TermStore(store, lambda: a_leases[-1].fence())  # one per process life, across terms
        b = TermStore(second_replica, b_lease.fence)
        assert await a_leases[-1].acquire()
        await a.insert_sync_logs([success("00QB", title="CEO")])
        assert await b_lease.acquire()
        [failed_id] = await b.insert_sync_logs([failed_inbound("Lead", "00QA", "X: y")])
        a_leases.append(store.lease("sync", owner="a", ttl=30, clock=at(start + timedelta(seconds=62))))
        assert await a_leases[-1].acquire()
        [fixed_id] = await a.insert_sync_logs([success("00QA", title="CEO")])
        assert await resolved_by(store, failed_id) == fixed_id


def failed_create(local_id: str, attempt: int, **fields: Any) -> SyncLog:
    job = {"kind": "outbound", "sobject": "Lead", "sf_id": None, "collection": "people", "local_id": local_id}
    return SyncLog(source="local", type="create", status="failed", object="Lead", local_id=local_id,
                   collection="people", job=job, attempt=attempt, error="REQUIRED_FIELD_MISSING: [Company]",
                   fields={name: {"old": None, "new": value} for name, value in fields.items()})


async def log_field(store: Store, log_id: str, name: str) -> Any:
    return ((await store.get_sync_log(log_id)) or {}).get(name)


class TestAFailureSentAgain:
    """Chaos seed 1776 x 2000, P135: a leader logged a create's permanent failure and was stopped
    before it could park the write; the next leader recovered the write and sent it again, which
    failed the same way. One write, one failure: the earlier log is no longer open, the later
    attempt's log is (the page shows one open failure, and its retry is the record's)."""

    async def test_the_later_attempt_supersedes_the_earlier_open_failure(self, store: Store) -> None:
        [first] = await store.insert_sync_logs([failed_create("p-1", 3, LastName="Ng", Email="n@x")])
        [second] = await store.insert_sync_logs([failed_create("p-1", 4, LastName="Ng", Email="n@x")])
        assert await log_field(store, first, "retried_by") == second
        assert await log_field(store, second, "retried_by") is None

    async def test_a_failure_of_other_fields_stays_open(self, store: Store) -> None:
        """It failed writing a field the later attempt did not carry: not the same write."""
        [first] = await store.insert_sync_logs([failed_create("p-1", 1, Title="CEO")])
        await store.insert_sync_logs([failed_create("p-1", 1, LastName="Ng")])
        assert await log_field(store, first, "retried_by") is None

    async def test_another_records_failure_stays_open(self, store: Store) -> None:
        [first] = await store.insert_sync_logs([failed_create("p-1", 1, LastName="Ng")])
        await store.insert_sync_logs([failed_create("p-2", 1, LastName="Ng")])
        assert await log_field(store, first, "retried_by") is None


def at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment
