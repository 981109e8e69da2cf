"""Open failures grouped by Salesforce status code: the store's count, `/api/status`'s
`failures_by_code`, the `error_code` filter of `/api/sync-logs`, and the Sync Logs page panel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from reconciler.store import Store
from reconciler.sync_logs import SyncLog
from service.cli import main
from service.outbound_metrics import OutboundCounters
from service.readiness import Health, LeaseStatus, StatusParts, StoreSnapshot, status_document
from service.refresh import StatusRefresh
from tests.support.admin import TOKEN, RunningAdmin, running_admin

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def failed(error: str | None, *, retried_by: str | None = None) -> SyncLog:
    return SyncLog(source="local", type="update", status="failed", object="Lead",
                   sf_id="00Q000000000001AAA", error=error, retried_by=retried_by,
                   job={"kind": "outbound", "sobject": "Lead"})


BURST = [
    *[failed("REQUIRED_FIELD_MISSING: Required fields are missing: [Company]") for _ in range(3)],
    failed("INVALID_EMAIL_ADDRESS: Email: invalid email address: x@@y"),
    failed("INVALID_EMAIL_ADDRESS: Email: invalid email address: z@@y"),
    failed("REQUIRED_FIELD_MISSING: Required fields are missing: [LastName]", retried_by="later"),  # closed
    failed("NetworkError: POST https://x/composite/sobjects: timed out"),
    failed(None),
    SyncLog(source="salesforce", type="update", status="success", object="Lead"),
]


class TestStoreCounts:
    async def test_open_failures_by_code(self, store: Store) -> None:
        """Open (failed, not retried) logs counted per leading status code; anything else is OTHER."""
        await store.insert_sync_logs(BURST)
        assert await store.open_failures_by_code() == {
            "REQUIRED_FIELD_MISSING": 3, "INVALID_EMAIL_ADDRESS": 2, "OTHER": 2,
        }

    async def test_none_open(self, store: Store) -> None:
        assert await store.open_failures_by_code() == {}

    @pytest.mark.parametrize(("code", "expected"), [
        ("INVALID_EMAIL_ADDRESS", 2), ("REQUIRED_FIELD_MISSING", 4), ("OTHER", 2), ("NOPE", 0),
    ])
    async def test_error_code_filter(self, store: Store, code: str, expected: int) -> None:
        await store.insert_sync_logs(BURST)
        items, _ = await store.find_sync_logs(status="failed", error_code=code)
        assert len(items) == expected


class TestStatus:
    async def test_refresh_reads_counts_into_status(self, store: Store) -> None:
        """The status refresh reads the counts; `/api/status` shows them as `failures_by_code`."""
        await store.insert_sync_logs(BURST)
        snapshot = StoreSnapshot()
        refresh = StatusRefresh(store, _NoBudget(), health=Health(),  # type: ignore[arg-type]
                                snapshot=snapshot, counters=OutboundCounters())
        await refresh.refresh_once()
        doc = status_document(StatusParts(
            budget={"mode": "streaming", "used": 1, "max": 2, "remaining_pct": 50.0,
                    "events_exhausted": False},
            running=None, sources=[], stored=snapshot, lease=LeaseStatus()))
        assert doc["failures_by_code"] == {
            "REQUIRED_FIELD_MISSING": 3, "INVALID_EMAIL_ADDRESS": 2, "OTHER": 2}


    async def test_resolved_failures_are_not_counted(self, store: Store) -> None:
        """`failures_by_code` counts open failures: one a later success of the same record and
        fields resolved is history, not work; a success of other fields resolves nothing."""
        def on(sf_id: str, error: str, field: str) -> SyncLog:
            return SyncLog(source="local", type="update", status="failed", object="Lead", sf_id=sf_id,
                           error=error, fields={field: {"old": None, "new": "x"}},
                           job={"kind": "outbound", "sobject": "Lead"})

        def success(sf_id: str, field: str) -> SyncLog:
            return SyncLog(source="local", type="update", status="success", object="Lead", sf_id=sf_id,
                           fields={field: {"old": None, "new": "y"}})

        await store.insert_sync_logs([
            on("00Q000000000001AAA", "REQUIRED_FIELD_MISSING: Required fields are missing: [Company]",
               "Company"),
            on("00Q000000000002AAA", "INVALID_EMAIL_ADDRESS: Email: invalid email address: x@@y", "Email")])
        await store.insert_sync_logs([success("00Q000000000001AAA", "Company"),
                                      success("00Q000000000002AAA", "Title")])
        snapshot = StoreSnapshot()
        refresh = StatusRefresh(store, _NoBudget(), health=Health(),  # type: ignore[arg-type]
                                snapshot=snapshot, counters=OutboundCounters())
        await refresh.refresh_once()
        doc = status_document(StatusParts(
            budget={"mode": "streaming", "used": 1, "max": 2, "remaining_pct": 50.0,
                    "events_exhausted": False},
            running=None, sources=[], stored=snapshot, lease=LeaseStatus()))
        assert doc["failures_by_code"] == {"INVALID_EMAIL_ADDRESS": 1}


class _NoBudget:
    def status(self) -> dict[str, Any]:
        return {"max": None}


@pytest.fixture
async def admin(store: Store) -> AsyncIterator[RunningAdmin]:
    async with running_admin(store, logs=BURST) as running:
        running.status.extra["failures_by_code"] = await store.open_failures_by_code()
        yield running


class TestAdmin:
    async def test_api_filter(self, admin: RunningAdmin) -> None:
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.get(f"{admin.url}/api/sync-logs",
                                params={"status": "failed", "error_code": "INVALID_EMAIL_ADDRESS"}) as r:
                body = await r.json()
            assert r.status == 200
            assert {i["error"].split(":")[0] for i in body["items"]} == {"INVALID_EMAIL_ADDRESS"}
            assert len(body["items"]) == 2
            async with http.get(f"{admin.url}/api/sync-logs", params={"error_code": "bad code!"}) as r:
                assert r.status == 400
                assert (await r.json())["error"] == "bad_request"

    async def test_page_panel_links_filter(self, admin: RunningAdmin) -> None:
        """The page lists each code with its count, most first, each a filter link."""
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.get(f"{admin.url}/logs") as r:
                page = await r.text()
            assert 'aria-label="Open failures by error code"' in page
            assert page.index("REQUIRED_FIELD_MISSING") < page.index("INVALID_EMAIL_ADDRESS")
            link = "/logs?status=failed&amp;error_code=INVALID_EMAIL_ADDRESS"
            assert f'href="{link}"' in page
            async with http.get(f"{admin.url}/logs?status=failed&error_code=INVALID_EMAIL_ADDRESS") as r:
                filtered = await r.text()
            assert filtered.count('class="row-failed"') == 2
            # the filter form keeps the code
            assert 'name="error_code" value="INVALID_EMAIL_ADDRESS"' in filtered

    async def test_cli_error_code(self, admin: RunningAdmin, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
        """`sfsync logs --error-code CODE` passes the filter."""
        monkeypatch.setenv("SFSYNC_ADMIN__TOKEN", TOKEN)
        code = await asyncio.to_thread(main, ["logs", "--url", admin.url, "--json", "--error-code", "OTHER"])
        assert code == 0
        items = json.loads(capsys.readouterr().out)["items"]
        assert len(items) == 2 and all(i["status"] == "failed" for i in items)
