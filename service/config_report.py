"""`check-config` output: the effective configuration as env lines (secrets masked) + mappings summary."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from reconciler.objects import collection_for
from settings import SALESFORCE_OBJECTS, Mappings, Settings
from settings.redaction import mask_uri

MASK = "***"


def render_config(settings: Settings, mappings: Mappings | None) -> str:
    """Every setting as `SFSYNC_...=value` (secrets `***`), then a summary of the mappings."""
    lines = ["# effective configuration (secrets masked)"]
    for section_name in type(settings).model_fields:
        section = getattr(settings, section_name)
        if not isinstance(section, BaseModel):
            continue
        for field_name in type(section).model_fields:
            variable = f"SFSYNC_{section_name.upper()}__{field_name.upper()}"
            value = getattr(section, field_name)
            # Only the MongoDB URI keeps its host readable; any other secret URL (the alert
            # webhook: the URL is the credential) is masked whole.
            if isinstance(value, SecretStr) and variable != "SFSYNC_MONGODB__URI":
                lines.append(f"{variable}={MASK}")
                continue
            lines.append(f"{variable}={_show(value)}")
    lines.append("")
    lines.extend(_mappings_summary(mappings))
    return "\n".join(lines) + "\n"


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return _masked_uri(value.get_secret_value()) if _is_uri(value) else MASK
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list | tuple):
        return ",".join(_show(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _is_uri(secret: SecretStr) -> bool:
    return "://" in secret.get_secret_value()


def _masked_uri(uri: str) -> str:
    """Keep a URI's host and options readable; hide its credentials and secret options."""
    return mask_uri(uri)


def _mappings_summary(mappings: Mappings | None) -> list[str]:
    if mappings is None:
        return ["# mappings: not loaded"]
    lines = [
        f"# mappings: {len(mappings.people)} people field(s), {len(mappings.companies)} company "
        f"field(s), {len(mappings.users)} user link(s); hash {mappings.content_hash()[:12]}"
    ]
    for sobject in SALESFORCE_OBJECTS:
        for m in mappings.for_object(sobject):
            collection = collection_for(sobject)
            lines.append(
                f"#   {collection}.{m.local_field} <-> {sobject}.{m.sf_field} "
                f"({m.direction.value}, {m.merge.value})"
            )
    rules = mappings.rules
    lines.append(
        f"# rules: create_person_from_salesforce={str(rules.create_person_from_salesforce).lower()} "
        f"create_in_salesforce={rules.create_in_salesforce} "
        f"on_salesforce_owner_change={rules.on_salesforce_owner_change}"
    )
    lines.append(
        "# accounts importable: "
        + ("yes" if mappings.accounts_importable() else "no (map companies.name and companies.domain)")
    )
    return lines
