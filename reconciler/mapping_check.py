"""Check the mappings file against Salesforce's describe: pure, so it is tested as a table.

A mapping to a field Salesforce marks read-only (formula, system, not updateable) is inbound
only; asking for more is a configuration error that names the field, as is a field the object
does not have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.errors import FatalError
from reconciler.objects import OBJECTS, PEOPLE
from settings import Direction, Mappings


class MappingError(FatalError):
    """The mappings file asks for something Salesforce's describe does not allow."""


def _section(sobject: str) -> str:
    """The mappings section (named like the collection) an object's mappings live in."""
    entry = OBJECTS.get(sobject)
    return entry.collection if entry is not None else PEOPLE


def mapping_problems(
    mappings: Mappings, objects: Sequence[str], describes: Mapping[str, dict[str, Any]]
) -> list[str]:
    """One readable line per problem, naming the mapping key and the Salesforce field."""
    problems: list[str] = []
    for sobject in objects:
        fields = {f["name"]: f for f in describes.get(sobject, {}).get("fields", [])}
        for mapping in mappings.for_object(sobject):
            key = f"{_section(sobject)}.{mapping.local_field}"
            described = fields.get(mapping.sf_field)
            if described is None:
                problems.append(f"{key}: {sobject} has no field {mapping.sf_field!r}")
                continue
            read_only = bool(described.get("calculated")) or not described.get("updateable", False)
            if read_only and mapping.direction is not Direction.FROM_SALESFORCE:
                problems.append(
                    f"{key}: {sobject}.{mapping.sf_field} is read-only in Salesforce "
                    f"(formula, system or not updateable); it can only flow inbound: "
                    f'set direction = "from_salesforce"'
                )
    return problems


def check_mappings(
    mappings: Mappings, objects: Sequence[str], describes: Mapping[str, dict[str, Any]]
) -> None:
    problems = mapping_problems(mappings, objects, describes)
    if problems:
        raise MappingError("; ".join(problems))
