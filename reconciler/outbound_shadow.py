"""The flusher's side of the Salesforce shadow (issue 10): queued writes are re-decided at
flush time against the shadow, and every successful write updates it.

Before a call, each claimed update's fields are re-decided (`merge.decide_outgoing`) over the
local document as it is now: the platform's current value goes out unless the shadow says
Salesforce holds a newer value (an older queued value never overwrites a newer Salesforce
edit: the write is superseded), holds data under `salesforce_unless_blank` (one `skipped` log
names the field and why), or already has it. A write left with nothing is dropped without a
call; when it was a retry, one `skipped` log names every field it carried and why none went out
(a retry's outcome is always a row). Documents linked before the shadow existed are filled
first: ONE query per call for all of them (at most 200 ids), never one per record. Writes sent
before (maybe applied) and, streaming, writes whose edits are older than the flush wait (a
leader gap or paused budget may have held the inbound side back too) read their records again in
that query, for this decision only: stored, Salesforce's changes would look already read to the
inbound side. A value read back that an earlier attempt of the write sent is its own older
value (time unknown), not a Salesforce edit. After the
call, the values written become the shadow, at the platform time of each value. Creates go out
as queued (no Salesforce side), unless their document was linked meanwhile: then they are
re-queued as updates of that record.
The owner is re-decided like any field, under the merge behaviour of the mapping of `OwnerId`
(`owner_crm_id`): its platform side is the document's owner translated through `[[users]]`, at
the owner's field time (only its stamped one where the platform's owner does not follow Salesforce's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from reconciler.merge import SALESFORCE_NEWER, SAME_VALUE, Side, capped_offset, decide_outgoing
from reconciler.ports import OutboundWrite, SalesforceApi
from reconciler.records import get_path, is_blank, set_path
from reconciler.rules import OWNER_FIELD, follows_salesforce_owner
from reconciler.shadow import (
    Seen,
    has_shadow,
    has_unstamped_edit,
    path,
    platform_time,
    shadow_sets,
    shadow_side,
    stamped_time,
)
from reconciler.soql import parse_sf_datetime, soql_string
from reconciler.store import CREATE, OutboxEntry
from reconciler.sync_logs import SyncLog
from settings import FieldMapping, Mappings

log = structlog.get_logger(__name__)

# The merge core's reason for a dropped value -> what a `skipped` log tells the admin.
_DROPPED = {"equal": SAME_VALUE, "salesforce newer": SALESFORCE_NEWER}


class ShadowStore(Protocol):
    async def find_records(self, collection: str, ids: Any) -> list[dict[str, Any]]: ...

    async def record_shadow(self, collection: str, sets: Mapping[Any, Mapping[str, Any]]) -> None: ...


class ClockOffset(Protocol):
    """Salesforce's clock minus this host's (now, and when Salesforce stamped a time), and the
    latest `Date` it sent (`listener.salesforce_time.SalesforceClock`)."""

    @property
    def offset(self) -> timedelta: ...

    def offset_at(self, salesforce_time: datetime) -> timedelta: ...

    @property
    def latest(self) -> datetime | None: ...


@dataclass(frozen=True)
class Redecided:
    """One write after re-decision: what still goes out, and why the rest does not."""

    fields: dict[str, Any]
    held: dict[str, str] = field(default_factory=dict)         # local field -> rule
    superseded: dict[str, str] = field(default_factory=dict)   # local field -> why it is dropped
    old: dict[str, Any] = field(default_factory=dict)          # Salesforce field -> shadow value
    times: dict[str, datetime | None] = field(default_factory=dict)  # platform time of each value
    local: dict[str, Any] = field(default_factory=dict)  # local field -> the platform's value as read
    # the record was read again for this decision: its `LastModifiedDate` then (Salesforce's clock)
    read_modified: datetime | None = None


def redecide(mappings: Sequence[FieldMapping], write: OutboundWrite, doc: Mapping[str, Any] | None,
             owner: str | None = None, *, follows: bool = True,
             queued_at: datetime | None = None) -> Redecided:
    """Re-decide one queued update over the local document as it is now (pure). `owner`: the
    Salesforce user the document's owner translates to now (through `[[users]]`), if any;
    `follows`: whether the platform's owner follows Salesforce's as the shadow holds it;
    `queued_at`: when the write was last queued (`_queued_side`)."""
    by_field = {m.sf_field: m for m in mappings}
    out = Redecided(fields={})
    for name, queued in write.fields.items():
        mapping = by_field.get(name)
        if mapping is None or doc is None:
            out.fields[name] = queued
            continue
        seen = shadow_side(doc, write.sobject, name)
        out.old[name] = None if seen is None else seen.value
        out.local[mapping.local_field] = get_path(doc, mapping.local_field)
        local = (owner_side(doc, seen, owner or queued, follows=follows) if name == "OwnerId"
                 else _queued_side(doc, mapping, queued, queued_at))
        decided = decide_outgoing(mapping, doc, queued, local)
        if decided.decision.write_salesforce:
            out.fields[name] = decided.decision.value
            out.times[name] = decided.at
        elif decided.held is not None:
            out.held[mapping.local_field] = decided.held
        else:
            reason = decided.decision.reason or ""
            out.superseded[mapping.local_field] = _DROPPED.get(reason, reason)
    return out


def owner_side(doc: Mapping[str, Any], seen: Seen | None, sf_user: str, *, follows: bool = True) -> Side:
    """The platform's side of `OwnerId`: its owner as a Salesforce user, at the owner's time.

    Where the platform's owner does not follow Salesforce's (`follows` False: an owner without a
    `[[users]]` entry, or the `ignore` rule), the two differ without any edit, so an unstamped
    platform edit is not taken for the owner's: only the owner's own stamped time counts (chaos
    seed 50321, L1: an edit of an unmapped field put the old owner back in Salesforce). Unless
    the shadow knows the owner Salesforce's replaced (`Seen.was`, kept by the inbound side): then
    an owner other than that one is a fresh platform change, dated as any field's (seed 1291, P69)."""
    if not follows and not (seen is not None and seen.was):
        return Side(sf_user, stamped_time(doc, OWNER_FIELD))
    return Side(sf_user, platform_time(doc, OWNER_FIELD, seen, value=sf_user))


