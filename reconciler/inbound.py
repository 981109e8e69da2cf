"""Applying Salesforce changes to People and Companies: the `ChangeSink` the listener feeds.

A micro-batch costs a handful of MongoDB round-trips whatever its size: per collection one
`find` of the linked documents (`crm.id` IN ...), one `find` for email/domain matches when
there are unlinked records, for People one `find` of the Companies their `AccountId`s name,
then ONE unordered `bulk_write`; and one `insert_many` of sync logs for the whole batch.
Accounts are applied before People so a Contact can point at a Company created in the same
batch. Several changes to one record in a batch fold into one write and one log.

Idempotent: values are compared with what is stored; a change that alters nothing writes
nothing and logs nothing, so a re-delivered batch leaves no trace.

Compare-and-set (issue 11 item 6): a write to an existing document applies only if the
document is still the version that was read (`RecordVersion`: `updated_at` and `_sync.version`).
One that changed meanwhile (a platform edit between our read and our write) is read again and
merged again, up to `CAS_ATTEMPTS` times; a mapped field whose value changed between the two
reads counts as edited at the fresh document's `updated_at` (the watcher may not have recorded
its field time yet), so `most_recent` weighs the platform's edit against Salesforce's; a time
the re-read gave a field the platform's value won on is stored with the write (`keep_times`),
so the flusher weighs that value alike. Still changing after the last attempt: a failed,
retriable log (`CONFLICT`).

Clocks (issue 11 item 10): with `sf_clock` (Salesforce's clock as learned from its responses),
`LastModifiedDate` is moved onto this host's clock before `most_recent` compares it.

Durability (issue 11 item 9): the batch's record writes are majority without `j`, and
`apply_batch` always ends with a journaled majority write (its sync-log insert, or
`journal_barrier` when it logs nothing) before it returns: nothing is reported done, and no
offset moves, before the whole batch is journaled (`reconciler.store`, "Durability").

Fencing (issue 11 item 4): with `fence` (the leader term's `Fence`), record writes are refused
once another term holds the lease (`FencedError`, raised to the caller: nothing is logged as done).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from reconciler import conversion
from reconciler import inbound_shadow as shadow
from reconciler.conversion import Conversion
from reconciler.errors import FencedError, SkippableError
from reconciler.linking import company_ids, find_matches
from reconciler.local_changes import plan_record, watched_fields
from reconciler.merge import RecordMerge, capped_offset, local_side, merge_record
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
    SentValues,
)
from reconciler.records import check_value, get_path, is_blank, set_path
from reconciler.rules import cannot_start, may_create, owner_updates
from reconciler.shadow import Seen, shadow_side, stamped_time, unstamped_times
from reconciler.store import BulkOutcome, Fence, RecordVersion, RecordWrite
from reconciler.sync_logs import LogType, SyncLog, event_job, failed_inbound, utcnow
from settings import Direction, FieldMapping, Mappings

log = structlog.get_logger(__name__)

CAS_ATTEMPTS = 3  # reads, merges and compare-and-set writes of one record before giving up
_FULL_RECORD = (ChangeKind.CREATE, ChangeKind.UPSERT)
_MERGE_SOURCES = (ChangeSource.RETRY, ChangeSource.IMPORT)
_LIVE_READS = (ChangeSource.POLL, ChangeSource.GAP)  # records read, merged as live edits
_DELETED_ENTITY = "ENTITY_IS_DELETED"  # Salesforce's answer to a write of a deleted record
# When one record gets several changes in a batch, its log carries the most telling type.
_TYPE_RANK: dict[str, int] = {t: i for i, t in enumerate(
    ("create", "link", "convert", "merge", "delete", "undelete", "owner_change", "update"))}


class InboundStore(Protocol):
    async def find_linked(self, collection: str, sf_ids: Any, *,
                          converted: bool = False) -> list[dict[str, Any]]: ...
    async def find_unlinked_matches(self, collection: str, local_field: str,
                                    values: Any) -> list[dict[str, Any]]: ...
    async def find_records(self, collection: str, ids: Any) -> list[dict[str, Any]]: ...
    async def bulk_apply(self, collection: str, writes: Sequence[RecordWrite], *,
                         fence: Fence | None = None, journaled: bool = True) -> BulkOutcome: ...
    async def write_in_order(self, collection: str, writes: Sequence[RecordWrite], *,
                             fence: Fence | None = None) -> BulkOutcome: ...
    async def insert_sync_logs(self, logs: Sequence[SyncLog]) -> list[str]: ...
    async def journal_barrier(self) -> None: ...
    async def open_failed_fields(self, source: str, sf_ids: Sequence[str],
                                 code: str) -> dict[str, set[str]]: ...


class SalesforceOffset(Protocol):
    """Salesforce's clock minus this host's for a time Salesforce stamped: the offset valid when
    it was stamped (`listener.salesforce_time.SalesforceClock.offset_at`)."""

    def offset_at(self, salesforce_time: datetime) -> timedelta: ...


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
    """One record's accumulated write within a batch, over a working copy of its document: a
    shallow copy whose nested dicts are copied when first written (`_set`), so the document as
    read (`read`) stays as read without a deep copy of every document of the batch."""

    change: SalesforceChange
    collection: str
    doc: dict[str, Any]
    filter: dict[str, Any]
    type: LogType
    upsert: bool = False
    merge: bool = False
    expected: RecordVersion | None = None  # compare-and-set on the version read
    read: dict[str, Any] | None = None      # the document as read (before this batch's changes)
    changes: list[SalesforceChange] = field(default_factory=list)
    sets: dict[str, Any] = field(default_factory=dict)
    unsets: set[str] = field(default_factory=set)
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    sf_updates: dict[str, Any] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)   # local field -> the rule that held it
    deleted_at: datetime | None = None  # undeleted here: when Salesforce deleted it (its stamp)
    won: dict[str, Any] = field(default_factory=dict)    # Salesforce field -> platform value that won
    unordered: set[str] = field(default_factory=set)     # edits set aside: the record is read again
    # a read record's queued write: every value its claims sent (`OutboundQueue.sent_values`)
    own: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    stored: Mapping[str, Any] | None = None  # the document as stored (`read`: as merged, see `keep_times`)
    # the nested dicts copied so far, by id() (held here, so no id is reused while in use)
    owned: dict[int, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.doc = dict(self.doc)

    def _set(self, path: str, value: Any) -> None:
        """`set_path` on the working copy, copying each nested dict on the way the first time."""
        parts = path.split(".")
        node = self.doc
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict) or id(child) not in self.owned:
                child = node[part] = dict(child) if isinstance(child, dict) else {}
                self.owned[id(child)] = child
            node = child
        node[parts[-1]] = value

    def put(self, path: str, value: Any, *, logged: bool = True) -> None:
        old = get_path(self.doc, path)
        if old == value and path not in self.unsets:
            return
        if logged:
            self.fields.setdefault(path, {"old": old})["new"] = value
        self.sets[path] = value
        self.unsets.discard(path)
        self._set(path, value)

    def drop(self, path: str) -> None:
        if get_path(self.doc, path) is None:
            return
        self.fields.setdefault(path, {"old": get_path(self.doc, path)})["new"] = None
        self.sets.pop(path, None)
        self.unsets.add(path)
        self._set(path, None)

    def keep_times(self, mappings: Sequence[FieldMapping], won: Mapping[str, Any]) -> None:
        """Store the field times a compare-and-set re-read gave the working copy only
        (`_with_concurrent_edits`) for the fields the platform's value won on them: the flusher
        then weighs that value by the time this merge did. Without them it saw the stamped time
        and dropped the value as older than Salesforce's, which the platform had kept (chaos seed
        33331, C3.city: the re-read dated it by another field's edit, unstamped when first read)."""
        for m in mappings:
            path = f"_sync.field_times.{m.local_field}"
            when = get_path(self.doc, path)
            if (m.sf_field in won and self.stored is not None and path not in self.sets
                    and isinstance(when, datetime) and when != get_path(self.stored, path)):
                self.sets[path] = when

    def take(self, merged: RecordMerge, mappings: Sequence[FieldMapping], record: Mapping[str, Any]) -> None:
        """What a merge of one change decided: the platform's updates and their times; for a
        merge, what goes to Salesforce; for a live change, the rules that held and the values won."""
        for local_field, value in merged.local_updates.items():
            self.put(local_field, value)
        for local_field, when in merged.field_times.items():
            self.put(f"_sync.field_times.{local_field}", when, logged=False)
        self.keep_times(mappings, merged.sf_updates)
        if self.merge and merged.sf_updates:
            self.sf_updates.update(merged.sf_updates)
        elif not self.merge:
            self.held.update(merged.held)
            self.won.update(shadow.won_by_platform(mappings, merged.sf_updates, record))

    def retype(self, new: LogType) -> None:
        if _TYPE_RANK[new] < _TYPE_RANK[self.type]:
            self.type = new

    @property
    def changed(self) -> bool:
        return bool(self.sets or self.unsets)


