"""The API-budget governor: decides whether the service streams, polls or pauses.

`decide_mode` is a pure function of (previous mode, usage, CDC allocation spent, settings):

    remaining% < RESERVE                      -> paused     (no optional REST call)
    CDC delivery allocation spent             -> polling
    remaining% < POLL_BELOW                   -> polling
    remaining% > STREAM_ABOVE                 -> streaming
    in between (hysteresis)                   -> keep streaming/polling; paused -> polling;
                                                 starting -> streaming

`BudgetGovernor` holds the state: it is fed by every REST response's `Sforce-Limit-Info`
(`record_usage`, wired as the client's `on_usage`) and by periodic `limits()` checks, logs and
exports every mode change, and lets the supervisor wait for the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any

import structlog

from listener.metrics import METRICS
from listener.salesforce.usage import ApiUsage
from reconciler.errors import BudgetExhaustedError, RetriableError
from reconciler.pacing import every
from settings import BudgetSettings

log = structlog.get_logger(__name__)


class Mode(StrEnum):
    STARTING = "starting"
    STREAMING = "streaming"
    POLLING = "polling"
    PAUSED = "paused"


def decide_mode(
    previous: Mode, usage: ApiUsage | None, events_exhausted: bool, settings: BudgetSettings
) -> tuple[Mode, str]:
    """The mode to be in now, and why (the reason goes into the `mode_changed` log)."""
    if usage is None:
        if events_exhausted and previous in (Mode.STARTING, Mode.STREAMING):
            return Mode.POLLING, "events_exhausted"
        return previous, "no_usage_yet"
    remaining = usage.remaining_pct
    if remaining < settings.reserve_pct:
        return Mode.PAUSED, "below_reserve"
    if events_exhausted:
        return Mode.POLLING, "events_exhausted"
    if remaining < settings.poll_below_pct:
        return Mode.POLLING, "budget_low"
    if remaining > settings.stream_above_pct:
        return Mode.STREAMING, "budget_ok"
    if previous in (Mode.STREAMING, Mode.POLLING):
        return previous, "hysteresis"
    if previous is Mode.PAUSED:
        return Mode.POLLING, "above_reserve"
    return Mode.STREAMING, "budget_ok"


def events_remaining(limits: dict[str, Any]) -> int | None:
    """`DailyDeliveredPlatformEvents.Remaining` from a `limits` response, when present."""
    entry = limits.get("DailyDeliveredPlatformEvents")
    if isinstance(entry, dict) and isinstance(entry.get("Remaining"), int):
        return int(entry["Remaining"])
    return None


def api_usage(limits: dict[str, Any]) -> ApiUsage | None:
    """`DailyApiRequests` {Max, Remaining} -> `ApiUsage`."""
    entry = limits.get("DailyApiRequests")
    if not isinstance(entry, dict):
        return None
    maximum, remaining = entry.get("Max"), entry.get("Remaining")
    if not isinstance(maximum, int) or not isinstance(remaining, int):
        return None
    return ApiUsage(used=max(maximum - remaining, 0), max=maximum)


class BudgetGovernor:
    """Implements `reconciler.ports.Budget`; the one place that knows the current mode."""

    def __init__(self, settings: BudgetSettings, *, check_interval: float = 60.0) -> None:
        self._settings = settings
        self.check_interval = check_interval
        self._mode = Mode.STARTING
        self._usage: ApiUsage | None = None
        self._events_exhausted = False
        self._changed = asyncio.Event()
        METRICS.set("sfsync_mode", 1, mode=Mode.STARTING.value)

    # -- Budget protocol ---------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode.value

    @property
    def current(self) -> Mode:
        return self._mode

    def allows_optional_calls(self) -> bool:
        return self._mode is not Mode.PAUSED

    # -- inputs ------------------------------------------------------------------------------

    def record_usage(self, usage: ApiUsage) -> None:
        """`on_usage` callback of the REST client: called with every response's usage."""
        self._usage = usage
        METRICS.set("sfsync_api_used", usage.used)
        METRICS.set("sfsync_api_max", usage.max)
        METRICS.set("sfsync_api_remaining_pct", round(usage.remaining_pct, 2))
        self._reevaluate()

    def record_limits(self, limits: dict[str, Any]) -> None:
        """A `limits()` response: API usage and the CDC delivery allocation."""
        remaining = events_remaining(limits)
        if remaining is not None:
            self._events_exhausted = remaining <= 0
        usage = api_usage(limits)
        if usage is not None:
            self.record_usage(usage)
        else:
            self._reevaluate()

    def events_exhausted(self) -> None:
        """The stream was refused with `403::Organization total events daily limit exceeded`."""
        self._events_exhausted = True
        self._reevaluate()

    # -- outputs -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        usage = self._usage
        return {
            "mode": self._mode.value,
            "used": usage.used if usage else None,
            "max": usage.max if usage else None,
            "remaining_pct": round(usage.remaining_pct, 2) if usage else None,
            "events_exhausted": self._events_exhausted,
        }

    async def wait_for_change(self, seen: Mode) -> Mode:
        """Return as soon as the mode differs from `seen` (immediately if it already does)."""
        while self._mode is seen:
            await self._changed.wait()
        return self._mode

    async def run(self, stop: asyncio.Event, limits: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        """Check `limits()` once per interval (also while paused: the only call made then)."""
        async for _ in every(self.check_interval, stop):
            await self.check(limits)

    async def check(self, limits: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        try:
            self.record_limits(await limits())
        except (RetriableError, BudgetExhaustedError) as exc:
            log.warning("limits_check_failed", error=str(exc))
            if isinstance(exc, BudgetExhaustedError) and self._usage is not None:
                self.record_usage(ApiUsage(used=self._usage.max, max=self._usage.max))

    # -- internals ---------------------------------------------------------------------------

    def _reevaluate(self) -> None:
        new, reason = decide_mode(self._mode, self._usage, self._events_exhausted, self._settings)
        if new is self._mode:
            return
        old, self._mode = self._mode, new
        log.info("mode_changed", **{"from": old.value}, to=new.value, reason=reason,
                 remaining_pct=self.status()["remaining_pct"])
        for mode in Mode:
            METRICS.set("sfsync_mode", 1 if mode is new else 0, mode=mode.value)
        # Wake every waiter, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()
