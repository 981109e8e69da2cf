"""What a Lead conversion does, by the Persons linked to its Lead and to its Contact
(`reconciler.conversion.conversion_step`, the pure decision behind `relink`)."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.conversion import Step, conversion_step

LEAD = "00Q000000000001AAA"
CONTACT = "003000000000001AAA"
LEAD_PERSON = {"_id": 1, "crm": {"object": "Lead", "id": LEAD}}
CONTACT_PERSON = {"_id": 2, "crm": {"object": "Contact", "id": CONTACT}}
CONVERTED_PERSON = {"_id": 1, "crm": {"object": "Contact", "id": CONTACT, "converted_from": LEAD}}


class TestConversionStep:
    @pytest.mark.parametrize(("lead_person", "contact_person", "step"), [
        (LEAD_PERSON, None, Step.RELINK),              # the Lead's Person follows the Contact
        (LEAD_PERSON, CONTACT_PERSON, Step.RELINK),    # ... folding in the one the Contact's create made
        (None, CONTACT_PERSON, Step.MARK),             # the Lead never read (seed 60013, L10)
        (None, None, Step.FOLLOW),                     # neither read yet: the Contact's, once made
        (None, CONVERTED_PERSON, Step.DONE),           # applied already
    ])
    def test_the_step_follows_from_the_persons_found(
        self, lead_person: dict[str, Any] | None, contact_person: dict[str, Any] | None, step: Step
    ) -> None:
        """A Lead's Person is relinked; without one, the Contact's Person records the Lead, now
        or once it is made; one that records a Lead already is left alone."""
        assert conversion_step(lead_person, contact_person) is step