def _copy(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: (_copy(v) if isinstance(v, dict) else v) for k, v in doc.items()}


class Reconciler:
    """Implements `reconciler.ports.ChangeSink` (`apply`, `reject`).

    `fetcher` reads records from Salesforce by id (a lead conversion's Contact, retries and
    re-imports through `Jobs`); without one, nothing is re-fetched. `sf_clock` and `fence`: see
    the module docstring."""

    def __init__(
        self, store: InboundStore, mappings: Mappings, *, fetcher: RecordFetcher | None = None,
        outbox: OutboundQueue | None = None, client_name: str = "salesforce-sync",
        writable: Callable[[str], dict[str, bool]] | None = None, budget: Budget | None = None,
        sf_clock: SalesforceOffset | None = None, fence: Callable[[], Fence | None] | None = None,
    ) -> None:
        self.store: InboundStore = store if fence is None else _FencedStore(store, fence)
        self.mappings = mappings
        self.fetcher = fetcher
        self.outbox = outbox
        self.client_name = client_name
        self.writable = writable
        self.budget = budget
        self.sf_clock = sf_clock
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
        run = _Run(result, applied, summary, attempt, relinked.leads, relinked.follows)
        for collection in (COMPANIES, PEOPLE):
            group = [c for c in live if collection_for(c.sobject) == collection]
            if group:
                await self._apply_collection(collection, group, run)
        await _read_unordered_again(self, run)
        if summary:
            result.logs += [
                SyncLog(source="salesforce", type="import", status="success", object=sobject,
                        collection=collection_for(sobject), count=n)
                for sobject, n in applied.items()
            ]
        result.log_ids = await self.store.insert_sync_logs(result.logs)
        if run.unjournaled and not result.logs:
            await self.store.journal_barrier()  # the batch's records wrote without `j`: close it
        _count(self.totals, result)
        return result

    async def _apply_collection(self, collection: str, group: list[SalesforceChange], run: _Run) -> None:
        """Read, merge and write `group`; what changed under us is read and merged again."""
        before: dict[str, dict[str, Any]] = {}
        for _ in range(CAS_ATTEMPTS):
            conflicted = await self._apply_once(collection, group, run, before)
            if not conflicted:
                return
            log.info("inbound_write_conflict", collection=collection, records=len(conflicted))
            group = [c for item in conflicted for c in item.changes]
            before = {item.change.sf_id: item.read for item in conflicted if item.read is not None}
        for item in conflicted:
            run.result.logs.append(failed_inbound(
                item.change.sobject, item.change.sf_id,
                f"CONFLICT: the document changed during each of {CAS_ATTEMPTS} attempts to merge into it",
                type=item.type, collection=collection, local_id=_text(item.doc.get("_id")),
                attempt=run.attempt, retriable=True, fields=item.fields))
            run.result.failed += 1

    async def _apply_once(self, collection: str, group: list[SalesforceChange], run: _Run,
                          before: dict[str, dict[str, Any]]) -> list[_Pending]:
        docs = await self.store.find_linked(collection, {c.sf_id for c in group},
                                            converted=collection == PEOPLE)
        stored = {d["crm"]["id"]: d for d in docs if get_path(d, "crm.id")}
        linked = {i: _with_concurrent_edits(d, before.get(i), self.mappings) for i, d in stored.items()}
        converted = {lead for d in docs for lead in conversion.recorded_leads(d)}
        converted |= run.converted  # the batch's conversions: their Leads start no Person
        claimed = {d["_id"] for d in docs}
        unlinked = [c for c in group if c.sf_id not in linked and c.kind in (*_FULL_RECORD,
                                                                          ChangeKind.UNDELETE)]
        matches = await find_matches(self.store, self.mappings, collection, unlinked, claimed) \
            if unlinked and (collection == PEOPLE or self.mappings.accounts_importable()) else {}
        accounts = await company_ids(self.store, group) if collection == PEOPLE else {}
        own = await _sent_values(self.outbox, group, linked)
        pending: dict[str, _Pending] = {}
        for change in group:
            try:
                _validate(self.mappings, change)
                item = pending.get(change.sf_id) or _start(self.mappings, change, collection, linked,
                                                           converted, matches, run.result)
                if item is None:
                    continue
                item.own = own.get((change.sobject, change.sf_id), item.own)
                item.stored = item.stored or stored.get(change.sf_id)
                if change.sf_id not in pending and change.sf_id in run.follows:
                    _record_conversion(item, run.follows[change.sf_id])
                pending[change.sf_id] = item
                self._apply_change(item, change, accounts)
            except SkippableError as exc:
                doc = pending[change.sf_id].doc if change.sf_id in pending else linked.get(change.sf_id)
                run.result.logs.append(failed_inbound(change.sobject, change.sf_id, str(exc),
                                                      collection=collection, attempt=run.attempt,
                                                      fields=_would_write(self.mappings, change, doc)))
                run.result.failed += 1
        return await self._write(collection, list(pending.values()), run)

    def _apply_change(self, item: _Pending, change: SalesforceChange, accounts: dict[str, Any]) -> None:
        item.change = change
        item.changes.append(change)
        if change.kind is ChangeKind.DELETE or change.fields.get("IsDeleted") is True:
            if not get_path(item.doc, "crm.deleted"):
                item.put("crm.deleted", True)
                item.put("crm.deleted_at", change.changed_at, logged=False)
                item.retype("delete")
            if not (item.merge and item.doc.get("_id") is not None):
                return
            # a merge (a mapping edit's above all) covers a record in the recycle bin too: what
            # Salesforce gains is held for its undelete, or the sides stay apart (seed 34871, L7)
        if get_path(item.doc, "crm.deleted") and change.kind in (ChangeKind.UNDELETE, ChangeKind.UPSERT):
            item.deleted_at = get_path(item.doc, "crm.deleted_at") or change.changed_at
            item.drop("crm.deleted")
            item.drop("crm.deleted_at")
            item.retype("undelete")
        prior_owner = shadow_side(item.doc, change.sobject, "OwnerId")
        self._merge_fields(item, change)
        _apply_owner(self.mappings, item, change, prior_owner)
        account = change.fields.get("AccountId") if change.sobject == "Contact" else None
        if isinstance(account, str) and account in accounts:
            item.put("company_id", accounts[account])

    def _merge_fields(self, item: _Pending, change: SalesforceChange) -> None:
        mappings = self.mappings.for_object(change.sobject)
        record = _values(change, mappings)
        writable = self.writable(change.sobject) if self.writable else None
        offset = _offset_at(self.sf_clock, change.changed_at)
        host_at = None if change.changed_at is None else change.changed_at - offset
        # the stale-event check weighs Salesforce's stamp against our write on Salesforce's clock
        record = record if item.merge else shadow.set_aside_unordered(item, mappings, record)
        edits = record if item.merge else shadow.edits_only(item, mappings, record, change.changed_at)
        # a merge dates a value the service knew already by when it came (seed 60607, P25)
        known = shadow.known_times(item, mappings, record, host_at) if item.merge else None
        # not `complete`: what `edits_only` left out was read again, not blanked (seed 50321, L1)
        merged = merge_record(mappings, item.doc, edits, change.changed_at, writable,
                              sf_clock_offset=offset, sf_field_times=known, live=not item.merge)
        item.take(merged, mappings, record)
        # the shadow's times are on this host's clock, like the field times they are weighed against
        shadow.record(item, mappings, record, host_at, complete=change.kind in _FULL_RECORD)

    async def _write(self, collection: str, items: list[_Pending], run: _Run) -> list[_Pending]:
        """Write the items that changed; returns those whose document changed since it was read."""
        to_write = [i for i in items if i.changed]
        now = utcnow()
        # Majority without `j`: `apply_batch` ends with a journaled write (see the module docstring).
        writes = [_record_write(i, now, self.mappings) for i in to_write]
        outcome = await self.store.bulk_apply(collection, writes, journaled=False)
        run.unjournaled = run.unjournaled or bool(to_write)
        conflicted = [to_write[i] for i in sorted(outcome.conflicts)]
        run.result.unchanged += sum(1 for i in items if not i.changed and not i.sf_updates)
        failed = _outcome_logs(collection, to_write, outcome, run) | {id(i) for i in conflicted}
        merged = [i for i in items if (i.sf_updates or i.won) and id(i) not in failed
                  and i.doc.get("_id") is not None]
        await _enqueue_merges(self.outbox, merged, run)
        revived = [i for i in to_write if i.deleted_at is not None and id(i) not in failed]
        refused = await self.store.open_failed_fields(
            "local", [i.change.sf_id for i in revived], _DELETED_ENTITY) if revived else {}
        await _send_held_edits(self.outbox, self.mappings, revived, self.sf_clock, run, refused)
        run.unordered += [c for i in items if i.unordered and id(i) not in failed for c in i.changes]
        return conflicted


