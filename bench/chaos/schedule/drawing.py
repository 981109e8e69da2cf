"""The state every draw shares: the seeded generator, the slots that exist, the steps so far."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from bench.chaos.schedule.step import Step


@dataclass
class Slot:
    name: str
    sobject: str  # Lead | Contact | Account (the Salesforce object it is, or becomes)
    origin: str   # salesforce | platform
    owner_mapped: bool = True
    deleted: bool = False
    converted: bool = False


class Drawing:
    """A schedule being drawn: its own picture of the slots, and the steps drawn so far."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.slots: dict[str, Slot] = {}
        self.counts: dict[str, int] = {}
        self.steps: list[Step] = []
        self.n_ops = 0

    def new_slot(self, prefix: str, sobject: str, origin: str, **kw: Any) -> Slot:
        self.counts[prefix] = self.counts.get(prefix, 0) + 1
        slot = Slot(f"{prefix}{self.counts[prefix]}", sobject, origin, **kw)
        self.slots[slot.name] = slot
        return slot

    def word(self, what: str) -> str:
        return f"{what}{self.rng.randrange(10_000):04d}"

    def pick(self, *, people: bool = True, companies: bool = False, alive: bool = True,
             sobject: str | None = None) -> Slot | None:
        pool = [s for s in self.slots.values()
                if ((people and s.sobject in ("Lead", "Contact")) or (companies and s.sobject == "Account"))
                and (not alive or not s.deleted) and (sobject is None or s.sobject == sobject)]
        return self.rng.choice(pool) if pool else None

    def op(self, kind: str, side: str, target: str | None, **args: Any) -> Step:
        self.n_ops += 1
        step = Step(f"op-{self.n_ops:04d}", kind, side, target, args)
        self.steps.append(step)
        return step


__all__ = ["Drawing", "Slot"]
