"""The admin HTTP contract, over real HTTP on 127.0.0.1, with sync logs in a real SecantusDB."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from listener.metrics import METRICS
from reconciler.errors import BudgetExhaustedError, RecordRejectedError, RetriableError
from reconciler.store import Store
from reconciler.sync_logs import SyncLog
from service.admin import NotLeaderError
from service.admin.auth import COOKIE_NAME
from tests.support.admin import TOKEN, FakeJobs, FakeStatus, logged_at, running_admin

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Admin:
    url: str
    http: aiohttp.ClientSession
    store: Store
    status: FakeStatus
    jobs: FakeJobs
    log_ids: list[str]

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.get(self.url + path, headers=kw.pop("headers", AUTH), **kw) as r:
            return r.status, await (r.json() if r.content_type == "application/json" else r.text())

    async def post(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.http.post(self.url + path, headers=kw.pop("headers", AUTH), **kw) as r:
            return r.status, await (r.json() if r.content_type == "application/json" else r.text())


async def _serve(store: Store, token: str | None) -> AsyncIterator[Admin]:
    # unsafe: the jar keeps cookies for IP hosts such as 127.0.0.1
    jar = aiohttp.CookieJar(unsafe=True)
    async with running_admin(store, token=token) as running, aiohttp.ClientSession(cookie_jar=jar) as http:
        yield Admin(running.url, http, store, running.status, running.jobs, running.log_ids)


@pytest.fixture
async def admin(store: Store) -> AsyncIterator[Admin]:
    async for a in _serve(store, TOKEN):
        yield a


@pytest.fixture
async def tokenless(store: Store) -> AsyncIterator[Admin]:
    async for a in _serve(store, None):
        yield a


class TestProbes:
    async def test_healthz_answers_without_a_token(self, admin: Admin) -> None:
        """/healthz is 200 while the process runs, with no auth."""
        assert await admin.get("/healthz", headers={}) == (200, {"status": "ok"})

    async def test_readyz_is_200_when_ready(self, admin: Admin) -> None:
        """/readyz is 200 when the supervisor says the service is ready."""
        assert await admin.get("/readyz", headers={}) == (200, {"ready": True})

    async def test_readyz_is_503_with_the_reason(self, admin: Admin) -> None:
        """/readyz names why the service is not ready."""
        admin.status.ready_reason = "MongoDB unreachable"
        assert await admin.get("/readyz", headers={}) == (
            503, {"ready": False, "reason": "MongoDB unreachable"})

    async def test_metrics_are_prometheus_text(self, admin: Admin) -> None:
        """/metrics renders the registry as Prometheus text format 0.0.4."""
        METRICS.reset()
        METRICS.set("sfsync_api_remaining_pct", 87.5)
        async with admin.http.get(admin.url + "/metrics", headers=AUTH) as r:
            body = await r.text()
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "# TYPE sfsync_api_remaining_pct gauge" in body
        assert "sfsync_api_remaining_pct 87.5" in body


class TestTokenAuth:
    @pytest.mark.parametrize("headers", [
        {}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"},
    ])
    async def test_api_without_the_token_is_401(self, admin: Admin, headers: dict[str, str]) -> None:
        """Every /api route refuses a missing or wrong bearer token with a JSON reason."""
        for path in ("/api/status", "/api/sync-logs"):
            status, body = await admin.get(path, headers=headers)
            assert status == 401
            assert body["error"] == "unauthorized" and body["reason"]
        assert (await admin.post("/api/retry-failed", headers=headers))[0] == 401
        assert admin.jobs.calls == []

    async def test_status_with_the_token(self, admin: Admin) -> None:
        """/api/status returns what the supervisor reports."""
        status, body = await admin.get("/api/status")
        assert status == 200
        assert body["mode"] == "streaming" and body["budget"]["max"] == 100_000

    async def test_no_token_configured_means_closed(self, tokenless: Admin) -> None:
        """Without SFSYNC_ADMIN__TOKEN the API and the page answer 503, never open."""
        status, body = await tokenless.get("/api/status", headers={"Authorization": "Bearer "})
        assert status == 503 and body["error"] == "admin token not configured"
        status, text = await tokenless.get("/logs", headers={})
        assert status == 503 and "not configured" in text
        assert (await tokenless.get("/healthz", headers={}))[0] == 200


class TestSyncLogList:
    async def test_newest_first_with_ids(self, admin: Admin) -> None:
        """Items come newest first, each with its string id."""
        status, body = await admin.get("/api/sync-logs")
        assert status == 200
        assert [i["id"] for i in body["items"]] == list(reversed(admin.log_ids))
        assert body["next_cursor"] is None

    @pytest.mark.parametrize(("query", "expected"), [
        ({"status": "failed"}, [5, 1]),
        ({"status": "SUCCESS"}, [4, 3, 2, 0]),
        ({"source": "local"}, [5, 1]),
        ({"type": "convert"}, [3]),
        ({"object": "account"}, [4]),
        ({"record": "00Q000000000001AAA"}, [1, 0]),
        ({"record": "665f00000000000000000005"}, [5]),
        ({"status": "failed", "object": "Lead", "source": "local"}, [5, 1]),
    ])
    async def test_filters(self, admin: Admin, query: dict[str, str], expected: list[int]) -> None:
        """Each filter narrows the list; a record filter matches a Salesforce or a local id."""
        status, body = await admin.get("/api/sync-logs", params=query)
        assert status == 200
        assert [i["id"] for i in body["items"]] == [admin.log_ids[n] for n in expected]

    async def test_open_failures_leave_out_retried_and_resolved_ones(self, admin: Admin) -> None:
        """`status=failed&open=1`: failed logs neither retried since nor resolved (what "Retry all
        failed" takes); `status=failed` alone still lists them all, as history."""
        failed = {"status": "failed"}
        assert [i["id"] for i in (await admin.get("/api/sync-logs", params={**failed, "open": "1"}))[1][
            "items"]] == [admin.log_ids[5], admin.log_ids[1]]
        await admin.store.mark_sync_log(admin.log_ids[1], retried_by=admin.log_ids[0])
        await admin.store.insert_sync_logs([SyncLog(
            source="local", type="create", status="success", object="Lead", sf_id="00Q000000000009AAA",
            local_id="665f00000000000000000005", collection="people")])
        status, body = await admin.get("/api/sync-logs", params={**failed, "open": "1"})
        assert status == 200 and body["items"] == []
        assert [i["id"] for i in (await admin.get("/api/sync-logs", params=failed))[1]["items"]] == [
            admin.log_ids[5], admin.log_ids[1]]

    @pytest.mark.parametrize(("query", "parameter"), [
        ({"status": "success", "open": "1"}, "open"),
        ({"status": "broken"}, "status"),
        ({"source": "both"}, "source"),
        ({"type": "teleport"}, "type"),
        ({"object": "Opportunity"}, "object"),
        ({"record": "a b"}, "record"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "<script>"}, "cursor"),
    ])
    async def test_bad_filter_is_400_naming_the_parameter(
        self, admin: Admin, query: dict[str, str], parameter: str
    ) -> None:
        """A value the API does not accept is a 400 that names the parameter."""
        status, body = await admin.get("/api/sync-logs", params=query)
        assert status == 400
        assert body["error"] == "bad_request" and body["parameter"] == parameter and body["reason"]

    async def test_limit_500_is_allowed(self, admin: Admin) -> None:
        """limit may go up to 500."""
        assert (await admin.get("/api/sync-logs", params={"limit": "500"}))[0] == 200


