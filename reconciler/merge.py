"""The merge core: per mapped field, which side's value wins. Pure functions over plain data.

Rules (from the product's documentation, with the choices the docs leave open):

- `from_salesforce`: Salesforce's value flows to the platform; `to_salesforce`: the platform's
  value flows to Salesforce; `both`: decided by the merge behaviour.
- `most_recent` compares the two sides' *field* times on one clock: local field times are this
  host's clock, Salesforce's `LastModifiedDate` is Salesforce's, so it is moved onto the host's
  by the learned offset (`sf_clock_offset`, Salesforce minus host: `listener.salesforce_time`);
  a Salesforce win records its host-clock time. A side without a time is older than
  any side with one; a tie goes to Salesforce (it is the system of record for CRM fields, and
  a tie usually means both sides were set from the same change).
- `salesforce_unless_blank` / `local_unless_blank`: that side wins unless it is blank. A live
  Salesforce edit (`live`: a stream event, a poll, a gap fetch; not a merge) under
  `salesforce_unless_blank` is not applied over a platform value that changed later: read late,
  an older Salesforce edit does not replace a newer platform edit (chaos seed 40961, A4).
- Blank (None, "", whitespace, empty list) is never written, and data always wins over a
  blank whatever the direction of preference.
- A field Salesforce marks read-only (formula, system, not updateable) only flows inbound:
  `both` behaves as `from_salesforce`, and `to_salesforce` does nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from reconciler.records import get_path, is_blank
from reconciler.shadow import has_unstamped_edit, platform_time, shadow_side, stamped_time
from settings import Direction, FieldMapping, MergeBehaviour

PLATFORM_LATER = "salesforce_unless_blank: the platform's value changed after this Salesforce edit"
# The reasons a rule holds a live edit back (a `skipped` sync log names the field and the reason).
HELD_SALESFORCE = "salesforce_unless_blank: Salesforce holds a value, the platform's is not sent"
HELD_LOCAL = "local_unless_blank: the platform holds a value, Salesforce's is not applied"
# Why a queued platform value is dropped without a rule holding it (a retry's `skipped` log says it).
SAME_VALUE = "Salesforce already has this value"
SALESFORCE_NEWER = "Salesforce's value changed later; it comes to the platform inbound"


class Winner(StrEnum):
    LOCAL = "local"            # the local value stands and is written to Salesforce
    SALESFORCE = "salesforce"  # Salesforce's value is written locally
    NONE = "none"              # nothing to write


@dataclass(frozen=True)
class Side:
    value: Any
    changed_at: datetime | None = None


@dataclass(frozen=True)
class FieldDecision:
    """`write_local` / `write_salesforce` say where `value` goes; `reason` says why not."""

    winner: Winner
    value: Any = None
    reason: str | None = None

    @property
    def write_local(self) -> bool:
        return self.winner is Winner.SALESFORCE

    @property
    def write_salesforce(self) -> bool:
        return self.winner is Winner.LOCAL


def _to_local(value: Any) -> FieldDecision:
    return FieldDecision(Winner.SALESFORCE, value)


def _to_salesforce(value: Any) -> FieldDecision:
    return FieldDecision(Winner.LOCAL, value)


def _nothing(reason: str) -> FieldDecision:
    return FieldDecision(Winner.NONE, None, reason)


def merge_field(
    mapping: FieldMapping, local: Side, salesforce: Side, *, sf_field_writable: bool, live: bool = False
) -> FieldDecision:
    """Decide one field. See the module docstring for the rules."""
    local_blank, sf_blank = is_blank(local.value), is_blank(salesforce.value)
    if local_blank and sf_blank:
        return _nothing("both blank")
    if not local_blank and not sf_blank and local.value == salesforce.value:
        return _nothing("equal")
    direction = mapping.direction
    if direction is Direction.BOTH and not sf_field_writable:
        direction = Direction.FROM_SALESFORCE
    if direction is Direction.FROM_SALESFORCE:
        return _nothing("salesforce blank") if sf_blank else _to_local(salesforce.value)
    if direction is Direction.TO_SALESFORCE:
        if not sf_field_writable:
            return _nothing("read-only in salesforce")
        return _nothing("local blank") if local_blank else _to_salesforce(local.value)
    # both, writable: data wins over a blank, then the merge behaviour decides
    if local_blank:
        return _to_local(salesforce.value)
    if sf_blank:
        return _to_salesforce(local.value)
    return _both_present(mapping.merge, local, salesforce, live)


def _both_present(merge: MergeBehaviour, local: Side, salesforce: Side, live: bool) -> FieldDecision:
    if merge is MergeBehaviour.SALESFORCE_UNLESS_BLANK:
        if live and _newer(local.changed_at, salesforce.changed_at):
            return _nothing(PLATFORM_LATER)
        return _to_local(salesforce.value)
    if merge is MergeBehaviour.LOCAL_UNLESS_BLANK:
        return _to_salesforce(local.value)
    if _newer(local.changed_at, salesforce.changed_at):
        return _to_salesforce(local.value)
    return _to_local(salesforce.value)  # Salesforce newer, or a tie


def _newer(a: datetime | None, b: datetime | None) -> bool:
    """Is `a` strictly newer than `b`? A missing time is older than any time."""
    if a is None:
        return False
    if b is None:
        return True
    return a > b


@dataclass
class RecordMerge:
    local_updates: dict[str, Any] = field(default_factory=dict)   # local field -> value
    sf_updates: dict[str, Any] = field(default_factory=dict)      # Salesforce field -> value
    field_times: dict[str, datetime] = field(default_factory=dict)  # local field -> when set
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (local field, reason)
    held: list[tuple[str, str]] = field(default_factory=list)     # (local field, rule): live edits held


def merge_record(
    mappings_for_object: Iterable[FieldMapping],
    local_doc: Mapping[str, Any] | None,
    sf_record: Mapping[str, Any],
    sf_changed_at: datetime | None,
    writable: Mapping[str, bool] | None = None,
    *,
    complete: bool = False,
    sf_clock_offset: timedelta = timedelta(0),
    sf_field_times: Mapping[str, datetime | None] | None = None,
    live: bool = False,
) -> RecordMerge:
    """Merge one Salesforce record into one local document, field by field.

    Only mapped fields present in `sf_record` take part, unless `complete` (a full record:
    a create, a polled or re-fetched record), where a mapped field missing from the record
    is blank on Salesforce's side. `writable` maps Salesforce field -> updateable (default
    True for fields it does not list). `sf_changed_at` is on Salesforce's clock;
    `sf_clock_offset` (Salesforce minus this host) moves it onto the clock of local field times.
    `sf_field_times`: Salesforce fields whose value's change time the caller knows better than
    the record's, on this host's clock already (None: no time, older than any).
    """
    if sf_changed_at is not None:
        sf_changed_at = sf_changed_at - sf_clock_offset
    result = RecordMerge()
    unstamped = has_unstamped_edit(local_doc)
    known = sf_field_times or {}
    for mapping in mappings_for_object:
        if mapping.sf_field not in sf_record and not complete:
            continue
        local = local_side(local_doc, mapping, unstamped=unstamped)
        remote = Side(sf_record.get(mapping.sf_field), known.get(mapping.sf_field, sf_changed_at))
        can_write = True if writable is None else writable.get(mapping.sf_field, True)
        decision = merge_field(mapping, local, remote, sf_field_writable=can_write, live=live)
        if decision.write_local:
            result.local_updates[mapping.local_field] = decision.value
            if remote.changed_at is not None:
                result.field_times[mapping.local_field] = remote.changed_at
        elif decision.write_salesforce:
            result.sf_updates[mapping.sf_field] = decision.value
            _stamp_fresh_edit(result, local_doc, mapping, local)
            if mapping.merge is MergeBehaviour.LOCAL_UNLESS_BLANK and not is_blank(remote.value):
                result.held.append((mapping.local_field, HELD_LOCAL))
        elif decision.reason is not None:
            result.skipped.append((mapping.local_field, decision.reason))
    return result


def capped_offset(offset: timedelta, sf_changed_at: datetime | None, now: datetime) -> timedelta:
    """The offset that moves `sf_changed_at` onto this host's clock, raised as far as needed to
    keep it no later than `now` (when the change is applied): a change received cannot have
    happened later, and an offset learned before Salesforce's clock stepped back would date it
    in the future, where it would outrank platform edits made meanwhile."""
    if sf_changed_at is None:
        return offset
    return max(offset, sf_changed_at - now)


def local_side(doc: Mapping[str, Any] | None, mapping: FieldMapping, *,
               unstamped: bool | None = None) -> Side:
    """The platform's side of one field: its value and time (`shadow.platform_time`: a fresh,
    not yet stamped platform edit counts with its document's `updated_at`). `unstamped`:
    `shadow.has_unstamped_edit(doc)` when the caller has it (once per document, not per field)."""
    value = get_path(doc, mapping.local_field)
    if not (has_unstamped_edit(doc) if unstamped is None else unstamped):
        return Side(value, stamped_time(doc, mapping.local_field))  # the shadow cannot change it
    seen = shadow_side(doc, mapping.sobject, mapping.sf_field)
    return Side(value, platform_time(doc, mapping.local_field, seen))


def _stamp_fresh_edit(result: RecordMerge, doc: Mapping[str, Any] | None, mapping: FieldMapping,
                      local: Side) -> None:
    """A fresh platform edit that won on its `updated_at` keeps that time as its field time, so
    the decision holds after this write marks the document as the service's."""
    stamped = get_path(doc, f"_sync.field_times.{mapping.local_field}")
    if local.changed_at is not None and local.changed_at != stamped:
        result.field_times[mapping.local_field] = local.changed_at


