"""One step of a schedule, and the fault kinds a step can name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Every fault kind the run can inject (see bench/chaos/faults.py); the default is all of them.
FAULT_KINDS = (
    "kill_leader", "stop_leader", "restart_mongo", "cometd_drop", "rest_5xx", "lock_row",
    "apply_then_drop", "token_expiry", "budget_swing", "cdc_gap", "cdc_overflow",
    "replay_retention", "poison_event", "clock_skew",
)
PROCESS_FAULTS = frozenset({"kill_leader", "stop_leader", "restart_mongo"})


@dataclass
class Step:
    """One operation or fault. `id` is `op-0007` / `f-003`; `heal` names the fault it ends."""

    id: str
    kind: str
    side: str  # "salesforce" | "platform" | "fault" | "heal"
    target: str | None = None
    args: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "side": self.side, "target": self.target, "args": self.args}


__all__ = ["FAULT_KINDS", "PROCESS_FAULTS", "Step"]
