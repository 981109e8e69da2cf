"""Salesforce's time learned from response `Date` headers (issue 11 item 3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from listener.salesforce.http import HttpRequest, HttpResponse
from listener.salesforce_time import ClockReadingTransport, SalesforceClock, parse_http_date

HOST = 1_714_557_600.0  # 2024-05-01T10:00:00Z on the host's clock


def http_date(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


class TestOffsetBounds:
    @pytest.mark.parametrize(
        ("salesforce_ahead", "round_trip"),
        [(0.0, 0.05), (3.0, 0.05), (-3.0, 0.05), (2.4, 0.3), (-0.6, 0.01)],
    )
    def test_bounds_hold_the_true_offset(self, salesforce_ahead: float, round_trip: float) -> None:
        """Over responses at varied sub-second phases, the learned bounds contain the true
        offset, `safe_now` never passes Salesforce's now and `upper_now` is never behind it."""
        host = [HOST]
        clock = SalesforceClock(host=lambda: host[0])
        for step in range(12):
            sent = HOST + step * 0.37
            server = sent + round_trip / 2 + salesforce_ahead
            clock.observe(http_date(int(server)), sent=sent, received=sent + round_trip)
        host[0] = HOST + 10
        truth = datetime.fromtimestamp(HOST + 10 + salesforce_ahead, UTC)
        assert clock.safe_now() <= truth <= clock.upper_now()
        assert abs(clock.offset.total_seconds() - salesforce_ahead) <= 1.0

    def test_replicas_on_synced_clocks_learn_the_same_offset(self) -> None:
        """Issue 11 (replica stall): two replicas whose hosts and Salesforce agree learn offset 0
        whatever sub-second phases their few responses had. A best-estimate midpoint put them
        ~0.8 s apart, so field times one replica stored (Salesforce time moved onto its host
        clock) outranked an edit the other applied 0.25 s later: the edit was dropped."""
        late_phase, early_phase = SalesforceClock(host=lambda: HOST), SalesforceClock(host=lambda: HOST)
        late_phase.observe(http_date(HOST), sent=HOST + 0.85, received=HOST + 0.9)   # bounds (-0.9, 0.15)
        early_phase.observe(http_date(HOST), sent=HOST + 0.05, received=HOST + 0.1)  # bounds (-0.1, 0.95)
        assert late_phase.offset == early_phase.offset == timedelta(0)
        for clock in (late_phase, early_phase):  # the offset's error bound still covers the bounds
            assert clock.offset - clock.uncertainty <= timedelta(seconds=clock._low)
            assert clock.offset + clock.uncertainty >= timedelta(seconds=clock._high)

    def test_a_real_offset_is_the_nearest_bound(self) -> None:
        """Salesforce 30 s ahead: the offset is the smallest correction the responses allow."""
        clock = SalesforceClock(host=lambda: HOST)
        clock.observe(http_date(HOST + 30), sent=HOST + 0.05, received=HOST + 0.1)  # bounds (29.9, 30.95)
        assert abs(clock.offset.total_seconds() - 29.9) < 1e-6
        assert clock.offset + clock.uncertainty >= timedelta(seconds=30.95)

    def test_nothing_learned_means_the_host_clock(self) -> None:
        """Before any response, Salesforce's time is taken to be the host's."""
        clock = SalesforceClock(host=lambda: HOST)
        assert not clock.learned
        assert clock.safe_now() == clock.now() == datetime.fromtimestamp(HOST, UTC)
        assert clock.offset == timedelta(0)

    def test_a_clock_step_starts_again_from_the_latest_response(self) -> None:
        """When responses stop agreeing (a clock stepped), the old ones are forgotten."""
        clock = SalesforceClock(host=lambda: HOST)
        clock.observe(http_date(HOST), sent=HOST, received=HOST + 0.1)
        clock.observe(http_date(HOST + 60), sent=HOST + 1, received=HOST + 1.1)
        assert abs(clock.offset.total_seconds() - 59) <= 1.0

    def test_latest_is_the_latest_date_salesforce_sent(self) -> None:
        """Salesforce's own reading of its clock (whole seconds), whatever the offset's error
        (the bounds assume a steady offset; a clock slewing back after a skew runs behind them:
        chaos seed 11376, P12.first_name). An answer stamped earlier but received later (two
        calls in flight) does not lower it: Salesforce's clock never goes back."""
        clock = SalesforceClock(host=lambda: HOST)
        assert clock.latest is None
        clock.observe(http_date(HOST + 2.7), sent=HOST, received=HOST + 0.1)
        clock.observe(http_date(HOST + 1.2), sent=HOST, received=HOST + 0.2)
        assert clock.latest == datetime.fromtimestamp(HOST + 2, UTC)

    @pytest.mark.parametrize("header", [None, "", "yesterday", "Mon, 99 Foo 2024 99:99:99 GMT"])
    def test_unreadable_dates_are_ignored(self, header: str | None) -> None:
        """A response without a readable `Date` teaches nothing."""
        clock = SalesforceClock(host=lambda: HOST)
        clock.observe(header, sent=HOST, received=HOST)
        assert not clock.learned
        assert parse_http_date(header) is None


class TestTransport:
    async def test_every_response_date_reaches_the_clock(self) -> None:
        """The transport wrapper passes requests through and feeds `Date` to the clock."""
        class Inner:
            async def send(self, request: HttpRequest) -> HttpResponse:
                return HttpResponse.of_json(200, {"ok": True}, {"date": http_date(HOST + 30)})

            async def aclose(self) -> None:
                return None

        clock = SalesforceClock(host=lambda: HOST)
        transport = ClockReadingTransport(Inner(), clock, host=lambda: HOST)
        response = await transport.send(HttpRequest("GET", "https://x/services/data"))
        assert response.status == 200
        assert clock.learned and abs(clock.offset.total_seconds() - 30) <= 1.0


