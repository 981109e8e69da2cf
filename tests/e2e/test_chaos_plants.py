"""The chaos oracle catches planted bugs (issue 14, "Done when").

Each planted run starts both replicas with one rule of the service disabled, through the test-only
start-up hook in `bench/chaos/plants.py` (no file of the service is edited, nothing of it reads the
hook's variables), and plays one short schedule. The same schedule without the plant is the
baseline (for `offset_order`, with its control `slow_apply`: the same slow apply, in the right
order). The service still has known violations (docs/notes/chaos.md), so each plant is judged on
the violation class it should cause, one its baseline does not report.

Six runs of 30 operations (two baselines, four plants) take several minutes on two cores, so they
are marked `chaos` (`pytest -m chaos`); the hook's own tests below run by default.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from bench.chaos.plants import ALLOW_VAR, PLANT_VAR, PLANTS, REFUSED_EXIT, SITE_DIR, service_env
from bench.chaos.runner import BARRIER_TIMEOUT, RunResult, run

ROOT = Path(__file__).resolve().parents[2]


class Schedule(NamedTuple):
    seed: int
    ops: int
    faults: tuple[str, ...]
    admin: bool = False  # admin operations (the first schedules were chosen without them)


# 30 operations with no fault, a conversion and blanks on both sides: the unplanted run is clean
CLEAN = Schedule(205, 30, ())
# two leader kills, each right after a Salesforce edit (op-0008, op-0024); the unplanted run has
# known lost changes, all of them stale platform values in Salesforce, none inbound
KILLS = Schedule(525, 30, ("kill_leader",))
# no fault; a mapping edit (adm-001, after op-0025) maps people.mobile_phone, which Salesforce
# users had set on five records: the unplanted run is clean
REMAP = Schedule(43, 30, (), admin=True)


class Case(NamedTuple):
    schedule: Schedule
    control: str | None   # the baseline's own plant (None: the service as it is)
    caught_as: str        # the violation class the plant must produce and its baseline must not
    inbound: bool = False  # only lost changes of Salesforce edits on the platform's side count


CASES = {
    "echo_filter": Case(CLEAN, None, "logs"),
    "blank_rule": Case(CLEAN, None, "loop"),
    "conversion_relink": Case(CLEAN, None, "duplicate"),
    "offset_order": Case(KILLS, "slow_apply", "lost_change", inbound=True),
    "remerge": Case(REMAP, None, "lost_change"),
}


def _run(schedule: Schedule, plant: str | None) -> RunResult:
    # With no fault the pipeline answers in seconds; a plant can break the quiet period's barrier
    # (blank_rule: the barrier Person's create is refused), so do not wait the default 150 s for it.
    # A short wait can only add liveness/lost_change findings: not the classes CLEAN's cases need.
    timeout = 45.0 if schedule is CLEAN else BARRIER_TIMEOUT
    return run(schedule.seed, schedule.ops, faults=schedule.faults, echo=False, plant=plant,
               barrier_timeout=timeout, admin=schedule.admin)


def _inbound_loss(message: str) -> bool:
    """A Salesforce change the platform never got: a record that never reached it, or a field it
    holds nothing in where the model expects Salesforce's value."""
    return "never reached the platform" in message or ": platform holds None," in message


def _classes(result: RunResult, case: Case) -> set[str]:
    """The violation classes of a run (with `inbound`, only inbound losses count)."""
    return {v.check for v in result.summary.violations
            if not case.inbound or (v.check == "lost_change" and _inbound_loss(v.message))}


@pytest.fixture(scope="module")
def baselines() -> dict[tuple[Schedule, str | None], RunResult]:
    return {}  # filled as the cases need them: one run per (schedule, control)


@pytest.mark.chaos
@pytest.mark.parametrize("plant", PLANTS)
def test_the_oracle_reports_a_planted_bug(
        plant: str, baselines: dict[tuple[Schedule, str | None], RunResult]) -> None:
    case = CASES[plant]
    key = (case.schedule, case.control)
    if key not in baselines:
        baselines[key] = _run(case.schedule, case.control)
    baseline = baselines[key]
    assert case.caught_as not in _classes(baseline, case), baseline.text
    result = _run(case.schedule, plant)
    assert case.caught_as in _classes(result, case), result.text


# --- the hook itself (default run) ----------------------------------------------------------------

def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


ECHO = "import listener.events as e; print(e.is_echo('x;client=me', 'me'))"


def test_every_plant_has_a_case() -> None:
    assert set(CASES) == set(PLANTS)



def test_a_planted_process_runs_with_the_rule_disabled() -> None:
    done = _python(ECHO, service_env("echo_filter"))
    assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr
    assert f"{PLANT_VAR} active: echo_filter" in done.stderr


def test_the_hook_on_the_path_changes_nothing_without_a_plant() -> None:
    env = service_env("echo_filter")
    env.pop(PLANT_VAR)
    done = _python(ECHO + "; import sys; print('bench.chaos.plants' in sys.modules)", env)
    assert (done.returncode, done.stdout.split()) == (0, ["True", "False"]), done.stderr


@pytest.mark.parametrize("env", [{PLANT_VAR: "echo_filter"}, {PLANT_VAR: "no_such", ALLOW_VAR: "1"}])
def test_a_plant_is_refused_without_the_test_flag_or_by_an_unknown_name(env: dict[str, str]) -> None:
    done = _python(ECHO, {**env, "PYTHONPATH": os.pathsep.join((str(SITE_DIR), str(ROOT)))})
    assert done.returncode == REFUSED_EXIT
    assert "refused" in done.stderr and not done.stdout


def test_no_service_code_knows_the_hook() -> None:
    for package in ("settings", "reconciler", "listener", "service"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert not any(word in text for word in (PLANT_VAR, "plant_site", "bench.chaos")), path
