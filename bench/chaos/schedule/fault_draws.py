"""Drawing faults and their heals: which kind, with what arguments, and after how many
operations a fault that lasts is healed. At most one process fault is open at a time."""

from __future__ import annotations

from typing import Any

from bench.chaos.schedule.drawing import Drawing
from bench.chaos.schedule.step import PROCESS_FAULTS, Step
from bench.chaos.schedule.values import salesforce_fields


def _fault_args(d: Drawing, kind: str) -> tuple[str | None, dict[str, Any], int | None] | None:
    """(target slot, args, heal after this many ops) of a fault of `kind`; None when it needs a
    target and no slot fits yet."""
    rng = d.rng
    args: dict[str, Any] = {}
    heal_after: int | None = None
    if kind in ("kill_leader", "stop_leader"):
        heal_after = rng.randint(2, 6)
    elif kind == "restart_mongo":
        args["down_s"] = round(rng.uniform(0.5, 2.0), 1)
    elif kind in ("rest_5xx", "lock_row"):
        args["count"] = rng.randint(1, 4)
        args["status"] = rng.choice((500, 503)) if kind == "rest_5xx" else 400
        if kind == "rest_5xx":  # the service's calls: outbound writes, polling/GAP queries
            args["path"] = rng.choice(("composite/sobjects", "query", "queryAll"))
    elif kind == "budget_swing":
        args["level"] = rng.choice(("polling", "paused"))
        heal_after = rng.randint(2, 8)
    elif kind in ("cdc_gap", "cdc_overflow"):  # a Salesforce change the stream does not carry
        slot = d.pick(people=True, companies=True)
        if slot is None:
            return None
        args["fields"] = salesforce_fields(d, slot.sobject, blanks=False)
        return slot.name, args, heal_after
    elif kind == "replay_retention":
        heal_after = rng.randint(1, 4)
    elif kind == "clock_skew":  # the org's clock a few seconds ahead of or behind the host's
        args["offset_s"] = rng.choice((-1, 1)) * rng.randint(2, 5)
        heal_after = rng.randint(2, 8)
    elif kind == "poison_event":
        args["variant"] = rng.choice(("future_commit", "int_lastmodified", "no_header"))
    return None, args, heal_after


class FaultPlan:
    """The faults drawn so far and the heals still to come."""

    def __init__(self, kinds: tuple[str, ...]) -> None:
        self.kinds = kinds
        self.n_faults = 0
        self.pending_heals: list[tuple[int, Step]] = []  # (heal at op count, heal step)
        self.process_fault_open = False

    def draw(self, d: Drawing) -> None:
        kinds = [k for k in self.kinds if not (k in PROCESS_FAULTS and self.process_fault_open)]
        if not kinds:
            return
        kind = d.rng.choice(kinds)
        drawn = _fault_args(d, kind)
        if drawn is None:
            return
        target, args, heal_after = drawn
        self.n_faults += 1
        fid = f"f-{self.n_faults:03d}"
        d.steps.append(Step(fid, kind, "fault", target, args))
        if heal_after is not None:
            if kind in PROCESS_FAULTS:
                self.process_fault_open = True
            self.pending_heals.append((d.n_ops + heal_after, Step(f"{fid}-heal", kind, "heal", None,
                                                                   {"fault": fid})))

    def flush_heals(self, d: Drawing, *, force: bool = False) -> None:
        """Append the heals that are due (all of them when `force`)."""
        due = [h for h in self.pending_heals if force or h[0] <= d.n_ops]
        for item in due:
            self.pending_heals.remove(item)
            d.steps.append(item[1])
            if item[1].kind in PROCESS_FAULTS:
                self.process_fault_open = False


__all__ = ["FaultPlan"]
