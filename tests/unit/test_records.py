"""Field translation SF <-> local, blank detection, dotted paths and normalisation."""

from __future__ import annotations

import pytest

from reconciler.errors import SkippableError
from reconciler.objects import collection_for
from reconciler.records import (
    check_value,
    get_path,
    is_blank,
    local_to_sf,
    normalise_domain,
    normalise_email,
    same_sf_id,
)
from settings import parse_mappings

MAPPINGS = parse_mappings("""
[people.first_name]
lead = "FirstName"
contact = "FirstName"
[people.city]
lead = "City"
contact = "MailingCity"
[people."custom_fields.linkedin"]
lead = "LinkedIn__c"
[people.owner_crm_id]
lead = "OwnerId"
direction = "from_salesforce"
[companies.name]
account = "Name"
[companies.domain]
account = "Website"
""")


class TestBlank:
    @pytest.mark.parametrize(("value", "blank"), [
        (None, True), ("", True), ("  ", True), ([], True), ({}, True),
        ("a", False), (0, False), (False, False), (["x"], False), (0.0, False),
    ])
    def test_is_blank(self, value: object, blank: bool) -> None:
        """None, empty/whitespace strings and empty lists are blank; numbers and booleans are data."""
        assert is_blank(value) is blank


class TestDottedPaths:
    def test_get_path_reads_nested_and_missing(self) -> None:
        """A dotted path reads nested documents and gives None for any missing step."""
        doc = {"custom_fields": {"linkedin": "in/a"}, "x": 1}
        assert get_path(doc, "custom_fields.linkedin") == "in/a"
        assert get_path(doc, "custom_fields.twitter") is None
        assert get_path(doc, "x.y") is None
        assert get_path(None, "x") is None


class TestTranslation:
    def test_local_to_sf_leaves_blanks_out(self) -> None:
        """Local -> Salesforce never carries a blank; dotted fields are read from nested documents."""
        doc = {"first_name": " ", "city": "Oslo", "custom_fields": {"linkedin": "in/a"}}
        assert local_to_sf(MAPPINGS.for_object("Lead"), doc) == {"City": "Oslo", "LinkedIn__c": "in/a"}


class TestValues:
    @pytest.mark.parametrize("value", ["a", 1, 1.5, True, None, ["a", "b"]])
    def test_scalars_are_accepted(self, value: object) -> None:
        """Scalars and lists of scalars can be stored."""
        check_value("F", value)

    @pytest.mark.parametrize("value", [{"City": "x"}, [{"a": 1}], object()])
    def test_structures_are_rejected(self, value: object) -> None:
        """A nested structure (an unflattened compound field) is a skippable, named failure."""
        with pytest.raises(SkippableError, match="INVALID_TYPE: F"):
            check_value("F", value)

    def test_unknown_object_is_skippable(self) -> None:
        """An object this service does not sync is a skippable error."""
        assert collection_for("Contact") == "people"
        with pytest.raises(SkippableError, match="Opportunity"):
            collection_for("Opportunity")


class TestNormalisation:
    @pytest.mark.parametrize(("raw", "expected"), [
        ("https://WWW.Acme.com/about", "acme.com"), ("acme.com", "acme.com"),
        ("http://acme.com:8080", "acme.com"),
        ("www.acme.co.uk/", "acme.co.uk"), ("", None), (None, None), ("  ", None),
    ])
    def test_domain(self, raw: object, expected: str | None) -> None:
        """Websites reduce to a lower-case host without scheme, www., port or path."""
        assert normalise_domain(raw) == expected

    def test_email(self) -> None:
        """Emails compare lower-cased and trimmed."""
        assert normalise_email(" Ann@Example.COM ") == "ann@example.com"
        assert normalise_email("") is None

    def test_sf_ids_compare_on_15_chars(self) -> None:
        """An 18-char id equals its 15-char form."""
        assert same_sf_id("005000000000001AAA", "005000000000001")
        assert not same_sf_id("005000000000001AAA", "005000000000002AAA")
        assert not same_sf_id(None, "005000000000001")
