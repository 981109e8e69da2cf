"""Drawing what platform users do: create a Person or a Company, edit one. Each returns False
when no slot fits yet."""

from __future__ import annotations

from typing import Any

from bench.chaos.schedule.drawing import Drawing
from bench.chaos.schedule.values import INDUSTRIES, MAPPED_OWNERS, local_company_fields, local_person_fields


def create_person(d: Drawing) -> bool:
    slot = d.new_slot("P", "Lead", "platform")
    fields: dict[str, Any] = {
        "first_name": d.word("fn"), "last_name": d.word("ln"), "company_name": d.word("co"),
        "email": f"{slot.name.lower()}.{d.word('e')}@platform.example.com",
        "title": d.word("title"), "owner_crm_id": MAPPED_OWNERS[0], "owner_id": "u-1",
    }
    if d.rng.random() < 0.1:
        del fields["company_name"]  # a Lead needs Company: a failed create, one failed log
    d.op("pf_create_person", "platform", slot.name, fields=fields)
    return True


def create_company(d: Drawing) -> bool:
    slot = d.new_slot("Q", "Account", "platform")
    fields = {"name": d.word("Company"), "domain": f"{slot.name.lower()}{d.word('d')}.example.org",
              "industry": d.rng.choice(INDUSTRIES), "city": d.word("ccity")}
    d.op("pf_create_company", "platform", slot.name, fields=fields)
    return True


def edit_person(d: Drawing) -> bool:
    slot = d.pick(people=True)
    if slot is None:
        return False
    d.op("pf_edit", "platform", slot.name, fields=local_person_fields(d))
    return True


def edit_company(d: Drawing) -> bool:
    slot = d.pick(people=False, companies=True)
    if slot is None:
        return False
    d.op("pf_edit", "platform", slot.name, fields=local_company_fields(d))
    return True


__all__ = ["create_company", "create_person", "edit_company", "edit_person"]
