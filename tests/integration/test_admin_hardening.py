"""The admin surface under attack: login limiter, sessions, CSRF, metrics and probe hygiene."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from reconciler.store import Store
from service.admin.auth import COOKIE_NAME
from settings import AdminSettings
from tests.support.admin import TOKEN, RunningAdmin, running_admin

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin(store: Store) -> AsyncIterator[RunningAdmin]:
    async with running_admin(store) as running:
        yield running


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def _login(http: aiohttp.ClientSession, url: str, token: str = TOKEN, **headers: str) -> int:
    async with http.post(url + "/logs/login", data={"token": token}, allow_redirects=False,
                         headers={"Origin": url, **headers}) as r:
        return r.status


class TestLoginLimiter:
    async def test_wrong_logins_from_one_address_get_429_after_the_limit(self, admin: RunningAdmin) -> None:
        """100 wrong logins from one address: the first few are 401, the rest 429 with Retry-After,
        and once limited even the right token waits (the limiter does not tell which is right)."""
        statuses: list[int] = []
        retry_after: set[str] = set()
        async with _session() as http:
            for _ in range(100):
                async with http.post(admin.url + "/logs/login", data={"token": "wrong"},
                                     headers={"Origin": admin.url}) as r:
                    statuses.append(r.status)
                    if r.status == 429:
                        retry_after.add(r.headers["Retry-After"])
            assert await _login(http, admin.url) == 429
        first_429 = statuses.index(429)
        assert 1 <= first_429 <= 20 and set(statuses[:first_429]) == {401}
        assert set(statuses[first_429:]) == {429}
        assert all(v.isdigit() and int(v) >= 1 for v in retry_after)

    async def test_concurrent_wrong_logins_are_limited_too(self, admin: RunningAdmin) -> None:
        """A burst of 50 at once does not slip past the limiter before the first failure is counted."""
        import asyncio

        async with _session() as http:
            async def one() -> int:
                async with http.post(admin.url + "/logs/login", data={"token": "wrong"},
                                     headers={"Origin": admin.url}) as r:
                    return r.status

            statuses = await asyncio.gather(*(one() for _ in range(50)))
        assert statuses.count(401) <= 20 and statuses.count(429) >= 30

    async def test_addresses_are_limited_apart_behind_a_trusted_proxy(self, store: Store) -> None:
        """Behind a trusted proxy the client address is X-Forwarded-For: one client's lock-out is
        not another's."""
        settings = AdminSettings(trusted_proxies=["127.0.0.1"])
        async with running_admin(store, settings=settings) as running, _session() as http:
            for _ in range(30):
                async with http.post(running.url + "/logs/login", data={"token": "wrong"},
                                     headers={"Origin": running.url, "X-Forwarded-For": "203.0.113.9"}):
                    pass
            assert await _login(http, running.url, **{"X-Forwarded-For": "203.0.113.9"}) == 429
            assert await _login(http, running.url, **{"X-Forwarded-For": "198.51.100.7"}) == 303


