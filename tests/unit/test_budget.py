"""The API-budget governor: the mode decision table and the governor's reporting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from listener.budget import BudgetGovernor, Mode, decide_mode
from listener.metrics import METRICS
from listener.salesforce.usage import ApiUsage
from reconciler.errors import BudgetExhaustedError, RetriableError
from settings import BudgetSettings

SETTINGS = BudgetSettings(poll_below_pct=25, stream_above_pct=35, reserve_pct=10)


def usage(remaining_pct: float) -> ApiUsage:
    return ApiUsage(used=int(1000 - remaining_pct * 10), max=1000)


class TestDecideMode:
    @pytest.mark.parametrize(
        ("previous", "remaining", "events_exhausted", "expected"),
        [
            (Mode.STARTING, 90, False, Mode.STREAMING),
            (Mode.STARTING, 30, False, Mode.STREAMING),
            (Mode.STARTING, 20, False, Mode.POLLING),
            (Mode.STARTING, 5, False, Mode.PAUSED),
            (Mode.STREAMING, 40, False, Mode.STREAMING),
            (Mode.STREAMING, 30, False, Mode.STREAMING),   # hysteresis band keeps streaming
            (Mode.STREAMING, 24, False, Mode.POLLING),
            (Mode.POLLING, 30, False, Mode.POLLING),       # hysteresis band keeps polling
            (Mode.POLLING, 35, False, Mode.POLLING),       # must rise *above* 35
            (Mode.POLLING, 36, False, Mode.STREAMING),
            (Mode.POLLING, 9.9, False, Mode.PAUSED),
            (Mode.PAUSED, 10, False, Mode.POLLING),
            (Mode.PAUSED, 30, False, Mode.POLLING),
            (Mode.PAUSED, 50, False, Mode.STREAMING),
            (Mode.STREAMING, 90, True, Mode.POLLING),      # CDC allocation spent
            (Mode.POLLING, 90, True, Mode.POLLING),
            (Mode.STREAMING, 5, True, Mode.PAUSED),        # the reserve wins over everything
        ],
    )
    def test_table(self, previous: Mode, remaining: float, events_exhausted: bool, expected: Mode) -> None:
        """The mode follows remaining%, with hysteresis between POLL_BELOW and STREAM_ABOVE."""
        mode, _ = decide_mode(previous, usage(remaining), events_exhausted, SETTINGS)
        assert mode is expected

    def test_no_usage_keeps_the_mode(self) -> None:
        """Without any usage figure the mode stays as it is."""
        assert decide_mode(Mode.STARTING, None, False, SETTINGS) == (Mode.STARTING, "no_usage_yet")

    def test_no_usage_but_events_spent(self) -> None:
        """A spent CDC allocation switches to polling even before usage is known."""
        assert decide_mode(Mode.STREAMING, None, True, SETTINGS)[0] is Mode.POLLING


class TestGovernor:
    def test_usage_changes_mode_logs_and_exports(self) -> None:
        """A mode change is a log event (from/to/reason), a metric and visible in status()."""
        METRICS.reset()
        governor = BudgetGovernor(SETTINGS)
        with capture_logs() as logs:
            governor.record_usage(usage(80))
            governor.record_usage(usage(20))
        changes = [e for e in logs if e["event"] == "mode_changed"]
        assert [(e["from"], e["to"], e["reason"]) for e in changes] == [
            ("starting", "streaming", "budget_ok"), ("streaming", "polling", "budget_low")]
        assert METRICS.get("sfsync_mode", mode="polling") == 1
        assert METRICS.get("sfsync_mode", mode="streaming") == 0
        assert governor.status() == {"mode": "polling", "used": 800, "max": 1000, "remaining_pct": 20.0,
                                     "events_exhausted": False}

    def test_below_reserve_disallows_optional_calls(self) -> None:
        """Below the reserve the governor is paused and refuses optional calls."""
        governor = BudgetGovernor(SETTINGS)
        governor.record_usage(usage(50))
        assert governor.allows_optional_calls()
        governor.record_usage(usage(5))
        assert governor.mode == "paused"
        assert not governor.allows_optional_calls()

    def test_limits_response_feeds_usage_and_events(self) -> None:
        """`limits()` gives DailyApiRequests and DailyDeliveredPlatformEvents."""
        governor = BudgetGovernor(SETTINGS)
        governor.record_limits({"DailyApiRequests": {"Max": 1000, "Remaining": 900},
                                "DailyDeliveredPlatformEvents": {"Max": 10, "Remaining": 0}})
        assert governor.current is Mode.POLLING
        governor.record_limits({"DailyApiRequests": {"Max": 1000, "Remaining": 900},
                                "DailyDeliveredPlatformEvents": {"Max": 10, "Remaining": 10}})
        assert governor.mode == "streaming"

    def test_stream_refusal_switches_to_polling(self) -> None:
        """The stream's 403 daily-limit error switches to polling."""
        governor = BudgetGovernor(SETTINGS)
        governor.record_usage(usage(90))
        governor.events_exhausted()
        assert governor.current is Mode.POLLING

    async def test_waiters_wake_on_change(self) -> None:
        """wait_for_change returns the new mode once it differs from the one seen."""
        governor = BudgetGovernor(SETTINGS)
        waiter = asyncio.create_task(governor.wait_for_change(Mode.STARTING))
        await asyncio.sleep(0)
        assert not waiter.done()
        governor.record_usage(usage(90))
        assert await asyncio.wait_for(waiter, 1) is Mode.STREAMING

    async def test_periodic_check_survives_failures(self) -> None:
        """A failing limits() check is logged; the governor keeps its last mode."""
        governor = BudgetGovernor(SETTINGS)
        governor.record_usage(usage(90))

        async def failing() -> dict[str, Any]:
            raise RetriableError("down")

        with capture_logs() as logs:
            await governor.check(failing)
        assert governor.current is Mode.STREAMING
        assert any(e["event"] == "limits_check_failed" for e in logs)