@dataclass
class _Run:
    """One `apply_batch` call's running totals and options."""

    result: BatchResult
    applied: Counter[str]
    summary: bool
    attempt: int
    converted: set[str] = field(default_factory=set)  # Leads converted in the batch (`Relinked.leads`)
    follows: dict[str, list[Conversion]] = field(default_factory=dict)  # `Relinked.follows`
    unjournaled: bool = False  # records were written without `j`: the batch must end journaled
    unordered: list[SalesforceChange] = field(default_factory=list)  # changes with edits set aside


def _outcome_logs(collection: str, written: list[_Pending], outcome: BulkOutcome, run: _Run) -> set[int]:
    """Totals and logs of one bulk write (conflicts left to the caller's next attempt): a failed
    log per error, a success log per applied record (not for shadow bookkeeping alone), a
    `skipped` log per record with held live edits. Returns the `id()`s of the failed items."""
    result = run.result
    failed: set[int] = set()
    for index, item in enumerate(written):
        local_id = item.doc.get("_id", outcome.upserted.get(index))
        if index in outcome.conflicts:
            continue
        if index in outcome.errors:
            failed.add(id(item))
            result.logs.append(failed_inbound(
                item.change.sobject, item.change.sf_id, outcome.errors[index], type=item.type,
                collection=collection, local_id=_text(local_id), attempt=run.attempt, fields=item.fields))
            result.failed += 1
            continue
        result.applied += 1
        run.applied[item.change.sobject] += 1
        item.doc["_id"] = local_id
        if not run.summary and (item.fields or item.type != "update"):
            result.logs.append(_success(item, run.attempt))
        if item.held:
            result.logs.append(shadow.held_log(item, run.attempt))
    return failed


