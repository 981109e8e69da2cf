"""How fast a kept chaos run converged: the figures of the ten-seed table (bench/README.md).

`python -m bench.chaos.convergence RUN_DIR [RUN_DIR ...]` reads what a run kept (`--keep`) and
prints, per run:

- **time to converge**: for each acknowledged operation, each value it wrote, the time from its
  acknowledgement to the first successful sync log that carried that value to the other side
  (an inbound log for a Salesforce operation, an outbound one for a platform operation, on the
  same record). A value with no such log was superseded before it was carried, or needed no
  write (the other side held it already): it is counted, not timed. Two bounds keep a log of
  another write from being taken for the value's: the log must come after the operation started
  (the runner's previous stamp: a call whose answer was lost is applied, carried, then sent
  again and acknowledged; such a value converged at once, 0 s), and before another operation
  wrote the same field of the same record (either side: the value was superseded, and a later
  log of the same value belongs to a later write or merge). Two outcomes are not delays and are
  counted, not timed: a `skipped` log of the field on the record before any log carrying the
  value (a merge rule held it: `local_unless_blank` keeps the platform's phone), and a write of
  the value the field's last write (another operation's, the same side) had set already (no
  change: Salesforce sends no event for it, and a later log carrying the value belongs to a
  conversion or a merge). The last is blind to a merge that changed the field in between
  without an operation (a platform value that won a `most_recent` conflict, sent to Salesforce).
  A Person created without a field a Lead requires (`Company`: Salesforce refuses the create,
  `REQUIRED_FIELD_MISSING`, until an edit sets it) is timed from that edit: before it no
  write could carry its values (the product's rule, not a delay).
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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench._common import Row, table

SOURCE_OF_SIDE = {"salesforce": "salesforce", "platform": "local"}  # an op's side -> its logs' source


@dataclass(frozen=True)
class Carried:
    """One successful sync log: when, from which side, which record ids, which values; for a
    `skipped` log, the fields a merge rule held (`held`) and no values."""

    at: float
    source: str
    ids: frozenset[str]
    values: frozenset[str]
    held: frozenset[str] = frozenset()


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
        if log.get("status") != "success":
            continue
        at = datetime.fromisoformat(str(log["ts"])).timestamp()
        ids = frozenset(str(i) for i in (log.get("local_id"), log.get("sf_id")) if i)
        if log.get("type") == "skipped":
            out.append(Carried(at, str(log.get("source")), ids, frozenset(),
                               frozenset(str(f) for f in log.get("fields") or {})))
            continue
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


def _local_names(run_dir: Path) -> dict[tuple[str, str], str]:
    """(Salesforce object, field) -> the local field it maps (the replicas' mappings file), if kept:
    one name per field on both sides, to see one side's write supersede the other's."""
    path = run_dir / "env" / "replica-a" / "mappings.toml"
    if not path.exists():
        return {}
    names: dict[tuple[str, str], str] = {}
    kinds = {"people": ("Lead", "Contact"), "companies": ("Account",)}
    for collection, objects in kinds.items():
        for local, mapping in tomllib.loads(path.read_text(encoding="utf-8")).get(collection, {}).items():
            names.update({(sobject, str(mapping[sobject.lower()])): local for sobject in objects
                          if sobject.lower() in mapping})
    return names


@dataclass(frozen=True)
class _Write:
    """One acknowledged value: its operation, record, field (one name on both sides) and when."""

    step: str
    slot: str
    field: str
    value: str | None   # None: a blank (not traced; it still supersedes the field's earlier value)
    side: str
    started: float   # the runner's stamp before the operation: a log from then on may be its
    at: float        # the acknowledgement


def _acks(steps: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], float]]:
    """Each acknowledged write with the runner's stamp before its operation began (operations
    run one after another)."""
    started: dict[str, float] = {}
    last_at: float | None = None
    for step in steps:
        if step.get("event") == "op" and last_at is not None:
            started[str(step["id"])] = last_at
        last_at = float(step["at"]) if step.get("at") is not None else last_at
        if step.get("event") == "ack" and step.get("status") == "ok" and step.get("fields"):
            yield step, min(float(step["at"]), started.get(str(step["step"]), float(step["at"])))


def _creatable_at(acks: Sequence[tuple[dict[str, Any], float]],
                  names: Mapping[tuple[str, str], str]) -> dict[str, tuple[float, float]]:
    """Slot -> (started, acknowledged) of the platform edit that gave a Person created without
    them every local field a Lead requires (`LastName`, `Company`): its Lead can be created only
    from then on. Slots of Persons created with them are left out."""
    required = {names[("Lead", f)] for f in ("LastName", "Company") if ("Lead", f) in names}
    missing: dict[str, set[str]] = {}
    out: dict[str, tuple[float, float]] = {}
    for step, started in acks:
        slot, fields = str(step.get("slot")), step["fields"]
        if step.get("kind") == "pf_create_person" and required:
            missing[slot] = {f for f in required if _value_key(fields.get(f)) is None}
        elif slot in missing and missing[slot] and step.get("side") == "platform":
            missing[slot] -= {f for f in fields if _value_key(fields[f]) is not None}
            if not missing[slot]:
                out[slot] = (started, float(step["at"]))
    return out


def _writes(steps: Iterable[dict[str, Any]], mapped_owners: frozenset[str] | None,
            names: Mapping[tuple[str, str], str]) -> list[_Write]:
    """Every value an operation wrote and the runner acknowledged, in the run's order."""
    out: list[_Write] = []
    unsynced: set[str] = set()
    acks = list(_acks(steps))
    creatable = _creatable_at(acks, names)
    for step, started in acks:
        owner = step["fields"].get("OwnerId")
        if mapped_owners is not None and str(step.get("kind", "")).startswith("sf_create") \
                and owner not in mapped_owners:
            unsynced.add(str(step.get("slot")))
        if str(step.get("slot")) in unsynced:
            continue
        at, sobject = float(step["at"]), str(step.get("sobject"))
        if at < creatable.get(str(step.get("slot")), (0.0, 0.0))[1]:
            started, at = creatable[str(step.get("slot"))]
        out += [_Write(str(step["step"]), str(step.get("slot")), names.get((sobject, name), name),
                       _value_key(value), str(step["side"]), started, at)
                for name, value in step["fields"].items()]
    return out


