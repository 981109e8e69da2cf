"""The chaos run's schedule (bench/chaos/schedule): admin operations (mapping edits, retries,
re-imports) come from a stream of their own, so every seed's users and faults stay what they
were before admin operations existed."""

from __future__ import annotations

import hashlib
import json

import pytest

from bench.chaos.schedule import FAULT_KINDS, Step, build_schedule
from bench.chaos.schedule.admin_ops import ADMIN_MIX, TITLE_MERGES
from bench.chaos.schedule.step import PROCESS_FAULTS

CI_SEEDS = (8, 64, 83)  # tests/e2e/test_chaos.py, 80 operations each
CI_OPS = 80


def digest(steps: list[Step]) -> str:
    return hashlib.sha256(json.dumps([s.as_json() for s in steps], sort_keys=True).encode()).hexdigest()[:16]


def admin_steps(seed: int, ops: int, faults: tuple[str, ...] = FAULT_KINDS) -> list[Step]:
    return [s for s in build_schedule(seed, ops, faults) if s.side == "admin"]


class TestStability:
    # digests of build_schedule(seed, ops) at 31b8bac, before admin operations existed
    BEFORE = [(8, 80, "a3d14ad2bff261ac"), (11376, 300, "0d12af4f1466c259")]

    @pytest.mark.parametrize(("seed", "ops", "before"), BEFORE)
    def test_without_its_admin_steps_a_seed_draws_what_it_drew_before(self, seed: int, ops: int,
                                                                      before: str) -> None:
        """The seeds in docs/notes/chaos.md replay: same operations, faults, ids and arguments."""
        steps = build_schedule(seed, ops)
        assert digest([s for s in steps if s.side != "admin"]) == before
        assert digest(build_schedule(seed, ops, admin=False)) == before

    def test_admin_steps_do_not_count_as_operations(self) -> None:
        steps = build_schedule(8, CI_OPS)
        assert sum(1 for s in steps if s.id.startswith("op-")) == CI_OPS
        assert all(s.id.startswith("adm-") for s in steps if s.side == "admin")


class TestAdminDraws:
    def test_the_ci_seeds_draw_every_admin_kind(self) -> None:
        drawn = {s.kind for seed in CI_SEEDS for s in admin_steps(seed, CI_OPS)}
        assert drawn == set(ADMIN_MIX)

    def test_the_admin_stream_is_a_function_of_the_seed(self) -> None:
        first = [s.as_json() for s in admin_steps(8, 300)]
        assert first == [s.as_json() for s in admin_steps(8, 300)]
        assert first != [s.as_json() for s in admin_steps(64, 300)]

    @pytest.mark.parametrize("seed", [8, 64, 83, 11376, 2718, 9001])
    def test_no_mapping_edit_while_a_process_fault_or_a_budget_swing_is_open(self, seed: int) -> None:
        """A mapping edit restarts the replicas: not while one is killed or stopped, nor while a
        paused budget would hold the remerge back."""
        open_faults: set[str] = set()
        for step in build_schedule(seed, 300):
            if step.side == "fault" and step.kind in PROCESS_FAULTS | {"budget_swing"}:
                open_faults.add(step.id)
            elif step.side == "heal":
                open_faults.discard(str(step.args["fault"]))
            elif step.kind == "mapping_edit":
                assert not open_faults, (step.id, open_faults)

    @pytest.mark.parametrize("seed", [8, 11376, 122])
    def test_each_mapping_edit_toggles_one_thing_and_names_the_whole_result(self, seed: int) -> None:
        state = {"title_merge": TITLE_MERGES[0], "mobile_phone": False}
        edits = [s for s in build_schedule(seed, 300, ()) if s.kind == "mapping_edit"]
        assert edits
        for step in edits:
            change = step.args["change"]
            if change == "title_merge":
                state["title_merge"] = TITLE_MERGES[1 - TITLE_MERGES.index(str(state["title_merge"]))]
            else:
                state["mobile_phone"] = not state["mobile_phone"]
            assert {k: step.args[k] for k in state} == state

    def test_an_import_names_a_slot_created_before_it(self) -> None:
        created: set[str] = set()
        imports = 0
        for step in build_schedule(2718, 300):
            if step.kind.startswith(("sf_create", "pf_create")) and step.target:
                created.add(step.target)
            elif step.kind == "sf_convert":
                created.add(str(step.args["account"]))
            elif step.kind == "admin_import":
                imports += 1
                assert step.target in created
        assert imports