def _values(change: SalesforceChange, mappings: Sequence[FieldMapping]) -> dict[str, Any]:
    """The Salesforce values a change carries, its cleared fields blank; a full record's every
    mapped field (one it lacks is blank in Salesforce), so that a field `edits_only` leaves out
    of it is known as Salesforce's value read again, not taken for a blank."""
    record = dict(change.fields)
    record.update(dict.fromkeys(change.nulled_fields - record.keys()))
    if change.kind in _FULL_RECORD:
        record.update({m.sf_field: None for m in mappings if m.sf_field not in record})
    return record


def _apply_owner(mappings: Mappings, item: _Pending, change: SalesforceChange, prior: Seen | None) -> None:
    """Salesforce's owner onto the document (`rules.owner_updates`). One the platform did not
    take keeps, in its shadow entry, the owner it replaced (`inbound_shadow.keep_owner_not_followed`)."""
    owner = owner_updates(mappings, item.doc, change.fields.get("OwnerId"))
    for path, value in owner.items():
        item.put(path, value, logged=path == "owner_id")
    if "owner_id" not in owner and prior is not None:
        shadow.keep_owner_not_followed(item, prior.value)
    if "owner_id" in owner and item.type == "update" and _owner_only(item, mappings):
        item.type = "owner_change"


