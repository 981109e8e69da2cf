"""The org's daily allocations: API requests (every REST call) and delivered CDC events."""

from __future__ import annotations

from typing import Any


class OrgLimits:
    def __init__(self, *, api_max: int, events_max: int) -> None:
        self.api_max = api_max
        self.api_used = 0
        self.events_max = events_max
        self.events_used = 0

    def count_api_request(self) -> bool:
        """Count one REST call; False (and not counted) once the daily allocation is spent."""
        if self.api_used >= self.api_max:
            return False
        self.api_used += 1
        return True

    def count_delivered_events(self, n: int) -> bool:
        """Count `n` delivered CDC events; False once DailyDeliveredPlatformEvents is exhausted."""
        if self.events_used >= self.events_max:
            return False
        self.events_used += n
        return True

    def usage_header(self) -> str:
        return f"api-usage={self.api_used}/{self.api_max}"

    def set(
        self,
        *,
        used: int | None = None,
        max_: int | None = None,
        events_used: int | None = None,
        events_max: int | None = None,
    ) -> None:
        if used is not None:
            self.api_used = used
        if max_ is not None:
            self.api_max = max_
        if events_used is not None:
            self.events_used = events_used
        if events_max is not None:
            self.events_max = events_max

    def as_json(self) -> dict[str, Any]:
        """The `limits` resource (the allocations the sync reads, plus a few others for realism)."""

        def entry(max_: int, used: int) -> dict[str, int]:
            return {"Max": max_, "Remaining": max(0, max_ - used)}

        return {
            "DailyApiRequests": entry(self.api_max, self.api_used),
            "DailyDeliveredPlatformEvents": entry(self.events_max, self.events_used),
            "DailyStreamingApiEvents": entry(1_000_000, 0),
            "DailyBulkApiBatches": entry(15_000, 0),
            "DataStorageMB": entry(1024, 0),
            "HourlyPublishedPlatformEvents": entry(250_000, 0),
            "MonthlyPlatformEventsUsageEntitlement": entry(1_500_000, 0),
        }
