"""The bench scripts' figure helpers: percentiles and the printed table."""

from __future__ import annotations

import pytest

from bench._common import Row, bench_mappings, percentile, rate, table


class TestPercentile:
    @pytest.mark.parametrize(
        ("values", "pct", "expected"),
        [
            ([5.0], 50, 5.0),
            ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
            ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
            ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
            ([4.0, 1.0, 3.0, 2.0], 50, 2.5),
            (list(map(float, range(1, 101))), 99, 99.01),
            ([10.0, 20.0], 25, 12.5),
        ],
    )
    def test_interpolates_between_closest_ranks(
        self, values: list[float], pct: float, expected: float
    ) -> None:
        """Linear interpolation between the two closest ranks of the sorted values."""
        assert percentile(values, pct) == pytest.approx(expected)

    @pytest.mark.parametrize(("values", "pct"), [([], 50), ([1.0], -1), ([1.0], 100.5)])
    def test_refuses_what_has_no_percentile(self, values: list[float], pct: float) -> None:
        """No values, or a percentile outside 0..100, is an error, not a made-up figure."""
        with pytest.raises(ValueError):
            percentile(values, pct)


class TestTable:
    def test_aligns_columns(self) -> None:
        """Figures line up left, values right, every row the same width up to the verdict."""
        text = table("title", [Row("records/s", "1,234", ">= 10", True), Row("calls", "7")])
        lines = text.splitlines()
        assert lines[0] == "title"
        header, first, second = lines[2], lines[4], lines[5]
        assert header.startswith("figure") and "value" in header and "target" in header
        assert first.index("1,234") + len("1,234") == second.index("7") + 1 == header.index("value") + 5
        assert first.startswith("records/s ") and second.startswith("calls     ")

    @pytest.mark.parametrize(("met", "verdict"), [(True, "ok"), (False, "MISSED"), (None, "")])
    def test_marks_targets_met_or_missed(self, met: bool | None, verdict: str) -> None:
        """A row with a target says ok or MISSED; a row without one says nothing."""
        line = table("t", [Row("figure a", "1", "<= 2" if met is not None else "", met)]).splitlines()[4]
        assert line.endswith(verdict) if verdict else line.endswith("1")

    def test_rules_frame_header_and_body(self) -> None:
        """Dashed rules under the title, under the header and at the end, as wide as the rows."""
        lines = table("t", [Row("a", "1", "x", True)]).splitlines()
        rules = [line for line in lines if set(line) == {"-"}]
        assert len(rules) == 3
        assert all(len(r) >= len(line) for r in rules for line in lines[2:] if set(line) != {"-"})


class TestRate:
    def test_divides_and_never_divides_by_zero(self) -> None:
        """A count over time; zero time is an infinite rate rather than a crash."""
        assert rate(10, 2) == 5
        assert rate(10, 0) == float("inf")


class TestBenchMappings:
    def test_maps_both_generated_owners(self) -> None:
        """Every generated Lead's owner is a mapped user, so every Lead becomes a Person."""
        mappings = bench_mappings()
        assert mappings.local_user("005000000000001AAA") == "u-1"
        assert mappings.local_user("005000000000002AAA") == "u-2"
        fields = {m.sf_field for m in mappings.for_object("Lead")}
        assert fields >= {"FirstName", "LastName", "Email", "Title"}