@dataclass(frozen=True)
class Outgoing:
    """One queued platform value re-decided at flush time."""

    decision: FieldDecision
    held: str | None = None        # the rule that held it back (one `skipped` log), if any
    at: datetime | None = None     # the platform time of the value sent (the shadow's new `at`)


def decide_outgoing(mapping: FieldMapping, doc: Mapping[str, Any] | None, queued: Any,
                    local: Side | None = None) -> Outgoing:
    """Should this queued platform value go out, now that the shadow may know more?

    The platform's current value stands for the queued one (it is at least as new), unless
    `local` gives the platform's side (the owner: its user translated to a Salesforce user).
    Without a shadow for the field the queued value goes out (Salesforce's side unknown:
    direction and blank rules were applied when it was queued). A `to_salesforce` value older
    than the shadow's last Salesforce edit, or any value older than a Salesforce blank, is not
    sent over it.
    """
    seen = shadow_side(doc, mapping.sobject, mapping.sf_field)
    local = local or local_side(doc, mapping)
    if seen is None or doc is None:
        return Outgoing(FieldDecision(Winner.LOCAL, queued), at=local.changed_at)
    decision = merge_field(mapping, local, Side(seen.value, seen.at), sf_field_writable=True)
    if (decision.write_salesforce and local.changed_at is not None and _newer(seen.at, local.changed_at)
            and (mapping.direction is Direction.TO_SALESFORCE or is_blank(seen.value))):
        # the platform's value was set before Salesforce's last edit of a `to_salesforce` field,
        # or before a Salesforce user blanked the field (a blank stands there as the platform's
        # data stands here, as inbound): it is not a change after it (re-queued, or held back
        # meanwhile), and only platform *changes* overwrite Salesforce
        return Outgoing(FieldDecision(Winner.NONE, None, "salesforce newer"), at=local.changed_at)
    if decision.winner is not Winner.SALESFORCE:
        return Outgoing(decision, at=local.changed_at)
    if mapping.merge is MergeBehaviour.SALESFORCE_UNLESS_BLANK and not is_blank(local.value):
        return Outgoing(FieldDecision(Winner.NONE, None, HELD_SALESFORCE), HELD_SALESFORCE, local.changed_at)
    # Salesforce's value is newer (or the platform's is blank): it reaches the platform inbound.
    return Outgoing(FieldDecision(Winner.NONE, None, "salesforce newer"), at=local.changed_at)


def bench_merge(records: int = 20_000) -> float:
    """Field merge decisions per second on this machine (for the bench scripts)."""
    mappings = [
        FieldMapping(local_field=f"f{i}", sobject="Lead", sf_field=f"F{i}__c",
                     direction=Direction.BOTH, merge=list(MergeBehaviour)[i % 3])
        for i in range(10)
    ]
    now = datetime.now(UTC)
    times = {f"f{i}": now - timedelta(seconds=i) for i in range(10)}
    local: dict[str, Any] = {"_sync": {"field_times": times}}
    local.update({f"f{i}": ("" if i % 4 == 0 else f"local {i}") for i in range(10)})
    sf = {f"F{i}__c": (None if i % 5 == 0 else f"sf {i}") for i in range(10)}
    start = time.perf_counter()
    for _ in range(records):
        merge_record(mappings, local, sf, now)
    elapsed = time.perf_counter() - start
    return records * len(mappings) / elapsed
