"""Drawing a conflict: the same field edited on both sides within the same second."""

from __future__ import annotations

from bench.chaos.schedule.drawing import Drawing

# (local field, Lead field, Contact field)
CONFLICT_FIELDS = (("title", "Title", "Title"), ("first_name", "FirstName", "FirstName"),
                   ("city", "City", "MailingCity"), ("phone", "Phone", "Phone"))


def conflict(d: Drawing) -> bool:
    slot = d.pick(people=True)
    if slot is None:
        return False
    local_field, lead_field, contact_field = d.rng.choice(CONFLICT_FIELDS)
    sf_field = lead_field if slot.sobject == "Lead" else contact_field
    first = d.rng.choice(("salesforce", "platform"))
    d.op("conflict", "both", slot.name, local_field=local_field, sf_field=sf_field,
         sf_value=d.word("SfWins"), local_value=d.word("pfwins"), first=first)
    return True


__all__ = ["conflict"]
