"""The org's daily API usage, as every REST response reports it in `Sforce-Limit-Info`."""

from __future__ import annotations

import re
from dataclasses import dataclass

_API_USAGE = re.compile(r"(?:^|[\s,;])api-usage=(\d+)/(\d+)")


@dataclass(frozen=True)
class ApiUsage:
    """Daily API requests used and allocated (`Sforce-Limit-Info: api-usage=used/max`)."""

    used: int
    max: int

    @property
    def remaining(self) -> int:
        return max(self.max - self.used, 0)

    @property
    def remaining_pct(self) -> float:
        """Percent of the daily allocation still available (0 when the allocation is 0)."""
        return 100.0 * self.remaining / self.max if self.max > 0 else 0.0


def parse_limit_info(header: str | None) -> ApiUsage | None:
    """`api-usage=18/5000, per-app-api-usage=17/250(appName=x)` -> `ApiUsage(18, 5000)`."""
    if not header:
        return None
    match = _API_USAGE.search(header)
    if match is None:
        return None
    return ApiUsage(used=int(match.group(1)), max=int(match.group(2)))
