"""Field metadata of the emulated objects, served by `sobjects/<Object>/describe` and used to
validate writes and SOQL. Names, types and flags follow Salesforce's standard objects."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

Formula = Callable[[dict[str, Any]], Any]

TEXT_TYPES = frozenset({"string", "textarea", "email", "phone", "url", "picklist", "id", "reference"})


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str
    label: str
    length: int = 0
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    calculated: bool = False
    defaulted_on_create: bool = False
    reference_to: tuple[str, ...] = ()
    compound_field_name: str | None = None
    formula: Formula | None = None
    picklist: tuple[str, ...] = ()

    @property
    def required_on_create(self) -> bool:
        return (
            self.createable and not self.nillable and not self.defaulted_on_create and self.type != "boolean"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "label": self.label,
            "length": self.length,
            "nillable": self.nillable,
            "createable": self.createable,
            "updateable": self.updateable,
            "calculated": self.calculated,
            "defaultedOnCreate": self.defaulted_on_create,
            "referenceTo": list(self.reference_to),
            "compoundFieldName": self.compound_field_name,
            "nameField": self.name == "Name",
            "custom": self.name.endswith("__c"),
            "filterable": self.type != "textarea" or self.length <= 255,
            "sortable": self.type != "address",
            "soapType": _SOAP_TYPES.get(self.type, "xsd:string"),
            "picklistValues": [
                {"value": v, "label": v, "active": True, "defaultValue": False} for v in self.picklist
            ],
            "calculatedFormula": "Email/Phone/Title/Company completeness" if self.formula else None,
        }


_SOAP_TYPES = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "boolean": "xsd:boolean",
    "int": "xsd:int",
    "double": "xsd:double",
    "currency": "xsd:double",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
    "address": "urn:address",
}


@dataclass(frozen=True)
class SObjectDef:
    name: str
    label_plural: str
    key_prefix: str
    fields: tuple[FieldDef, ...]
    by_lower: dict[str, FieldDef] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_lower", {f.name.lower(): f for f in self.fields})

    def field(self, name: str) -> FieldDef | None:
        return self.by_lower.get(name.lower())

    def describe(self, api_version: str) -> dict[str, Any]:
        base = f"/services/data/v{api_version}/sobjects/{self.name}"
        return {
            "name": self.name,
            "label": self.name,
            "labelPlural": self.label_plural,
            "keyPrefix": self.key_prefix,
            "custom": False,
            "createable": True,
            "updateable": True,
            "deletable": True,
            "queryable": True,
            "retrieveable": True,
            "replicateable": True,
            "fields": [f.describe() for f in self.fields],
            "urls": {"sobject": base, "describe": f"{base}/describe", "rowTemplate": f"{base}/{{ID}}"},
        }


def _text(name: str, label: str, length: int, **flags: Any) -> FieldDef:
    return FieldDef(name, flags.pop("type", "string"), label, length, **flags)


def _readonly(name: str, type_: str, label: str, length: int = 0, **flags: Any) -> FieldDef:
    return FieldDef(name, type_, label, length, createable=False, updateable=False, **flags)


def _system(refs: str = "User") -> tuple[FieldDef, ...]:
    return (
        _readonly("IsDeleted", "boolean", "Deleted", nillable=False, defaulted_on_create=True),
        _readonly("CreatedDate", "datetime", "Created Date", nillable=False, defaulted_on_create=True),
        _readonly(
            "CreatedById",
            "reference",
            "Created By ID",
            18,
            nillable=False,
            defaulted_on_create=True,
            reference_to=(refs,),
        ),
        _readonly(
            "LastModifiedDate", "datetime", "Last Modified Date", nillable=False, defaulted_on_create=True
        ),
        _readonly(
            "LastModifiedById",
            "reference",
            "Last Modified By ID",
            18,
            nillable=False,
            defaulted_on_create=True,
            reference_to=(refs,),
        ),
        _readonly("SystemModstamp", "datetime", "System Modstamp", nillable=False, defaulted_on_create=True),
    )


def _person_name() -> tuple[FieldDef, ...]:
    return (
        _text(
            "Salutation",
            "Salutation",
            40,
            type="picklist",
            compound_field_name="Name",
            picklist=("Mr.", "Ms.", "Mrs.", "Dr.", "Prof."),
        ),
        _text("FirstName", "First Name", 40, compound_field_name="Name"),
        _text("LastName", "Last Name", 80, nillable=False, compound_field_name="Name"),
        _readonly("Name", "string", "Full Name", 121),
    )


def _address(prefix: str, compound: str) -> tuple[FieldDef, ...]:
    return (
        _text(
            f"{prefix}Street", f"{prefix} Street".strip(), 255, type="textarea", compound_field_name=compound
        ),
        _text(f"{prefix}City", f"{prefix} City".strip(), 40, compound_field_name=compound),
        _text(f"{prefix}State", f"{prefix} State/Province".strip(), 80, compound_field_name=compound),
        _text(f"{prefix}PostalCode", f"{prefix} Zip/Postal Code".strip(), 20, compound_field_name=compound),
        _text(f"{prefix}Country", f"{prefix} Country".strip(), 80, compound_field_name=compound),
        _readonly(compound, "address", f"{prefix} Address".strip()),
    )


def _owner() -> FieldDef:
    return FieldDef(
        "OwnerId",
        "reference",
        "Owner ID",
        18,
        nillable=False,
        defaulted_on_create=True,
        reference_to=("User",),
    )


def _lead_score(record: dict[str, Any]) -> float:
    weights = (("Email", 40.0), ("Phone", 20.0), ("Title", 20.0), ("Company", 20.0))
    return sum(w for name, w in weights if record.get(name))


_INDUSTRIES = (
    "Agriculture",
    "Banking",
    "Consulting",
    "Education",
    "Energy",
    "Finance",
    "Healthcare",
    "Manufacturing",
    "Media",
    "Retail",
    "Technology",
    "Telecommunications",
)
LEAD_STATUSES = (
    "Open - Not Contacted",
    "Working - Contacted",
    "Closed - Converted",
    "Closed - Not Converted",
)
_SOURCES = ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")


LEAD = SObjectDef(
    "Lead",
    "Leads",
    "00Q",
    (
        _readonly("Id", "id", "Lead ID", 18, nillable=False, defaulted_on_create=True),
        *_person_name(),
        _text("Title", "Title", 128),
        _text("Company", "Company", 255, nillable=False),
        *_address("", "Address"),
        _text("Phone", "Phone", 40, type="phone"),
        _text("MobilePhone", "Mobile Phone", 40, type="phone"),
        _text("Email", "Email", 80, type="email"),
        _text("Website", "Website", 255, type="url"),
        _text("Description", "Description", 32000, type="textarea"),
        _text("LeadSource", "Lead Source", 255, type="picklist", picklist=_SOURCES),
        _text(
            "Status",
            "Status",
            255,
            type="picklist",
            nillable=False,
            defaulted_on_create=True,
            picklist=LEAD_STATUSES,
        ),
        _text("Industry", "Industry", 255, type="picklist", picklist=_INDUSTRIES),
        FieldDef("AnnualRevenue", "currency", "Annual Revenue"),
        FieldDef("NumberOfEmployees", "int", "Employees"),
        _owner(),
        _readonly("IsConverted", "boolean", "Converted", nillable=False, defaulted_on_create=True),
        _readonly("ConvertedDate", "date", "Converted Date"),
        _readonly("ConvertedAccountId", "reference", "Converted Account ID", 18, reference_to=("Account",)),
        _readonly("ConvertedContactId", "reference", "Converted Contact ID", 18, reference_to=("Contact",)),
        FieldDef("IsUnreadByOwner", "boolean", "Unread By Owner", nillable=False, defaulted_on_create=True),
        _readonly("Score__c", "double", "Score", calculated=True, formula=_lead_score),
        *_system(),
    ),
)

CONTACT = SObjectDef(
    "Contact",
    "Contacts",
    "003",
    (
        _readonly("Id", "id", "Contact ID", 18, nillable=False, defaulted_on_create=True),
        FieldDef("AccountId", "reference", "Account ID", 18, reference_to=("Account",)),
        *_person_name(),
        *_address("Mailing", "MailingAddress"),
        _text("Phone", "Business Phone", 40, type="phone"),
        _text("MobilePhone", "Mobile Phone", 40, type="phone"),
        _text("Email", "Email", 80, type="email"),
        _text("Title", "Title", 128),
        _text("Department", "Department", 80),
        _text("LeadSource", "Lead Source", 255, type="picklist", picklist=_SOURCES),
        _text("Description", "Contact Description", 32000, type="textarea"),
        FieldDef("Birthdate", "date", "Birthdate"),
        _owner(),
        *_system(),
    ),
)

ACCOUNT = SObjectDef(
    "Account",
    "Accounts",
    "001",
    (
        _readonly("Id", "id", "Account ID", 18, nillable=False, defaulted_on_create=True),
        _text("Name", "Account Name", 255, nillable=False),
        _text(
            "Type",
            "Account Type",
            255,
            type="picklist",
            picklist=("Prospect", "Customer", "Partner", "Other"),
        ),
        *_address("Billing", "BillingAddress"),
        _text("Phone", "Account Phone", 40, type="phone"),
        _text("Website", "Website", 255, type="url"),
        _text("Industry", "Industry", 255, type="picklist", picklist=_INDUSTRIES),
        FieldDef("AnnualRevenue", "currency", "Annual Revenue"),
        FieldDef("NumberOfEmployees", "int", "Employees"),
        _text("Description", "Account Description", 32000, type="textarea"),
        _owner(),
        *_system(),
    ),
)

USER = SObjectDef(
    "User",
    "Users",
    "005",
    (
        _readonly("Id", "id", "User ID", 18, nillable=False, defaulted_on_create=True),
        _readonly("Username", "string", "Username", 80, nillable=False),
        _readonly("Name", "string", "Full Name", 121),
        _readonly("Email", "email", "Email", 128, nillable=False),
        _readonly("IsActive", "boolean", "Active", nillable=False, defaulted_on_create=True),
        *_system(),
    ),
)

SOBJECTS: dict[str, SObjectDef] = {o.name.lower(): o for o in (LEAD, CONTACT, ACCOUNT, USER)}
BY_PREFIX: dict[str, SObjectDef] = {o.key_prefix: o for o in SOBJECTS.values()}


def sobject(name: str) -> SObjectDef | None:
    """The object definition for an API name, case-insensitively (as Salesforce resolves them)."""
    return SOBJECTS.get(name.lower())


# --- values: what a field accepts on write, and how it reads back --------------------------------

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_DATETIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})?$"
)
_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_ID_CHARS = re.compile(r"^[a-zA-Z0-9]{15}(?:[A-Z0-5]{3})?$")
_SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"


@dataclass
class FieldError(Exception):
    """One field's rejection, shaped like a Salesforce per-record error."""

    status_code: str
    message: str
    fields: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"statusCode": self.status_code, "message": self.message, "fields": list(self.fields)}


