"""`bench.inbound`'s MongoDB figures: commands by name, and the share of the drain spent with a
command in flight, which overlapping commands (a lookup's slices) must not count twice."""

from __future__ import annotations

from bench.inbound import CommandCounter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TestCommandCounter:
    def test_overlapping_commands_count_their_span_once(self) -> None:
        """Four slices sent together at t=0, answered at t=1..4: four finds, 4 s in flight."""
        clock = Clock()
        counter = CommandCounter(clock)
        for request in range(4):
            counter.sent(request, "find people")
        for request in range(4):
            clock.now += 1.0
            counter.answered(request, 1_000_000 * (request + 1))
        assert counter.counts["find people"] == 4
        assert counter.micros["find people"] == 10_000_000  # the round-trips, summed
        assert counter.busy == 4.0

    def test_commands_one_after_another_add_up_and_gaps_do_not_count(self) -> None:
        clock = Clock()
        counter = CommandCounter(clock)
        counter.sent(1, "update people")
        clock.now = 2.0
        counter.answered(1, 2_000_000)
        clock.now = 5.0  # nothing in flight from 2 to 5
        counter.sent(2, "insert sync_logs")
        clock.now = 6.0
        counter.answered(2, None)  # a failed command ends its round-trip too
        assert counter.busy == 3.0

    def test_an_answer_to_a_command_sent_before_counting_is_ignored(self) -> None:
        counter = CommandCounter(Clock())
        counter.answered(99, 5)
        assert counter.busy == 0.0 and not counter.micros
