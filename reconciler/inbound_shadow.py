"""What an inbound apply adds for the Salesforce shadow (`reconciler.shadow`, issue 10): the
shadow entries of the fields a change carries, and the `skipped` log of a Salesforce edit a
rule held back (`local_unless_blank` with platform data). Kept out of `Reconciler`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from reconciler.ports import ChangeSource, SalesforceChange
from reconciler.records import get_path, is_blank
from reconciler.shadow import ROOT, shadow_sets, shadow_side
from reconciler.shadow import path as shadow_path
from reconciler.sync_logs import SyncLog
from settings import Direction, FieldMapping, MergeBehaviour


class PendingRecord(Protocol):
    """`reconciler.inbound._Pending` as seen here."""

    change: SalesforceChange
    collection: str
    doc: dict[str, Any]
    held: dict[str, str]
    own: Mapping[str, Sequence[Any]]  # what claims of the record's queued write sent (`sent_values`)

    def put(self, path: str, value: Any, *, logged: bool = True) -> None: ...


class UnorderedItem(PendingRecord, Protocol):
    unordered: set[str]


def record(item: PendingRecord, mappings: Iterable[FieldMapping], fields: Mapping[str, Any],
           at: datetime | None, *, complete: bool) -> None:
    """Bring the working document's shadow up to the Salesforce values this change carries
    (`at` on this host's clock; the change's own stamp orders it against our writes)."""
    read = item.change.source is not ChangeSource.STREAM
    for path, value in shadow_sets(mappings, item.doc, item.change.sobject, fields, at,
                                   complete=complete, stamp=item.change.changed_at, read=read,
                                   own=item.own if read else None).items():
        item.put(path, value, logged=False)


def keep_owner_not_followed(item: PendingRecord, prior: Any) -> None:
    """A Salesforce owner the platform did not take (a user `[[users]]` does not map, or the
    rules ignore owner changes): its shadow entry keeps the owner it replaced (`was`), which the
    platform's owner still is. Without it, an unstamped platform edit of any other field dated
    that unchanged owner as fresh, and the flusher put it back over Salesforce's newer one
    (`shadow.platform_time`; chaos seed 1291 x 2000, P69)."""
    key = shadow_path(item.change.sobject, "OwnerId")
    entry = get_path(item.doc, key)
    if isinstance(entry, Mapping) and entry.get("v") != prior:
        item.put(key, {**entry, "was": prior}, logged=False)


def edits_only(item: PendingRecord, mappings: Iterable[FieldMapping], fields: Mapping[str, Any],
               sf_at: datetime | None = None) -> dict[str, Any]:
    """The fields of a live change that are Salesforce edits: a value equal to the shadow's is
    Salesforce's value read again (a poll, a gap fetch, a record touched for another field), not
    an edit, and must not undo a later platform edit (`salesforce_unless_blank` above all).

    An event, or a record read (`sf_at`: its commit time or `LastModifiedDate`, on Salesforce's
    clock as stamped), older than the service's own write of the field (the shadow's `sent`, on
    Salesforce's clock too) carries a value that write replaced in Salesforce: not an edit
    either, or the two sides would swap values. A read is not always current: it may race our
    write and be applied after it. Both times stay on Salesforce's clock, which never goes back:
    moved onto this host's with the offset known at apply time, a stamp made before the org's
    clock stepped ahead would date before a write it followed (chaos seed 2718, P23).

    A record read holding a value a claim of the record's queued write sent (`item.own`: its
    answer lost, or not in yet) holds the platform's own value, not an edit (chaos seed 40427,
    P20.title: a poll before the re-sent write filled a blank the platform made since). Not an
    event: our own write's events are echoes already."""
    sf_fields = {m.sf_field for m in mappings}
    own = item.own if item.change.source is not ChangeSource.STREAM else {}
    out: dict[str, Any] = {}
    for name, value in fields.items():
        seen = shadow_side(item.doc, item.change.sobject, name) if name in sf_fields else None
        if (seen is not None and seen.value == value) or value in own.get(name, ()):
            continue
        if _replaced_since(item.doc, item.change.sobject, name, sf_at):
            continue
        out[name] = value
    return out


