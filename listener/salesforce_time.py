"""Salesforce's time, learned from the `Date` header of its responses (issue 11 items 3, 10).

`SystemModstamp`, `LastModifiedDate` and CDC `commitTimestamp` are Salesforce's clock; the
poller's signpost and the platform's edit times are this host's. Every Salesforce response
carries `Date` (one-second precision), set by the server at some moment between our send and
our receive, so one response bounds the offset (Salesforce minus host), in seconds:

    Date - received  <=  offset  <  Date + 1 - sent

`SalesforceClock` keeps the tightest bounds over the last `window` responses (when a clock
steps and they stop overlapping, it starts again from the latest response) and gives:

- `safe_now()`: a time Salesforce has certainly reached (host now + lower bound): a polling
  signpost below it never runs ahead of Salesforce;
- `upper_now()`: a time Salesforce has certainly not reached yet (host now + upper bound);
- `now()`: Salesforce's current time by `offset` (the smallest correction the bounds allow);
- `to_host(t)` / `offset`: a Salesforce time on this host's clock (merge comparisons);
- `latest`: the latest `Date` Salesforce sent, its own reading (whole seconds): after a write's
  response, a time no earlier than the second Salesforce stamped the write in, whatever the
  offset's error (the bounds assume a steady offset; a clock slewing back breaks them).

Before the first response it knows nothing and answers with the host's clock (offset 0).
`ClockReadingTransport` wraps the Salesforce client's HTTP transport (its `transport=` seam;
OAuth and REST calls both pass through it) and feeds every response's `Date` to a clock: the
client itself is not changed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import structlog

from listener.salesforce.http import AiohttpTransport, HttpRequest, HttpResponse, HttpTransport

log = structlog.get_logger(__name__)


def parse_http_date(value: str | None) -> float | None:
    """An RFC 7231 `Date` header -> epoch seconds; None when absent or unreadable."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


class SalesforceClock:
    """The offset between this host's clock and Salesforce's, from response `Date` headers."""

    def __init__(self, *, host: Callable[[], float] = time.time, window: int = 32) -> None:
        self._host = host
        self._samples: deque[tuple[float, float]] = deque(maxlen=window)  # (low, high) per response
        self._low = 0.0
        self._high = 0.0
        self._latest: float | None = None

    @property
    def learned(self) -> bool:
        return bool(self._samples)

    @property
    def offset(self) -> timedelta:
        """Salesforce minus host: the smallest correction the responses allow (zero when the
        bounds hold zero, and before the first response). Not the bounds' midpoint: replicas
        whose clocks agree must learn the same offset, or field times one stored (Salesforce
        time moved onto its host clock) outrank a later change another applies."""
        return timedelta(seconds=min(max(0.0, self._low), self._high))

    @property
    def uncertainty(self) -> timedelta:
        """How far `offset` may be off: to the farther bound."""
        at = self.offset.total_seconds()
        return timedelta(seconds=max(at - self._low, self._high - at))

    def observe(self, date_header: str | None, *, sent: float, received: float) -> None:
        """One response: `Date` as sent by Salesforce, our send and receive times (host clock)."""
        server = parse_http_date(date_header)
        if server is None:
            return
        self._latest = server if self._latest is None else max(self._latest, server)
        sample = (server - received, server + 1.0 - sent)
        self._samples.append(sample)
        low = max(s[0] for s in self._samples)
        high = min(s[1] for s in self._samples)
        if low > high:  # a clock stepped: the old responses no longer describe it
            log.info("salesforce_clock_stepped", previous_offset=self.offset.total_seconds())
            self._samples.clear()
            self._samples.append(sample)
            low, high = sample
        self._low, self._high = low, high

    @property
    def latest(self) -> datetime | None:
        """The latest `Date` Salesforce sent (None before the first response)."""
        return None if self._latest is None else datetime.fromtimestamp(self._latest, UTC)

    def now(self) -> datetime:
        """Salesforce's current time, best estimate."""
        return datetime.fromtimestamp(self._host(), UTC) + self.offset

    def safe_now(self) -> datetime:
        """A time Salesforce's clock has certainly reached."""
        return datetime.fromtimestamp(self._host() + (self._low if self.learned else 0.0), UTC)

    def upper_now(self) -> datetime:
        """A time Salesforce's clock has certainly not passed yet."""
        return datetime.fromtimestamp(self._host() + (self._high if self.learned else 0.0), UTC)

    def to_host(self, salesforce_time: datetime) -> datetime:
        """A Salesforce time on this host's clock."""
        return salesforce_time - self.offset


class ClockReadingTransport:
    """An `HttpTransport` that reports every response's `Date` to a `SalesforceClock`."""

    def __init__(self, inner: HttpTransport, clock: SalesforceClock,
                 *, host: Callable[[], float] = time.time) -> None:
        self._inner = inner
        self._clock = clock
        self._host = host

    async def send(self, request: HttpRequest) -> HttpResponse:
        sent = self._host()
        response = await self._inner.send(request)
        self._clock.observe(_header(response.headers, "Date"), sent=sent, received=self._host())
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def clocked_transport(clock: SalesforceClock, *, max_connections: int = 8,
                      timeout: float = 60) -> ClockReadingTransport:
    """The client's default aiohttp transport, reading Salesforce's time into `clock`:
    `SalesforceClient(settings, transport=clocked_transport(clock))`."""
    return ClockReadingTransport(AiohttpTransport(max_connections=max_connections, timeout=timeout), clock)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
    return value


__all__ = ["ClockReadingTransport", "SalesforceClock", "clocked_transport", "parse_http_date"]