def _queued_side(doc: Mapping[str, Any], mapping: FieldMapping, queued: Any,
                 queued_at: datetime | None) -> Side | None:
    """The platform's side of a field that still holds the queued value while the document has an
    edit the watcher has not stamped, made after the write was last queued: that edit did not
    make the value (it changed other fields), so the field's stamped time stands, not the
    document's `updated_at` (chaos seed 12289, L2.state: a 16-s-older value overwrote a Salesforce
    edit, dated by another field's fresh edit). None: `shadow.platform_time` decides."""
    stamped = stamped_time(doc, mapping.local_field)
    updated = doc.get("updated_at")
    if (queued_at is None or stamped is None or not isinstance(updated, datetime)
            or not has_unstamped_edit(doc) or get_path(doc, mapping.local_field) != queued):
        return None
    if _aware(updated) <= _aware(queued_at):
        return None
    return Side(queued, stamped)


def _aware(value: datetime) -> datetime:
    """BSON dates may come back naive (they are UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _as_now(mappings: Mappings, entry: OutboxEntry, doc: Mapping[str, Any] | None) -> OutboxEntry:
    """A create without the values the platform blanked after it was queued (a blank never enters
    the outbox, so the queued value stayed): it carries the record as it is, as an update does
    (chaos seed 50321, P9.title: Salesforce was created with a title the platform had blanked, and
    a read of the record then put it back on the platform). The owner is the platform's user."""
    if doc is None:
        return entry
    blanked = {m.sf_field for m in mappings.for_object(entry.write.sobject) if m.sf_field != "OwnerId"
               and m.sf_field in entry.write.fields and _set_blank(doc, m.local_field)}
    if not blanked:
        return entry
    fields = {name: value for name, value in entry.write.fields.items() if name not in blanked}
    return dataclasses.replace(entry, write=dataclasses.replace(entry.write, fields=fields))


