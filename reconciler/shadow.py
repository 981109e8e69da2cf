"""The Salesforce shadow: per linked document, the last value seen from Salesforce for each
mapped field and when (issue 10). Pure functions over plain data.

Layout: `_sync.sf.<Object>.<SalesforceField>` = `{"v": value, "at": datetime}`. It is the
service's own bookkeeping under `_sync`: never sent, never a platform field, and the local
watcher ignores writes to it (they touch no mapped field).

Written by every inbound apply (stream, poll, gap fetch, backfill, re-import, retry: all go
through `Reconciler`), by the flusher after every successful write (the value written, at the
platform time of that value), and filled by the flusher where it is missing (records linked
before the shadow existed: one query per batch of up to 200 records).

It lets the merge behaviours decide live edits with no API call:

- a platform edit is re-decided at flush time (`merge.decide_outgoing`) against the shadow: an
  older queued value does not overwrite a newer Salesforce edit, `salesforce_unless_blank`
  is not sent where Salesforce holds data, and a value Salesforce already has is not re-sent;
- `platform_time` gives a fresh platform edit its document's `updated_at` before the watcher
  has stamped the field's time, so a same-second Salesforce edit does not swap the two.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.records import get_path, is_blank
from settings import FieldMapping

ROOT = "_sync.sf"


def path(sobject: str, sf_field: str) -> str:
    return f"{ROOT}.{sobject}.{sf_field}"


def has_shadow(doc: Mapping[str, Any] | None, sobject: str) -> bool:
    return isinstance(get_path(doc, f"{ROOT}.{sobject}"), Mapping)


@dataclass(frozen=True)
class Seen:
    """One field of the shadow: Salesforce's value and when it was seen (its change time)."""

    value: Any
    at: datetime | None
    # the value(s) Salesforce held before this one, when a re-read replaced what the shadow
    # knew (in memory only, for the flush that read it: see `platform_time`), or stored on an
    # `OwnerId` entry the platform did not take (`inbound_shadow.keep_owner_not_followed`)
    was: tuple[Any, ...] = ()


def shadow_side(doc: Mapping[str, Any] | None, sobject: str, sf_field: str) -> Seen | None:
    """Salesforce's side as last seen, or None when the shadow does not know the field."""
    entry = get_path(doc, path(sobject, sf_field))
    if not isinstance(entry, Mapping):
        return None
    at = entry.get("at")
    was = (entry["was"],) if "was" in entry else ()
    return Seen(entry.get("v"), at if isinstance(at, datetime) else None, was)


def shadow_sets(mappings: Iterable[FieldMapping], doc: Mapping[str, Any] | None, sobject: str,
                record: Mapping[str, Any], at: datetime | None, *, complete: bool = False,
                stamp: datetime | None = None, read: bool = False,
                own: Mapping[str, Sequence[Any]] | None = None) -> dict[str, Any]:
    """`$set` entries that bring the shadow up to `record` (Salesforce fields seen at `at`).

    Only mapped fields present in `record` (all of them when `complete`: a missing one is
    blank). An entry changes only when the value does (its time is when Salesforce's value
    changed, not when it was last read), and never backwards (an entry seen later than `at`
    stays), so a re-delivered or re-polled record writes nothing.

    Except our own write's entry (`sent`) against a record Salesforce stamped (`stamp`, its own
    clock) in a later second: Salesforce took that value after ours, so it holds it now, even
    where `at` (moved onto this host's clock by an offset that may be off) falls before the
    platform time our write carried (chaos seed 8191, L5.first_name: kept, the flusher dropped
    the platform's answer as "Salesforce already has this value"). A record `read` (not an event)
    stamped in our write's second yields it too: a read shows the value Salesforce holds (chaos
    seed 44444, P15.title: another user's edit 0.17 s after our write, read by a poll).

    A blank a whole record read (`complete`) shows for a field the shadow never knew has no time:
    it is the blank the record was created with as far as anyone told us, not an edit at the
    record's `LastModifiedDate` (moved on by other fields' edits), whichever side read it (chaos
    seeds 11376 P23.state and 64 P3.state, the flusher's re-read; 21977 P11.phone, a gap fetch:
    the platform's first value was dropped as older than that blank).

    A value a claim of the record's queued write sent (`own`, per field: its answer lost or not
    in yet) has no time either: it is the platform's own, as old as that claim's value, not a
    Salesforce edit at the record's `LastModifiedDate` (chaos seeds 314 L1.first_name, the
    flusher's re-read; 40427 P20.title, a poll).
    """
    sets: dict[str, Any] = {}
    for mapping in mappings:
        name = mapping.sf_field
        if name not in record and not complete:
            continue
        value = record.get(name)
        known = shadow_side(doc, sobject, name)
        untimed = (complete and is_blank(value) and known is None) or value in (own or {}).get(name, ())
        if known is None or (known.value != value and (not _later(known.at, at)
                                                       or _after_sent(doc, sobject, name, stamp, read))):
            sets[path(sobject, name)] = {"v": value, "at": None if untimed else at}
    return sets


