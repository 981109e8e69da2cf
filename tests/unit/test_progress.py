"""Progress of long operations: a bar on a terminal, periodic `progress` log events otherwise."""

from __future__ import annotations

import io

import pytest
from structlog.testing import capture_logs

from service.progress import Progress, render_bar


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TestLogEvents:
    def test_reports_every_interval_then_done(self) -> None:
        """Off a terminal, one `progress` event per interval and a final `progress_done`."""
        clock = FakeClock()
        progress = Progress("backfill Lead", total=1000, stream=io.StringIO(), interval=10, clock=clock)
        with capture_logs() as logs, progress as p:
            for _ in range(10):
                clock.now += 2
                p.advance(50)
        events = [e["event"] for e in logs]
        assert events == ["progress", "progress", "progress_done"]
        first = logs[0]
        assert (first["done"], first["total"], first["pct"], first["rate_per_s"]) == (250, 1000, 25.0, 25.0)
        assert first["eta_s"] == 30
        assert logs[-1]["done"] == 500 and logs[-1]["failed"] is False

    def test_failure_is_recorded_on_exit(self) -> None:
        """Leaving the block with an exception marks the run failed."""
        with capture_logs() as logs, pytest.raises(RuntimeError), Progress("remerge", stream=io.StringIO()):
            raise RuntimeError("boom")
        assert logs[-1]["event"] == "progress_done" and logs[-1]["failed"] is True


class TestBar:
    def test_draws_on_a_terminal(self) -> None:
        """On a terminal it redraws one line and ends it with a newline, logging only the end."""
        clock, out = FakeClock(), io.StringIO()
        with capture_logs() as logs:
            p = Progress("backfill", total=10, stream=out, tty=True, clock=clock)
            clock.now = 1
            p.advance(5)
            p.close()
        assert out.getvalue().startswith("\rbackfill [")
        assert out.getvalue().endswith("\n")
        assert [e["event"] for e in logs] == ["progress_done"]

    @pytest.mark.parametrize(("done", "total", "eta", "expected"), [
        (5, 10, 5.0, "job [##############..............]  50.0%  5/10  1.0/s  ETA 0:05   "),
        (7, None, None, "job 7  1.0/s   "),
    ])
    def test_render(self, done: int, total: int | None, eta: float | None, expected: str) -> None:
        """The bar shows percent, counts, rate and ETA when the total is known."""
        assert render_bar("job", done, total, 1.0, eta) == expected
