"""The product rules that are not field merges: who may be created, who owns a record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.objects import COMPANIES, LEAD
from reconciler.ports import ChangeKind, SalesforceChange
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


OWNER_FIELD = "owner_id"  # the platform's user id on a Person/Company


def follows_salesforce_owner(mappings: Mappings, sf_owner: Any) -> bool:
    """Does the platform's owner follow this Salesforce owner (`owner_updates`: a mapped user,
    under `update_owner`)? Else the two differ without any edit, and a platform write that did
    not change the owner must not send it back over Salesforce's (chaos issue 14, the owner
    class). An owner not known (None) is taken as followed."""
    mapped = not isinstance(sf_owner, str) or mappings.local_user(sf_owner) is not None
    return mapped and mappings.rules.on_salesforce_owner_change == "update_owner"


def owner_out(mappings: Mappings, sobject: str, doc: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The `OwnerId` a platform owner goes out as, through `[[users]]` (issue 10): (the
    Salesforce user to send or None, why it is not sent or None).

    Only when the object maps `OwnerId` in a direction that sends (the `owner_crm_id` mapping).
    An owner Salesforce already has (`crm.owner_id`) is not re-sent. A platform owner without a
    `[[users]]` entry is not sent: the write goes out without `OwnerId` and the reason becomes a
    failed log naming the user (a create too: the record is created, owned by the integration
    user, rather than held back; fixing the users table and re-saving the owner sends it).
    """
    mapping = next((m for m in mappings.for_object(sobject) if m.sf_field == "OwnerId"), None)
    owner = doc.get(OWNER_FIELD)
    if mapping is None or mapping.direction == "from_salesforce" or not isinstance(owner, str) or not owner:
        return None, None
    sf_user = mappings.salesforce_user(owner)
    if sf_user is None:
        return None, f"UNMAPPED_OWNER: platform user {owner} has no [[users]] entry; OwnerId not sent"
    if same_sf_id(get_path(doc, "crm.owner_id"), sf_user):
        return None, None
    return sf_user, None


def cannot_start(change: SalesforceChange, converted: set[str]) -> str | None:
    """Why a change to a record no local document is linked to starts nothing, or None: only
    full records (create, upsert) and undeletes may link or create, never a converted Lead or
    a record deleted in Salesforce."""
    if change.sf_id in converted:
        return "lead already converted"
    if change.kind not in (ChangeKind.CREATE, ChangeKind.UPSERT, ChangeKind.UNDELETE):
        return "not linked"
    if change.fields.get("IsDeleted") is True:
        return "deleted in salesforce"
    return None
