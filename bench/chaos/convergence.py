"""How fast a kept chaos run converged: the figures of the ten-seed table (bench/README.md).

`python -m bench.chaos.convergence RUN_DIR [RUN_DIR ...]` reads what a run kept (`--keep`) and
prints, per run:

- **time to converge**: for each acknowledged operation, each value it wrote, the time from its
  acknowledgement to the first successful sync log that carried that value to the other side
  (an inbound log for a Salesforce operation, an outbound one for a platform operation, on the
  same record). A value with no such log was superseded before it was carried, or needed no
  write (the other side held it already): it is counted, not timed.
- **sync throughput during faults**: successful sync logs per second inside the union of the
  fault windows (injection to heal), beside the same figure outside them.

Both sides stamp on this host's clock (the runner's `at`, the service's `ts`), so the
differences are real elapsed times, not a comparison across clocks.
"""

from __future__ import annotations

import json
import sys
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench._common import Row, table

SOURCE_OF_SIDE = {"salesforce": "salesforce", "platform": "local"}  # an op's side -> its logs' source


@dataclass(frozen=True)
class Carried:
    """One successful sync log: when, from which side, which record ids, which values."""

    at: float
    source: str
    ids: frozenset[str]
    values: frozenset[str]


@dataclass(frozen=True)
class Figures:
    seed: str
    values: int
    timed: int
    p50_s: float
    p99_s: float
    max_s: float
    max_op: str
    fault_window_s: float
    logs_in_faults: int
    logs_outside: int
    outside_s: float

    @property
    def rate_in_faults(self) -> float:
        return self.logs_in_faults / self.fault_window_s if self.fault_window_s else 0.0

    @property
    def rate_outside(self) -> float:
        return self.logs_outside / self.outside_s if self.outside_s else 0.0


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _value_key(value: Any) -> str | None:
    # Blanks are not traced: a blank "arrives" whenever the other side is already blank.
    if value is None or value == "":
        return None
    return json.dumps(value, sort_keys=True)


def _carried(run_dir: Path) -> list[Carried]:
    out = []
    for log in _lines(run_dir / "sync_logs.jsonl"):
        if log.get("status") != "success" or log.get("type") == "skipped":
            continue
        at = datetime.fromisoformat(str(log["ts"])).timestamp()
        ids = frozenset(str(i) for i in (log.get("local_id"), log.get("sf_id")) if i)
        values = frozenset(k for change in (log.get("fields") or {}).values()
                           if isinstance(change, dict) and (k := _value_key(change.get("new"))))
        out.append(Carried(at, str(log.get("source")), ids, values))
    return sorted(out, key=lambda c: c.at)


def _slot_ids(run_dir: Path) -> dict[str, frozenset[str]]:
    ids: dict[str, set[str]] = defaultdict(set)
    for entity in _lines(run_dir / "entities.jsonl"):
        ids[str(entity["slot"])].update(str(entity[k]) for k in ("local_id", "sf_id", "lead_id")
                                        if entity.get(k))
    return {slot: frozenset(v) for slot, v in ids.items()}


def _mapped_owners(run_dir: Path) -> frozenset[str] | None:
    """The Salesforce users `[[users]]` maps (the replicas' mappings file), if kept."""
    path = run_dir / "env" / "replica-a" / "mappings.toml"
    if not path.exists():
        return None
    users = tomllib.loads(path.read_text(encoding="utf-8")).get("users", [])
    return frozenset(str(u.get("salesforce")) for u in users)


def convergence_times(steps: Iterable[dict[str, Any]], carried: Sequence[Carried],
                      slot_ids: dict[str, frozenset[str]],
                      mapped_owners: frozenset[str] | None = None) -> tuple[int, list[tuple[float, str]]]:
    """(values traced, [(seconds to converge, op id)]) of every acknowledged value. With
    `mapped_owners`, a Salesforce record created with another owner is left out: it syncs only
    once an owner change maps it (the create rule), which is not a delay."""
    traced, times = 0, []
    unsynced: set[str] = set()
    for step in steps:
        if step.get("event") != "ack" or step.get("status") != "ok" or not step.get("fields"):
            continue
        owner = step["fields"].get("OwnerId")
        if mapped_owners is not None and str(step.get("kind", "")).startswith("sf_create") \
                and owner not in mapped_owners:
            unsynced.add(str(step.get("slot")))
        if str(step.get("slot")) in unsynced:
            continue
        at, ids = float(step["at"]), slot_ids.get(str(step.get("slot")), frozenset())
        source = SOURCE_OF_SIDE.get(str(step["side"]), "")
        for value in filter(None, map(_value_key, step["fields"].values())):
            traced += 1
            first = next((c.at for c in carried if c.at >= at and c.source == source
                          and value in c.values and c.ids & ids), None)
            if first is not None:
                times.append((first - at, str(step["step"])))
    return traced, times


def fault_windows(steps: Iterable[dict[str, Any]]) -> list[tuple[float, float]]:
    """The union of [injected, healed] intervals, merged and sorted."""
    start: dict[str, float] = {}
    spans: list[tuple[float, float]] = []
    for step in steps:
        if step.get("event") == "fault" and step.get("status") == "injected":
            start[str(step["id"])] = float(step["at"])
        elif step.get("event") == "heal" and (fault := (step.get("args") or {}).get("fault")) in start:
            spans.append((start.pop(str(fault)), float(step["at"])))
    merged: list[tuple[float, float]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def figures(run_dir: Path) -> Figures:
    steps = list(_lines(run_dir / "steps.jsonl"))
    carried = _carried(run_dir)
    traced, times = convergence_times(steps, carried, _slot_ids(run_dir), _mapped_owners(run_dir))
    seconds = sorted(t for t, _ in times)
    slowest = max(times, default=(0.0, "-"))
    windows = fault_windows(steps)
    in_faults = sum(1 for c in carried if any(lo <= c.at <= hi for lo, hi in windows))
    window_s = sum(hi - lo for lo, hi in windows)
    span_s = (carried[-1].at - carried[0].at) if carried else 0.0
    seed = next((str(s["seed"]) for s in steps if s.get("event") == "schedule"), run_dir.name)
    return Figures(seed, traced, len(times), _percentile(seconds, 0.5), _percentile(seconds, 0.99),
                   slowest[0], slowest[1], window_s, in_faults, len(carried) - in_faults,
                   max(0.0, span_s - window_s))


def render(f: Figures) -> str:
    return table(f"bench.chaos.convergence — seed {f.seed}", [
        Row("acknowledged values traced / timed", f"{f.values} / {f.timed}"),
        Row("time to converge p50 / p99, s", f"{f.p50_s:.1f} / {f.p99_s:.1f}"),
        Row("longest time to converge, s (op)", f"{f.max_s:.1f} ({f.max_op})"),
        Row("fault windows, s", f"{f.fault_window_s:.0f}"),
        Row("sync logs/s during faults / outside", f"{f.rate_in_faults:.2f} / {f.rate_outside:.2f}"),
    ])


def main(argv: Sequence[str]) -> int:
    if not argv:
        print("usage: python -m bench.chaos.convergence RUN_DIR [RUN_DIR ...]", file=sys.stderr)
        return 2
    for arg in argv:
        print(render(figures(Path(arg))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
