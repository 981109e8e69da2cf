"""The seeded schedule: operations on both sides and faults, drawn from `random.Random(seed)`.

The schedule is a pure function of (seed, ops, fault kinds): it names records by *slots*
(`L3` a Lead created in Salesforce, `C2` a Contact, `A1` an Account, `P4` a Person created on
the platform, `Q1` a Company created on the platform) and keeps its own small picture of which
slots exist, are deleted or converted, so every step it draws is one a user could make. The
runner binds slots to real ids as it goes; a step whose target is not there yet (its record has
not crossed over) is acknowledged as skipped, which changes what the oracle is fed but never the
schedule.

Where each part is drawn:

- `step`: the `Step` the schedule is made of, and the fault kinds;
- `drawing`: the shared state — the random generator, the slots and the steps drawn so far;
- `values`: owners, picklists and the field values users type on either side;
- `salesforce_ops` / `platform_ops` / `conflict`: the operations of each side, and both at once;
- `fault_draws`: faults and when each one is healed;
- `build`: the mix of operations and the order of drawing (`build_schedule`).

Every draw takes from the one generator, so the order of calls is the schedule: moving a draw
changes every schedule after it.
"""

from __future__ import annotations

from bench.chaos.schedule.build import build_schedule
from bench.chaos.schedule.step import FAULT_KINDS, Step
from bench.chaos.schedule.values import MAPPED_OWNERS, OWNER_USERS, UNMAPPED_OWNER

__all__ = ["FAULT_KINDS", "MAPPED_OWNERS", "OWNER_USERS", "UNMAPPED_OWNER", "Step", "build_schedule"]
