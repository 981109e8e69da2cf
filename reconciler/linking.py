"""Linking an unlinked Salesforce record to an existing local one.

Order: by CRM id (done by the caller's lookup), then by the first match field of the record's
object (`reconciler.objects`): People by email and Companies by website domain —
case-insensitive (a collation query on an index with the same collation), domains normalised
(`https://www.Acme.com/x` -> `acme.com`, matched as `acme.com` or `www.acme.com`). Only
documents not yet linked are candidates; when several match, the oldest (smallest `_id`)
wins, and a document is claimed by at most one record per batch.

`match_value`/`match_keys` are also how lost creates are found again (`reconciler.outbound`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from reconciler.objects import COMPANIES, OBJECTS, objects_in
from reconciler.ports import SalesforceChange
from reconciler.records import domain_field, email_field, get_path, normalise_domain, normalise_email
from settings import Mappings

WEBSITE = "Website"


def _normalise_text(value: Any) -> str | None:
    return value.strip().casefold() if isinstance(value, str) and value.strip() else None


# How a match field (`SalesforceObject.match_fields`) is compared: emails case-insensitively,
# websites by domain, anything else (an Account's Name) as case-folded text.
_NORMALISERS: dict[str, Callable[[Any], str | None]] = {"Email": normalise_email, WEBSITE: normalise_domain}


def match_value(field: str, value: Any) -> str | None:
    """A match field's value in the form two records are compared by (None when blank)."""
    return _NORMALISERS.get(field, _normalise_text)(value)


def match_keys(sobject: str, record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, normalised value) for each of the object's match fields the record has, in order."""
    entry = OBJECTS.get(sobject)
    fields = entry.match_fields if entry is not None else ()
    return [(name, value) for name in fields if (value := match_value(name, record.get(name)))]


def link_field(collection: str) -> str:
    """The Salesforce field unlinked records of `collection` are linked by (Email, Website)."""
    return OBJECTS[objects_in(collection)[0]].match_fields[0]


def _local_field(mappings: Mappings, field: str) -> str:
    return domain_field(mappings) if field == WEBSITE else email_field(mappings)


class MatchStore(Protocol):
    async def find_unlinked_matches(
        self, collection: str, local_field: str, values: Sequence[str]
    ) -> list[dict[str, Any]]: ...


def match_key(collection: str, change: SalesforceChange) -> str | None:
    """The normalised value an unlinked Salesforce record is matched on."""
    field = link_field(collection)
    return match_value(field, change.fields.get(field))


async def find_matches(
    store: MatchStore, mappings: Mappings, collection: str, changes: Sequence[SalesforceChange],
    claimed: set[Any],
) -> dict[str, dict[str, Any]]:
    """sf_id -> the unlinked local document it links to (one query for the whole batch).
    `claimed` (local `_id`s already taken in this batch) is updated in place."""
    keys = {c.sf_id: key for c in changes if (key := match_key(collection, c))}
    if not keys:
        return {}
    field = link_field(collection)
    local_field = _local_field(mappings, field)
    values = set(keys.values())
    if field == WEBSITE:
        values |= {f"www.{v}" for v in values}
    candidates = await store.find_unlinked_matches(collection, local_field, sorted(values))
    by_key: dict[str, list[dict[str, Any]]] = {}
    for doc in sorted(candidates, key=lambda d: str(d["_id"])):
        key = match_value(field, get_path(doc, local_field))
        if key:
            by_key.setdefault(key, []).append(doc)
    matches: dict[str, dict[str, Any]] = {}
    for sf_id, key in keys.items():
        for doc in by_key.get(key, []):
            if doc["_id"] not in claimed:
                claimed.add(doc["_id"])
                matches[sf_id] = doc
                break
    return matches


class LinkedStore(Protocol):
    async def find_linked(self, collection: str, sf_ids: Any) -> list[dict[str, Any]]: ...


async def company_ids(store: LinkedStore, group: Sequence[SalesforceChange]) -> dict[str, Any]:
    """Contact AccountId -> the local `_id` of the Company linked to that Account (one find)."""
    account_ids = {a for c in group if isinstance(a := c.fields.get("AccountId"), str) and a}
    if not account_ids:
        return {}
    companies = await store.find_linked(COMPANIES, account_ids)
    return {d["crm"]["id"]: d["_id"] for d in companies if get_path(d, "crm.id")}
