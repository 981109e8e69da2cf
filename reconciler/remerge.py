"""Re-merge after a mapping edit: on start, when `mappings.content_hash()` differs from the one in
`sync_state` (`mappings`, `state_keys.MAPPINGS_KEY`), the added or changed field mappings are
merged again for every linked record: linked documents are read in pages of 200, their
Salesforce records fetched (`RecordFetcher`) with one SOQL `Id IN (...)` query per page, and
merged (source IMPORT, `merge` logs) through a Reconciler that sees only the affected fields.
Between pages it checks the API budget; when optional calls are not allowed it stops WITHOUT
saving the new hash, so the next start re-merges (merging is idempotent: records already merged
change nothing). The first start (no stored state) only records the hash: the backfill merges
everything anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from reconciler.inbound import InboundStore, Reconciler
from reconciler.objects import collection_for
from reconciler.ports import Budget, ChangeSource, OutboundQueue, RecordFetcher, StateStore
from reconciler.store.state_keys import MAPPINGS_KEY
from settings import Mappings

log = structlog.get_logger(__name__)


class RemergeStore(InboundStore, StateStore, Protocol):
    def iter_linked(self, collection: str, sobject: str, *, batch_size: int = 200) -> Any: ...


@dataclass
class RemergeResult:
    changed_fields: dict[str, list[str]] = field(default_factory=dict)   # section -> local fields
    records: int = 0
    calls: int = 0
    finished: bool = True


def changed_fields(old: dict[str, Any] | None, new: Mappings) -> dict[str, list[str]]:
    """Per section (`people`, `companies`), the local fields added or changed since `old` (pure)."""
    current = new.model_dump(mode="json")
    out: dict[str, list[str]] = {}
    for section in ("people", "companies"):
        before = (old or {}).get(section, {})
        fields = [name for name, spec in current[section].items() if before.get(name) != spec]
        if fields:
            out[section] = fields
    return out


def restricted(mappings: Mappings, fields: dict[str, list[str]]) -> Mappings:
    """The same mappings, keeping only the given fields (users and rules unchanged).

    A new instance, not `model_copy`: a copy shares the per-object cache of `for_object`, so the
    view would answer with the full mappings (or leave its restricted answers in theirs). Not
    validated again: the full mappings were, and a view without the owner mapping is no file
    whose rules lack it."""
    return type(mappings).model_construct(
        people={k: v for k, v in mappings.people.items() if k in fields.get("people", [])},
        companies={k: v for k, v in mappings.companies.items() if k in fields.get("companies", [])},
        users=mappings.users, rules=mappings.rules,
    )


async def remerge_if_mappings_changed(
    store: RemergeStore, fetcher: RecordFetcher, mappings: Mappings, objects: list[str], *,
    budget: Budget | None = None, outbox: OutboundQueue | None = None,
    writable: Any = None, client_name: str = "salesforce-sync", batch_size: int = 200,
) -> RemergeResult:
    state = await store.load_state(MAPPINGS_KEY)
    new_state = {"hash": mappings.content_hash(), "mappings": mappings.model_dump(mode="json")}
    if state is None or state.get("hash") == new_state["hash"]:
        if state is None:
            await store.save_state(MAPPINGS_KEY, new_state)
        return RemergeResult()
    fields = changed_fields(state.get("mappings"), mappings)
    result = RemergeResult(changed_fields=fields)
    view = restricted(mappings, fields)
    reconciler = Reconciler(store, view, fetcher=fetcher, outbox=outbox, client_name=client_name,
                            writable=writable)
    for sobject in objects:
        if not view.for_object(sobject):
            continue
        if not await _remerge_object(store, fetcher, view, reconciler, sobject, result, budget, batch_size):
            result.finished = False
            log.info("remerge_paused", reason="budget", records=result.records)
            return result
    await store.save_state(MAPPINGS_KEY, new_state)
    log.info("remerge_finished", fields=fields, records=result.records, calls=result.calls)
    return result


async def _remerge_object(
    store: RemergeStore, fetcher: RecordFetcher, view: Mappings, reconciler: Reconciler, sobject: str,
    result: RemergeResult, budget: Budget | None, batch_size: int,
) -> bool:
    async for page in store.iter_linked(collection_for(sobject), sobject, batch_size=batch_size):
        if budget is not None and not budget.allows_optional_calls():
            return False
        ids = [d["crm"]["id"] for d in page]
        changes = await fetcher.fetch(sobject, ids, source=ChangeSource.IMPORT, mappings=view)
        result.calls += (len(ids) + 199) // 200
        await reconciler.apply_batch(changes)
        result.records += len(changes)
    return True


async def remerge(
    fetcher: RecordFetcher, store: RemergeStore, reconciler: Reconciler, mappings: Mappings,
    objects: list[str],
) -> RemergeResult:
    """Supervisor hook: `remerge_if_mappings_changed` with the live reconciler's wiring. It reads
    and saves the `mappings` state itself (hash + the mappings, to tell which fields changed)."""
    return await remerge_if_mappings_changed(
        store, fetcher, mappings, objects, budget=reconciler.budget, outbox=reconciler.outbox,
        writable=reconciler.writable, client_name=reconciler.client_name,
    )
