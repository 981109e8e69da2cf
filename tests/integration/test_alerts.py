"""Alerts to a Slack-compatible webhook, received by a local aiohttp server: a burst of failures
is one grouped message, each mode change one message, delivery retried, the queue bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from reconciler.pacing import Backoff
from reconciler.store import Store
from reconciler.sync_logs import SyncLog
from service.alerts import AlertRules, AlertWatch, WebhookSender, alert_watch
from service.config_report import render_config
from settings import Settings
from settings.redaction import settings_secrets


@dataclass
class Receiver:
    url: str
    texts: list[str] = field(default_factory=list)
    fail_first: int = 0  # answer 500 to this many posts first
    posts: int = 0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver("")

    async def hook(request: web.Request) -> web.Response:
        got.posts += 1
        if got.posts <= got.fail_first:
            return web.Response(status=500)
        body = await request.json()
        assert set(body) == {"text"}
        got.texts.append(body["text"])
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/services/T000/B000/secretpart", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    got.url = f"http://127.0.0.1:{runner.addresses[0][1]}/services/T000/B000/secretpart"
    yield got
    await runner.cleanup()


@dataclass
class FakeService:
    """What the admin slot reports: the status document and readiness."""

    store: Store
    mode: str = "streaming"
    counts: dict[str, int] = field(default_factory=dict)
    ready_reason: str = ""

    def status(self) -> dict[str, Any]:
        return {"mode": self.mode, "failures_by_code": self.counts,
                "budget": {"used": 1, "max": 100, "remaining_pct": 99.0},
                "lease": {"owner": "me", "held": True, "holder": "me"}}

    def ready(self) -> tuple[bool, str]:
        return not self.ready_reason, self.ready_reason

    async def refresh(self) -> None:  # what the status refresh does every few seconds
        self.counts = await self.store.open_failures_by_code()


def fast_backoff() -> Backoff:
    return Backoff(base=0.01, cap=0.02)


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def failures(n: int) -> list[SyncLog]:
    codes = ["REQUIRED_FIELD_MISSING"] * (n - 10) + ["INVALID_EMAIL_ADDRESS"] * 10
    return [SyncLog(source="local", type="update", status="failed", object="Lead",
                    error=f"{code}: something about record {i}", job={"kind": "outbound"})
            for i, code in enumerate(codes)]


class TestWebhook:
    async def test_burst_is_one_grouped_message_and_each_mode_change_one(
            self, store: Store, receiver: Receiver) -> None:
        service = FakeService(store)
        sender = WebhookSender(receiver.url, backoff=fast_backoff)
        watch = AlertWatch(service, AlertRules(failures_interval=300), sender, interval=0.02)
        stop = asyncio.Event()
        task = asyncio.create_task(watch.run(stop))
        try:
            await asyncio.sleep(0.1)                      # baseline: nothing open
            await store.insert_sync_logs(failures(50))
            await service.refresh()
            await until(lambda: len(receiver.texts) >= 1)
            await store.insert_sync_logs(failures(12))  # within the interval: held back
            await service.refresh()
            service.mode = "polling"
            await until(lambda: len(receiver.texts) >= 2)
            service.mode = "streaming"
            await until(lambda: len(receiver.texts) >= 3)
            await asyncio.sleep(0.2)
        finally:
            stop.set()
            await task
        assert receiver.texts == [
            "Salesforce Sync: 50 new failed sync logs (REQUIRED_FIELD_MISSING 40, INVALID_EMAIL_ADDRESS 10). "
            "See the Sync Logs page, filter by error code.",
            "Salesforce Sync: mode changed streaming → polling.",
            "Salesforce Sync: mode changed polling → streaming.",
        ]

    async def test_retried_until_delivered(self, receiver: Receiver) -> None:
        receiver.fail_first = 2
        sender = WebhookSender(receiver.url, backoff=fast_backoff, max_attempts=5)
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        sender.submit("hello")
        await until(lambda: receiver.texts == ["hello"])
        stop.set()
        await task
        assert (receiver.posts, sender.sent, sender.dropped) == (3, 1, 0)

    async def test_queue_is_bounded_drop_oldest(self) -> None:
        """Nothing sends (the webhook is slow or down): submit never waits; the oldest go."""
        sender = WebhookSender("http://127.0.0.1:9/none", queue_size=3)
        for i in range(5):
            sender.submit(f"m{i}")
        assert (sender.waiting, sender.dropped) == (3, 2)
        assert list(sender._queue) == ["m2", "m3", "m4"]


class TestRules:
    def test_failures_at_most_one_message_per_interval(self) -> None:
        rules = AlertRules(failures_interval=300)
        ok = (True, "")
        assert rules.observe({"failures_by_code": {"A": 5}}, ok, 0) == []       # baseline
        assert len(rules.observe({"failures_by_code": {"A": 7}}, ok, 10)) == 1
        assert rules.observe({"failures_by_code": {"A": 9, "B": 1}}, ok, 20) == []   # held
        [later] = rules.observe({"failures_by_code": {"A": 9, "B": 1}}, ok, 311)
        assert "3 new failed sync logs (A 2, B 1)" in later

    def test_down_longer_than_threshold_then_recovered(self) -> None:
        rules = AlertRules(down_after=300)
        assert rules.observe({}, (False, "salesforce unreachable"), 0) == []
        assert rules.observe({}, (False, "salesforce unreachable"), 299) == []
        assert rules.observe({}, (False, "salesforce unreachable"), 300) == [
            "Salesforce Sync: the sync has not been running for 5 min: salesforce unreachable."]
        assert rules.observe({}, (False, "salesforce unreachable"), 900) == []
        assert rules.observe({}, (True, ""), 960) == [
            "Salesforce Sync: the sync is running again after 16 min."]

    def test_budget_below_reserve_once_per_crossing(self) -> None:
        rules = AlertRules(reserve_pct=10)
        ok = (True, "")
        assert rules.observe({"budget": {"remaining_pct": 12.0}}, ok, 0) == []
        assert len(rules.observe({"budget": {"remaining_pct": 9.5}}, ok, 1)) == 1
        assert rules.observe({"budget": {"remaining_pct": 8.0}}, ok, 2) == []
        assert rules.observe({"budget": {"remaining_pct": 11.0}}, ok, 3) == []
        assert len(rules.observe({"budget": {"remaining_pct": 9.0}}, ok, 4)) == 1

    def test_standby_stays_quiet(self) -> None:
        rules = AlertRules()
        standby = {"lease": {"held": False, "holder": "other"}, "mode": "polling",
                   "budget": {"remaining_pct": 1.0}}
        assert rules.observe({**standby, "failures_by_code": {}}, (True, ""), 0) == []
        assert rules.observe({**standby, "failures_by_code": {"A": 3}}, (True, ""), 1) == []


class TestSettings:
    URL = "https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX"

    def test_off_unless_configured(self) -> None:
        assert alert_watch(Settings(), FakeService(None)) is None  # type: ignore[arg-type]

    def test_webhook_url_is_a_secret(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SFSYNC_ALERTS__WEBHOOK_URL", self.URL)
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert self.URL in settings_secrets(settings)
        report = render_config(settings, None)
        assert "SFSYNC_ALERTS__WEBHOOK_URL=***" in report and "XXXXsecretXXXX" not in report
        assert alert_watch(settings, FakeService(None)) is not None  # type: ignore[arg-type]
