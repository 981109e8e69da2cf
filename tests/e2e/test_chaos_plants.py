"""The chaos oracle catches planted bugs (issue 14, "Done when").

Each planted run starts both replicas with one rule of the service disabled, through the test-only
start-up hook in `bench/chaos/plants.py` (no file of the service is edited, nothing of it reads the
hook's variables), and plays one short schedule. The same schedule without the plant is the
baseline (for `offset_order`, with its control `slow_apply`: the same slow apply, in the right
order). Each plant is judged on the violation class it causes, one its baseline does not report,
and each is caught on an observable condition, not on timing:

- `echo_filter`: every record the service creates comes back as a CDC create carrying our own
  client name; applied, it is logged as a Salesforce-side merge into the Person, on a record no
  Salesforce operation touched (CLEAN's Q1);
- `blank_rule`: a platform blank is written to Salesforce (a `loop` finding);
- `conversion_relink`: the converted Lead's Contact makes a second Person (`duplicate`);
- `offset_order`: each leader kill waits until the stream has committed the newest event's replay
  id (`kill_when_committed`): in the service's order that batch is applied by then; in the
  plant's it is not yet, and the next leader starts after it (a Salesforce change never reaches
  the platform). The service still has known stale-outbound `lost_change` findings under kills,
  so only inbound losses count.

The six runs (two baselines, four plants) are independent (each its own emulator, SecantusDB
and replicas) and start together, WORKERS at a time, when the first case needs them. Marked
`chaos` like the convergence test and, like it, in the default run; the hook's own tests below
are not marked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

from bench.chaos.plants import ALLOW_VAR, PLANT_VAR, PLANTS, REFUSED_EXIT, SITE_DIR, service_env
from bench.chaos.runner import BARRIER_TIMEOUT, RunResult, run
from bench.chaos.schedule import Step, build_schedule

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 3  # runs at a time: each is mostly waiting (operations paced, faults healed, quiet period)


class Schedule(NamedTuple):
    seed: int
    ops: int
    faults: tuple[str, ...]
    admin: bool = False  # admin operations (the first schedules were chosen without them)
    kill_when_committed: bool = False


# 30 operations with no fault, a conversion, blanks on both sides, a Company made on the platform
# and never touched in Salesforce (Q1): the unplanted run is clean
CLEAN = Schedule(205, 30, ())
# two leader kills, each right after a Salesforce edit (op-0008, op-0024) and once the newest
# event's offset is committed; the unplanted run may have known lost changes, all of them stale
# platform values in Salesforce, none inbound
KILLS = Schedule(525, 30, ("kill_leader",), kill_when_committed=True)
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

RunKey = tuple[Schedule, str | None]  # a schedule and the plant (or control) its replicas run


def _run(schedule: Schedule, plant: str | None) -> RunResult:
    # With no fault the pipeline answers in seconds; a plant can break the quiet period's barrier
    # (blank_rule: the barrier Person's create is refused), so do not wait the default 150 s for it.
    # A short wait can only add liveness/lost_change findings: not the classes CLEAN's cases need.
    timeout = 45.0 if schedule is CLEAN else BARRIER_TIMEOUT
    return run(schedule.seed, schedule.ops, faults=schedule.faults, echo=False, plant=plant,
               barrier_timeout=timeout, admin=schedule.admin,
               kill_when_committed=schedule.kill_when_committed)


def _inbound_loss(message: str) -> bool:
    """A Salesforce change the platform never got: a record that never reached it, or a field it
    holds nothing in where the model expects Salesforce's value."""
    return "never reached the platform" in message or ": platform holds None," in message


def _classes(result: RunResult, case: Case) -> set[str]:
    """The violation classes of a run (with `inbound`, only inbound losses count)."""
    return {v.check for v in result.summary.violations
            if not case.inbound or (v.check == "lost_change" and _inbound_loss(v.message))}


def _needed(session: pytest.Session) -> list[RunKey]:
    """The runs of the planted-bug cases this session selected, the longest (KILLS) first."""
    plants = {item.callspec.params["plant"] for item in session.items
              if getattr(item, "originalname", None) == "test_the_oracle_reports_a_planted_bug"}
    keys = {key for plant in plants for key in ((CASES[plant].schedule, CASES[plant].control),
                                                (CASES[plant].schedule, plant))}
    return sorted(keys, key=lambda key: (key[0] != KILLS, str(key)))


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest) -> Iterator[dict[RunKey, Future[RunResult]]]:
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="chaos-plant") as pool:
        yield {key: pool.submit(_run, *key) for key in _needed(request.session)}


@pytest.mark.chaos
@pytest.mark.parametrize("plant", PLANTS)
def test_the_oracle_reports_a_planted_bug(plant: str, runs: dict[RunKey, Future[RunResult]]) -> None:
    case = CASES[plant]
    baseline = runs[(case.schedule, case.control)].result()
    assert case.caught_as not in _classes(baseline, case), baseline.text
    result = runs[(case.schedule, plant)].result()
    assert case.caught_as in _classes(result, case), result.text
    for done in (baseline, result):  # kept for their (expected) violations; ~11 MB each
        if done.run_dir is not None:
            shutil.rmtree(done.run_dir, ignore_errors=True)


def _steps(schedule: Schedule) -> list[Step]:
    return build_schedule(schedule.seed, schedule.ops, schedule.faults)


def test_the_schedules_hold_what_the_cases_need() -> None:
    """What each case's catch rests on (a change to the schedule's drawing may move it)."""
    clean = _steps(CLEAN)
    made_on_the_platform = {s.target for s in clean if s.kind in ("pf_create_person", "pf_create_company")}
    touched_in_salesforce = {slot for s in clean if s.side in ("salesforce", "both")
                             for slot in (s.target, *s.args.get("updates", {}))}
    assert made_on_the_platform - touched_in_salesforce, "echo_filter: a platform record never touched in SF"
    assert any(s.kind == "sf_convert" for s in clean), "conversion_relink: a conversion"
    assert any(s.kind == "pf_edit" and {None, ""} & set(s.args["fields"].values()) for s in clean), \
        "blank_rule: a platform blank"
    kills = _steps(KILLS)
    assert all(kills[i - 1].side == "salesforce" for i, s in enumerate(kills) if s.kind == "kill_leader"), \
        "offset_order: each kill right after a Salesforce edit"


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
