"""Drawing what Salesforce users do: creates, edits (REST or UI), bulk edits, deletes and
undeletes, Lead conversions, owner changes. Each returns False when no slot fits yet."""

from __future__ import annotations

from bench.chaos.schedule.drawing import Drawing
from bench.chaos.schedule.values import (
    INDUSTRIES,
    MAPPED_OWNERS,
    UNMAPPED_OWNER,
    person_fields,
    salesforce_fields,
)


def create_lead(d: Drawing) -> bool:
    mapped = d.rng.random() < 0.85
    slot = d.new_slot("L", "Lead", "salesforce", owner_mapped=mapped)
    fields = {"FirstName": d.word("Fn"), "LastName": d.word("Ln"), "Company": d.word("Co"),
              "Email": f"{slot.name.lower()}.{d.word('e')}@chaos.example.com",
              "OwnerId": d.rng.choice(MAPPED_OWNERS) if mapped else UNMAPPED_OWNER}
    fields.update({k: v for k, v in person_fields(d, "Lead", blanks=False).items()
                   if k not in ("LastName", "Company")})
    d.op("sf_create_lead", "salesforce", slot.name, fields=fields)
    return True


def create_contact(d: Drawing) -> bool:
    account = d.pick(people=False, companies=True)
    slot = d.new_slot("C", "Contact", "salesforce")
    fields = {"FirstName": d.word("Fn"), "LastName": d.word("Ln"),
              "Email": f"{slot.name.lower()}.{d.word('e')}@chaos.example.com",
              "OwnerId": d.rng.choice(MAPPED_OWNERS)}
    extra = person_fields(d, "Contact", blanks=False)
    fields.update({k: v for k, v in extra.items() if k != "LastName"})
    d.op("sf_create_contact", "salesforce", slot.name, fields=fields,
         account=account.name if account else None)
    return True


def create_account(d: Drawing) -> bool:
    slot = d.new_slot("A", "Account", "salesforce")
    fields = {"Name": d.word("Acct"), "Website": f"https://{slot.name.lower()}{d.word('w')}.example.com",
              "Industry": d.rng.choice(INDUSTRIES), "OwnerId": MAPPED_OWNERS[0]}
    d.op("sf_create_account", "salesforce", slot.name, fields=fields)
    return True


def update(d: Drawing) -> bool:
    slot = d.pick(people=True, companies=True)
    if slot is None:
        return False
    fields = salesforce_fields(d, slot.sobject)
    d.op("sf_update", "salesforce", slot.name, fields=fields, via=d.rng.choice(("rest", "ui")))
    return True


def bulk_update(d: Drawing) -> bool:
    slots = [s for s in d.slots.values() if s.sobject == "Lead" and not s.deleted]
    if len(slots) < 2:
        return False
    chosen = d.rng.sample(slots, min(len(slots), d.rng.randint(2, 4)))
    d.op("sf_bulk_update", "salesforce", None,
         updates={s.name: person_fields(d, "Lead", blanks=False) for s in chosen})
    return True


def delete(d: Drawing) -> bool:
    slot = d.pick(sobject="Lead") or d.pick(sobject="Contact")
    if slot is None:
        return False
    slot.deleted = True
    d.op("sf_delete", "salesforce", slot.name)
    return True


def undelete(d: Drawing) -> bool:
    pool = [s for s in d.slots.values() if s.deleted]
    if not pool:
        return False
    slot = d.rng.choice(pool)
    slot.deleted = False
    d.op("sf_undelete", "salesforce", slot.name)
    return True


def convert(d: Drawing) -> bool:
    slot = d.pick(sobject="Lead")
    if slot is None:
        return False
    slot.sobject, slot.converted = "Contact", True
    account = d.new_slot("A", "Account", "salesforce")
    d.op("sf_convert", "salesforce", slot.name, account=account.name)
    return True


def owner_change(d: Drawing) -> bool:
    slot = d.pick(people=True)
    if slot is None:
        return False
    owner = d.rng.choice((*MAPPED_OWNERS, UNMAPPED_OWNER))
    d.op("sf_owner_change", "salesforce", slot.name, owner=owner)
    return True


__all__ = ["bulk_update", "convert", "create_account", "create_contact", "create_lead", "delete",
           "owner_change", "undelete", "update"]