class TestSessions:
    async def test_a_logged_out_cookie_is_refused(self, admin: RunningAdmin) -> None:
        """Logout revokes the session on the server: replaying the old cookie shows the login form."""
        async with _session() as http:
            async with http.post(admin.url + "/logs/login", data={"token": TOKEN}, allow_redirects=False,
                                 headers={"Origin": admin.url}) as r:
                assert r.status == 303
                cookie = r.cookies[COOKIE_NAME].value
            async with http.get(admin.url + "/logs") as r:
                assert r.status == 200
            async with http.post(admin.url + "/logs/logout", headers={"Origin": admin.url},
                                 allow_redirects=False) as r:
                assert r.status == 303
        async with aiohttp.ClientSession() as fresh, fresh.get(
                admin.url + "/logs", headers={"Cookie": f"{COOKIE_NAME}={cookie}"}) as r:
            assert r.status == 401

    async def test_sessions_differ_and_are_not_derived_from_the_token(self, admin: RunningAdmin) -> None:
        values = []
        for _ in range(2):
            async with _session() as http, http.post(
                    admin.url + "/logs/login", data={"token": TOKEN}, allow_redirects=False,
                    headers={"Origin": admin.url}) as r:
                values.append(r.cookies[COOKIE_NAME].value)
        assert values[0] != values[1]

    async def test_an_expired_session_is_refused(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        from service.admin import guard

        async with running_admin(store) as running, _session() as http:
            assert await _login(http, running.url) == 303
            now = guard.monotonic()
            monkeypatch.setattr(guard, "monotonic", lambda: now + guard.SESSION_SECONDS + 1)
            async with http.get(running.url + "/logs") as r:
                assert r.status == 401

    @pytest.mark.parametrize(("settings", "headers", "secure"), [
        (None, {}, False),
        (None, {"X-Forwarded-Proto": "https"}, False),  # nobody trusted: the header is ignored
        (AdminSettings(trusted_proxies=["127.0.0.0/8"]), {"X-Forwarded-Proto": "https"}, True),
        (AdminSettings(trusted_proxies=["10.0.0.1"]), {"X-Forwarded-Proto": "https"}, False),
    ])
    async def test_secure_cookie_when_a_trusted_proxy_says_tls(
        self, store: Store, settings: AdminSettings | None, headers: dict[str, str], secure: bool
    ) -> None:
        async with running_admin(store, settings=settings) as running, _session() as http, http.post(
                running.url + "/logs/login", data={"token": TOKEN}, allow_redirects=False,
                headers={"Origin": running.url, **headers}) as r:
            assert r.status == 303
            assert bool(r.cookies[COOKIE_NAME]["secure"]) is secure


class TestCrossOrigin:
    @pytest.mark.parametrize("headers", [
        {"Origin": "https://evil.example"},
        {"Referer": "https://evil.example/page"},
        {"Origin": "null"},
        {},  # a cookie-authenticated form without Origin or Referer
    ])
    async def test_cross_origin_form_post_is_refused(
        self, admin: RunningAdmin, headers: dict[str, str]
    ) -> None:
        failed = admin.log_ids[5]
        async with _session() as http:
            assert await _login(http, admin.url) == 303
            async with http.post(admin.url + f"/logs/retry/{failed}", data={}, headers=headers,
                                 allow_redirects=False) as r:
                assert r.status == 403
            async with http.post(admin.url + "/logs/retry-failed", data={}, headers=headers,
                                 allow_redirects=False) as r:
                assert r.status == 403
        assert admin.jobs.calls == []

    async def test_same_origin_form_post_runs(self, admin: RunningAdmin) -> None:
        failed = admin.log_ids[5]
        async with _session() as http:
            assert await _login(http, admin.url) == 303
            async with http.post(admin.url + f"/logs/retry/{failed}", data={},
                                 headers={"Referer": admin.url + "/logs?status=failed"},
                                 allow_redirects=False) as r:
                assert r.status == 303
        assert admin.jobs.calls == [("retry", failed)]

    async def test_cross_origin_login_is_refused(self, admin: RunningAdmin) -> None:
        async with _session() as http:
            assert await _login(http, admin.url, Origin="https://evil.example") == 403


class TestMetricsAndProbes:
    async def test_metrics_need_the_token_by_default(self, admin: RunningAdmin) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(admin.url + "/metrics") as r:
                assert r.status == 401
            async with http.get(admin.url + "/metrics", headers=AUTH) as r:
                assert r.status == 200

    async def test_metrics_public_when_configured(self, store: Store) -> None:
        settings = AdminSettings(metrics_public=True)
        async with running_admin(store, settings=settings) as running, aiohttp.ClientSession() as http, \
                http.get(running.url + "/metrics") as r:
            assert r.status == 200

    async def test_readyz_reason_carries_no_secret(self, admin: RunningAdmin) -> None:
        admin.status.ready_reason = ("mongodb unreachable: mongodb://sync:hunter2@db1/"
                                     "?tlsCertificateKeyFilePassword=kfp99")
        async with aiohttp.ClientSession() as http, http.get(admin.url + "/readyz") as r:
            body: dict[str, Any] = await r.json()
        assert r.status == 503 and "db1" in body["reason"]
        assert "hunter2" not in body["reason"] and "kfp99" not in body["reason"]

    @pytest.mark.parametrize("value", ["²", "٣", "1e3", "-1", "0x10"])
    async def test_bad_limit_is_400(self, admin: RunningAdmin, value: str) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(admin.url + "/api/sync-logs", params={"limit": value}, headers=AUTH) as r:
                assert r.status == 400
            async with http.get(admin.url + "/logs", params={"limit": value}, headers=AUTH) as r:
                assert r.status == 400
