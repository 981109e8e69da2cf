"""Mappings are checked against Salesforce's describe before anything syncs."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.mapping_check import MappingError, check_mappings, mapping_problems
from settings import Mappings
from settings import parse_mappings as parse_file

# Rules that need the owner mapping are off: these mappings name only the fields under test.
RULES_OFF = ('[rules]\ncreate_person_from_salesforce = false\ncreate_in_salesforce = "none"\n'
             'on_salesforce_owner_change = "ignore"\n')


def parse_mappings(fields: str) -> Mappings:
    return parse_file(fields + RULES_OFF)

DESCRIBES: dict[str, dict[str, Any]] = {
    "Lead": {"fields": [
        {"name": "FirstName", "updateable": True, "calculated": False},
        {"name": "Score__c", "updateable": False, "calculated": True},
        {"name": "CreatedDate", "updateable": False, "calculated": False},
    ]},
    "Contact": {"fields": [{"name": "FirstName", "updateable": True, "calculated": False}]},
    "Account": {"fields": [{"name": "Name", "updateable": True, "calculated": False}]},
}


class TestMappingProblems:
    @pytest.mark.parametrize(
        ("toml", "expected"),
        [
            ('[people.first_name]\nlead = "FirstName"\ncontact = "FirstName"\n', []),
            ('[people.score]\nlead = "Score__c"\ndirection = "from_salesforce"\n', []),
            ('[people.score]\nlead = "Score__c"\n', ["people.score: Lead.Score__c is read-only"]),
            ('[people.score]\nlead = "Score__c"\ndirection = "to_salesforce"\n',
             ["people.score: Lead.Score__c is read-only"]),
            ('[people.created]\nlead = "CreatedDate"\ndirection = "both"\n',
             ["people.created: Lead.CreatedDate is read-only"]),
            ('[people.nick]\nlead = "Nick__c"\n', ["people.nick: Lead has no field 'Nick__c'"]),
            ('[companies.name]\naccount = "Nom"\n', ["companies.name: Account has no field 'Nom'"]),
        ],
    )
    def test_table(self, toml: str, expected: list[str]) -> None:
        """Read-only fields may only flow inbound; unknown fields are named."""
        problems = mapping_problems(parse_mappings(toml), ["Lead", "Contact", "Account"], DESCRIBES)
        assert len(problems) == len(expected)
        for problem, start in zip(problems, expected, strict=True):
            assert problem.startswith(start)

    def test_objects_not_synced_are_not_checked(self) -> None:
        """A mapping for an object outside SFSYNC_SYNC__OBJECTS is not held against the describe."""
        mappings = parse_mappings('[people.nick]\ncontact = "Nick__c"\n')
        assert mapping_problems(mappings, ["Lead"], DESCRIBES) == []

    def test_check_raises_one_error_naming_every_field(self) -> None:
        """`check_mappings` raises a fatal MappingError listing each problem."""
        mappings = parse_mappings('[people.score]\nlead = "Score__c"\n[people.nick]\nlead = "Nick__c"\n')
        with pytest.raises(MappingError, match=r"Score__c.*Nick__c"):
            check_mappings(mappings, ["Lead"], DESCRIBES)
