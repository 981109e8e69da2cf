"""Executing operations on both sides, as their users do, and acknowledging them.

Salesforce side (`salesforce_side`): REST as another integration (`client=chaos-other-app`) or a
UI edit through the emulator's control API; conversions, deletes and undeletes as a UI user.
Platform side (`platform_side`): what the platform does — top-level fields plus `updated_at`
written straight to MongoDB. Admin (`admin_side`): mapping edits (a rolling restart and the
remerge), retries of failed sync logs and re-imports, through the admin API of the leader.
`binding` ties the schedule's slots to real ids; `records` holds the entities and acks.

Each executed step yields an *ack*: the step id, which side acknowledged it, when, and what it
wrote (Salesforce field names for Salesforce writes, local names for platform writes). The oracle
is fed the acks in the order they were acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.chaos.env import Environment
from bench.chaos.operations.admin_side import AdminSide
from bench.chaos.operations.binding import Bindings
from bench.chaos.operations.platform_side import PlatformSide
from bench.chaos.operations.records import Ack, Entity, skip
from bench.chaos.operations.salesforce_side import OTHER_APP, SalesforceSide, fit
from bench.chaos.schedule import Step


class Operations:
    """Runs a step on the side it belongs to; a conflict on both."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.bindings = Bindings(env)
        self.entities = self.bindings.entities
        self.salesforce = SalesforceSide(env, self.bindings)
        self.platform = PlatformSide(env, self.bindings)
        self.admin = AdminSide(env, self.bindings)
        sf, pf, admin = self.salesforce, self.platform, self.admin
        self._handlers: dict[str, Callable[[Step], list[Ack]]] = {
            "sf_create_lead": sf.create_lead, "sf_create_contact": sf.create_contact,
            "sf_create_account": sf.create_account, "sf_update": sf.update, "sf_bulk_update": sf.bulk_update,
            "sf_delete": sf.delete, "sf_undelete": sf.undelete, "sf_convert": sf.convert,
            "sf_owner_change": sf.owner_change,
            "pf_create_person": pf.create_person, "pf_create_company": pf.create_company, "pf_edit": pf.edit,
            "conflict": self._conflict,
            "mapping_edit": admin.edit_mappings, "admin_retry": admin.retry,
            "admin_import": admin.import_record,
        }

    def run(self, step: Step) -> list[Ack]:
        return self._handlers[step.kind](step)

    def _conflict(self, step: Step) -> list[Ack]:
        entity = self.bindings.bound(step.target, sf=True, local=True)
        if entity is None:
            return skip(step, "both", "not linked yet")
        sf_fields = fit(entity.sobject, {step.args["sf_field"]: step.args["sf_value"]})
        acks: list[Ack] = []
        for side in (step.args["first"], "platform" if step.args["first"] == "salesforce" else "salesforce"):
            if side == "salesforce":
                acks.append(self.salesforce.write(step, entity, sf_fields, "rest"))
            else:
                fields = {step.args["local_field"]: step.args["local_value"]}
                acks.append(self.platform.update(step, entity, fields))
        return acks

    def silent_update(self, step: Step) -> Ack | None:
        """A Salesforce change without a CDC event (the GAP / overflow faults announce it)."""
        return self.salesforce.silent_update(step)


__all__ = ["OTHER_APP", "Ack", "Entity", "Operations"]
