"""Mappings for tests: the emulator's sample mappings (the demo's), edited per test, and a
minimal Lead-name set.

`sample_mappings(...)` states a test's mappings as its difference from the sample, so a test reads
"the sample, but Salesforce owns Title" instead of spelling out forty lines of TOML again.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from typing import Any

from emulator.sample import SAMPLE_MAPPINGS_TOML
from settings import parse_mappings

# First name, last name and company of Leads owned by the emulator's mapped user (u-1).
LEAD_NAME_MAPPINGS = parse_mappings("""
[people.first_name]
lead = "FirstName"
[people.last_name]
lead = "LastName"
[people.company_name]
lead = "Company"
[people.owner_crm_id]
lead = "OwnerId"
direction = "from_salesforce"

[[users]]
local = "u-1"
salesforce = "005000000000001AAA"
""")


def sample_mappings(
    fields: Mapping[str, Mapping[str, str] | None] | None = None,
    *,
    users: Mapping[str, str] | None = None,
    rules: Mapping[str, str | bool] | None = None,
) -> str:
    """The sample mappings TOML with edits: `fields` keys are `people.<field>` / `companies.<field>`;
    a table is merged into that field's mapping (a new field if absent), None removes the field.
    `users` adds local -> Salesforce user pairs; `rules` overrides rules."""
    data: dict[str, Any] = tomllib.loads(SAMPLE_MAPPINGS_TOML)
    for key, edit in (fields or {}).items():
        section, local_field = key.split(".", 1)
        tables = data.setdefault(section, {})
        if edit is None:
            del tables[local_field]
        else:
            tables[local_field] = {**tables.get(local_field, {}), **edit}
    data.setdefault("users", []).extend({"local": lo, "salesforce": sf} for lo, sf in (users or {}).items())
    data.setdefault("rules", {}).update(rules or {})
    return _render(data)


def _render(data: dict[str, Any]) -> str:
    lines: list[str] = []
    for section in ("people", "companies"):
        for local_field, table in data.get(section, {}).items():
            name = json.dumps(local_field) if "." in local_field else local_field
            lines.append(f"[{section}.{name}]")
            lines.extend(f"{key} = {_value(value)}" for key, value in table.items())
    for user in data.get("users", []):
        lines.append("[[users]]")
        lines.extend(f"{key} = {_value(value)}" for key, value in user.items())
    lines.append("[rules]")
    lines.extend(f"{key} = {_value(value)}" for key, value in data.get("rules", {}).items())
    return "\n".join(lines) + "\n"


def _value(value: str | bool) -> str:
    return json.dumps(value)  # JSON strings and booleans are valid TOML
