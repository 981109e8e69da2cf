"""Applying Salesforce changes to People and Companies: the `ChangeSink` the listener feeds.

A micro-batch costs a handful of MongoDB round-trips whatever its size: per collection one
`find` of the linked documents (`crm.id` IN ...), one `find` for email/domain matches when
there are unlinked records, for People one `find` of the Companies their `AccountId`s name,
then ONE unordered `bulk_write`; and one `insert_many` of sync logs for the whole batch.
Accounts are applied before People so a Contact can point at a Company created in the same
batch. Several changes to one record in a batch fold into one write and one log.

Idempotent: values are compared with what is stored; a change that alters nothing writes
nothing and logs nothing, so a re-delivered batch leaves no trace.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import structlog

from reconciler import conversion
from reconciler import inbound_shadow as shadow
from reconciler.errors import SkippableError
from reconciler.linking import company_ids, find_matches
from reconciler.merge import merge_record
from reconciler.objects import COMPANIES, PEOPLE, collection_for
from reconciler.ports import (
    Budget,
    ChangeKind,
    ChangeSource,
    OutboundQueue,
    OutboundWrite,
    RecordFetcher,
    RejectedEvent,
    SalesforceChange,
)
from reconciler.records import check_value, get_path
from reconciler.rules import cannot_start, may_create, owner_updates
from reconciler.store import BulkOutcome, RecordWrite
from reconciler.sync_logs import LogType, SyncLog, event_job, failed_inbound, utcnow
from settings import Mappings

log = structlog.get_logger(__name__)

_FULL_RECORD = (ChangeKind.CREATE, ChangeKind.UPSERT)
_MERGE_SOURCES = (ChangeSource.RETRY, ChangeSource.IMPORT)
# When one record gets several changes in a batch, its log carries the most telling type.
_TYPE_RANK: dict[str, int] = {t: i for i, t in enumerate(
    ("create", "link", "convert", "merge", "delete", "undelete", "owner_change", "update"))}


class InboundStore(Protocol):
    async def find_linked(self, collection: str, sf_ids: Any, *,
                          converted: bool = False) -> list[dict[str, Any]]: ...
    async def find_unlinked_matches(self, collection: str, local_field: str,
                                    values: Any) -> list[dict[str, Any]]: ...
    async def find_records(self, collection: str, ids: Any) -> list[dict[str, Any]]: ...
    async def bulk_apply(self, collection: str, writes: Sequence[RecordWrite]) -> BulkOutcome: ...
    async def write_in_order(self, collection: str, writes: Sequence[RecordWrite]) -> BulkOutcome: ...
    async def insert_sync_logs(self, logs: Sequence[SyncLog]) -> list[str]: ...


@dataclass
class BatchResult:
    applied: int = 0      # records written
    unchanged: int = 0    # changes that altered nothing
    echoes: int = 0       # our own writes coming back
    skipped: int = 0      # the rules said no (unlinked update, owner not mapped...)
    failed: int = 0
    enqueued: int = 0     # outbound merge writes handed to the outbox
    logs: list[SyncLog] = field(default_factory=list)
    log_ids: list[str] = field(default_factory=list)


@dataclass
class _Pending:
    """One record's accumulated write within a batch, over a working copy of its document."""

    change: SalesforceChange
    collection: str
    doc: dict[str, Any]
    filter: dict[str, Any]
    type: LogType
    upsert: bool = False
    merge: bool = False
    sets: dict[str, Any] = field(default_factory=dict)
    unsets: set[str] = field(default_factory=set)
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    sf_updates: dict[str, Any] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)   # local field -> the rule that held it

    def put(self, path: str, value: Any, *, logged: bool = True) -> None:
        old = get_path(self.doc, path)
        if old == value and path not in self.unsets:
            return
        if logged:
            self.fields.setdefault(path, {"old": old})["new"] = value
        self.sets[path] = value
        self.unsets.discard(path)
        _assign(self.doc, path, value)

    def drop(self, path: str) -> None:
        if get_path(self.doc, path) is None:
            return
        self.fields.setdefault(path, {"old": get_path(self.doc, path)})["new"] = None
        self.sets.pop(path, None)
        self.unsets.add(path)
        _assign(self.doc, path, None)

    def retype(self, new: LogType) -> None:
        if _TYPE_RANK[new] < _TYPE_RANK[self.type]:
            self.type = new

    @property
    def changed(self) -> bool:
        return bool(self.sets or self.unsets)