def _owner_only(item: _Pending, mappings: Mappings) -> bool:
    """Did the change set only the platform owner and the Owner CRM ID mapping's field?"""
    owner = {m.local_field for m in mappings.for_object(item.change.sobject) if m.sf_field == "OwnerId"}
    return set(item.fields) <= {"owner_id", *owner}


async def _read_unordered_again(reconciler: Reconciler, run: _Run) -> None:
    """Records with edits set aside as unordered against our own write (`inbound_shadow.
    set_aside_unordered`) are read again, one query per object, and applied as read: the value
    Salesforce holds now is the later one (chaos seed 50321, L4.first_name, P7.last_name).
    Without a fetcher, or the budget for the query, the changes are applied as they came."""
    changes, run.unordered = run.unordered, []
    if not changes:
        return
    fetcher, budget = reconciler.fetcher, reconciler.budget
    if fetcher is None or (budget is not None and not budget.allows_optional_calls()):
        as_came = [replace(c, source=ChangeSource.GAP) for c in changes]  # not set aside again
        await reconciler.apply_batch(as_came, attempt=run.attempt)
        return
    ids: dict[str, set[str]] = {}
    for c in changes:
        ids.setdefault(c.sobject, set()).add(c.sf_id)
    reads = [r for sobject, found in sorted(ids.items())
             for r in await fetcher.fetch(sobject, sorted(found), source=ChangeSource.POLL)]
    await reconciler.apply_batch(reads, attempt=run.attempt)