def _set_blank(doc: Mapping[str, Any], local_field: str) -> bool:
    """Does the document hold `local_field`, blank (a field it lacks was never set: no edit)?"""
    *parents, name = local_field.split(".")
    holder = get_path(doc, ".".join(parents)) if parents else doc
    return isinstance(holder, Mapping) and name in holder and is_blank(holder[name])


def _linked_to(doc: Mapping[str, Any], write: OutboundWrite) -> bool:
    """Is the document still linked to the write's record? Marked deleted too: its values as they
    are now decide, not the queued ones (the record may be undeleted already; chaos seed 77777,
    L4.first_name: a value the platform had replaced was sent)."""
    return bool(get_path(doc, "crm.id") == write.sf_id)


@dataclass
class Screened:
    send: list[OutboxEntry]
    empty: list[OutboxEntry]
    logs: list[SyncLog]
    held: list[OutboxEntry] = field(default_factory=list)  # updates of records deleted in Salesforce
    # creates whose document is linked now: (entry, the linked object, its id)
    linked: list[tuple[OutboxEntry, str, str]] = field(default_factory=list)


class ShadowGate:
    """Re-decides claimed writes against the shadow and records what was written."""

    def __init__(self, sf: SalesforceApi, store: ShadowStore, mappings: Mappings,
                 sf_clock: ClockOffset | None = None) -> None:
        self._sf, self._store, self._mappings, self._sf_clock = sf, store, mappings, sf_clock
        self._decided: dict[Any, Redecided] = {}   # outbox entry id -> its re-decision
        self._read_modified: dict[Any, datetime | None] = {}  # local id -> record read again: modified
        self.fills = 0                              # shadow-filling queries made

    def old_values(self, entry: OutboxEntry) -> Mapping[str, Any]:
        decided = self._decided.get(entry.id)
        return decided.old if decided else {}

    def unmodified_since(self, entry: OutboxEntry) -> datetime | None:
        """The `LastModifiedDate` of the record read again to decide this write, if it was: the
        write goes out only if Salesforce has not modified the record since (`If-Unmodified-Since`)."""
        decided = self._decided.get(entry.id)
        return decided.read_modified if decided else None

    async def screen(self, sobject: str, kind: str, entries: list[OutboxEntry], *,
                     refresh_before: datetime | None = None) -> Screened:
        """`refresh_before`: writes queued before then are re-read like re-sent ones (see `_docs`)."""
        if not entries:
            return Screened(entries, [], [])
        if kind == CREATE:
            return await self._screen_creates(entries)
        docs = await self._docs(sobject, entries, refresh_before)
        send, empty, logs, held = [], [], [], []
        mappings = self._mappings.for_object(sobject)
        for entry in entries:
            doc = docs.get(entry.write.local_id)
            if doc and _linked_to(doc, entry.write) and get_path(doc, "crm.deleted"):
                held.append(entry)  # nothing to write to: sent when an undelete is read
                continue
            decided = dataclasses.replace(
                redecide(mappings, entry.write, doc if doc and _linked_to(doc, entry.write) else None,
                         self._owner(doc), follows=follows_salesforce_owner(
                             self._mappings, get_path(doc, path(sobject, "OwnerId") + ".v")),
                         queued_at=entry.last_queued_at),
                read_modified=self._read_modified.get(entry.write.local_id))
            self._decided[entry.id] = decided
            if not decided.fields and entry.write.reason == "retry":
                # a retry's outcome is a row: every field it carried, and why none went out
                logs.append(_skipped_log(entry, {**decided.held, **decided.superseded}))
            elif decided.held:
                logs.append(_skipped_log(entry, decided.held))
            if decided.superseded:
                log.info("outbound_fields_superseded", sobject=sobject, sf_id=entry.write.sf_id,
                         fields=decided.superseded)
            if decided.fields:
                send.append(dataclasses.replace(entry, write=dataclasses.replace(entry.write,
                                                                                 fields=decided.fields)))
            else:
                empty.append(entry)
        return Screened(send, empty, logs, held)

    def _owner(self, doc: Mapping[str, Any] | None) -> str | None:
        owner = doc.get(OWNER_FIELD) if doc else None
        return self._mappings.salesforce_user(owner) if isinstance(owner, str) else None
    async def _screen_creates(self, entries: list[OutboxEntry]) -> Screened:
        """A create whose document is linked now is not sent: another leader created and linked
        it while this one was queued (a new leader's watcher re-read an edit made before the link),
        so its values go out as an update of the linked record."""
        docs = {d["_id"]: d for d in await self._store.find_records(
            entries[0].write.collection, list({e.write.local_id for e in entries}))}
        out = Screened([], [], [])
        for entry in entries:
            crm = get_path(docs.get(entry.write.local_id), "crm")
            if isinstance(crm, Mapping) and crm.get("id"):  # deleted too: held as its update
                out.linked.append((entry, str(crm.get("object")), str(crm["id"])))
            else:
                out.send.append(_as_now(self._mappings, entry, docs.get(entry.write.local_id)))
        return out

    async def _docs(self, sobject: str, entries: Sequence[OutboxEntry],
                    refresh_before: datetime | None = None) -> dict[Any, dict[str, Any]]:
        """The local documents of these writes, their missing shadows filled, and the shadows of
        writes sent before (`attempt` > 0: maybe applied, and Salesforce maybe edited since, which
        the shadow may not show yet) or queued before `refresh_before` (they waited while the
        inbound side may have been held back too: a leader gap, a paused budget, a broken stream)
        brought up to Salesforce's records: one query."""
        collection = entries[0].write.collection
        docs = {d["_id"]: d for d in await self._store.find_records(
            collection, list({e.write.local_id for e in entries}))}
        mappings = self._mappings.for_object(sobject)
        self._read_modified = {}
        resent = {e.write.local_id for e in entries if e.write.attempt > 0
                  or _waited(mappings, e, docs.get(e.write.local_id), refresh_before)}
        unfilled = {str(get_path(d, "crm.id")): d for d in docs.values()
                    if get_path(d, "crm.id") and (not has_shadow(d, sobject) or d["_id"] in resent)}
        if unfilled:
            await self._fill(sobject, collection, unfilled,
                             {e.write.local_id: e.sent for e in entries if e.write.local_id in resent})
        return docs

    async def _fill(self, sobject: str, collection: str, docs: Mapping[str, dict[str, Any]],
                    refreshed: Mapping[Any, Mapping[str, Sequence[Any]]]) -> None:
        """`refreshed`: the documents read again (re-sent or waited writes), each with what earlier
        attempts of its write sent (their answers lost)."""
        mappings = self._mappings.for_object(sobject)
        names = sorted({"Id", "LastModifiedDate", *(m.sf_field for m in mappings)})
        ids = ", ".join(soql_string(i) for i in sorted(docs))
        soql = f"SELECT {', '.join(names)} FROM {sobject} WHERE Id IN ({ids})"
        self.fills += 1
        sets: dict[Any, dict[str, Any]] = {}
        async for page in self._sf.query(soql):
            for record in page:
                doc = docs.get(str(record.get("Id")))
                if doc is None:
                    continue
                own = refreshed.get(doc["_id"])
                # a value an earlier attempt sent is the write's own, time unknown (`shadow_sets`)
                found = shadow_sets(mappings, doc, sobject, record,
                                    self._seen_at(doc, sobject, record, read_again=own is not None),
                                    complete=True, own=own)
                if own is not None:
                    self._read_modified[doc["_id"]] = parse_sf_datetime(record.get("LastModifiedDate"))
                    # Only the write's own values read back are stored (their echoes are not
                    # edits); the rest decides this flush only: the platform has not taken what
                    # Salesforce changed since, and the inbound side skips a value equal to the
                    # stored shadow as read before (`inbound_shadow.edits_only`).
                    sets[doc["_id"]] = {k: v for k, v in found.items() if _is_own(k, v, own)}
                elif not has_shadow(doc, sobject):
                    sets[doc["_id"]] = found
                for key, value in found.items():
                    set_path(doc, key, _with_prior(value, get_path(doc, key)))
        sets = {doc_id: entries for doc_id, entries in sets.items() if entries}
        if sets:
            await self._store.record_shadow(collection, sets)
        log.info("outbound_shadow_filled", sobject=sobject, records=len(sets),
                 refreshed=len(docs) - len(sets))

    def _seen_at(self, doc: Mapping[str, Any], sobject: str, record: Mapping[str, Any], *,
                 read_again: bool = False) -> datetime | None:
        """When the values read were set: unknown for a first fill (no time: older than any
        platform edit); for a record read again (a shadow brought up to date, or a re-sent
        write's record, a recovered create's included), the record's `LastModifiedDate` on this
        host's clock (a value changed since was set at the latest then: a platform value older
        than that does not overwrite it; the write's own values have no time: `shadow_sets`)."""
        if not has_shadow(doc, sobject) and not read_again:
            return None
        modified = parse_sf_datetime(record.get("LastModifiedDate"))
        if modified is None:
            return None
        offset = self._sf_clock.offset_at(modified) if self._sf_clock is not None else timedelta(0)
        return modified - capped_offset(offset, modified, datetime.now(UTC))

    def _salesforce_now(self) -> datetime:
        """Salesforce's time just after a write: host now + the offset, capped by the latest
        `Date` it sent (the write's answer's, or later: not before the second the write was
        stamped in). The offset alone may run ahead of Salesforce's clock when it slews back
        after a skew, into the next second: another user's edit a moment after our write was
        then taken for a value our write replaced (chaos seed 11376, P12.first_name)."""
        if self._sf_clock is None:
            return datetime.now(UTC)
        now = datetime.now(UTC) + self._sf_clock.offset
        latest = self._sf_clock.latest
        return now if latest is None else min(now, latest)

    async def remember_lost(self, sobject: str, entries: Sequence[OutboxEntry]) -> None:
        await remember_lost(self._store, sobject, [e for e in entries if e.sent])

    async def remember(self, sobject: str, kind: str, entries: Sequence[OutboxEntry],
                       succeeded: Sequence[bool]) -> list[OutboxEntry]:
        """The values written become the shadow, at the platform time of each value. Returns the
        written updates an inbound apply overtook (`_overtaken`): to send again."""
        decided = {entry.id: self._decided.pop(entry.id, None) for entry in entries}
        written = [e for e, ok in zip(entries, succeeded, strict=True) if ok]
        by_collection: dict[str, dict[Any, dict[str, Any]]] = {}
        # `sent`: when Salesforce took the value, on its own clock as known now (an older event
        # of the field is stale): compared with Salesforce's stamps as they are, not moved onto
        # this host's clock with an offset learned later (the org's clock may have stepped since)
        now = self._salesforce_now()
        for entry in written:
            seen = decided[entry.id]
            times = seen.times if seen else {}
            sets = {path(sobject, name): {"v": value, "at": times.get(name) or entry.enqueued_at, "sent": now}
                    for name, value in entry.write.fields.items()}
            by_collection.setdefault(entry.write.collection, {})[entry.write.local_id] = sets
        for collection, sets_by_doc in by_collection.items():
            await self._store.record_shadow(collection, sets_by_doc)
        return [] if kind == CREATE or not written else await _overtaken(self._store, written, decided)