def id18(id15: str) -> str:
    """Append Salesforce's 3-character case-safe suffix to a 15-character id."""
    suffix = ""
    for chunk in range(3):
        bits = 0
        for pos, char in enumerate(id15[chunk * 5 : chunk * 5 + 5]):
            if "A" <= char <= "Z":
                bits |= 1 << pos
        suffix += _SUFFIX_ALPHABET[bits]
    return id15 + suffix


def normalize_id(value: str) -> str | None:
    """The 18-character form of a 15- or 18-character id; None when it is not id-shaped."""
    if not _ID_CHARS.match(value):
        return None
    return id18(value[:15]) if len(value) == 15 else value


def parse_datetime(text: str) -> datetime | None:
    """An ISO-8601 / Salesforce datetime, truncated to the second as Salesforce stores it."""
    match = _DATETIME.match(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, zone = match.groups()
    offset = timedelta(0)
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    try:
        local = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC)
    except ValueError:
        return None
    return local - offset


def parse_date(text: str) -> date | None:
    match = _DATE.match(text)
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def format_datetime(value: datetime) -> str:
    """REST form: `2024-05-01T12:00:00.000+0000`."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def format_event_datetime(value: datetime) -> str:
    """CDC event form: `2024-05-01T12:00:00.000Z`."""
    return value.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def rest_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def event_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_event_datetime(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


def _type_error(fd: FieldDef, raw: Any) -> FieldError:
    return FieldError(
        "INVALID_TYPE_ON_FIELD_IN_RECORD", f"{fd.label}: value not of required type: {raw}", (fd.name,)
    )


def coerce(fd: FieldDef, raw: Any) -> Any:
    """The stored value for a written JSON value, or FieldError. Blank text is null, as in Salesforce."""
    if raw is None or (raw == "" and fd.type in TEXT_TYPES):
        return None
    if fd.type in TEXT_TYPES:
        return _coerce_text(fd, raw)
    if fd.type == "boolean":
        return _coerce_boolean(fd, raw)
    if fd.type in ("int", "double", "currency"):
        return _coerce_number(fd, raw)
    parsed = (parse_date if fd.type == "date" else parse_datetime)(raw) if isinstance(raw, str) else None
    if parsed is None:
        raise _type_error(fd, raw)
    return parsed


def _coerce_boolean(fd: FieldDef, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise _type_error(fd, raw)


def _coerce_number(fd: FieldDef, raw: Any) -> int | float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise _type_error(fd, raw)
    if fd.type != "int":
        return float(raw)
    if int(raw) != raw:
        raise _type_error(fd, raw)
    return int(raw)


def _coerce_text(fd: FieldDef, raw: Any) -> str:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise _type_error(fd, raw)
    text = raw if isinstance(raw, str) else str(raw)
    if fd.type in ("reference", "id"):
        normal = normalize_id(text)
        if normal is None or (
            fd.reference_to and normal[:3] != SOBJECTS[fd.reference_to[0].lower()].key_prefix
        ):
            raise FieldError("MALFORMED_ID", f"{fd.label}: id value of incorrect type: {text}", (fd.name,))
        return normal
    if fd.length and len(text) > fd.length:
        raise FieldError(
            "STRING_TOO_LONG",
            f"{fd.label}: data value too large: {text[:40]} (max length={fd.length})",
            (fd.name,),
        )
    if fd.type == "email" and not _EMAIL.match(text):
        raise FieldError("INVALID_EMAIL_ADDRESS", f"{fd.label}: invalid email address: {text}", (fd.name,))
    return text