def _count(totals: Counter[str], result: BatchResult) -> None:
    for name in ("applied", "unchanged", "echoes", "skipped", "failed", "enqueued"):
        totals[name] += getattr(result, name)
    log.info("inbound_batch_applied", applied=result.applied, unchanged=result.unchanged,
             echoes=result.echoes, skipped=result.skipped, failed=result.failed)


async def _sent_values(outbox: OutboundQueue | None, group: Sequence[SalesforceChange],
                       linked: Mapping[str, Any]) -> SentValues:
    """What the queued writes of the linked records read here sent: one outbox query per batch,
    none for events (`inbound_shadow.edits_only`; for a merge, `inbound_shadow.known_times`)."""
    reads = {(c.sobject, c.sf_id) for c in group
             if c.source in (*_LIVE_READS, *_MERGE_SOURCES) and c.sf_id in linked}
    return await outbox.sent_values(reads) if reads and outbox is not None else {}


async def _enqueue_merges(outbox: OutboundQueue | None, items: list[_Pending], run: _Run) -> None:
    """Where the local value won a merge, or a live conflict (`won`), Salesforce gets it through
    the outbox (the flusher re-decides it against the shadow: a value Salesforce has is not sent)."""
    if not items or outbox is None:
        return
    await outbox.enqueue([
        OutboundWrite(sobject=i.change.sobject, sf_id=i.change.sf_id, collection=i.collection,
                      local_id=i.doc["_id"], fields=dict(i.sf_updates or i.won),
                      reason="merge" if i.sf_updates else "local_edit", origin=f"inbound:{i.change.source}")
        for i in items
    ])
    run.result.enqueued += len(items)
    if not run.summary:  # a merge that changed only Salesforce's side still leaves a log
        run.result.logs += [_success(i, run.attempt) for i in items if not i.changed and i.sf_updates]


def _offset_at(sf_clock: SalesforceOffset | None, stamp: datetime | None) -> timedelta:
    """Salesforce's clock minus this host's for a change stamped `stamp`: the offset of when it
    was stamped, not one learned after a step (chaos seed 8191, L5), capped (`capped_offset`)."""
    if stamp is None:
        return timedelta(0)  # nothing to move
    offset = sf_clock.offset_at(stamp) if sf_clock is not None else timedelta(0)
    return capped_offset(offset, stamp, utcnow())


