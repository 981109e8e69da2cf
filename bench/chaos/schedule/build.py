"""The order of drawing: a few operations first, then operations drawn from the mix with a
fault before one now and then, heals when due, and every heal still open at the end."""

from __future__ import annotations

from collections.abc import Callable

from bench.chaos.schedule import admin_ops, conflict, platform_ops, salesforce_ops
from bench.chaos.schedule.drawing import Drawing
from bench.chaos.schedule.fault_draws import FaultPlan
from bench.chaos.schedule.step import FAULT_KINDS, Step

FAULT_RATE = 0.12  # chance that a fault step comes before an operation

# kind -> (weight, draw); a draw returns False when no slot fits yet and another kind is drawn.
# The order is part of the schedule (it is the order `random.choices` sees).
OP_MIX: dict[str, tuple[int, Callable[[Drawing], bool]]] = {
    "sf_create_lead": (10, salesforce_ops.create_lead),
    "sf_create_contact": (3, salesforce_ops.create_contact),
    "sf_create_account": (4, salesforce_ops.create_account),
    "sf_update": (22, salesforce_ops.update),
    "sf_delete": (2, salesforce_ops.delete),
    "sf_undelete": (2, salesforce_ops.undelete),
    "sf_convert": (3, salesforce_ops.convert),
    "sf_owner_change": (4, salesforce_ops.owner_change),
    "sf_bulk_update": (3, salesforce_ops.bulk_update),
    "pf_create_person": (8, platform_ops.create_person),
    "pf_create_company": (3, platform_ops.create_company),
    "pf_edit_person": (20, platform_ops.edit_person),
    "pf_edit_company": (5, platform_ops.edit_company),
    "conflict": (8, conflict.conflict),
}


def draw_op(d: Drawing) -> None:
    kinds = list(OP_MIX)
    weights = [weight for weight, _ in OP_MIX.values()]
    while True:
        kind = d.rng.choices(kinds, weights)[0]
        if OP_MIX[kind][1](d):
            return


def build_schedule(seed: int, ops: int, faults: tuple[str, ...] = FAULT_KINDS, *,
                   admin: bool = True) -> list[Step]:
    """The steps of a run: `ops` operations, faults at FAULT_RATE between them, every heal; with
    `admin`, admin steps interleaved from their own stream (`admin_ops`: without them the
    schedule is the one seeds drew before admin operations existed)."""
    unknown = set(faults) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kind(s): {', '.join(sorted(unknown))}")
    d = Drawing(seed)
    plan = FaultPlan(tuple(k for k in FAULT_KINDS if k in faults))
    # a few records on both sides before the first fault
    for _ in range(min(6, ops)):
        draw_op(d)
    while d.n_ops < ops:
        if plan.kinds and d.rng.random() < FAULT_RATE:
            plan.draw(d)
        draw_op(d)
        plan.flush_heals(d)
    plan.flush_heals(d, force=True)
    return admin_ops.interleave(seed, d.steps) if admin else d.steps


__all__ = ["FAULT_RATE", "OP_MIX", "build_schedule", "draw_op"]