def _after_sent(doc: Mapping[str, Any] | None, sobject: str, sf_field: str, stamp: datetime | None,
                read: bool = False) -> bool:
    """Was `stamp` in a later second than Salesforce took our own last write of the field (or,
    for a read, in that second or later)?"""
    sent = get_path(doc, f"{path(sobject, sf_field)}.sent")
    if not isinstance(sent, datetime) or stamp is None:
        return False
    stamp_second, sent_second = _naive(stamp).replace(microsecond=0), _naive(sent).replace(microsecond=0)
    return stamp_second >= sent_second if read else stamp_second > sent_second


def has_unstamped_edit(doc: Mapping[str, Any] | None) -> bool:
    """Did the platform write this document after the service last did (`updated_at` newer
    than `_sync.written_at`)? Then the watcher has not stamped that edit's field times yet."""
    if not doc:
        return False
    updated = doc.get("updated_at")
    written = get_path(doc, "_sync.written_at")
    if not isinstance(updated, datetime):
        return False
    return not isinstance(written, datetime) or _naive(updated) > _naive(written)


def unstamped_times(doc: Mapping[str, Any] | None, mappings: Iterable[FieldMapping]) -> dict[str, datetime]:
    """The `_sync.field_times` entries that date an unstamped platform edit (`platform_time`),
    for a service write about to mark the document stamped (it sets `_sync.written_at`): without
    them the edit counts as old as its fields' last stamps until the watcher stamps it, and a
    merge in between takes Salesforce's older value over it (chaos seed 1970 x 2000, L4.last_name:
    a conversion's relink, then the Contact's merge). Blanks are not stamped, as by the watcher."""
    if not has_unstamped_edit(doc):
        return {}
    out: dict[str, datetime] = {}
    for m in mappings:
        if is_blank(get_path(doc, m.local_field)):
            continue
        when = platform_time(doc, m.local_field, shadow_side(doc, m.sobject, m.sf_field))
        if when is not None and when != stamped_time(doc, m.local_field):
            out[f"_sync.field_times.{m.local_field}"] = when
    return out


def stamped_time(doc: Mapping[str, Any] | None, local_field: str) -> datetime | None:
    """The field time the watcher (or an inbound write) stamped on `local_field`, if any."""
    stamped = get_path(doc, f"_sync.field_times.{local_field}")
    return stamped if isinstance(stamped, datetime) else None


def platform_time(doc: Mapping[str, Any] | None, local_field: str, shadow: Seen | None,
                  value: Any = None) -> datetime | None:
    """The time of the platform's value of `local_field`: its stamped field time, or, while an
    edit is unstamped and the value differs from Salesforce's last value, the document's
    `updated_at` when that is later (a fresh edit counts before the watcher stamps it).
    `value`: the platform's value as Salesforce would hold it, when not the field's own (the
    owner, translated through `[[users]]`).

    A value equal to the one Salesforce held before a re-read replaced it (`Seen.was`) is not the
    unstamped edit either: the platform had it before Salesforce's change, and the fresh edit
    touched other fields (chaos seed 24680, P17.title: a blank re-sent over as "newer"). Nor is
    a value the watcher stamped (`stamped_value`) and the field still holds: a rule held it back
    from Salesforce, or it waits in the outbox (chaos seed 1873 x 2000, P3.company_name)."""
    stamped = stamped_time(doc, local_field)
    if not has_unstamped_edit(doc):
        return stamped
    assert doc is not None
    current = get_path(doc, local_field) if value is None else value
    if shadow is not None and (shadow.value == current or current in shadow.was):
        return stamped
    if stamped is not None and _unchanged_since_stamp(doc, local_field, stamped):
        return stamped
    updated: datetime = doc["updated_at"]
    if stamped is None or _naive(updated) > _naive(stamped):
        return updated
    return stamped


STAMPED_VALUES = "_sync.field_values"


def stamped_value(value: Any, at: datetime) -> dict[str, Any]:
    """What the watcher keeps beside a field time it stamps (`STAMPED_VALUES.<field>`): the value
    it stamped, and that time, which says whether the stamp is still the field's."""
    return {"v": value, "at": at}


def _unchanged_since_stamp(doc: Mapping[str, Any], local_field: str, stamped: datetime) -> bool:
    """Does the field hold the value the watcher stamped, with that stamp still its time? (A
    stamp another write moved on says nothing of the value: as if never kept.)"""
    entry = get_path(doc, f"{STAMPED_VALUES}.{local_field}")
    if not isinstance(entry, Mapping) or not isinstance(at := entry.get("at"), datetime):
        return False
    return _naive(at) == _naive(stamped) and entry.get("v") == get_path(doc, local_field)


def _naive(value: datetime) -> datetime:
    """BSON dates may come back naive (they are UTC): compare both as naive UTC."""
    offset = value.utcoffset()
    return value if offset is None else (value - offset).replace(tzinfo=None)


def _later(a: datetime | None, b: datetime | None) -> bool:
    return a is not None and b is not None and _naive(a) > _naive(b)
