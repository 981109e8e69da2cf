"""Owners both ways (issue 10): a platform owner goes out as `OwnerId` through `[[users]]`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from reconciler.local_changes import plan_changes
from reconciler.store import LocalChange
from settings import parse_mappings

T0 = datetime(2025, 1, 1, tzinfo=UTC)
SF_USER = "005000000000001AAA"
MAPPINGS_TOML = f"""
[people.last_name]
lead = "LastName"
[people.company_name]
lead = "Company"
[people.owner_crm_id]
lead = "OwnerId"
[[users]]
local = "u-1"
salesforce = "{SF_USER}"
[rules]
create_in_salesforce = "lead"
"""
MAPPINGS = parse_mappings(MAPPINGS_TOML)


def change(op: str, doc: dict[str, Any], *paths: str) -> LocalChange:
    return LocalChange(op, "p-1", doc, frozenset(paths), T0)


def linked(**fields: Any) -> dict[str, Any]:
    return {"_id": "p-1", "crm": {"object": "Lead", "id": "00Q000000000001AAA"}, "last_name": "Lee",
            "updated_at": T0, **fields}


class TestOwnersOut:
    def test_a_person_created_with_a_mapped_owner_goes_out_owned_by_that_user(self) -> None:
        plan = plan_changes(MAPPINGS, ("Lead",), "people", [change(
            "insert", {"_id": "p-1", "last_name": "Lee", "company_name": "Acme", "owner_id": "u-1"})])
        [write] = plan.writes
        assert write.sf_id is None and write.fields["OwnerId"] == SF_USER

    def test_an_edit_of_a_person_not_created_yet_still_sends_its_owner(self) -> None:
        """Chaos seed 4711, P26: the Person's create was refused (no company yet); its next edit
        (the company) queues the create again, with every mapped field: the owner too, or
        Salesforce makes the integration user the owner and that comes back to the Person."""
        plan = plan_changes(MAPPINGS, ("Lead",), "people", [change(
            "update", {"_id": "p-1", "last_name": "Lee", "company_name": "Acme", "owner_id": "u-1"},
            "company_name", "updated_at")])
        [write] = plan.writes
        assert write.sf_id is None and write.fields["OwnerId"] == SF_USER

    def test_a_local_owner_change_updates_owner_id(self) -> None:
        plan = plan_changes(MAPPINGS, ("Lead",), "people", [change(
            "update", linked(owner_id="u-1"), "owner_id", "updated_at")])
        [write] = plan.writes
        assert write.fields == {"OwnerId": SF_USER} and plan.logs == []

    def test_an_owner_salesforce_already_has_is_not_resent(self) -> None:
        doc = linked(owner_id="u-1", crm={"object": "Lead", "id": "00Q000000000001AAA", "owner_id": SF_USER})
        assert plan_changes(MAPPINGS, ("Lead",), "people", [change("update", doc, "owner_id")]).writes == []

    def test_an_unmapped_owner_is_not_sent_and_one_failed_log_names_the_user(self) -> None:
        plan = plan_changes(MAPPINGS, ("Lead",), "people", [change(
            "insert", {"_id": "p-1", "last_name": "Lee", "company_name": "Acme", "owner_id": "u-9"})])
        [write] = plan.writes
        assert "OwnerId" not in write.fields
        [entry] = plan.logs
        assert entry.status == "failed" and entry.error is not None and "u-9" in entry.error

    def test_an_owner_change_stamps_the_owners_time(self) -> None:
        """The owner's field time is what `most_recent` weighs against Salesforce's owner change."""
        plan = plan_changes(MAPPINGS, ("Lead",), "people", [change(
            "update", linked(owner_id="u-1"), "owner_id", "updated_at")])
        assert plan.field_times == {"p-1": {"owner_id": T0}}


class TestAWholeRecordOfALinkedPerson:
    """A change that says nothing of what changed (a replaced document, one polled without a
    baseline) plans every field. Where Salesforce's owner is a user `[[users]]` does not map (the
    Person kept its owner: `update_owner` had no local user to give it), the Person's owner is
    not a change: sent, it would put the old owner back over Salesforce's move (chaos issue 14,
    the owner class)."""

    UNMAPPED = "005000000000009AAA"

    def test_the_owner_is_neither_sent_nor_stamped(self) -> None:
        doc = linked(owner_id="u-1", last_name="Li",
                     crm={"object": "Lead", "id": "00Q000000000001AAA", "owner_id": self.UNMAPPED})
        plan = plan_changes(MAPPINGS, ("Lead",), "people", [change("replace", doc)])
        [write] = plan.writes
        assert write.fields == {"LastName": "Li"}
        assert "owner_id" not in plan.field_times["p-1"]

    def test_an_owner_salesforce_got_from_the_platform_is_still_sent(self) -> None:
        """Salesforce's owner is a mapped user: the Person's differing owner is the platform's."""
        other = "005000000000002AAA"
        mappings = parse_mappings(MAPPINGS_TOML + f'[[users]]\nlocal = "u-2"\nsalesforce = "{other}"\n')
        doc = linked(owner_id="u-1", crm={"object": "Lead", "id": "00Q000000000001AAA", "owner_id": other})
        [write] = plan_changes(mappings, ("Lead",), "people", [change("replace", doc)]).writes
        assert write.fields["OwnerId"] == SF_USER


class TestUnmappedOwner:
    """README (Owners): a platform owner with no `[[users]]` entry is not sent; one failed log
    names the user and `OwnerId`, so only a later write that sends the owner resolves it."""

    def test_an_owner_change_alone_to_an_unmapped_user_sends_nothing_and_logs_the_failure(self) -> None:
        plan = plan_changes(MAPPINGS, ("Lead",), "people", [change(
            "update", linked(owner_id="u-9"), "owner_id", "updated_at")])
        assert plan.writes == []
        [entry] = plan.logs
        assert (entry.status, entry.type, entry.sf_id, entry.local_id) == (
            "failed", "update", "00Q000000000001AAA", "p-1")
        assert entry.error is not None and "u-9" in entry.error

    def test_the_failure_names_owner_id(self) -> None:
        plan = plan_changes(MAPPINGS, ("Lead",), "people", [change(
            "update", linked(owner_id="u-9", last_name="Li"), "owner_id", "last_name", "updated_at")])
        [write] = plan.writes
        assert write.fields == {"LastName": "Li"}
        [entry] = plan.logs
        assert list(entry.fields) == ["OwnerId"]
