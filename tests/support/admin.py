"""Test doubles for the admin surface: a status provider and a job runner over a real Store.

The job runner is a stand-in for `reconciler.jobs` that records what it was asked and writes
what a successful retry writes (a new `success` log, the old one marked `retried_by`), so the
API, the CLI and the page can be driven end to end without Salesforce.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.errors import SyncError
from reconciler.store import Store
from reconciler.sync_logs import SyncLog
from service.admin import create_admin_app, start_admin
from settings import AdminSettings

TOKEN = "test-admin-token-0123456789abcdefghij"
INSTANCE_URL = "https://example.my.salesforce.com"


@dataclass
class FakeStatus:
    """What the supervisor reports; tests set `ready_reason` to make `/readyz` fail."""

    ready_reason: str = ""
    mode: str = "streaming"
    extra: dict[str, Any] = field(default_factory=dict)

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "budget": {"used": 12_345, "max": 100_000, "remaining_pct": 87.655},
            "replay_ids": {"/data/LeadChangeEvent": 41},
            "watermarks": {"Lead": "2024-05-01T10:00:00Z"},
            "queue_depth": {"inbound": 0, "outbox": 2},
            "last_event_at": "2024-05-01T10:00:05Z",
            **self.extra,
        }

    def ready(self) -> tuple[bool, str]:
        return (not self.ready_reason, self.ready_reason)


@dataclass
class FakeJobs:
    """Retries succeed by writing a success log for the same record (as the real jobs do), or,
    with `fail_retries`, fail again: one new failed row, the old one pointing at it."""

    store: Store
    calls: list[tuple[str, str | None]] = field(default_factory=list)
    error: SyncError | None = None
    missing: set[str] = field(default_factory=set)   # ids Salesforce does not have
    fail_retries: bool = False

    async def retry(self, log_id: str) -> dict[str, Any]:
        self.calls.append(("retry", log_id))
        if self.error is not None:
            raise self.error
        old = await self.store.get_sync_log(log_id)
        assert old is not None
        new_id = await self._succeed(old)
        return {"status": "success", "new_log_id": new_id}

    async def retry_failed(self) -> dict[str, Any]:
        self.calls.append(("retry_failed", None))
        if self.error is not None:
            raise self.error
        failed = await self.store.find_failed_logs()
        for old in failed:
            await self._succeed(old)
        return {"retried": len(failed), "succeeded": len(failed), "failed": 0}

    async def import_record(self, sf_id: str) -> dict[str, Any]:
        self.calls.append(("import", sf_id))
        if self.error is not None:
            raise self.error
        if sf_id in self.missing:  # as `reconciler.jobs.AdminJobs` answers it
            return {"retried": 0, "items": [{"log_id": None, "status": "not_found", "new_log_ids": []}]}
        (new_id,) = await self.store.insert_sync_logs([
            SyncLog(source="salesforce", type="import", status="success", object="Lead", sf_id=sf_id)
        ])
        return {"status": "success", "new_log_id": new_id}

    async def _succeed(self, old: dict[str, Any]) -> str:
        outcome: dict[str, Any] = {"status": "failed", "error": old.get("error"), "job": old.get("job"),
                                   "fields": old.get("fields") or {}} if self.fail_retries \
            else {"status": "success"}
        (new_id,) = await self.store.insert_sync_logs([
            SyncLog(source=old["source"], type="merge", object=old.get("object"),
                    sf_id=old.get("sf_id"), local_id=old.get("local_id"),
                    attempt=int(old.get("attempt") or 1) + 1, **outcome)
        ])
        await self.store.mark_sync_log(old["id"], retried_by=new_id)
        return new_id


def recent_minute(minutes_ago: int = 30) -> datetime:
    """A whole minute not long ago. Sample sync logs are dated from it, never from a fixed date:
    `sync_logs` has a TTL index on `ts`, and SecantusDB's TTL monitor (about once a minute)
    deletes logs older than the retention in the middle of the test that inserted them."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return now - timedelta(minutes=minutes_ago)


async def logged_at(store: Store, log_id: str) -> datetime:
    """The `ts` of a stored sync log, as a datetime."""
    log = await store.get_sync_log(log_id)
    assert log is not None, log_id
    ts = log["ts"]
    return ts if isinstance(ts, datetime) else datetime.fromisoformat(str(ts).replace("Z", "+00:00"))


def sample_logs(base: datetime | None = None) -> list[SyncLog]:
    """A small, varied history: newest last (ts increasing), inside the sync-log retention."""
    t0 = base or recent_minute()
    rows: list[SyncLog] = [
        SyncLog(source="salesforce", type="create", status="success", object="Lead",
                sf_id="00Q000000000001AAA", local_id="665f00000000000000000001", collection="people",
                fields={"first_name": {"old": None, "new": "Ada"}}),
        SyncLog(source="local", type="update", status="failed", object="Lead",
                sf_id="00Q000000000001AAA", local_id="665f00000000000000000001", collection="people",
                error="INVALID_EMAIL_ADDRESS: Email: invalid email address: ada@@example",
                job={"kind": "outbound", "sobject": "Lead", "sf_id": "00Q000000000001AAA",
                     "collection": "people", "local_id": "665f00000000000000000001"},
                retriable=True),
        SyncLog(source="salesforce", type="update", status="success", object="Contact",
                sf_id="003000000000002AAA", local_id="665f00000000000000000002", collection="people",
                fields={"title": {"old": "CTO", "new": "CEO"}}),
        SyncLog(source="salesforce", type="convert", status="success", object="Contact",
                sf_id="003000000000003AAA", local_id="665f00000000000000000003", collection="people"),
        SyncLog(source="salesforce", type="create", status="success", object="Account",
                sf_id="001000000000004AAA", local_id="665f00000000000000000004", collection="companies",
                fields={"name": {"old": None, "new": "Acme <Corp> & Co"}}),
        SyncLog(source="local", type="create", status="failed", object="Lead",
                local_id="665f00000000000000000005", collection="people",
                error="REQUIRED_FIELD_MISSING: Required fields are missing: [Company]",
                job={"kind": "outbound", "sobject": "Lead", "sf_id": None,
                     "collection": "people", "local_id": "665f00000000000000000005"},
                retriable=True),
    ]
    for i, row in enumerate(rows):
        row.ts = t0 + timedelta(minutes=i)
    return rows


@dataclass
class RunningAdmin:
    url: str
    store: Store
    status: FakeStatus
    jobs: FakeJobs
    log_ids: list[str]


@asynccontextmanager
async def running_admin(
    store: Store, *, token: str | None = TOKEN, logs: list[SyncLog] | None = None,
    settings: AdminSettings | None = None,
) -> AsyncIterator[RunningAdmin]:
    """The real admin app on a free 127.0.0.1 port over `store`, seeded with `sample_logs()`."""
    status, jobs = FakeStatus(), FakeJobs(store)
    app = create_admin_app(status=status, store=store, jobs=jobs, token=token, instance_url=INSTANCE_URL,
                           settings=settings)
    server = await start_admin(app, "127.0.0.1", 0)
    try:
        ids = await store.insert_sync_logs(sample_logs() if logs is None else logs)
        yield RunningAdmin(server.url, store, status, jobs, ids)
    finally:
        await server.stop()
