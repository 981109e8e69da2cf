"""Salesforce's time, learned from the `Date` header of its responses (issue 11 items 3, 10).

`SystemModstamp`, `LastModifiedDate` and CDC `commitTimestamp` are Salesforce's clock; the
poller's signpost and the platform's edit times are this host's. Every Salesforce response
carries `Date` (one-second precision), set by the server at some moment between our send and
our receive, so one response bounds the offset (Salesforce minus host), in seconds:

    Date - received  <=  offset  <  Date + 1 - sent

`SalesforceClock` keeps the tightest bounds over the last `window` responses (when a clock
steps and they stop overlapping, it starts a new span from the latest response, keeping the old
spans' offsets) and gives:

- `safe_now()`: a time Salesforce has certainly reached (host now + lower bound): a polling
  signpost below it never runs ahead of Salesforce;
- `upper_now()`: a time Salesforce has certainly not reached yet (host now + upper bound);
- `now()`: Salesforce's current time by `offset` (the smallest correction the bounds allow);
- `to_host(t)` / `offset_at(t)`: a Salesforce time on this host's clock (merge comparisons), by
  the offset of the span the time falls in (`offset_at`, below), not the one learned since;
- `offset`: the current span's offset (this host's time onto Salesforce's: `sent`, claims);
- `latest`: the latest `Date` Salesforce sent, its own reading (whole seconds): after a write's
  response, a time no earlier than the second Salesforce stamped the write in, whatever the
  offset's error (the bounds assume a steady offset; a clock slewing back breaks them).

Before the first response it knows nothing and answers with the host's clock (offset 0).

Spans (chaos seed 8191, L5.first_name): a Salesforce user's edit stamped at offset 0, then the
org's clock stepped 4 s ahead, then a new leader applied the edit's event with the offset learned
since: the stamp dated before an older platform edit, which won. Salesforce's clock never goes
back, so its stamps are ordered and each span's offset holds for the Salesforce times stamped
while it did. The step between span A (offset a) and the next, B (offset b), came after A's last
response was asked (host `last_sent`) and before B's first came in (`first_received`): a stamp
`s` fits A if `s - a` is before B's first answer, B if `s - b` is after A's last question. One
that fits both was stamped in the gap, before or after the step: it is dated at the later of the
two host times, as "a tie goes to Salesforce" (README) -- an edit the service cannot order
against a platform edit wins as an exact tie would -- and never later than B's first answer,
which it preceded, nor later than a later stamp (`span_host`: Salesforce's order is kept). What
a clock knows nothing of: steps before its first response (a process
started after the step) and after its latest; stamps there take the nearest span's offset, the
current one while no step has been seen, as before spans.

`ClockReadingTransport` wraps the Salesforce client's HTTP transport (its `transport=` seam;
OAuth and REST calls both pass through it) and feeds every response's `Date` to a clock: the
client itself is not changed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Span:
    """Responses that agreed on one offset: its bounds, when the first of them came in and when
    the last was asked (this host's clock, epoch seconds)."""

    low: float
    high: float
    first_received: float
    last_sent: float

    @property
    def offset(self) -> float:
        """The smallest correction the bounds allow (see `SalesforceClock.offset`)."""
        return min(max(0.0, self.low), self.high)


def span_offset(spans: list[Span], stamp: float) -> float:
    """The offset for a Salesforce time `stamp` over `spans` (oldest first, the current one last):
    of the spans it fits (module docstring), the smallest offset -- the latest host time; the
    current span's when it fits none (a whole second's rounding at a boundary), as before spans."""
    fits = [span.offset for k, span in enumerate(spans)
            if (k == 0 or stamp - span.offset > spans[k - 1].last_sent)
            and (k == len(spans) - 1 or stamp - span.offset < spans[k + 1].first_received)]
    return min(fits) if fits else spans[-1].offset


def span_host(spans: list[Span], stamp: float) -> float:
    """`stamp` on this host's clock: by `span_offset`, but never after a later stamp's host time.
    Salesforce's clock never goes back, so neither may its stamps' order here: a stamp in a gap
    dated by the old span (the later host time) would otherwise come after one just past the gap,
    dated by the new span's larger offset (chaos seed 68239, A12.domain: the later of two
    Website edits lost to the earlier one). Where a stamp stops fitting a span, the dating drops;
    a stamp before such a point is dated no later than the first stamp after it."""
    host = stamp - span_offset(spans, stamp)
    for k in range(1, len(spans)):
        fits_no_more = spans[k].first_received + spans[k - 1].offset  # past it: not span k-1's
        if stamp < fits_no_more:
            host = min(host, fits_no_more - span_offset(spans, fits_no_more))
    return host


class SalesforceClock:
    """The offset between this host's clock and Salesforce's, from response `Date` headers."""

    def __init__(self, *, host: Callable[[], float] = time.time, window: int = 32, spans: int = 16) -> None:
        self._host = host
        self._samples: deque[tuple[float, float]] = deque(maxlen=window)  # (low, high) per response
        self._low = 0.0
        self._high = 0.0
        self._latest: float | None = None
        self._past: deque[Span] = deque(maxlen=spans)  # spans before the current one, oldest first
        self._first_received = self._last_sent = 0.0  # the current span's (`Span`)

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
        if not self._samples:
            self._first_received = received
        self._samples.append(sample)
        low = max(s[0] for s in self._samples)
        high = min(s[1] for s in self._samples)
        if low > high:  # a clock stepped: the old responses no longer describe it
            self._past.append(self._span())
            self._samples.clear()
            self._samples.append(sample)
            low, high = sample
            self._first_received = received
            log.info("salesforce_clock_stepped", previous_offset=self._past[-1].offset,
                     offset=min(max(0.0, low), high), spans=len(self._past) + 1)
        self._low, self._high = low, high
        self._last_sent = sent

    def _span(self) -> Span:
        return Span(self._low, self._high, self._first_received, self._last_sent)

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

    def offset_at(self, salesforce_time: datetime) -> timedelta:
        """Salesforce minus host for a time Salesforce stamped: the offset of the span it falls
        in (module docstring), the current `offset` while no step has been seen."""
        if not self._past:
            return self.offset
        stamp = salesforce_time.timestamp()
        return timedelta(seconds=stamp - span_host([*self._past, self._span()], stamp))

    def to_host(self, salesforce_time: datetime) -> datetime:
        """A Salesforce time on this host's clock."""
        return salesforce_time - self.offset_at(salesforce_time)


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