class TestPaging:
    async def test_cursor_walks_every_log_once(self, admin: Admin) -> None:
        """Following next_cursor visits each log exactly once, newest first."""
        seen: list[str] = []
        params = {"limit": "4"}
        while True:
            _, body = await admin.get("/api/sync-logs", params=params)
            seen += [i["id"] for i in body["items"]]
            if not body["next_cursor"]:
                break
            params = {"limit": "4", "cursor": body["next_cursor"]}
        assert seen == list(reversed(admin.log_ids))

    async def test_cursor_is_stable_under_concurrent_inserts(self, admin: Admin) -> None:
        """Logs inserted while paging (newer, and one in the same second) neither repeat nor hide old ones."""
        _, first = await admin.get("/api/sync-logs", params={"limit": "2"})
        # the first page ends at log 4; a log with that very ts but a newer _id sorts above it, so
        # it belongs to the pages already seen, as do the later ones
        cursor_ts = await logged_at(admin.store, admin.log_ids[4])
        await asyncio.gather(*(
            admin.store.insert_sync_logs([SyncLog(source="salesforce", type="update", status="success",
                                                  ts=cursor_ts + timedelta(seconds=s))])
            for s in (0, 1, 120)
        ))
        _, rest = await admin.get("/api/sync-logs", params={"limit": "50", "cursor": first["next_cursor"]})
        ids = [i["id"] for i in first["items"] + rest["items"]]
        assert ids == list(reversed(admin.log_ids))