def org_clock(steps: list[tuple[float, float]], slew: float = 0.8) -> list[float]:
    """The org's time at each host second 0..59: `steps` = (from host second, target offset); a
    higher offset is a step forward, a lower one is reached at `slew` of the host's rate (the
    emulator's `OrgClock`: never backwards)."""
    org, times = None, []
    for second in range(60):
        target = second + [o for at, o in steps if at <= second][-1]
        org = target if org is None else max(target, org + slew)
        times.append(org)
    return times


def learned(steps: list[tuple[float, float]], asked: list[float]) -> SalesforceClock:
    """A clock that saw one response at each host time in `asked` (0.05 s round trips, the
    server answering mid-way), from an org whose clock follows `steps`."""
    org = org_clock(steps)
    clock = SalesforceClock(host=lambda: HOST + 60)
    for at in asked:
        second = int(at)
        server = org[second] + (at + 0.025 - second) * (org[min(second + 1, 59)] - org[second])
        clock.observe(http_date(HOST + int(server)), sent=HOST + at, received=HOST + at + 0.05)
    return clock


STEP_AHEAD = [(0, 0.0), (15, 4.0)]  # stepped 4 s ahead at host second 15
ASKED = [*(float(t) for t in range(0, 11)), *(float(t) for t in range(25, 31))]  # none from 11 to 24


class TestSpans:
    """A Salesforce stamp is moved onto this host's clock by the offset of the span of Salesforce
    time it was stamped in, not by one learned after the org's clock stepped (chaos seed 8191,
    L5.first_name). The clock saw responses at host seconds 0-10 and 25-30 only."""

    @pytest.mark.parametrize(
        ("stamp", "offset", "why"),
        [
            (5, 0.0, "stamped before the step, among the old span's responses"),
            (-100, 0.0, "older than the first response: the first span's (nothing else is known)"),
            (30, 4.0, "stamped after the step, among the new span's responses"),
            (40, 4.0, "after the latest response: the current span's"),
            (13, 0.0, "in the gap, fits only the old span (host 9 under +4 is before its last question)"),
            (17, 0.0, "in the gap, fits both: the later host time, as a tie goes to Salesforce"),
            (28, 4.0, "in the gap, fits only the new span (host 28 is after its first answer)"),
        ],
    )
    def test_a_step_ahead(self, stamp: float, offset: float, why: str) -> None:
        clock = learned(STEP_AHEAD, ASKED)
        at = clock.offset_at(datetime.fromtimestamp(HOST + stamp, UTC))
        assert abs(at.total_seconds() - offset) < 1.0, why
        assert abs(clock.offset.total_seconds() - 4.0) < 1.0  # what every stamp was dated by before

    def test_a_stamp_in_the_gap_is_never_dated_after_the_new_spans_first_answer(self) -> None:
        """It was stamped before that answer's `Date`, so before the host received it."""
        clock = learned(STEP_AHEAD, ASKED)
        for stamp in range(11, 29):  # 29: the `Date` of that answer
            host = clock.to_host(datetime.fromtimestamp(HOST + stamp, UTC))
            assert host < datetime.fromtimestamp(HOST + 25.05, UTC), stamp

    def test_salesforces_order_is_kept(self) -> None:
        """Salesforce's clock never goes back, so a later stamp is a later change: on this host's
        clock too, whatever span each falls in (chaos seed 68239, A12.domain: a stamp made at
        +2 s, unseen, was dated in the gap by the old span's 0, the next at +4 s by the new
        span's 3.5, 1 s before it; the second Website edit lost to the first)."""
        clock = learned(STEP_AHEAD, ASKED)
        stamps = [t / 10 for t in range(-100, 500)]
        hosts = [clock.to_host(datetime.fromtimestamp(HOST + s, UTC)) for s in stamps]
        backwards = [s for s, h, n in zip(stamps, hosts, hosts[1:], strict=False) if h > n]
        assert backwards == []

    def test_the_68239_interleaving(self) -> None:
        """The org at 0, +2 s from host second 20 (no response saw it), +4 s from second 21; the
        clock saw 0-10 and then 23-30: the edit at host 20.3 (+2) precedes the one at 20.6 (+4)."""
        steps = [(0, 0.0), (20, 2.0), (21, 4.0)]
        clock = learned(steps, [*(float(t) for t in range(0, 11)), *(float(t) for t in range(23, 31))])
        first, second = (clock.to_host(datetime.fromtimestamp(HOST + s, UTC)) for s in (22.3, 24.6))
        assert first <= second

    def test_a_slew_behind_dates_every_stamp_near_its_own_moment(self) -> None:
        """Skewed 4 s ahead from the start, then healed at host second 10: the org slews back
        (0.8 of the host's rate) for 20 s; the responses stop agreeing every few seconds. A stamp
        made at any host second is dated within the responses' precision of that second; the
        offset learned last (0) would date the early ones up to 4 s late."""
        steps = [(0, 4.0), (10, 0.0)]
        org = org_clock(steps)
        clock = learned(steps, [t / 2 for t in range(0, 100)])
        assert abs(clock.offset.total_seconds()) < 1.0
        for second in range(0, 50):
            stamp = datetime.fromtimestamp(HOST + int(org[second]), UTC)
            dated = clock.to_host(stamp).timestamp() - HOST
            assert second - 1.5 < dated < second + 1.5, (second, dated)

    def test_without_a_step_every_stamp_takes_the_offset(self) -> None:
        clock = learned([(0, 3.0)], [float(t) for t in range(0, 10)])
        for stamp in (-50, 5, 50):
            assert clock.offset_at(datetime.fromtimestamp(HOST + stamp, UTC)) == clock.offset
