"""The local-change watcher: the platform's edits to People/Companies become outbound writes.

Change streams (`updateLookup`) when the server has them, else a keyset scan on
(`updated_at`, `_id`) — decided once at start. For each platform edit the watcher records
`_sync.field_times.<field>` (a service write: it sets `_sync.written_at` too) and enqueues the
mapped fields that changed; a new unlinked Person becomes a create per
`rules.create_in_salesforce`, a new Company an Account create. The service's own writes
(`_sync.written_at` among the updated fields, or `updated_at == _sync.written_at`) are never
sent back. Deletes are logged only.

Offsets follow their effects: the resume token (`resume:<collection>`) or watermark
(`local_watermark:<collection>`) is saved only after the outbox holds the writes it covers.

Polling reads up to `settle` before now, and each pass starts `overlap` (default 2 minutes,
SFSYNC_SYNC__POLL_OVERLAP_SECONDS) before its watermark: a platform write stamped `updated_at`
before the watermark (a commit slower than `settle`, a writer whose clock runs behind) is still
read. Pairs (_id, updated_at) already handled within the window are skipped; the watermark never
moves back. Cost: MongoDB reads of the window's documents each pass; no API call.

A local edit is queued for `both` and `to_salesforce` fields with the direction and blank rules
(`merge_field`, Salesforce's side unknown here); the merge behaviour decides when the flusher
sends it, against the Salesforce shadow (`outbound_shadow`), the owner (`OwnerId`, the platform's
`owner_id` through `[[users]]`) included, with its own field time. Read-only fields are filtered
by the flusher, which has the describe.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from reconciler.errors import RetriableError
from reconciler.merge import Side, merge_field
from reconciler.objects import ACCOUNT, COMPANIES, OBJECTS, PEOPLE, objects_in
from reconciler.outbox import Clock, utcnow
from reconciler.pacing import Backoff, every, sleep_unless_stopped
from reconciler.ports import OutboundQueue, OutboundWrite
from reconciler.records import get_path
from reconciler.rules import OWNER_FIELD, follows_salesforce_owner, owner_out
from reconciler.store import LocalChange, StreamHistoryLostError, WatchedCollection
from reconciler.store.state_keys import local_watermark_key, resume_key
from reconciler.sync_logs import SyncLog
from settings import FieldMapping, Mappings

log = structlog.get_logger(__name__)

# one record's write, field times, and the failed log of an owner not sent (an unmapped user)
Planned = tuple[OutboundWrite | None, dict[str, datetime], SyncLog | None]
_EDITS = frozenset({"insert", "update", "replace"})
# `rules.create_in_salesforce` ("lead" | "contact") -> the object a new Person is created as
_CREATE_OBJECT = {name.lower(): name for name in objects_in(PEOPLE)}


class WatchStore(Protocol):
    """What the watcher needs from the store (`reconciler.store.Store` provides it)."""

    async def load_state(self, key: str) -> dict[str, Any] | None: ...

    async def save_state(self, key: str, value: dict[str, Any]) -> None: ...

    def watched(self, collection: str) -> WatchedCollection: ...

    async def insert_sync_logs(self, logs: Sequence[SyncLog]) -> Any: ...


@dataclass
class Plan:
    """What a batch of local changes asks for: outbox writes, then field times."""

    writes: list[OutboundWrite] = field(default_factory=list)
    field_times: dict[Any, dict[str, datetime]] = field(default_factory=dict)
    field_values: dict[Any, dict[str, Any]] = field(default_factory=dict)  # the values stamped
    logs: list[SyncLog] = field(default_factory=list)


def is_service_write(change: LocalChange) -> bool:
    if change.op == "update":
        return "_sync.written_at" in change.changed_paths
    return change.document is not None and is_own_document(change.document)


def is_own_document(doc: Mapping[str, Any]) -> bool:
    written = get_path(doc, "_sync.written_at")
    return written is not None and doc.get("updated_at") == written


def touches(local_field: str, path: str) -> bool:
    """Does a write to `path` change `local_field` (same, parent or child path)?"""
    return path == local_field or path.startswith(f"{local_field}.") or local_field.startswith(f"{path}.")


def mapped_fields(mappings: Mappings, collection: str) -> list[str]:
    return list(mappings.companies if collection == COMPANIES else mappings.people)


def watched_fields(mappings: Mappings, collection: str) -> list[str]:
    """The fields whose edits go out: the mapped ones and the platform's owner."""
    return [*mapped_fields(mappings, collection), OWNER_FIELD]