async def _overtaken(store: ShadowStore, written: Sequence[OutboxEntry],
                     decided: Mapping[Any, Redecided | None]) -> list[OutboxEntry]:
    """Written updates whose platform values changed since the gate read them (one query, after
    the shadow is recorded): an inbound apply that read the document before our write was
    recorded may have taken another Salesforce edit onto the platform while Salesforce took our
    value after it (chaos seed 83, A4.domain: the sides swapped). Sent again, the write is
    re-decided against the platform's value as it is now (the merge's outcome); a platform edit
    made meanwhile is queued anyway. A later inbound apply sees our write (`sent`) and its
    compare-and-set fails on the shadow's version, so none is missed."""
    docs = {d["_id"]: d for d in await store.find_records(
        written[0].write.collection, list({e.write.local_id for e in written}))}
    out: list[OutboxEntry] = []
    for entry in written:
        seen = decided[entry.id]
        doc = docs.get(entry.write.local_id)
        changed = sorted(name for name, value in (seen.local if seen else {}).items()
                         if doc is not None and get_path(doc, name) != value)
        if changed:
            log.info("outbound_overtaken", sobject=entry.write.sobject, sf_id=entry.write.sf_id,
                     fields=changed)
            out.append(entry)
    return out


async def remember_lost(store: ShadowStore, sobject: str, entries: Sequence[OutboxEntry]) -> None:
    """Recovered creates (found and linked after a lost answer): the value every earlier attempt
    sent of a field (`OutboxEntry.sent`, one value only) is what the lost call made the record
    with, the write's own; it becomes the shadow with no time (older than any platform edit), so
    a read of the record before the re-sent update reads it again is no Salesforce edit (chaos
    seed 13579, P15.title: the create's title filled the platform's later blank). A field sent
    with several values stays unknown; a different value read is an edit, as before."""
    by_collection: dict[str, dict[Any, dict[str, Any]]] = {}
    for entry in entries:
        sets = {path(sobject, name): {"v": values[0], "at": None}
                for name, values in entry.sent.items() if len(values) == 1}
        by_collection.setdefault(entry.write.collection, {})[entry.write.local_id] = sets
    for collection, sets_by_doc in by_collection.items():
        await store.record_shadow(collection, sets_by_doc)