class TestRetry:
    async def test_retry_one_failed_log(self, admin: Admin) -> None:
        """Retrying a failed log runs its job and the outcome shows as a new log."""
        failed = admin.log_ids[1]
        status, body = await admin.post(f"/api/sync-logs/{failed}/retry")
        assert status == 200
        assert body["retried"] == failed and body["status"] == "success"
        assert admin.jobs.calls == [("retry", failed)]
        _, newest = await admin.get("/api/sync-logs", params={"limit": "1"})
        assert newest["items"][0]["id"] == body["new_log_id"]
        assert (await admin.store.get_sync_log(failed) or {})["retried_by"] == body["new_log_id"]

    @pytest.mark.parametrize(("which", "code", "error"), [
        ("unknown", 404, "not_found"), ("garbage", 404, "not_found"), ("success", 409, "not_failed"),
    ])
    async def test_only_existing_failed_logs_retry(
        self, admin: Admin, which: str, code: int, error: str
    ) -> None:
        """Unknown ids are 404; a log that did not fail is 409; no job runs."""
        log_id = {"unknown": "0" * 24, "garbage": "not-an-id", "success": admin.log_ids[0]}[which]
        status, body = await admin.post(f"/api/sync-logs/{log_id}/retry")
        assert (status, body["error"]) == (code, error)
        assert admin.jobs.calls == []

    async def test_retry_all_failed(self, admin: Admin) -> None:
        """retry-failed re-runs every failed job."""
        status, body = await admin.post("/api/retry-failed")
        assert (status, body["retried"]) == (200, 2)
        _, failed = await admin.get("/api/sync-logs", params={"status": "failed"})
        assert all(i.get("retried_by") for i in failed["items"])

    @pytest.mark.parametrize(("error", "code", "name"), [
        (RetriableError("MongoDB unavailable"), 503, "unavailable"),
        (BudgetExhaustedError("REQUEST_LIMIT_EXCEEDED"), 503, "budget_exhausted"),
        (RecordRejectedError("INVALID_EMAIL_ADDRESS", "bad"), 422, "rejected"),
    ])
    async def test_job_errors_map_to_statuses(
        self, admin: Admin, error: Exception, code: int, name: str
    ) -> None:
        """A job that cannot run answers with a status that says what to do, and a reason."""
        admin.jobs.error = error  # type: ignore[assignment]
        status, body = await admin.post("/api/retry-failed")
        assert (status, body["error"]) == (code, name) and body["reason"]

    @pytest.mark.parametrize(("method", "path", "payload"), [
        ("post", "/api/retry-failed", None),
        ("post", "/api/import", {"sf_id": "00Q000000000001AAA"}),
    ])
    async def test_a_standby_answers_409_naming_the_leader(
        self, admin: Admin, method: str, path: str, payload: dict[str, Any] | None
    ) -> None:
        """Issue 11, item 5: jobs run on the lease holder only; a standby says which replica that is."""
        admin.jobs.error = NotLeaderError("host-1-abc")  # type: ignore[assignment]
        status, body = await admin.post(path, json=payload)
        assert (status, body["error"], body["leader"]) == (409, "not_leader", "host-1-abc")
        assert "host-1-abc" in body["reason"]


class TestImport:
    async def test_import_one_record(self, admin: Admin) -> None:
        """POST /api/import re-imports one Salesforce record."""
        status, body = await admin.post("/api/import", json={"sf_id": "00Q000000000009AAA"})
        assert (status, body["sf_id"], body["status"]) == (200, "00Q000000000009AAA", "success")
        assert admin.jobs.calls == [("import", "00Q000000000009AAA")]

    @pytest.mark.parametrize(("payload", "parameter"), [
        ({"json": {"sf_id": "nope"}}, "sf_id"),
        ({"json": {}}, "sf_id"),
        ({"json": ["00Q000000000009AAA"]}, "body"),
        ({"data": b"{not json", "headers": {**AUTH, "Content-Type": "application/json"}}, "body"),
    ])
    async def test_bad_body_is_400(self, admin: Admin, payload: dict[str, Any], parameter: str) -> None:
        """A body that is not {"sf_id": <Salesforce id>} is a 400 naming what is wrong."""
        status, body = await admin.post("/api/import", **payload)
        assert (status, body["parameter"]) == (400, parameter)
        assert admin.jobs.calls == []

    async def test_oversized_body_is_413(self, admin: Admin) -> None:
        """Bodies over 64 KiB are refused with a JSON error."""
        status, body = await admin.post("/api/import", json={"sf_id": "x" * 70_000})
        assert status == 413 and body["reason"]