def create_object(mappings: Mappings, collection: str, objects: Collection[str]) -> str | None:
    """The object a new unlinked local record is created as, or None (rules, synced objects)."""
    if collection == COMPANIES:
        target: str | None = ACCOUNT.name if mappings.companies else None
    else:
        target = _CREATE_OBJECT.get(mappings.rules.create_in_salesforce)
    return target if target in objects else None


def plan_record(mappings: Mappings, objects: Collection[str], collection: str, doc: Mapping[str, Any],
                changed: Collection[str] | None, at: datetime) -> Planned:
    """The write (or None) and field times for one platform edit. `changed` None = every field."""
    crm = doc.get("crm") if isinstance(doc.get("crm"), Mapping) else None
    linked = bool(crm and crm.get("id") and not crm.get("deleted"))
    sobject = str(crm["object"]) if linked and crm else create_object(mappings, collection, objects)
    selected = [name for name in mapped_fields(mappings, collection) if changed is None or name in changed]
    times = {name: at for name in selected if get_path(doc, name) is not None}
    # a whole record of a linked document says nothing of an owner it cannot follow from Salesforce
    owned = OWNER_FIELD in changed if changed is not None else \
        not linked or follows_salesforce_owner(mappings, get_path(doc, "crm.owner_id"))
    if owned and doc.get(OWNER_FIELD) is not None:
        times[OWNER_FIELD] = at  # what `most_recent` weighs an outbound owner by
    if sobject is None or (crm and crm.get("deleted")):
        return None, times, None
    # A create sends every mapped field; an update only what changed.
    fields = _outgoing(mappings.for_object(sobject), doc, None if not linked else set(selected), at)
    fields.pop("OwnerId", None)  # the owner goes out as the platform's user, translated:
    # a create carries the owner whatever changed (without it Salesforce makes the integration
    # user the owner, and that comes back to the platform)
    owner, unmapped = owner_out(mappings, sobject, doc) if not linked or owned else (None, None)
    if owner is not None:
        fields["OwnerId"] = owner
    sf_id = str(crm["id"]) if linked and crm else None
    failed = None if unmapped is None else _unmapped_owner(sobject, sf_id, collection, doc, unmapped)
    if sf_id is not None:
        write = OutboundWrite(sobject=sobject, sf_id=sf_id, collection=collection,
                              local_id=doc["_id"], fields=fields, reason="local_edit")
        return (write if fields else None), times, failed
    return OutboundWrite(sobject=sobject, sf_id=None, collection=collection, local_id=doc["_id"],
                         fields=fields, reason="create"), times, failed


def _unmapped_owner(sobject: str, sf_id: str | None, collection: str, doc: Mapping[str, Any],
                    reason: str) -> SyncLog:
    """The failed log of an owner not sent, naming `OwnerId`: only a later write that sends the
    owner resolves it, whether or not the rest of the record went out."""
    return SyncLog(source="local", type="update" if sf_id else "create", status="failed", object=sobject,
                   sf_id=sf_id, local_id=str(doc["_id"]), collection=collection, error=reason,
                   fields={"OwnerId": {"old": get_path(doc, "crm.owner_id"), "new": doc.get(OWNER_FIELD)}})


def _outgoing(mappings: Sequence[FieldMapping], doc: Mapping[str, Any], only: Collection[str] | None,
              at: datetime) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for mapping in mappings:
        if only is not None and mapping.local_field not in only:
            continue
        # Salesforce's side is unknown to a local edit: direction and blank rules decide.
        decision = merge_field(mapping, Side(get_path(doc, mapping.local_field), at), Side(None),
                               sf_field_writable=True)
        if decision.write_salesforce:
            fields[mapping.sf_field] = decision.value
    return fields


def plan_changes(mappings: Mappings, objects: Collection[str], collection: str,
                 changes: Sequence[LocalChange]) -> Plan:
    """Change-stream events -> writes and field times (pure)."""
    plan = Plan()
    names = watched_fields(mappings, collection)
    for change in changes:
        if change.op == "delete":
            log.info("local_delete_not_synced", collection=collection, local_id=str(change.doc_id))
            continue
        if change.op not in _EDITS or change.document is None or is_service_write(change):
            continue
        changed: set[str] | None = None
        if change.op == "update":
            changed = {n for n in names if any(touches(n, p) for p in change.changed_paths)}
            if not changed:
                continue
        _add(plan, plan_record(mappings, objects, collection, change.document, changed, change.at),
             change.document, f"watcher:{change.op}", change.doc_id)
    return plan


