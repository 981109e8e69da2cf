"""The ten-seed table's figures: time to converge and throughput during faults (bench.chaos.convergence)."""

from __future__ import annotations

from bench.chaos.convergence import Carried, convergence_times, fault_windows


def _ack(step: str, at: float, side: str, slot: str, **fields: object) -> dict[str, object]:
    return {"event": "ack", "status": "ok", "step": step, "at": at, "side": side, "slot": slot,
            "fields": fields}


SLOTS = {"P1": frozenset({"local-1", "00Q1"}), "P2": frozenset({"local-2", "00Q2"})}


def test_a_value_converges_at_the_first_log_carrying_it_from_its_side_on_its_record() -> None:
    carried = [
        Carried(9.0, "local", frozenset({"local-1"}), frozenset({'"Ann"'})),     # before the ack
        Carried(11.0, "salesforce", frozenset({"local-1"}), frozenset({'"Ann"'})),  # wrong side
        Carried(12.0, "local", frozenset({"local-2"}), frozenset({'"Ann"'})),   # another record
        Carried(13.5, "local", frozenset({"local-1", "00Q1"}), frozenset({'"Ann"', '"Lee"'})),
    ]
    traced, times = convergence_times([_ack("op-1", 10.0, "platform", "P1", first_name="Ann")],
                                      carried, SLOTS)
    assert (traced, times) == (1, [(3.5, "op-1")])


def test_a_superseded_value_and_a_blank_are_not_timed() -> None:
    steps = [_ack("op-1", 10.0, "salesforce", "P2", FirstName="Bo", Title=""),
             {"event": "ack", "status": "rejected", "step": "op-2", "at": 11.0, "side": "salesforce",
              "slot": "P2", "fields": {"FirstName": "Cy"}}]
    traced, times = convergence_times(steps, [], SLOTS)
    assert (traced, times) == (1, [])   # the blank is not traced, the rejected op not at all


def test_fault_windows_are_merged_from_injection_to_heal() -> None:
    steps = [
        {"event": "fault", "status": "injected", "id": "f-1", "at": 1.0},
        {"event": "fault", "status": "injected", "id": "f-2", "at": 2.0},
        {"event": "heal", "args": {"fault": "f-1"}, "at": 3.0},
        {"event": "heal", "args": {"fault": "f-2"}, "at": 4.0},
        {"event": "fault", "status": "injected", "id": "f-3", "at": 10.0},
        {"event": "heal", "args": {"fault": "f-3"}, "at": 10.5},
        {"event": "fault", "status": "skipped", "id": "f-4", "at": 20.0},
    ]
    assert fault_windows(steps) == [(1.0, 4.0), (10.0, 10.5)]


def test_a_salesforce_record_created_with_an_unmapped_owner_is_not_timed() -> None:
    """It syncs only once an owner change maps it (the create rule): not a delay."""
    create = {**_ack("op-1", 10.0, "salesforce", "P1", LastName="Lee", OwnerId="005-unmapped"),
              "kind": "sf_create_lead"}
    carried = [Carried(300.0, "salesforce", frozenset({"local-1"}), frozenset({'"Lee"'}))]
    assert convergence_times([create], carried, SLOTS, frozenset({"005-mapped"})) == (0, [])
    assert convergence_times([create], carried, SLOTS, None) == (2, [(290.0, "op-1")])