class TestPageAccess:
    async def test_page_without_auth_shows_the_login_form(self, admin: Admin) -> None:
        """An unauthenticated browser gets a login form, not the logs."""
        status, text = await admin.get("/logs", headers={})
        assert status == 401 and 'action="/logs/login"' in text and "00Q0000" not in text

    async def test_login_sets_a_strict_httponly_cookie_that_is_not_the_token(self, admin: Admin) -> None:
        """Logging in sets a random session cookie (HttpOnly, SameSite=Strict), then the page shows."""
        async with admin.http.post(admin.url + "/logs/login", data={"token": TOKEN},
                                   headers={"Origin": admin.url}, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/logs"
            cookie = r.cookies[COOKIE_NAME]
        assert cookie.value and TOKEN not in cookie.value
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        status, text = await admin.get("/logs", headers={})
        assert status == 200 and "00Q000000000001AAA" in text

    async def test_wrong_token_is_refused(self, admin: Admin) -> None:
        """A wrong token shows the form again with an error and sets no cookie."""
        async with admin.http.post(admin.url + "/logs/login", data={"token": "nope"},
                                   headers={"Origin": admin.url}) as r:
            assert r.status == 401 and COOKIE_NAME not in r.cookies
            assert "not right" in await r.text()

    async def test_retried_and_resolved_rows_link_to_the_rows_they_name(self, admin: Admin) -> None:
        """A retried failure links to its outcome ("retried → failed at …"), a resolved one to the
        success that resolved it; both read from the store in one query for the page."""
        [outcome, fixed] = await admin.store.insert_sync_logs([
            SyncLog(source="local", type="update", status="failed", object="Lead",
                    sf_id="00Q000000000001AAA", local_id="665f00000000000000000001", collection="people",
                    attempt=2, error="X: again"),
            SyncLog(source="local", type="create", status="success", object="Lead",
                    sf_id="00Q000000000009AAA", local_id="665f00000000000000000005", collection="people")])
        await admin.store.mark_sync_log(admin.log_ids[1], retried_by=outcome)
        status, html = await admin.get("/logs", params={"status": "failed"})
        text = re.sub(r"<[^>]+>", "", html)
        assert status == 200 and "retried → failed at" in text and "resolved by create at" in text
        assert f'#log-{outcome}"' in html and f'#log-{fixed}"' in html

    async def test_page_accepts_the_bearer_header(self, admin: Admin) -> None:
        """The page also opens with the Authorization header."""
        status, text = await admin.get("/logs", params={"status": "failed"})
        assert status == 200 and "REQUIRED_FIELD_MISSING" in text and "CEO" not in text

    async def test_retry_form_redirects_back_with_a_notice(self, admin: Admin) -> None:
        """The Retry form runs the retry and redirects back to the same filters, the banner
        pointing at the outcome's row (issue 10 item 6)."""
        failed = admin.log_ids[5]
        async with admin.http.post(admin.url + f"/logs/retry/{failed}", headers=AUTH,
                                   data={"back": "status=failed&notice=x"}, allow_redirects=False) as r:
            assert r.status == 303
            outcome = (await admin.store.get_sync_log(failed) or {})["retried_by"]
            assert r.headers["Location"] == (
                f"/logs?status=failed&notice=retried&row={outcome}&row_record=665f00000000000000000005")
        assert admin.jobs.calls == [("retry", failed)]

    async def test_retry_form_needs_auth(self, admin: Admin) -> None:
        """Without a session the Retry form does nothing."""
        async with admin.http.post(admin.url + f"/logs/retry/{admin.log_ids[5]}", data={}) as r:
            assert r.status == 401
        assert admin.jobs.calls == []
