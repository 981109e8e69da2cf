"""The store's set of records with open failed sync logs (`reconciler.store._open_failures`):
a superset of the truth, whatever order loads, lookups and new failures interleave in."""

from __future__ import annotations

import pytest

from reconciler.store._open_failures import RELOAD_SECONDS, Key, OpenFailures

A: Key = ("salesforce", "sf_id", "00QA")
B: Key = ("salesforce", "sf_id", "00QB")
LOCAL_A: Key = ("local", "sf_id", "00QA")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def loaded(*keys: Key, clock: Clock | None = None) -> OpenFailures:
    known = OpenFailures(clock or Clock())
    known.loaded(keys, known.mark())
    return known


class TestCandidates:
    @pytest.mark.parametrize(("in_set", "asked", "expected"), [
        ((), (A, B), set()),
        ((A,), (A, B), {A}),
        ((LOCAL_A,), (A,), set()),          # the other direction's failure is not this one's
        ((A, B), (B,), {B}),
    ])
    def test_only_records_with_open_failures_are_looked_up(
        self, in_set: tuple[Key, ...], asked: tuple[Key, ...], expected: set[Key]
    ) -> None:
        assert loaded(*in_set).candidates(asked) == expected


class TestSettling:
    def test_a_record_left_without_open_failures_is_dropped(self) -> None:
        known = loaded(A, B)
        known.settled([A, B], still_open=[B], since=known.mark())
        assert known.candidates([A, B]) == {B}

    def test_a_failure_added_while_the_lookup_ran_keeps_its_record(self) -> None:
        known = loaded(A)
        since = known.mark()
        known.add([A])                      # another batch's failure, written meanwhile
        known.settled([A], still_open=[], since=since)
        assert known.candidates([A]) == {A}

    def test_a_key_not_looked_up_stays(self) -> None:
        known = loaded(A, B)
        known.settled([A], still_open=[], since=known.mark())
        assert known.candidates([B]) == {B}


class TestLoading:
    def test_unloaded_is_stale_then_fresh_until_the_reload_interval(self) -> None:
        clock = Clock()
        known = OpenFailures(clock)
        assert known.stale()
        known.loaded([], known.mark())
        assert not known.stale()
        clock.now += RELOAD_SECONDS
        assert known.stale()

    def test_forget_makes_it_stale(self) -> None:
        known = loaded()
        known.forget()
        assert known.stale()

    def test_a_failure_added_while_loading_survives_the_load(self) -> None:
        known = OpenFailures(Clock())
        since = known.mark()
        known.add([B])                      # inserted after the load's read
        known.loaded([A], since)
        assert known.candidates([A, B]) == {A, B}

    def test_a_load_replaces_what_was_known_before_it(self) -> None:
        known = loaded(A)
        known.loaded([B], known.mark())     # A's failures were resolved by another writer
        assert known.candidates([A, B]) == {B}

    def test_too_many_to_keep_makes_every_record_a_candidate_until_the_next_load(self) -> None:
        known = OpenFailures(Clock())
        known.loaded([A], known.mark(), complete=False)
        assert known.candidates([A, B]) == {A, B}
        known.loaded([A], known.mark())
        assert known.candidates([A, B]) == {A}