class TestLimitsCheckRefused:
    """`REQUEST_LIMIT_EXCEEDED` from the `limits` call itself: the allocation is spent, so the
    governor pauses whatever the last usage figure said (it may be hours old)."""

    @pytest.mark.parametrize(
        ("last_remaining", "before"),
        [(90, Mode.STREAMING), (30, Mode.STREAMING), (20, Mode.POLLING), (5, Mode.PAUSED)],
    )
    async def test_request_limit_exceeded_forces_paused(self, last_remaining: float, before: Mode) -> None:
        """Whatever mode the last usage put it in, a refused `limits` check leaves it paused,
        refusing optional calls, with the refusal logged."""
        governor = BudgetGovernor(SETTINGS)
        governor.record_usage(usage(last_remaining))
        assert governor.current is before

        async def refused() -> dict[str, Any]:
            raise BudgetExhaustedError("403 REQUEST_LIMIT_EXCEEDED: TotalRequests Limit exceeded.")

        with capture_logs() as logs:
            await governor.check(refused)
        assert governor.current is Mode.PAUSED
        assert not governor.allows_optional_calls()
        assert governor.status()["remaining_pct"] == 0
        assert any(e["event"] == "limits_check_failed" for e in logs)

    async def test_the_next_good_check_resumes(self) -> None:
        """Paused by a refused check, the governor leaves `paused` on the next `limits` answer
        that shows budget again (the reset of the daily allocation)."""
        governor = BudgetGovernor(SETTINGS)
        governor.record_usage(usage(90))
        answers: list[dict[str, Any] | Exception] = [
            BudgetExhaustedError("REQUEST_LIMIT_EXCEEDED"),
            {"DailyApiRequests": {"Max": 1000, "Remaining": 1000}},
        ]

        async def limits() -> dict[str, Any]:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        await governor.check(limits)
        assert governor.current is Mode.PAUSED
        await governor.check(limits)
        assert governor.mode == Mode.STREAMING.value