async def _send_held_edits(outbox: OutboundQueue | None, mappings: Mappings, items: list[_Pending],
                           sf_clock: SalesforceOffset | None, run: _Run,
                           refused: Mapping[str, set[str]]) -> None:
    """An undeleted record gets the platform edits made while it was deleted, which had nothing to
    go to (the watcher holds them, recording only their field times): the fields whose field time
    is after the delete go out as a local edit, through the flusher's shadow gate like any. So do
    the fields of an edit made before the delete whose write reached Salesforce after it: refused
    (`refused`: the Salesforce fields of the record's open `ENTITY_IS_DELETED` failures), it had
    nothing to go to either (chaos seeds 1291 and 1970 x 2000, L6.phone and L3: it waited for an
    admin's retry); the write that lands resolves the failure. And the writes the flusher held for
    it (queued before the delete was read: chaos seed 18181, P1)."""
    if outbox is not None:
        await outbox.release_held({(item.change.sobject, item.change.sf_id) for item in items})
    writes = []
    for item in items:
        assert item.deleted_at is not None
        since = _utc(item.deleted_at) - _offset_at(sf_clock, item.deleted_at)  # onto this host's clock
        changed = [name for name in watched_fields(mappings, item.collection)
                   if isinstance(t := get_path(item.doc, f"_sync.field_times.{name}"), datetime)
                   and _utc(t) > since]
        changed += [m.local_field for m in mappings.for_object(item.change.sobject)
                    if m.sf_field in refused.get(item.change.sf_id, ()) and m.local_field not in changed]
        write = plan_record(mappings, (), item.collection, item.doc, changed, utcnow())[0]
        if changed and write is not None:
            writes.append(replace(write, origin="inbound:undelete"))
    if writes and outbox is not None:
        await outbox.enqueue(writes)
        run.result.enqueued += len(writes)
        log.info("undelete_sends_held_edits", records=len(writes))


def _start(
    mappings: Mappings, change: SalesforceChange, collection: str, linked: dict[str, dict[str, Any]],
    converted: set[str], matches: dict[str, dict[str, Any]], result: BatchResult,
) -> _Pending | None:
    """The write a record's first change in the batch starts: update, link, create, or None."""
    doc = linked.get(change.sf_id)
    merge = change.source in _MERGE_SOURCES
    if doc is not None:
        kind_type: LogType = "merge" if merge or change.kind is ChangeKind.CREATE else "update"
        return _Pending(change, collection, doc, {"_id": doc["_id"]}, kind_type,
                        merge=merge or change.kind is ChangeKind.CREATE,
                        expected=RecordVersion.of(doc), read=doc)
    reason = cannot_start(change, converted)
    if reason is None and (match := matches.get(change.sf_id)) is not None:
        item = _Pending(change, collection, match, {"_id": match["_id"], "crm.id": {"$exists": False}},
                        "link", merge=True, expected=RecordVersion.of(match), read=match)
        _link(item, change)
        return item
    reason = reason or may_create(mappings, change, collection)
    if reason is not None:
        result.skipped += 1
        log.debug("inbound_change_skipped", sobject=change.sobject, sf_id=change.sf_id, reason=reason)
        return None
    item = _Pending(change, collection, {}, {"crm.id": change.sf_id}, "create", upsert=True)
    _link(item, change)
    set_path(item.doc, "crm.id", change.sf_id)
    return item


def _record_conversion(item: _Pending, convs: list[Conversion]) -> None:
    """The Person a converted Lead's Contact makes or links records the Lead, every one converted
    into it (`conversion`, step 4), so that their own changes, applied later, start no second
    Person (seed 60013, L10)."""
    leads = conversion.recorded_leads(item.doc)
    new = [x for x in convs if x.lead_id not in leads]
    if item.type in ("create", "link") and new:
        item.put("crm.converted_from", [*leads, *(x.lead_id for x in new)])
        item.put("crm.converted_at", max(x.changed_at for x in new), logged=False)


def _link(item: _Pending, change: SalesforceChange) -> None:
    item.put("crm.object", change.sobject)
    if item.type == "link":
        item.put("crm.id", change.sf_id)
    item.put("crm.linked_at", utcnow(), logged=False)