def _assign(doc: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        child = doc.get(part)
        if not isinstance(child, dict):
            child = doc[part] = {}
        doc = child
    doc[parts[-1]] = value


def _copy(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: (_copy(v) if isinstance(v, dict) else v) for k, v in doc.items()}


class Reconciler:
    """Implements `reconciler.ports.ChangeSink` (`apply`, `reject`).

    `fetcher` reads records from Salesforce by id (a lead conversion's Contact, retries and
    re-imports through `Jobs`); without one, nothing is re-fetched."""

    def __init__(
        self, store: InboundStore, mappings: Mappings, *, fetcher: RecordFetcher | None = None,
        outbox: OutboundQueue | None = None, client_name: str = "salesforce-sync",
        writable: Callable[[str], dict[str, bool]] | None = None, budget: Budget | None = None,
    ) -> None:
        self.store = store
        self.mappings = mappings
        self.fetcher = fetcher
        self.outbox = outbox
        self.client_name = client_name
        self.writable = writable
        self.budget = budget
        self.totals: Counter[str] = Counter()

    async def apply(self, changes: Sequence[SalesforceChange]) -> None:
        await self.apply_batch(changes)

    async def reject(self, events: Sequence[RejectedEvent]) -> None:
        """Failed `event` logs keeping the raw message, so an admin can see and retry it."""
        logs = [
            SyncLog(source="salesforce", type="event", status="failed", error=e.reason,
                    job=event_job({"channel": e.channel, "replay_id": e.replay_id, "event": e.raw}))
            for e in events
        ]
        await self.store.insert_sync_logs(logs)
        self.totals["failed"] += len(logs)

    async def apply_batch(
        self, changes: Sequence[SalesforceChange], *, summary: bool = False, attempt: int = 1
    ) -> BatchResult:
        """Apply a micro-batch. `summary` (bulk imports): one success log per object for the
        batch instead of one per record; failures are always logged per record."""
        result = BatchResult()
        live: list[SalesforceChange] = []
        for change in changes:
            if change.is_echo:
                result.echoes += 1
                continue
            try:
                collection_for(change.sobject)
            except SkippableError as exc:
                result.logs.append(failed_inbound(change.sobject, change.sf_id, str(exc),
                                                  attempt=attempt, raw=change.raw))
                result.failed += 1
                continue
            live.append(change)
        relinked = await conversion.relink(self, live, attempt=attempt)
        result.logs += relinked.logs
        result.applied += relinked.applied
        result.failed += relinked.failed
        live += relinked.refetched
        applied: Counter[str] = Counter()
        for collection in (COMPANIES, PEOPLE):
            group = [c for c in live if collection_for(c.sobject) == collection]
            if group:
                await self._apply_collection(collection, group, result, applied, summary, attempt)
        if summary:
            result.logs += [
                SyncLog(source="salesforce", type="import", status="success", object=sobject,
                        collection=collection_for(sobject), count=n)
                for sobject, n in applied.items()
            ]
        result.log_ids = await self.store.insert_sync_logs(result.logs)
        self._count(result)
        return result

    def _count(self, result: BatchResult) -> None:
        for name in ("applied", "unchanged", "echoes", "skipped", "failed", "enqueued"):
            self.totals[name] += getattr(result, name)
        log.info("inbound_batch_applied", applied=result.applied, unchanged=result.unchanged,
                 echoes=result.echoes, skipped=result.skipped, failed=result.failed)

    async def _apply_collection(
        self, collection: str, group: list[SalesforceChange], result: BatchResult,
        applied: Counter[str], summary: bool, attempt: int,
    ) -> None:
        docs = await self.store.find_linked(collection, {c.sf_id for c in group},
                                            converted=collection == PEOPLE)
        linked = {d["crm"]["id"]: d for d in docs if get_path(d, "crm.id")}
        converted = {d["crm"]["converted_from"] for d in docs if get_path(d, "crm.converted_from")}
        claimed = {d["_id"] for d in docs}
        unlinked = [c for c in group if c.sf_id not in linked and c.kind in (*_FULL_RECORD,
                                                                          ChangeKind.UNDELETE)]
        matches = await find_matches(self.store, self.mappings, collection, unlinked, claimed) \
            if unlinked and (collection == PEOPLE or self.mappings.accounts_importable()) else {}
        accounts = await company_ids(self.store, group) if collection == PEOPLE else {}
        pending: dict[str, _Pending] = {}
        for change in group:
            try:
                self._validate(change)
                item = pending.get(change.sf_id) or self._start(change, collection, linked, converted,
                                                                 matches, result)
                if item is None:
                    continue
                pending[change.sf_id] = item
                self._apply_change(item, change, accounts)
            except SkippableError as exc:
                result.logs.append(failed_inbound(change.sobject, change.sf_id, str(exc),
                                                  collection=collection, attempt=attempt))
                result.failed += 1
        await self._write(collection, list(pending.values()), result, applied, summary, attempt)

    def _start(
        self, change: SalesforceChange, collection: str, linked: dict[str, dict[str, Any]],
        converted: set[str], matches: dict[str, dict[str, Any]], result: BatchResult,
    ) -> _Pending | None:
        doc = linked.get(change.sf_id)
        merge = change.source in _MERGE_SOURCES
        if doc is not None:
            kind_type: LogType = "merge" if merge or change.kind is ChangeKind.CREATE else "update"
            return _Pending(change, collection, _copy(doc), {"_id": doc["_id"]}, kind_type,
                            merge=merge or change.kind is ChangeKind.CREATE)
        reason = cannot_start(change, converted)
        if reason is None and (match := matches.get(change.sf_id)) is not None:
            item = _Pending(change, collection, _copy(match),
                            {"_id": match["_id"], "crm.id": {"$exists": False}}, "link", merge=True)
            self._link(item, change)
            return item
        reason = reason or may_create(self.mappings, change, collection)
        if reason is not None:
            result.skipped += 1
            log.debug("inbound_change_skipped", sobject=change.sobject, sf_id=change.sf_id, reason=reason)
            return None
        item = _Pending(change, collection, {}, {"crm.id": change.sf_id}, "create", upsert=True)
        self._link(item, change)
        _assign(item.doc, "crm.id", change.sf_id)
        return item

    def _link(self, item: _Pending, change: SalesforceChange) -> None:
        item.put("crm.object", change.sobject)
        if item.type == "link":
            item.put("crm.id", change.sf_id)
        item.put("crm.linked_at", utcnow(), logged=False)

    def _apply_change(self, item: _Pending, change: SalesforceChange, accounts: dict[str, Any]) -> None:
        item.change = change
        if change.kind is ChangeKind.DELETE or change.fields.get("IsDeleted") is True:
            if not get_path(item.doc, "crm.deleted"):
                item.put("crm.deleted", True)
                item.put("crm.deleted_at", change.changed_at, logged=False)
                item.retype("delete")
            return
        if get_path(item.doc, "crm.deleted") and change.kind in (ChangeKind.UNDELETE, ChangeKind.UPSERT):
            item.drop("crm.deleted")
            item.drop("crm.deleted_at")
            item.retype("undelete")
        self._merge_fields(item, change)
        owner = owner_updates(self.mappings, item.doc, change.fields.get("OwnerId"))
        for path, value in owner.items():
            item.put(path, value, logged=path == "owner_id")
        if "owner_id" in owner and item.type == "update" and len(item.fields) == 1:
            item.type = "owner_change"
        account = change.fields.get("AccountId") if change.sobject == "Contact" else None
        if isinstance(account, str) and account in accounts:
            item.put("company_id", accounts[account])

    def _validate(self, change: SalesforceChange) -> None:
        """Reject the change before anything of it is planned (a wrong-typed mapped value)."""
        for m in self.mappings.for_object(change.sobject):
            if m.sf_field in change.fields:
                check_value(m.sf_field, change.fields[m.sf_field])

    def _merge_fields(self, item: _Pending, change: SalesforceChange) -> None:
        mappings = self.mappings.for_object(change.sobject)
        record = dict(change.fields)
        record.update(dict.fromkeys(change.nulled_fields - record.keys()))
        writable = self.writable(change.sobject) if self.writable else None
        edits = record if item.merge else shadow.edits_only(item, mappings, record)
        merged = merge_record(mappings, item.doc, edits, change.changed_at, writable,
                              complete=change.kind in _FULL_RECORD)
        for local_field, value in merged.local_updates.items():
            item.put(local_field, value)
        for local_field, when in merged.field_times.items():
            item.put(f"_sync.field_times.{local_field}", when, logged=False)
        if item.merge and merged.sf_updates:
            item.sf_updates.update(merged.sf_updates)
        elif not item.merge:
            item.held.update(merged.held)
        shadow.record(item, mappings, record, change.changed_at, complete=change.kind in _FULL_RECORD)

    async def _write(
        self, collection: str, items: list[_Pending], result: BatchResult, applied: Counter[str],
        summary: bool, attempt: int,
    ) -> None:
        to_write = [i for i in items if i.changed]
        result.unchanged += sum(1 for i in items if not i.changed and not i.sf_updates)
        now = utcnow()
        outcome = await self.store.bulk_apply(collection, [_record_write(i, now) for i in to_write])
        failed: set[int] = set()
        for index, item in enumerate(to_write):
            local_id = item.doc.get("_id", outcome.upserted.get(index))
            if index in outcome.errors:
                failed.add(id(item))
                result.logs.append(failed_inbound(
                    item.change.sobject, item.change.sf_id, outcome.errors[index], type=item.type,
                    collection=collection, local_id=_text(local_id), attempt=attempt))
                result.failed += 1
                continue
            result.applied += 1
            applied[item.change.sobject] += 1
            item.doc["_id"] = local_id
            if not summary and (item.fields or item.type != "update"):  # not shadow bookkeeping only
                result.logs.append(_success(item, attempt))
        result.logs += [shadow.held_log(i, attempt) for i in to_write if i.held and id(i) not in failed]
        await self._enqueue_merges(
            [i for i in items if i.sf_updates and id(i) not in failed and i.doc.get("_id") is not None],
            result, summary, attempt)

    async def _enqueue_merges(
        self, items: list[_Pending], result: BatchResult, summary: bool, attempt: int
    ) -> None:
        """Where the local value won a merge, Salesforce gets it through the outbox."""
        if not items or self.outbox is None:
            return
        await self.outbox.enqueue([
            OutboundWrite(sobject=i.change.sobject, sf_id=i.change.sf_id, collection=i.collection,
                          local_id=i.doc["_id"], fields=dict(i.sf_updates), reason="merge")
            for i in items
        ])
        result.enqueued += len(items)
        if not summary:  # a merge that changed only Salesforce's side still leaves a log
            result.logs += [_success(i, attempt) for i in items if not i.changed]


def _record_write(item: _Pending, now: datetime) -> RecordWrite:
    values = dict(item.sets)
    values.update({"_sync.written_at": now, "updated_at": now,
                   "_sync.sf_modstamp": item.change.changed_at})
    on_insert: dict[str, Any] = {}
    if item.upsert:
        on_insert = {"created_at": now, "_sync.created_by_sync": True}
    return RecordWrite(filter=item.filter, set=values, unset=sorted(item.unsets),
                       set_on_insert=on_insert, upsert=item.upsert)


def _success(item: _Pending, attempt: int) -> SyncLog:
    fields = dict(item.fields)
    fields.update({f"salesforce.{k}": {"old": item.change.fields.get(k), "new": v}
                   for k, v in item.sf_updates.items()})
    return SyncLog(
        source="salesforce", type=item.type, status="success", object=item.change.sobject,
        sf_id=item.change.sf_id, local_id=_text(item.doc.get("_id")), collection=item.collection,
        fields=fields, attempt=attempt,
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
