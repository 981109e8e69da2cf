"""What a Lead conversion does, by the Persons linked to its Lead and to its Contact
(`reconciler.conversion.conversion_step`, the pure decision behind `relink`), and which Leads a
Person records as converted into its Contact (`recorded_leads`)."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.conversion import Step, conversion_step, recorded_leads

LEAD = "00Q000000000001AAA"
SECOND = "00Q000000000002AAA"
CONTACT = "003000000000001AAA"
LEAD_PERSON = {"_id": 1, "crm": {"object": "Lead", "id": LEAD}}
SECOND_PERSON = {"_id": 3, "crm": {"object": "Lead", "id": SECOND}}
CONTACT_PERSON = {"_id": 2, "crm": {"object": "Contact", "id": CONTACT}}
CONVERTED_PERSON = {"_id": 1, "crm": {"object": "Contact", "id": CONTACT, "converted_from": [LEAD]}}
# written before a Person could record several Leads: one id, not a list
CONVERTED_BEFORE = {"_id": 1, "crm": {"object": "Contact", "id": CONTACT, "converted_from": LEAD}}
CONVERTED_TWICE = {"_id": 1, "crm": {"object": "Contact", "id": CONTACT, "converted_from": [LEAD, SECOND]}}


class TestConversionStep:
    @pytest.mark.parametrize(("lead", "lead_person", "contact_person", "step"), [
        (LEAD, LEAD_PERSON, None, Step.RELINK),            # the Lead's Person follows the Contact
        (LEAD, LEAD_PERSON, CONTACT_PERSON, Step.RELINK),  # ... folding in the one the Contact's create made
        (LEAD, None, CONTACT_PERSON, Step.MARK),           # the Lead never read (seed 60013, L10)
        (LEAD, None, None, Step.FOLLOW),                   # neither read yet: the Contact's, once made
        (LEAD, None, CONVERTED_PERSON, Step.DONE),         # applied already
        (LEAD, None, CONVERTED_BEFORE, Step.DONE),         # ... recorded before lists
        # a second Lead converted into the Contact of the first (Salesforce: into an existing Contact)
        (SECOND, None, CONVERTED_PERSON, Step.MARK),       # no Person of its own: the Contact's records it
        (SECOND, None, CONVERTED_BEFORE, Step.MARK),
        (SECOND, SECOND_PERSON, CONVERTED_PERSON, Step.FOLD),  # its Person folds into the Contact's
        (SECOND, None, CONVERTED_TWICE, Step.DONE),
        (LEAD, None, CONVERTED_TWICE, Step.DONE),          # the first, re-delivered, still starts nothing
    ])
    def test_the_step_follows_from_the_persons_found(
        self, lead: str, lead_person: dict[str, Any] | None, contact_person: dict[str, Any] | None, step: Step
    ) -> None:
        """A Lead's Person is relinked, or folded into the Contact's when that one records another
        Lead already; without one, the Contact's Person records the Lead, now or once it is made;
        one that records this Lead is left alone."""
        assert conversion_step(lead, lead_person, contact_person) is step


class TestRecordedLeads:
    @pytest.mark.parametrize(("person", "leads"), [
        (CONTACT_PERSON, []),
        (None, []),
        (CONVERTED_BEFORE, [LEAD]),
        (CONVERTED_TWICE, [LEAD, SECOND]),
        ({"crm": {"converted_from": ""}}, []),
    ])
    def test_one_id_or_a_list(self, person: dict[str, Any] | None, leads: list[str]) -> None:
        assert recorded_leads(person) == leads
