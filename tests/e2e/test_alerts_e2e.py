"""Alerts, the whole service: the real process with `SFSYNC_ALERTS__WEBHOOK_URL` pointing at a
local aiohttp receiver (Slack-compatible: `POST {"text": ...}`).

- The org's daily API allocation swung into the polling band (below POLL_BELOW_PCT, above the
  reserve): one "mode changed streaming → polling" message, and one more when it swings back.
- Two platform edits Salesforce rejects (INVALID_EMAIL_ADDRESS) at the same moment: one failure
  message naming the error code; a second is held back for FAILURES_INTERVAL_SECONDS (the default,
  5 minutes, longer than this test), so the burst never becomes a message per failure.

`SFSYNC_BUDGET__CHECK_SECONDS` is half a second so the governor sees the swing at once; the
alert watch looks every 5 s and the status refresh (failures by code) every 5 s, hence the
waits of tens of seconds below.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from pymongo.database import Database

from service.alerts import WATCH_SECONDS
from tests.support.mappings import sample_mappings
from tests.support.service import (
    Doc,
    SalesforceOrg,
    ServiceFactory,
    ServiceProcess,
    linked_lead,
    logs_of,
    platform_edit,
    running_pipeline,
    stays,
    wait_for,
)

ALERT_WAIT = 40.0  # status refresh (5 s) + alert watch (5 s) + the webhook POST, with room
HOOK_PATH = "/services/T000/B000/e2e-secret-part"


class Receiver:
    """An aiohttp webhook on its own thread and event loop; `texts` in the order received."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.url = ""
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),),
                                        name="alert-receiver", daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self._started.wait(10), "the receiver did not start"

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        self._loop.close()

    def received(self) -> list[str]:
        with self._lock:
            return list(self.texts)

    async def _serve(self) -> None:
        self._stop = asyncio.Event()

        async def hook(request: web.Request) -> web.Response:
            body: Any = await request.json()
            assert isinstance(body, dict) and set(body) == {"text"}, body
            with self._lock:
                self.texts.append(str(body["text"]))
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post(HOOK_PATH, hook)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}{HOOK_PATH}"
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def service(service_factory: ServiceFactory, org: SalesforceOrg, db: Database[Doc],
            receiver: Receiver) -> Iterator[ServiceProcess]:
    with running_pipeline(service_factory(sample_mappings()), org, db,
                          SFSYNC_ALERTS__WEBHOOK_URL=receiver.url,
                          SFSYNC_BUDGET__CHECK_SECONDS="0.5") as running:
        yield running


def mode_messages(receiver: Receiver) -> list[str]:
    return [t for t in receiver.received() if "mode changed" in t]


def failure_messages(receiver: Receiver) -> list[str]:
    return [t for t in receiver.received() if "failed sync log" in t]


class TestModeChangeAlert:
    def test_a_budget_swing_to_polling_is_one_message(self, service: ServiceProcess, org: SalesforceOrg,
                                                      receiver: Receiver) -> None:
        """20% of the allocation left (< POLL_BELOW 25%, > RESERVE 10%): exactly one message,
        streaming → polling; the allocation back: one more, polling → streaming."""
        assert mode_messages(receiver) == [], "starting → streaming is no message"
        # The watch compares successive looks: let it see `streaming` once, or a swing within its
        # first WATCH_SECONDS would read as starting → polling (which is no message either).
        wait_for(lambda: service.api("GET", "/api/status").body.get("mode") == "streaming" or None,
                 timeout=ALERT_WAIT, what="mode streaming")
        time.sleep(WATCH_SECONDS + 1)
        allocation = org.control("POST", "budget", {}).body
        org.control("POST", "budget", {"used": int(allocation["max"] * 0.80)})
        (message,) = wait_for(lambda: mode_messages(receiver) or None, timeout=ALERT_WAIT,
                              what="a mode-change alert")
        assert "streaming → polling" in message, message
        stays(lambda: len(mode_messages(receiver)), duration=12.0)  # two more watch ticks: no repeat
        assert mode_messages(receiver) == [message]

        org.control("POST", "budget", {"used": 0})
        wait_for(lambda: len(mode_messages(receiver)) == 2 or None, timeout=ALERT_WAIT,
                 what="the alert for the swing back")
        assert "polling → streaming" in mode_messages(receiver)[1]


class TestFailureAlert:
    def test_rejected_writes_are_one_grouped_message(self, service: ServiceProcess, org: SalesforceOrg,
                                                     db: Database[Doc], receiver: Receiver) -> None:
        """Two writes Salesforce rejects: both are failed sync logs, and the webhook gets one
        message naming INVALID_EMAIL_ADDRESS, not one per failure."""
        assert failure_messages(receiver) == []
        leads = [linked_lead(org, db, "alert") for _ in range(2)]
        for _, person in leads:
            platform_edit(db, person, email="not-an-email")

        def failed() -> list[Any] | None:
            found = [log for lead_id, _ in leads
                     for log in logs_of(service.sync_logs(status="failed", record=lead_id), source="local")]
            return found if len(found) == len(leads) else None

        wait_for(failed, timeout=ALERT_WAIT, what="a failed sync log for each rejected write")
        (message,) = wait_for(lambda: failure_messages(receiver) or None, timeout=ALERT_WAIT,
                              what="a failure alert")
        assert "INVALID_EMAIL_ADDRESS" in message, message
        stays(lambda: len(failure_messages(receiver)), duration=12.0)  # two more watch ticks
        assert failure_messages(receiver) == [message]