def _with_prior(entry: dict[str, Any], prior: Any) -> dict[str, Any]:
    """The entry read, with the value the shadow knew before it (`was`) when the read changed it:
    kept in this flush's copy of the document only (`shadow.platform_time`)."""
    if isinstance(prior, Mapping) and prior.get("v") != entry.get("v"):
        return {**entry, "was": prior.get("v")}
    return entry


def _is_own(key: str, entry: Mapping[str, Any], sent: Mapping[str, Sequence[Any]]) -> bool:
    return entry.get("v") in sent.get(key.rsplit(".", 1)[-1], ())


def _waited(mappings: Sequence[FieldMapping], entry: OutboxEntry, doc: Mapping[str, Any] | None,
            before: datetime | None) -> bool:
    """Was the write queued, or any of its platform edits made, before `before`? A new leader's
    watcher queues edits made before its term just before its flusher sends them, so the queue
    time alone says nothing of how long Salesforce had to change meanwhile."""
    if before is None:
        return False
    if entry.enqueued_at < before:
        return True
    local = {m.sf_field: m.local_field for m in mappings}
    times = [stamped_time(doc, local[name]) for name in entry.write.fields if name in local]
    return any(t is not None and (t if t.tzinfo else t.replace(tzinfo=UTC)) < before for t in times)


def _skipped_log(entry: OutboxEntry, reasons: Mapping[str, str]) -> SyncLog:
    """One `skipped` log naming each local field not sent and why."""
    return SyncLog(
        source="local", type="skipped", status="success", object=entry.write.sobject,
        sf_id=entry.write.sf_id, local_id=str(entry.write.local_id), collection=entry.write.collection,
        fields={name: {"old": None, "new": None, "reason": why} for name, why in reasons.items()},
        note="; ".join(f"{name}: {why}" for name, why in reasons.items()),
        attempt=entry.write.attempt + 1,
    )


