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
