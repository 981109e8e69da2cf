"""Drawing what an admin does: edit the mappings (a remerge), retry a failed sync log, re-import
a record.

These come from a generator of their own (`random.Random(f"admin-{seed}")`), interleaved into
the schedule the main generator drew: every other step, its id and its arguments stay what they
were before admin operations existed, so a seed's users and faults replay as in earlier notes.
Admin steps are numbered apart (`adm-001`) and do not count towards `--ops`.

A mapping edit toggles one of two things (`env.chaos_mappings`): `people.title`'s merge
behaviour (`most_recent` <-> `salesforce_unless_blank`) or `people.mobile_phone` mapped or not.
It restarts the replicas, so it is not drawn while a process fault or a budget swing is open (a
paused budget holds the remerge back until the swing heals, which the run would wait on): a
retry is drawn in its place. A retry names no log: the runner picks one of the open failed
logs the run has produced, by the drawn fraction `pick`; an import names a slot created earlier.
"""

from __future__ import annotations

import random
from typing import Any

from bench.chaos.schedule.step import PROCESS_FAULTS, Step

ADMIN_RATE = 0.05  # chance that an admin step follows an operation
# kind -> weight; the order is part of the admin stream
ADMIN_MIX = {"mapping_edit": 1, "admin_retry": 2, "admin_import": 2}
TITLE_MERGES = ("most_recent", "salesforce_unless_blank")
_BLOCKING = PROCESS_FAULTS | {"budget_swing"}  # faults during which no mapping edit is drawn
_CREATES = ("sf_create_lead", "sf_create_contact", "sf_create_account", "pf_create_person",
            "pf_create_company")


class _AdminDrawing:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"admin-{seed}")
        self.n = 0
        self.slots: list[str] = []
        self.open_faults: set[str] = set()
        self.mappings: dict[str, Any] = {"title_merge": TITLE_MERGES[0], "mobile_phone": False}

    def see(self, step: Step) -> None:
        """Follow the main schedule: slots created, blocking faults open."""
        if step.kind in _CREATES and step.target:
            self.slots.append(step.target)
        elif step.kind == "sf_convert" and step.args.get("account"):
            self.slots.append(str(step.args["account"]))
        if step.side == "fault" and step.kind in _BLOCKING:
            self.open_faults.add(step.id)
        elif step.side == "heal":
            self.open_faults.discard(str(step.args.get("fault")))

    def draw(self) -> Step | None:
        rng = self.rng
        kind = rng.choices(list(ADMIN_MIX), list(ADMIN_MIX.values()))[0]
        if kind == "mapping_edit" and self.open_faults:
            kind = "admin_retry"
        args: dict[str, Any] = {}
        target: str | None = None
        if kind == "mapping_edit":
            change = rng.choice(("title_merge", "mobile_phone"))
            if change == "title_merge":
                current = TITLE_MERGES.index(self.mappings["title_merge"])
                self.mappings["title_merge"] = TITLE_MERGES[1 - current]
            else:
                self.mappings["mobile_phone"] = not self.mappings["mobile_phone"]
            args = {"change": change, **self.mappings}
        elif kind == "admin_retry":
            args = {"pick": round(rng.random(), 4)}
        else:
            if not self.slots:
                return None
            target = rng.choice(self.slots)
        self.n += 1
        return Step(f"adm-{self.n:03d}", kind, "admin", target, args)


def interleave(seed: int, steps: list[Step]) -> list[Step]:
    """`steps` with admin steps drawn from the admin stream after some of its operations."""
    d = _AdminDrawing(seed)
    out: list[Step] = []
    for step in steps:
        out.append(step)
        d.see(step)
        if step.side in ("salesforce", "platform", "both") and d.rng.random() < ADMIN_RATE:
            admin = d.draw()
            if admin is not None:
                out.append(admin)
    return out


__all__ = ["ADMIN_MIX", "ADMIN_RATE", "TITLE_MERGES", "interleave"]