def _add(plan: Plan, planned: Planned, doc: Mapping[str, Any], origin: str, doc_id: Any) -> None:
    write, times, failed = planned
    if write is not None:
        plan.writes.append(dataclasses.replace(write, origin=origin))
    if failed is not None:
        plan.logs.append(failed)
    if times:
        plan.field_times.setdefault(doc_id, {}).update(times)
        plan.field_values.setdefault(doc_id, {}).update({name: get_path(doc, name) for name in times})


def snapshot(mappings: Mappings, collection: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    return {name: get_path(doc, name) for name in watched_fields(mappings, collection)}


def plan_polled(mappings: Mappings, objects: Collection[str], collection: str,
                docs: Sequence[Mapping[str, Any]], seen: Mapping[Any, Mapping[str, Any]]) -> Plan:
    """Polled documents -> writes and field times, diffing mapped values against `seen` (pure).

    A document never seen before sends every mapped field: without a baseline, losing an edit
    would be worse than re-sending a value Salesforce already has.
    """
    plan = Plan()
    for doc in docs:
        if is_own_document(doc):
            continue
        before = seen.get(doc["_id"])
        now_values = snapshot(mappings, collection, doc)
        changed = None if before is None else {n for n, v in now_values.items() if before.get(n) != v}
        if changed is not None and not changed:
            continue
        at = doc.get("updated_at")
        at = at if isinstance(at, datetime) else datetime.now(UTC)
        _add(plan, plan_record(mappings, objects, collection, doc, changed, at), doc,
             "watcher:poll" if changed is not None else "watcher:poll_unseen", doc["_id"])
    return plan


class LocalChangeWatcher:
    """Watches `people` and `companies` and feeds the outbox. One per process (see run())."""

    def __init__(
        self, store: WatchStore, mappings: Mappings, outbox: OutboundQueue, *,
        collections: Sequence[str] = (PEOPLE, COMPANIES),
        objects: Collection[str] = tuple(OBJECTS),
        force_polling: bool = False, poll_interval: timedelta = timedelta(seconds=5),
        settle: timedelta = timedelta(seconds=1), max_await_ms: int = 500,
        token_save_interval: timedelta = timedelta(seconds=30), page_size: int = 500,
        clock: Clock = utcnow, overlap: timedelta = timedelta(minutes=2),
    ) -> None:
        self._store, self._mappings, self._outbox = store, mappings, outbox
        self._collections = list(collections)
        self._objects = frozenset(objects)
        self._force_polling = force_polling
        self._poll_interval, self._settle = poll_interval, settle
        self._max_await_ms, self._token_save_interval = max_await_ms, token_save_interval
        self._page_size, self._clock = page_size, clock
        self._overlap = overlap
        self._handled: dict[str, dict[tuple[Any, datetime], None]] = {}  # polling: per collection
        self.mode: str | None = None          # "stream" | "poll", decided at start
        self.edits_enqueued = 0

    async def start_mode(self) -> str:
        """Decide once: change streams when the server has them (and polling is not forced)."""
        if self.mode is None:
            streams = not self._force_polling and await self._store.watched(
                self._collections[0]).supports_change_streams()
            self.mode = "stream" if streams else "poll"
            log.info("local_watch_mode", mode=self.mode, forced=self._force_polling)
        return self.mode

    async def run(self, stop: asyncio.Event) -> None:
        mode = await self.start_mode()
        loop = self._stream if mode == "stream" else self._poll
        async with asyncio.TaskGroup() as group:
            for name in self._collections:
                group.create_task(self._guarded(loop, self._store.watched(name), stop))

    async def _guarded(self, loop: Callable[[WatchedCollection, asyncio.Event], Awaitable[None]],
                       watched: WatchedCollection, stop: asyncio.Event) -> None:
        """Restart a collection's loop after a transient MongoDB failure, from its saved offset."""
        backoff = Backoff(base=1.0, cap=30.0)
        while not stop.is_set():
            try:
                await loop(watched, stop)
                return
            except RetriableError as exc:
                delay = backoff.next_delay()
                log.warning("local_watch_failed", collection=watched.name, error=str(exc),
                            retry_in_s=round(delay, 1))
                await sleep_unless_stopped(stop, delay)

    async def apply(self, watched: WatchedCollection, plan: Plan) -> None:
        """Outbox first (durable), then field times; the caller saves its offset after this."""
        if plan.writes:
            await self._outbox.enqueue(plan.writes)
            self.edits_enqueued += len(plan.writes)
            log.info("local_edits_enqueued", collection=watched.name, writes=len(plan.writes))
        await watched.record_field_times(plan.field_times, self._clock(), plan.field_values)
        if plan.logs:
            await self._store.insert_sync_logs(plan.logs)

    # -- change streams ----------------------------------------------------------------------

    async def _stream(self, watched: WatchedCollection, stop: asyncio.Event) -> None:
        key = resume_key(watched.name)
        while not stop.is_set():
            state = await self._store.load_state(key) or {}
            try:
                await self._follow(watched, key, state.get("token"), stop)
            except StreamHistoryLostError:
                # changes read after the saved token may predate its save: start a minute early
                since = (state.get("at") or self._clock()) - timedelta(minutes=1)
                log.error("local_resume_token_lost", collection=watched.name, since=str(since))
                await self._catch_up(watched, since)
                await self._store.save_state(key, {"token": None, "at": self._clock()})

    async def _follow(self, watched: WatchedCollection, key: str, token: dict[str, Any] | None,
                      stop: asyncio.Event) -> None:
        saved, saved_at = token, self._clock()
        batches = watched.batches(token, max_await_ms=self._max_await_ms, max_batch=self._page_size)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                if batch.changes:
                    plan = plan_changes(self._mappings, self._objects, watched.name, batch.changes)
                    await self.apply(watched, plan)
                now = self._clock()
                # with no saved token, save where the stream began at once: a term that ends
                # before its first save would leave the next one watching from its own start,
                # blind to writes made in between (chaos seed 5309, Q1)
                due = saved is None or bool(batch.changes) or now - saved_at >= self._token_save_interval \
                    or stop.is_set()
                if batch.resume_token and batch.resume_token != saved and due:
                    await self._store.save_state(key, {"token": batch.resume_token, "at": now})
                    saved, saved_at = batch.resume_token, now
                if stop.is_set():
                    return

    async def _catch_up(self, watched: WatchedCollection, since: datetime) -> None:
        """After a lost resume token: scan everything changed since the last saved token."""
        after: tuple[datetime, Any | None] = (since, None)
        while True:
            after, count = await self._poll_page(watched, after)
            if count < self._page_size:
                return

    # -- polling fallback --------------------------------------------------------------------

    async def _poll(self, watched: WatchedCollection, stop: asyncio.Event) -> None:
        await watched.ensure_polling_index()
        async for _ in every(self._poll_interval.total_seconds(), stop):
            await self.poll_once(watched)

    async def poll_once(self, watched: WatchedCollection) -> int:
        """One pass from the saved watermark; the number of documents read."""
        key = local_watermark_key(watched.name)
        state = await self._store.load_state(key)
        if state is None:  # first start: from now on, not the whole history
            state = {"updated_at": self._clock() - self._settle, "id": None}
            await self._store.save_state(key, state)
        mark: tuple[datetime, Any | None] = (state["updated_at"], state.get("id"))
        after: tuple[datetime, Any | None] = (mark[0] - self._overlap, None) if self._overlap else mark
        total = 0
        while True:
            after, count = await self._poll_page(watched, after)
            total += count
            if _later(after, mark):
                await self._store.save_state(key, {"updated_at": after[0], "id": after[1]})
                mark = after
            if count < self._page_size:
                self._forget_before(watched.name, mark[0] - self._overlap)
                return total

    def _forget_before(self, collection: str, at: datetime) -> None:
        handled = self._handled.get(collection, {})
        for pair in [p for p in handled if p[1] < at]:
            del handled[pair]

    async def _poll_page(self, watched: WatchedCollection, after: tuple[datetime, Any | None]
                         ) -> tuple[tuple[datetime, Any | None], int]:
        # The signpost lags `settle` behind now: a write stamped just before a slow commit is
        # still read on the next pass.
        until = self._clock() - self._settle
        read = await watched.changed_since(after, until, self._page_size)
        if not read:
            return after, 0
        last = read[-1]
        handled = self._handled.setdefault(watched.name, {})
        docs = [d for d in read if (d["_id"], d["updated_at"]) not in handled]
        handled.update({(d["_id"], d["updated_at"]): None for d in docs})
        if not docs:
            return (last["updated_at"], last["_id"]), len(read)
        seen = await watched.snapshots([d["_id"] for d in docs])
        plan = plan_polled(self._mappings, self._objects, watched.name, docs, seen)
        await self.apply(watched, plan)
        await watched.save_snapshots({d["_id"]: snapshot(self._mappings, watched.name, d) for d in docs})
        return (last["updated_at"], last["_id"]), len(read)


def _later(a: tuple[datetime, Any | None], b: tuple[datetime, Any | None]) -> bool:
    """Whether keyset position `a` is past `b` (an id-less position is the start of its time)."""
    if a[0] != b[0]:
        return a[0] > b[0]
    return a[1] is not None and (b[1] is None or a[1] > b[1])
