"""Linking an unlinked Salesforce record to an existing local one.

Order: by CRM id (done by the caller's lookup), then People by email and Companies by
website domain — case-insensitive (a collation query on an index with the same collation),
domains normalised (`https://www.Acme.com/x` -> `acme.com`, matched as `acme.com` or
`www.acme.com`). Only documents not yet linked are candidates; when several match, the
oldest (smallest `_id`) wins, and a document is claimed by at most one record per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from reconciler.ports import SalesforceChange
from reconciler.records import (
    COMPANIES,
    domain_field,
    email_field,
    get_path,
    normalise_domain,
    normalise_email,
)
from settings import Mappings


class MatchStore(Protocol):
    async def find_unlinked_matches(
        self, collection: str, local_field: str, values: Sequence[str]
    ) -> list[dict[str, Any]]: ...


def match_key(collection: str, change: SalesforceChange) -> str | None:
    """The normalised value an unlinked Salesforce record is matched on."""
    if collection == COMPANIES:
        return normalise_domain(change.fields.get("Website"))
    return normalise_email(change.fields.get("Email"))


def _doc_key(collection: str, doc: dict[str, Any], local_field: str) -> str | None:
    value = get_path(doc, local_field)
    return normalise_domain(value) if collection == COMPANIES else normalise_email(value)


async def find_matches(
    store: MatchStore, mappings: Mappings, collection: str, changes: Sequence[SalesforceChange],
    claimed: set[Any],
) -> dict[str, dict[str, Any]]:
    """sf_id -> the unlinked local document it links to (one query for the whole batch).
    `claimed` (local `_id`s already taken in this batch) is updated in place."""
    keys = {c.sf_id: key for c in changes if (key := match_key(collection, c))}
    if not keys:
        return {}
    local_field = domain_field(mappings) if collection == COMPANIES else email_field(mappings)
    values = set(keys.values())
    if collection == COMPANIES:
        values |= {f"www.{v}" for v in values}
    candidates = await store.find_unlinked_matches(collection, local_field, sorted(values))
    by_key: dict[str, list[dict[str, Any]]] = {}
    for doc in sorted(candidates, key=lambda d: str(d["_id"])):
        key = _doc_key(collection, doc, local_field)
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
