"""Field translation between Salesforce records and local documents, and the value rules
both sides share: what counts as blank, dotted local paths, email/domain normalisation."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from reconciler.errors import SkippableError
from reconciler.objects import COMPANIES, PEOPLE
from reconciler.soql import format_sf_datetime
from settings import FieldMapping, Mappings

# PEOPLE/COMPANIES live in `reconciler.objects`, `format_sf_datetime` in `reconciler.soql`;
# re-exported for the modules that still import them from here.
__all__ = [
    "COMPANIES", "PEOPLE", "WrongTypeError", "check_value", "domain_field", "email_field",
    "format_sf_datetime", "get_path", "is_blank", "local_to_sf", "normalise_domain",
    "normalise_email", "same_sf_id",
]

_SCALARS = (str, int, float, bool)


class WrongTypeError(SkippableError):
    """A Salesforce value that cannot be stored in a mapped local field."""


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
        # dict first: the ABC check alone was a quarter of a merge decision's time
        if not isinstance(current, dict) and not isinstance(current, Mapping):
            return None
        current = current.get(part)
    return current


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set the value at a dotted path in a plain document, making the dicts on the way."""
    parts = path.split(".")
    for part in parts[:-1]:
        child = doc.get(part)
        if not isinstance(child, dict):
            child = doc[part] = {}
        doc = child
    doc[parts[-1]] = value


def check_value(sf_field: str, value: Any) -> None:
    """Reject values that are not a scalar or a list of scalars (e.g. an unflattened compound)."""
    if value is None or isinstance(value, (*_SCALARS, datetime)):
        return
    if isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value):
        return
    raise WrongTypeError(
        f"INVALID_TYPE: {sf_field} holds a {type(value).__name__}, not a scalar value"
    )


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
