"""Field translation between Salesforce records and local documents, and the value rules
both sides share: what counts as blank, dotted local paths, email/domain normalisation."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from reconciler.errors import SkippableError
from reconciler.ports import ChangeKind, ChangeSource, SalesforceChange
from settings import FieldMapping, Mappings

PEOPLE = "people"
COMPANIES = "companies"
_COLLECTIONS = {"Lead": PEOPLE, "Contact": PEOPLE, "Account": COMPANIES}
_SCALARS = (str, int, float, bool)


class UnknownObjectError(SkippableError):
    """A change for an object this service does not sync."""


class WrongTypeError(SkippableError):
    """A Salesforce value that cannot be stored in a mapped local field."""


def collection_for(sobject: str) -> str:
    """The local collection a Salesforce object maps to; `UnknownObjectError` otherwise."""
    try:
        return _COLLECTIONS[sobject]
    except KeyError:
        raise UnknownObjectError(f"UNKNOWN_OBJECT: {sobject} is not synced") from None


def is_blank(value: Any) -> bool:
    """None, an empty or whitespace-only string and an empty list are blank: never written."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, list | tuple | dict):
        return len(value) == 0
    return False


def get_path(doc: Mapping[str, Any] | None, path: str) -> Any:
    """The value at a dotted path (`custom_fields.linkedin`), None when any step is missing."""
    current: Any = doc
    for part in path.split("."):
        if not isinstance(current, Mapping):
            return None
        current = current.get(part)
    return current


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in a plain dict, creating the nested documents on the way."""
    parts = path.split(".")
    current = doc
    for part in parts[:-1]:
        child = current.get(part)
        if not isinstance(child, dict):
            child = {}
            current[part] = child
        current = child
    current[parts[-1]] = value


def check_value(sf_field: str, value: Any) -> None:
    """Reject values that are not a scalar or a list of scalars (e.g. an unflattened compound)."""
    if value is None or isinstance(value, (*_SCALARS, datetime)):
        return
    if isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value):
        return
    raise WrongTypeError(
        f"INVALID_TYPE: {sf_field} holds a {type(value).__name__}, not a scalar value"
    )


def sf_to_local(mappings: Iterable[FieldMapping], fields: Mapping[str, Any]) -> dict[str, Any]:
    """Salesforce API fields -> local fields, for the mapped fields present in `fields`."""
    return {m.local_field: fields[m.sf_field] for m in mappings if m.sf_field in fields}


def local_to_sf(mappings: Iterable[FieldMapping], doc: Mapping[str, Any]) -> dict[str, Any]:
    """Local document -> Salesforce API fields, leaving blanks out (blanks are never written)."""
    out: dict[str, Any] = {}
    for m in mappings:
        value = get_path(doc, m.local_field)
        if not is_blank(value):
            out[m.sf_field] = value
    return out


def same_sf_id(a: str | None, b: str | None) -> bool:
    """Salesforce ids compare on their case-sensitive 15-character prefix."""
    return a is not None and b is not None and a[:15] == b[:15]


def normalise_email(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip().lower()


_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")


def normalise_domain(value: Any) -> str | None:
    """`https://WWW.Acme.com:443/about` -> `acme.com`."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = _SCHEME.sub("", value.strip().lower())
    host = re.split(r"[/?#]", text, maxsplit=1)[0].split("@")[-1].split(":")[0].rstrip(".")
    host = host.removeprefix("www.")
    return host or None


def email_field(mappings: Mappings) -> str:
    """The local field that holds a Person's email (the one mapped to `Email`), default `email`."""
    for sobject in ("Lead", "Contact"):
        for m in mappings.for_object(sobject):
            if m.sf_field == "Email":
                return m.local_field
    return "email"


def domain_field(mappings: Mappings) -> str:
    """The local field that holds a Company's domain (the one mapped to `Website`)."""
    for m in mappings.for_object("Account"):
        if m.sf_field == "Website":
            return m.local_field
    return "domain"


def parse_sf_datetime(value: Any) -> datetime | None:
    """Salesforce `2024-05-01T10:00:00.000+0000` (or ISO with Z) -> aware UTC datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    if re.search(r"[+-]\d{4}$", text):
        text = f"{text[:-2]}:{text[-2:]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_sf_datetime(value: datetime) -> str:
    """Aware datetime -> the SOQL literal form `2024-05-01T10:00:00Z` (second precision)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Fields every full-record SOQL selects besides the mapped ones (`Id` first).
_SYSTEM_FIELDS: dict[str, tuple[str, ...]] = {
    "Lead": ("OwnerId", "Email", "IsConverted", "ConvertedContactId", "ConvertedAccountId"),
    "Contact": ("OwnerId", "AccountId", "Email"),
    "Account": ("OwnerId", "Website"),
}
_ALWAYS = ("Id", "SystemModstamp", "LastModifiedDate", "IsDeleted")


def select_fields(mappings: Mappings, sobject: str) -> list[str]:
    """The fields a full-record query of `sobject` selects: mapped, system and linking ones."""
    fields: list[str] = list(_ALWAYS) + list(_SYSTEM_FIELDS.get(sobject, ()))
    for m in mappings.for_object(sobject):
        if m.sf_field not in fields:
            fields.append(m.sf_field)
    return fields


def record_change(sobject: str, record: Mapping[str, Any], source: ChangeSource) -> SalesforceChange:
    """A queried record (all selected fields) as an UPSERT change."""
    fields = {k: v for k, v in record.items() if k not in ("Id", "attributes")}
    changed_at = (
        parse_sf_datetime(record.get("LastModifiedDate"))
        or parse_sf_datetime(record.get("SystemModstamp"))
        or datetime.now(UTC)
    )
    return SalesforceChange(
        sobject=sobject, sf_id=str(record["Id"]), kind=ChangeKind.UPSERT, fields=fields,
        changed_at=changed_at, source=source,
    )
