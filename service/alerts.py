"""Alerts to a Slack-compatible webhook (`SFSYNC_ALERTS__WEBHOOK_URL`, `POST {"text": ...}`).

Three parts:

- `AlertRules` (pure, given the time): what the service's status says is worth a message --
  new open failures, grouped by error code into at most one message per
  `failures_interval_seconds`; every mode change; the sync not running (`/readyz` not ready)
  longer than `stream_down_seconds`, and its recovery; the API budget falling below its reserve.
  Only the replica that holds the sync lease alerts (a standby would repeat the leader).
- `WebhookSender`: a bounded queue (the oldest message is dropped when full, and counted in
  `sfsync_alerts_dropped_total`) drained by one task that POSTs each message, retrying network
  errors, 429 and 5xx with `reconciler.pacing.Backoff`. `submit` never waits, so the sync never
  waits for the webhook.
- `AlertWatch`: every few seconds, the rules over the service's status, into the sender.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import structlog

from listener.metrics import METRICS
from reconciler.pacing import Backoff, every
from settings import AlertSettings, Settings

log = structlog.get_logger(__name__)

WATCH_SECONDS = 5.0
TITLE = "Salesforce Sync"


class StatusProvider(Protocol):
    def status(self) -> dict[str, Any]: ...

    def ready(self) -> tuple[bool, str]: ...


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


@dataclass
class AlertRules:
    """Turns successive status observations into messages; holds only what it must remember."""

    failures_interval: float = 300.0
    down_after: float = 300.0
    reserve_pct: float = 10.0
    _baseline: dict[str, int] | None = None
    _pending: Counter[str] = field(default_factory=Counter)
    _last_failures_alert: float | None = None
    _mode: str | None = None
    _down_since: float | None = None
    _down_alerted: bool = False
    _below_reserve: bool = False

    def observe(self, status: Mapping[str, Any], ready: tuple[bool, str], now: float) -> list[str]:
        messages: list[str] = []
        counts = status.get("failures_by_code")
        new_failures = self._new_failures(counts) if isinstance(counts, Mapping) else Counter()
        if _is_standby(status):
            # The leader alerts; a standby keeps its baseline so a takeover does not re-announce.
            self._pending.clear()
            self._mode, self._down_since, self._down_alerted = None, None, False
            return messages
        self._pending.update(new_failures)
        messages += self._failures(now)
        messages += self._mode_change(str(status.get("mode") or ""))
        messages += self._down(ready, now)
        messages += self._budget(status.get("budget"))
        return messages

    def _new_failures(self, counts: Mapping[str, Any]) -> Counter[str]:
        current = {str(k): int(v) for k, v in counts.items()}
        baseline, self._baseline = self._baseline, current
        if baseline is None:  # the first look: what is open already is not new
            return Counter()
        return Counter({code: n - baseline.get(code, 0) for code, n in current.items()
                        if n > baseline.get(code, 0)})

    def _failures(self, now: float) -> list[str]:
        if not self._pending:
            return []
        if self._last_failures_alert is not None and now - self._last_failures_alert < self.failures_interval:
            return []  # held back; sent together once the interval has passed
        total = sum(self._pending.values())
        codes = ", ".join(f"{code} {n}" for code, n in self._pending.most_common())
        self._pending.clear()
        self._last_failures_alert = now
        return [f"{TITLE}: {total} new failed sync log{'s' if total != 1 else ''} ({codes}). "
                "See the Sync Logs page, filter by error code."]

    def _mode_change(self, mode: str) -> list[str]:
        previous, self._mode = self._mode, mode or self._mode
        if not mode or previous is None or previous == mode or "starting" in (previous, mode):
            return []
        return [f"{TITLE}: mode changed {previous} → {mode}."]

    def _down(self, ready: tuple[bool, str], now: float) -> list[str]:
        up, reason = ready
        if up:
            was_alerted, since = self._down_alerted, self._down_since
            self._down_since, self._down_alerted = None, False
            if was_alerted and since is not None:
                return [f"{TITLE}: the sync is running again after {_minutes(now - since)}."]
            return []
        if self._down_since is None:
            self._down_since = now
        if not self._down_alerted and now - self._down_since >= self.down_after:
            self._down_alerted = True
            return [f"{TITLE}: the sync has not been running for {_minutes(now - self._down_since)}: "
                    f"{reason or 'not ready'}."]
        return []

    def _budget(self, budget: Any) -> list[str]:
        pct = budget.get("remaining_pct") if isinstance(budget, Mapping) else None
        if not isinstance(pct, int | float):
            return []
        below = pct < self.reserve_pct
        crossed, self._below_reserve = below and not self._below_reserve, below
        if not crossed:
            return []
        return [f"{TITLE}: the daily API budget is below its reserve ({pct:.1f}% left, reserve "
                f"{self.reserve_pct:g}%): writes wait in the outbox until the allocation resets."]


def _is_standby(status: Mapping[str, Any]) -> bool:
    lease = status.get("lease")
    return isinstance(lease, Mapping) and lease.get("held") is False and bool(lease.get("holder"))


class WebhookSender:
    """Sends queued messages one by one; `submit` never blocks (drop-oldest when full)."""

    def __init__(self, url: str, *, queue_size: int = 100, max_attempts: int = 5,
                 backoff: Callable[[], Backoff] | None = None, timeout: float = 10.0) -> None:
        self._url = url
        self._queue: deque[str] = deque(maxlen=queue_size)
        self._ready = asyncio.Event()
        self._max_attempts = max_attempts
        self._backoff = backoff or (lambda: Backoff(base=1.0, cap=30.0, floor=0.5))
        self._timeout = timeout
        self.sent = 0
        self.dropped = 0

    def submit(self, text: str) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            METRICS.inc("sfsync_alerts_dropped_total", reason="queue_full")
        self._queue.append(text)
        self._ready.set()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not stop.is_set():
                if not self._queue:
                    self._ready.clear()
                    stopped = asyncio.ensure_future(stop.wait())
                    ready = asyncio.ensure_future(self._ready.wait())
                    await asyncio.wait({stopped, ready}, return_when=asyncio.FIRST_COMPLETED)
                    for waiter in (stopped, ready):
                        waiter.cancel()
                    continue
                await self._deliver(http, self._queue.popleft(), stop)

    async def _deliver(self, http: aiohttp.ClientSession, text: str, stop: asyncio.Event) -> None:
        backoff = self._backoff()
        for attempt in range(1, self._max_attempts + 1):
            outcome = await self._post(http, text)
            if outcome == "sent":
                self.sent += 1
                METRICS.inc("sfsync_alerts_sent_total")
                return
            if outcome == "refused" or attempt == self._max_attempts or await backoff.wait(stop):
                break
        self.dropped += 1
        METRICS.inc("sfsync_alerts_dropped_total", reason="undeliverable")
        log.warning("alert_not_delivered", attempts=attempt)

    async def _post(self, http: aiohttp.ClientSession, text: str) -> str:
        """`sent`, `retry` (network, 429, 5xx) or `refused` (another 4xx: retrying will not help)."""
        try:
            async with http.post(self._url, json={"text": text}) as response:
                if response.status < 300:
                    return "sent"
                log.warning("alert_webhook_answered", status=response.status)
                return "retry" if response.status == 429 or response.status >= 500 else "refused"
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("alert_webhook_unreachable", error=type(exc).__name__)
            return "retry"


class AlertWatch:
    """Every `interval` seconds: the rules over `provider`'s status, the messages to the sender."""

    def __init__(self, provider: StatusProvider, rules: AlertRules, sender: WebhookSender, *,
                 interval: float = WATCH_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._provider, self.rules, self.sender = provider, rules, sender
        self._interval, self._clock = interval, clock

    def observe_once(self) -> None:
        for message in self.rules.observe(self._provider.status(), self._provider.ready(), self._clock()):
            self.sender.submit(message)

    async def run(self, stop: asyncio.Event) -> None:
        sending = asyncio.create_task(self.sender.run(stop), name="alert-sender")
        try:
            async for _ in every(self._interval, stop):
                try:
                    self.observe_once()
                except Exception:  # an alert must never take the service down
                    log.exception("alert_watch_failed")
        finally:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)


def alert_watch(settings: Settings, provider: StatusProvider) -> AlertWatch | None:
    """The watch for the configured webhook, or None when alerts are off."""
    alerts: AlertSettings = settings.alerts
    if alerts.webhook_url is None:
        return None
    rules = AlertRules(failures_interval=alerts.failures_interval_seconds,
                       down_after=alerts.stream_down_seconds, reserve_pct=settings.budget.reserve_pct)
    sender = WebhookSender(alerts.webhook_url.get_secret_value(), queue_size=alerts.queue_size,
                           max_attempts=alerts.max_attempts)
    return AlertWatch(provider, rules, sender)


__all__ = ["AlertRules", "AlertWatch", "WebhookSender", "alert_watch"]
