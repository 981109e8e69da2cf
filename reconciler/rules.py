"""The product rules that are not field merges: who may be created, who owns a record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.objects import COMPANIES, LEAD
from reconciler.ports import SalesforceChange
from reconciler.records import get_path, same_sf_id
from settings import Mappings


def is_converted_lead(change: SalesforceChange) -> bool:
    return change.sobject == LEAD.name and change.fields.get("IsConverted") is True


def may_create(mappings: Mappings, change: SalesforceChange, collection: str) -> str | None:
    """None when the rules allow creating a local record for this unlinked Salesforce record,
    else the reason it is not created.

    People: only with `create_person_from_salesforce` and an owner in the users table, and
    never from a converted Lead (its Contact is the record to follow). Companies: only when
    Company name and domain are mapped (`accounts_importable`).
    """
    if collection == COMPANIES:
        return None if mappings.accounts_importable() else "accounts not importable (map name and domain)"
    if not mappings.rules.create_person_from_salesforce:
        return "create_person_from_salesforce is off"
    if is_converted_lead(change):
        return "converted lead"
    owner = change.fields.get("OwnerId")
    if not isinstance(owner, str) or mappings.local_user(owner) is None:
        return "owner is not a mapped user"
    return None


def owner_updates(mappings: Mappings, doc: Mapping[str, Any] | None, owner_sf_id: Any) -> dict[str, Any]:
    """`$set` entries for a Salesforce owner: `crm.owner_id` always follows Salesforce; the
    local `owner_id` follows it through the users table when `on_salesforce_owner_change` is
    `update_owner` (an owner missing from the table leaves the local owner alone)."""
    if not isinstance(owner_sf_id, str) or not owner_sf_id:
        return {}
    out: dict[str, Any] = {}
    if not same_sf_id(get_path(doc, "crm.owner_id"), owner_sf_id):
        out["crm.owner_id"] = owner_sf_id
    if doc is None or mappings.rules.on_salesforce_owner_change == "update_owner":
        local_user = mappings.local_user(owner_sf_id)
        if local_user is not None and get_path(doc, "owner_id") != local_user:
            out["owner_id"] = local_user
    return out
