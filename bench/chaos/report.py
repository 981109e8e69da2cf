"""The run directory's JSON lines, the summary table and the last line."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import Row, table
from bench.chaos.oracle import Violation


def _default(value: Any) -> Any:
    return str(value)


class RunLog:
    """`steps.jsonl`: one JSON object a line per operation, fault and heal, as it happened."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "steps.jsonl"
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, item: dict[str, Any]) -> None:
        self._file.write(json.dumps(item, default=_default, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass
class Summary:
    seed: int
    ops_planned: int
    ops_run: int
    acks: Counter[str] = field(default_factory=Counter)         # status -> count
    faults: Counter[str] = field(default_factory=Counter)       # kind -> injected count
    faults_skipped: int = 0
    violations: list[Violation] = field(default_factory=list)
    wall_s: float = 0.0
    quiet_s: float = 0.0
    service_writes: int = 0
    fault_window_s: float = 0.0
    admin_ops: Counter[str] = field(default_factory=Counter)   # admin kind -> run count
    admin: bool = True  # False: run with --no-admin

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())

    def replay(self) -> str:
        return f"python -m bench.chaos --seed {self.seed} --ops {self.ops_planned}" + (
            "" if self.admin else " --no-admin")

    def last_line(self) -> str:
        return f"{self.ops_run} ops, {self.faults_injected} faults, {len(self.violations)} violations"


def violation_lines(summary: Summary) -> list[str]:
    return [f"VIOLATION [{v.check}] {v.message} | seed {summary.seed} | ops {','.join(v.ops) or '-'}"
            f"{' | slot ' + v.slot if v.slot else ''} | replay: {summary.replay()}"
            for v in summary.violations]


def render(summary: Summary, run_dir: Path | None) -> str:
    checks = Counter(v.check for v in summary.violations)
    rows: list[Row] = [
        Row("seed", str(summary.seed)),
        Row("operations run / planned", f"{summary.ops_run} / {summary.ops_planned}"),
        Row("acks ok / skipped / rejected",
            f"{summary.acks['ok']} / {summary.acks['skipped']} / {summary.acks['rejected']}"),
        *(Row(f"  admin {kind}", str(n)) for kind, n in sorted(summary.admin_ops.items())),
        Row("faults injected (skipped)", f"{summary.faults_injected} ({summary.faults_skipped})"),
        *(Row(f"  fault {kind}", str(n)) for kind, n in sorted(summary.faults.items())),
        Row("service record writes to Salesforce", str(summary.service_writes)),
        Row("quiet period (barrier + settle), s", f"{summary.quiet_s:.1f}"),
        Row("wall time, s", f"{summary.wall_s:.1f}"),
        *(Row(f"violations: {check}", str(n), "0", n == 0) for check, n in sorted(checks.items())),
        Row("violations", str(len(summary.violations)), "0", not summary.violations),
    ]
    lines = [table(f"bench.chaos — seed {summary.seed}", rows)]
    lines += violation_lines(summary)
    if run_dir is not None:
        lines.append(f"run directory: {run_dir}")
    lines.append(summary.last_line())
    return "\n".join(lines)


def write_violations(run_dir: Path, summary: Summary, extra: Sequence[dict[str, Any]] = ()) -> None:
    with (run_dir / "violations.jsonl").open("w", encoding="utf-8") as fh:
        for v in summary.violations:
            fh.write(json.dumps({**v.as_json(), "seed": summary.seed, "replay": summary.replay()}) + "\n")
        for item in extra:
            fh.write(json.dumps(item, default=_default) + "\n")


__all__ = ["RunLog", "Summary", "render", "violation_lines", "write_violations"]