def _validate(mappings: Mappings, change: SalesforceChange) -> None:
    """Reject the change before anything of it is planned (a wrong-typed mapped value)."""
    for m in mappings.for_object(change.sobject):
        if m.sf_field in change.fields:
            check_value(m.sf_field, change.fields[m.sf_field])


def _would_write(mappings: Mappings, change: SalesforceChange, doc: dict[str, Any] | None
                 ) -> dict[str, dict[str, Any]]:
    """What a change that failed before its merge would have written, for its failed log: the
    mapped fields flowing inbound whose value is data the platform does not hold already."""
    out: dict[str, dict[str, Any]] = {}
    for m in mappings.for_object(change.sobject):
        value, old = change.fields.get(m.sf_field), get_path(doc, m.local_field)
        if m.direction is not Direction.TO_SALESFORCE and not is_blank(value) and value != old:
            out[m.local_field] = {"old": old, "new": value}
    return out


def _with_concurrent_edits(fresh: dict[str, Any], before: dict[str, Any] | None,
                           mappings: Mappings) -> dict[str, Any]:
    """`fresh` re-read after a conflict: a mapped field whose value changed since `before` was
    edited at `fresh`'s `updated_at` at the latest (its field time, if older, is raised to it);
    one that did not change keeps the time it had in `before` (`shadow.platform_time`, so a
    fresh, unstamped edit is not guessed onto it), unless the watcher stamped it since: its own
    time then, not the document's latest edit that `before` guessed it by (chaos seed 11376,
    P3.first_name). Every field now has its time, so the working copy counts as
    stamped up to `updated_at`."""
    edited_at = fresh.get("updated_at")
    if before is None or not isinstance(edited_at, datetime):
        return fresh
    edited_at = _utc(edited_at)
    doc = _copy(fresh)
    sobject = get_path(fresh, "crm.object")
    for m in mappings.for_object(sobject) if isinstance(sobject, str) else ():
        if get_path(before, m.local_field) != get_path(fresh, m.local_field):
            when: datetime | None = edited_at
        elif stamped_time(fresh, m.local_field) != stamped_time(before, m.local_field):
            continue  # the watcher stamped the edit since: its own time stands
        else:
            when = local_side(before, m).changed_at
        path = f"_sync.field_times.{m.local_field}"
        known = get_path(doc, path)
        if when is not None and (not isinstance(known, datetime) or _utc(known) < _utc(when)):
            set_path(doc, path, when)
    set_path(doc, "_sync.written_at", fresh["updated_at"])
    return doc


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class _FencedStore:
    """The store, with every record write carrying the leader term's fence (read per write)."""

    def __init__(self, store: InboundStore, fence: Callable[[], Fence | None]) -> None:
        self._store = store
        self._fence = fence

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _term(self) -> Fence:
        term = self._fence()
        if term is None:
            raise FencedError("inbound apply: no leader term to write for")
        return term

    async def bulk_apply(self, collection: str, writes: Sequence[RecordWrite], *,
                         fence: Fence | None = None, journaled: bool = True) -> BulkOutcome:
        return await self._store.bulk_apply(collection, writes, fence=fence or self._term(),
                                            journaled=journaled)

    async def write_in_order(self, collection: str, writes: Sequence[RecordWrite], *,
                             fence: Fence | None = None) -> BulkOutcome:
        return await self._store.write_in_order(collection, writes, fence=fence or self._term())


def _record_write(item: _Pending, now: datetime, mappings: Mappings) -> RecordWrite:
    # marked a service write below: a platform edit not stamped yet is dated first (its fields'
    # own times, where this change set none)
    values = {**unstamped_times(item.doc, mappings.for_object(item.change.sobject)), **item.sets}
    values.update({"_sync.written_at": now, "updated_at": now,
                   "_sync.sf_modstamp": item.change.changed_at})
    on_insert: dict[str, Any] = {}
    if item.upsert:
        on_insert = {"created_at": now, "_sync.created_by_sync": True,
                     **shadow.as_inserted(values, item.change.sobject)}
    return RecordWrite(filter=item.filter, set=values, unset=sorted(item.unsets),
                       set_on_insert=on_insert, upsert=item.upsert, expected=item.expected)


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