def known_times(item: PendingRecord, mappings: Iterable[FieldMapping], fields: Mapping[str, Any],
                at: datetime | None) -> dict[str, datetime | None]:
    """For a merge of a record read (a re-import, a retry): the fields whose value the service
    knew already, dated by when that value came where that is earlier than the record's
    `LastModifiedDate` (`at`, on this host's clock), which any later write of the record moves,
    the service's own included. The shadow's value has the shadow's time (when Salesforce's
    value changed as seen, or the platform time of the value our own write sent); a value a
    claim of the record's queued write sent (`item.own`) has none: the platform's own, as old as
    that claim's value. Chaos seed 60607, P25.first_name: a re-import dated the older first name
    our create had carried by the create's `LastModifiedDate`, later than the platform's edit
    made while the create was in flight, and put it back on the platform over that edit."""
    out: dict[str, datetime | None] = {}
    for m in mappings:
        if m.sf_field not in fields:
            continue
        value = fields[m.sf_field]
        seen = shadow_side(item.doc, item.change.sobject, m.sf_field)
        if value in item.own.get(m.sf_field, ()):
            out[m.sf_field] = None
        elif seen is not None and seen.value == value and not (
                seen.at is not None and at is not None and _naive(seen.at) >= _naive(at)):
            out[m.sf_field] = seen.at
    return out


def set_aside_unordered(item: UnorderedItem, mappings: Iterable[FieldMapping],
                        fields: Mapping[str, Any]) -> dict[str, Any]:
    """`fields` without the edits a streamed change makes in the second Salesforce took our own
    write of the field (the shadow's `sent`): their stamp cannot order them against that write
    (before it, Salesforce holds our value and applying them swaps the sides; after it,
    Salesforce holds theirs), so they are set aside on `item.unordered` for the record to be
    read again (`reconciler.inbound`). Reads are not set aside: they see Salesforce as it is."""
    change = item.change
    if change.source is not ChangeSource.STREAM or change.changed_at is None:
        return dict(fields)
    sf_fields = {m.sf_field for m in mappings}
    out: dict[str, Any] = {}
    for name, value in fields.items():
        sent = get_path(item.doc, f"{shadow_path(change.sobject, name)}.sent")
        seen = shadow_side(item.doc, change.sobject, name) if name in sf_fields else None
        if (isinstance(sent, datetime) and seen is not None and seen.value != value
                and _naive(change.changed_at).replace(microsecond=0) == _naive(sent).replace(microsecond=0)):
            item.unordered.add(name)
            continue
        out[name] = value
    return out


def won_by_platform(mappings: Iterable[FieldMapping], sf_updates: Mapping[str, Any],
                    fields: Mapping[str, Any]) -> dict[str, Any]:
    """The platform's values that won a live Salesforce edit by the most recent value (both
    directions, Salesforce's value not blank): they must reach Salesforce. Its own queued write
    normally carries them, but the flusher may have dropped it already, deciding on the record
    read again and dated by `LastModifiedDate` (a later edit of other fields moves it), before
    this edit's own, earlier time came in (chaos seed 11376, P6.city). Not a blank's answer: a
    Salesforce user's blank stands there, as the platform's data stands here."""
    out: dict[str, Any] = {}
    for m in mappings:
        if (m.sf_field in sf_updates and m.direction is Direction.BOTH
                and m.merge is MergeBehaviour.MOST_RECENT and not is_blank(fields.get(m.sf_field))):
            out[m.sf_field] = sf_updates[m.sf_field]
    return out


def _replaced_since(doc: Mapping[str, Any], sobject: str, sf_field: str, at: datetime | None) -> bool:
    sent = get_path(doc, f"{shadow_path(sobject, sf_field)}.sent")
    if at is None or not isinstance(sent, datetime):
        return False
    # an event's time may be whole seconds (LastModifiedDate): one in our write's second may
    # be later than it, so only an earlier second is stale
    return _naive(at) < _naive(sent).replace(microsecond=0)


def _naive(value: datetime) -> datetime:
    offset = value.utcoffset()
    return value if offset is None else (value - offset).replace(tzinfo=None)


def held_log(item: PendingRecord, attempt: int) -> SyncLog:
    """One `skipped` log (a rule outcome, status success) naming each field held and why."""
    doc_id = item.doc.get("_id")
    return SyncLog(
        source="salesforce", type="skipped", status="success", object=item.change.sobject,
        sf_id=item.change.sf_id, local_id=None if doc_id is None else str(doc_id),
        collection=item.collection,
        fields={name: {"old": None, "new": None, "reason": why} for name, why in item.held.items()},
        note="; ".join(f"{name}: {why}" for name, why in item.held.items()), attempt=attempt,
    )


def as_inserted(sets: dict[str, Any], sobject: str) -> dict[str, Any]:
    """A create's shadow as one `$setOnInsert` sub-document (`_sync.sf.<Object>`), taken out of
    `sets`: one path instead of one per mapped field (SecantusDB's cost of an upsert grows with
    its paths: 2.0-2.4 ms of server CPU with ten shadow paths, 1.8-1.9 with one). On insert only,
    so a document another writer created meanwhile keeps the shadow it has."""
    prefix = f"{ROOT}.{sobject}."
    entries = {name[len(prefix):]: sets.pop(name) for name in [n for n in sets if n.startswith(prefix)]}
    return {f"{ROOT}.{sobject}": entries} if entries else {}