def _bounds(writes: Sequence[_Write]) -> tuple[dict[int, float], set[int]]:
    """Each write's place in `writes` -> when another operation next wrote the same field of the
    same record; and the places of the writes that changed nothing (the value another
    operation's write of the field had just set on the same side)."""
    until: dict[int, float] = {}
    unchanged: set[int] = set()
    latest: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, write in enumerate(writes):
        before = [writes[i] for i in latest[(write.slot, write.field)] if writes[i].step != write.step]
        if before and write.value is not None \
                and all((w.side, w.value) == (write.side, write.value) for w in before):
            unchanged.add(index)
        for earlier in latest.pop((write.slot, write.field), []):
            if writes[earlier].step == write.step:
                latest[(write.slot, write.field)].append(earlier)   # one operation's two sides
            else:
                until[earlier] = write.at
        latest[(write.slot, write.field)].append(index)
    return until, unchanged


def convergence_times(steps: Iterable[dict[str, Any]], carried: Sequence[Carried],
                      slot_ids: dict[str, frozenset[str]],
                      mapped_owners: frozenset[str] | None = None,
                      names: Mapping[tuple[str, str], str] | None = None,
                      ) -> tuple[int, list[tuple[float, str]]]:
    """(values traced, [(seconds to converge, op id)]) of every acknowledged value. With
    `mapped_owners`, a Salesforce record created with another owner is left out: it syncs only
    once an owner change maps it (the create rule), which is not a delay. `names` maps a
    Salesforce field to its local one, so a write of either side supersedes the other's."""
    writes = _writes(steps, mapped_owners, names or {})
    until, unchanged = _bounds(writes)
    times = []
    for index, write in enumerate(writes):
        if write.value is None or index in unchanged:
            continue
        ids, source = slot_ids.get(write.slot, frozenset()), SOURCE_OF_SIDE.get(write.side, "")
        end = until.get(index, float("inf"))
        first = next((c for c in carried if write.started <= c.at < end and c.source == source
                      and (write.value in c.values or write.field in c.held) and c.ids & ids), None)
        if first is not None and write.value in first.values:   # not held by a merge rule
            times.append((max(0.0, first.at - write.at), write.step))
    return sum(1 for w in writes if w.value is not None), times


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
    traced, times = convergence_times(steps, carried, _slot_ids(run_dir), _mapped_owners(run_dir),
                                      _local_names(run_dir))
    seconds = sorted(t for t, _ in times)
    slowest = max(times, default=(0.0, "-"))
    windows = fault_windows(steps)
    synced = [c for c in carried if not c.held]   # the throughput counts logs that synced values
    in_faults = sum(1 for c in synced if any(lo <= c.at <= hi for lo, hi in windows))
    window_s = sum(hi - lo for lo, hi in windows)
    span_s = (synced[-1].at - synced[0].at) if synced else 0.0
    seed = next((str(s["seed"]) for s in steps if s.get("event") == "schedule"), run_dir.name)
    return Figures(seed, traced, len(times), _percentile(seconds, 0.5), _percentile(seconds, 0.99),
                   slowest[0], slowest[1], window_s, in_faults, len(synced) - in_faults,
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
