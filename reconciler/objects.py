"""The Salesforce objects this service syncs, and everything the code knows about each one.

One registry: a new object (say Opportunity) is one `SalesforceObject` entry here, plus its
section in the mappings schema (`settings/_mappings.py`) and its describe in the emulator.
Everything else (collections, id prefixes, import order, SOQL fields, compound-field
flattening, the match key of lost-create recovery, CLI/admin choices) reads this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.errors import SkippableError
from settings import SALESFORCE_OBJECTS

PEOPLE = "people"
COMPANIES = "companies"


@dataclass(frozen=True)
class SalesforceObject:
    name: str                        # Salesforce API name: "Lead"
    collection: str                  # local collection: "people"
    id_prefix: str                   # key prefix of its record ids: "00Q"
    import_order: int                # backfill order: parents first
    match_fields: tuple[str, ...]    # fields that find a record again (lost-create recovery), in order
    compound_fields: tuple[str, ...]  # nested in CDC events: flattened before mapping
    system_fields: tuple[str, ...]   # selected by every full-record query besides the mapped ones


LEAD = SalesforceObject(
    name="Lead", collection=PEOPLE, id_prefix="00Q", import_order=1, match_fields=("Email",),
    compound_fields=("Name", "Address"),
    system_fields=("OwnerId", "Email", "IsConverted", "ConvertedContactId", "ConvertedAccountId"),
)
CONTACT = SalesforceObject(
    name="Contact", collection=PEOPLE, id_prefix="003", import_order=2, match_fields=("Email",),
    compound_fields=("Name", "MailingAddress", "OtherAddress"),
    system_fields=("OwnerId", "AccountId", "Email"),
)
# Account `Name` is a plain text field; only its addresses are compound.
ACCOUNT = SalesforceObject(
    name="Account", collection=COMPANIES, id_prefix="001", import_order=0, match_fields=("Website", "Name"),
    compound_fields=("BillingAddress", "ShippingAddress"),
    system_fields=("OwnerId", "Website"),
)

OBJECTS: dict[str, SalesforceObject] = {o.name: o for o in (LEAD, CONTACT, ACCOUNT)}
assert tuple(OBJECTS) == SALESFORCE_OBJECTS, "settings.SALESFORCE_OBJECTS and the registry must agree"

# Fields every full-record SOQL selects first, whatever the object.
ALWAYS_SELECTED = ("Id", "SystemModstamp", "LastModifiedDate", "IsDeleted")


class UnknownObjectError(SkippableError):
    """A change for an object this service does not sync."""


def sobject(name: str) -> SalesforceObject:
    """The registry entry for `name`; `UnknownObjectError` for an object not synced."""
    try:
        return OBJECTS[name]
    except KeyError:
        raise UnknownObjectError(f"UNKNOWN_OBJECT: {name} is not synced") from None


def collection_for(name: str) -> str:
    """The local collection a Salesforce object maps to; `UnknownObjectError` otherwise."""
    return sobject(name).collection


def object_for_id(sf_id: str) -> SalesforceObject | None:
    """The object a record id belongs to, from its 3-character key prefix."""
    return next((o for o in OBJECTS.values() if sf_id.startswith(o.id_prefix)), None)


def in_import_order(names: list[str] | tuple[str, ...]) -> list[str]:
    """Parents first (Accounts, then Leads, then Contacts): children find what they link to."""
    return sorted(names, key=lambda n: OBJECTS[n].import_order if n in OBJECTS else len(OBJECTS))


def objects_in(collection: str) -> list[str]:
    """The objects whose records live in `collection` (people: Lead, Contact)."""
    return [o.name for o in OBJECTS.values() if o.collection == collection]


__all__ = [
    "ACCOUNT", "ALWAYS_SELECTED", "COMPANIES", "CONTACT", "LEAD", "OBJECTS", "PEOPLE", "SalesforceObject",
    "UnknownObjectError", "collection_for", "in_import_order", "object_for_id", "objects_in", "sobject",
]
