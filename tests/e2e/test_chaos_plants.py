"""The chaos oracle catches planted bugs (issue 14, "Done when").

Each planted run starts both replicas with one rule of the service disabled, through the test-only
start-up hook in `bench/chaos/plants.py` (no file of the service is edited, nothing of it reads the
hook's variables), and plays one short schedule. The same schedule without a plant is the baseline:
the service still has known violations (docs/notes/chaos.md), so each plant is judged on the
violation class it should cause, one the baseline does not report.

The runs take minutes on two cores, so they are marked `chaos` (`pytest -m chaos`); the hook's own
tests below run by default.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos.plants import ALLOW_VAR, PLANT_VAR, PLANTS, REFUSED_EXIT, SITE_DIR, service_env
from bench.chaos.runner import RunResult, run

ROOT = Path(__file__).resolve().parents[2]

# One schedule for every plant: 40 operations with four conversions, blanks on both sides and
# four SecantusDB restarts (a batch cut short by one is what exposes offsets committed too early).
SEED, OPS, FAULTS = 28, 40, ("restart_mongo",)
# plant -> the violation class its run must report and the baseline must not
CAUGHT_AS = {
    "echo_filter": "logs",
    "offset_order": "lost_change",
    "blank_rule": "loop",
    "conversion_relink": "duplicate",
}


def _classes(result: RunResult) -> set[str]:
    return {v.check for v in result.summary.violations}


@pytest.fixture(scope="module")
def baseline() -> RunResult:
    return run(SEED, OPS, faults=FAULTS, echo=False)


@pytest.mark.chaos
@pytest.mark.parametrize("plant", PLANTS)
def test_the_oracle_reports_a_planted_bug(plant: str, baseline: RunResult) -> None:
    expected = CAUGHT_AS[plant]
    assert expected not in _classes(baseline), baseline.text
    result = run(SEED, OPS, faults=FAULTS, echo=False, plant=plant)
    assert expected in _classes(result), result.text


# --- the hook itself (default run) ----------------------------------------------------------------

def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", code], env={**base, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


ECHO = "import listener.events as e; print(e.is_echo('x;client=me', 'me'))"


def test_every_plant_has_a_class_to_be_caught_as() -> None:
    assert set(CAUGHT_AS) == set(PLANTS)


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
