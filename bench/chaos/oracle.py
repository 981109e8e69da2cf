"""The oracle: a reference model of the mapping rules, fed the acknowledged operations in the
order they were acknowledged, and the checks run on the final state after the quiet period.

The model is written from the product's rules (README "Merge rules", design.md), not from the
service's code: per record and mapped field it keeps the set of values each side may hold.

- A write on one side sets that side (blanks included: a user may blank a field on their own
  side) and propagates to the other side when the rule allows it: direction (`both`,
  `from_salesforce`, `to_salesforce`), merge behaviour (`salesforce_unless_blank`: a platform edit
  never replaces data in Salesforce; `local_unless_blank`: a Salesforce edit never replaces data
  on the platform), never a blank, never into a read-only field.
- *Concurrency*: two writes to one field from different sides acknowledged within `WINDOW`
  seconds of each other may end either way (a same-second tie goes to Salesforce, the platform's
  clock is not Salesforce's); outside that window the later write wins. This is the only place
  acknowledgement times enter, and it only widens what is accepted.
- *In flight*: the outbox sends the platform's current value, so platform edits not sent yet
  when the next platform edit of the field comes (within `WINDOW`, or while a fault may hold
  outbound back: `OUTBOUND_HELD`) may reach Salesforce as that one, decided against what
  Salesforce held before them; a blank never goes out, so one that supersedes an unsent value
  leaves Salesforce's earlier value. A conversion may find such edits not yet on the Lead.
- *Not read yet*: a Salesforce write the service may not have read when the next one of the field
  comes (within `INBOUND_LATENCY`, or while a fault holds inbound back: `INBOUND_HELD`) may never
  reach the platform (a sync reads the record as it is then): the next one is decided against
  what the platform held before it.
- Conversion relinks the Person to the Contact; fields mapped on the Contact carry over and are
  merged (each side may take the other's data where it is blank), Lead-only fields are no longer
  checked.
- `from_salesforce`: Salesforce's last value may replace a later platform edit (it flows in
  whatever the time). A Salesforce blank made before the platform record exists may be copied.
- Deleted in Salesforce: platform edits made meanwhile are not sent; after an undelete either
  value is accepted.
- *Admin operations* are merges (README "Merge rules", the "at a merge" column): a re-import, a
  retry of an inbound or event job, and a mapping edit's remerge of the fields it added or
  changed (a removed field is no longer checked; mapped again, the platform still holds what it
  had). Where the record is linked, the merge was seen to finish and neither side wrote the field
  within the latencies before it (nothing in flight), each side ends exactly as `merge_decision`
  says; otherwise it may end as the merge of any pair of values the sides may hold. A value a
  merge sends goes out through the outbox, in flight like a platform edit. An outbound retry
  re-sends the platform's record (data fills Salesforce's blanks). A failed log that was retried
  (`retried_by`) is no longer open: the retry's own log is.
- *Read, not streamed* (a documented limit, README "Reliability"): a Salesforce change whose
  event may have been lost (a silent write, or one made while `replay_retention` could prune its
  event or `budget_swing` had the service polling: `READ_FAULTS`) reaches the service only by
  reading the record, dated by the record's `LastModifiedDate`. Against a later platform edit of
  the field, still unsent when the record was modified again (the service's write of other
  fields, another Salesforce edit: service write times from the emulator's write log), that
  date is later than the edit, so `most_recent` may keep Salesforce's earlier value on both
  sides (a `to_salesforce` field keeps it in Salesforce, the platform its own: seed 88001).
  Without field history no rule can tell the two orders apart. And a read sees the
  record as it is: a value read, not streamed, that was replaced before the read never reaches
  the platform, so a later Salesforce value may fill the blank it would have filled.

Checks (each can fail; where a rule is not modelled exactly the check is conservative, as noted):

- lost_change: each side's final value is in the model's set; a `most_recent` field with data on
  both sides holds the same value on both; a record that should exist on the other side does
  — unless exactly explained by failed sync logs for that record (one per attempt), or for a
  field by the one open failed log that names it.
- duplicate: at most one Person per Lead/Contact, one Lead per Person, one Company per Account,
  one Account per Company (the service's own creates, from the emulator's write log); no Person
  linked to a record no operation made.
- loop: after the quiet period the service makes no Salesforce write and no local write for
  IDLE seconds; it never sends a blank, a read-only or a `from_salesforce` field; its record
  writes per record stay within a bound (conservative: local edits + merges + faults that can
  cause a resend + 2).
- offsets: no replay id and no polling watermark recorded in `sync_state` ever went backwards.
- logs: no Salesforce-side log applies a value only the platform ever wrote (an echo; unless
  the platform wrote it within `WINDOW` of a Salesforce write of the field and the log replaces a
  value Salesforce wrote: a conflict converging); no more
  Salesforce-side update logs for a record than Salesforce operations on it (+ merges; a
  formula field's own logs are bounded by every write of the record, the service's included); no
  Salesforce-side log at all of a platform record no Salesforce operation touched (unless a
  fault may have caused a resync); no local-side log without a write attempt for that record.
- liveness: the quiet period's barrier (a new Lead crossing in, a new Person crossing out) passed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bench.chaos.env import CHAOS_MAPPINGS, StateWrite
from bench.chaos.operations import Ack, Entity
from settings import Direction, FieldMapping, Mappings, MergeBehaviour, parse_mappings

WINDOW = 2.0   # seconds: writes from both sides this close may end either way
# How long a platform edit may wait before it is sent with no fault: the outbox's flush wait (2 s,
# `FlushPolicy.max_wait`) after the watcher's change-stream await (0.5 s), plus processing.
OUTBOUND_LATENCY = 3.0
# How long after a fault a platform edit may still wait in the outbox: a leader kill or stop is a
# lease takeover (TTL 3 s) plus the call's backoff; a budget swing to `paused` holds outbound until
# the next limits check, one a minute.
OUTBOUND_HELD = {"kill_leader": 20.0, "stop_leader": 20.0, "restart_mongo": 20.0, "rest_5xx": 20.0,
                 "lock_row": 20.0, "apply_then_drop": 20.0, "token_expiry": 20.0, "budget_swing": 65.0}
# How long a Salesforce edit may wait before the service reads it with no fault (the stream's
# delivery and micro-batch), and after a fault that holds the stream back: those that hold
# outbound, and those that leave inbound to the next poll (one a minute in the run) or a re-fetch.
INBOUND_LATENCY = 3.0
INBOUND_HELD = {**OUTBOUND_HELD, "replay_retention": 65.0, "poison_event": 65.0, "cometd_drop": 20.0,
                "cdc_gap": 20.0, "cdc_overflow": 20.0}
READ_ONLY = frozenset({"Score__c"})
# after these the service may resync with a merge (backfill / re-import): data fills blanks
RESYNC_FAULTS = frozenset({"replay_retention", "kill_leader", "stop_leader", "restart_mongo", "cdc_overflow",
                           "budget_swing", "cometd_drop"})
SERVICE_CLIENT = "client=salesforce-sync"
# Faults during which a Salesforce change may reach the service only by a read of its record:
# kind -> (seconds before the fault, seconds after its heal). `replay_retention` prunes events not
# yet consumed and committed (a stream stalled by a poison event or a takeover: OUTBOUND_HELD's
# 20 s); `budget_swing` has the service polling until the next limits check after the heal.
READ_FAULTS = {"replay_retention": (20.0, 0.0), "budget_swing": (0.0, 65.0)}


@dataclass
class Violation:
    check: str
    message: str
    ops: list[str] = field(default_factory=list)
    slot: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"check": self.check, "message": self.message, "ops": self.ops, "slot": self.slot}


@dataclass
class Observed:
    """Everything the checks read, gathered by the runner after the quiet period."""

    acks: list[Ack]
    entities: dict[str, Entity]
    sf_records: dict[str, dict[str, Any]]          # sf id -> record (control API; deleted too)
    people: list[dict[str, Any]]
    companies: list[dict[str, Any]]
    sync_logs: list[dict[str, Any]]
    writes: list[dict[str, Any]]                   # /_emulator/chaos/writes
    state_writes: list[StateWrite]
    faults: list[dict[str, Any]]
    barrier_ok: bool
    barrier_detail: str
    idle_writes: int
    idle_local_changes: int
    barrier_ids: set[str] = field(default_factory=set)


def blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value == []


def norm(value: Any) -> Any:
    if blank(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# --- the reference model of one field ------------------------------------------------------------

@dataclass
class _Write:
    at: float
    side: str     # salesforce | platform
    value: Any
    step: str
    # a platform write: what Salesforce could hold just before it (its values, known?)
    sf_before: tuple[frozenset[Any], bool] | None = None
    by_read: bool = False  # a Salesforce write whose event may have been lost (read, not streamed)
    # a Salesforce write: what the platform could hold just before it (its values, known?)
    local_before: tuple[frozenset[Any], bool] | None = None


def _undelivered(writes: list[_Write], at: float, inbound_held: list[tuple[float, float]]) -> list[_Write]:
    """The latest Salesforce writes the service may not have read by `at` (within
    INBOUND_LATENCY, or while a fault may hold inbound back), the newest first."""
    out: list[_Write] = []
    for w in reversed(writes):
        # a fault held it back if it came before the write was read, and held long enough
        if w.side != "salesforce" or w.local_before is None or not (
                at - w.at <= INBOUND_LATENCY
                or any(f <= min(at, w.at + INBOUND_LATENCY) and f + held >= w.at
                       for f, held in inbound_held)):
            break
        out.append(w)
    return out


def _undelivered_states(writes: list[_Write], at: float,
                        inbound_held: list[tuple[float, float]]) -> list[tuple[frozenset[Any], bool]]:
    """What the platform held before each of the Salesforce writes not read yet (`_undelivered`)."""
    return [w.local_before for w in _undelivered(writes, at, inbound_held) if w.local_before is not None]


def _sent_over_unread(fm: FieldModel, value: Any, at: float, unread: list[_Write],
                      other_exists: bool) -> None:
    """`salesforce_unless_blank`: a platform edit is decided against the Salesforce values the
    service has seen (its shadow: "Deciding this for a platform edit needs Salesforce's side
    without an API call", design.md). Salesforce writes it had not read yet (`unread`, within
    INBOUND_LATENCY or held by a fault) may be overwritten as if Salesforce still held what it
    held before them: data written there 10 ms before the platform's edit is not known to be
    there (chaos seed 5150, L15.title: a same-second conflict on a blank field)."""
    value = norm(value)
    if value is None or fm.merge is not MergeBehaviour.SALESFORCE_UNLESS_BLANK:
        return
    for w in unread:
        if w.sf_before is not None:
            fm.sf |= _sent_over(fm, value, at, set(w.sf_before[0]), w.sf_before[1], other_exists)


def _unread_fill_blank(fm: FieldModel, value: Any, unread: list[_Write]) -> None:
    """A platform blank made while Salesforce writes of the field may not have been read yet
    (`unread`, taken just before the blank): read after it, their data fills the blank, whatever
    the merge behaviour ("if there is data in a field, that value will always win over a blank
    field"; chaos seed 2718, L14.phone: a blank 22 s after a Salesforce edit the stream had not
    delivered: retention pruned, polling)."""
    if norm(value) is not None or fm.direction is Direction.TO_SALESFORCE:
        return
    fm.local |= {w.value for w in unread if w.value is not None}


def _platform_state(fm: FieldModel) -> tuple[frozenset[Any], bool]:
    """What the platform may hold (its values, known?). Before the field's first write since the
    record was made, the blank the record was made with (seed 1194 x 2000, L18.phone)."""
    if not fm.writes and not fm.local_known and not fm.local:
        return frozenset({None}), True
    return frozenset(fm.local), fm.local_known


def _may_replace(current: set[Any], known: bool, unless_blank: bool) -> str:
    """May a write replace `current` under an "unless blank" rule? yes, no, or maybe. Not
    `known` (the side may hold a value the model has not seen): yes, unless data the model knows
    the side may hold keeps it (maybe: chaos seed 65537, C1.phone)."""
    if not unless_blank:
        return "yes"
    if not known:
        return "maybe" if any(v is not None for v in current) else "yes"
    blanks = {v for v in current if v is None}
    if not blanks:
        return "no"
    return "yes" if blanks == current else "maybe"


@dataclass
class FieldModel:
    direction: Direction
    merge: MergeBehaviour
    writable: bool = True
    sf: set[Any] = field(default_factory=set)
    local: set[Any] = field(default_factory=set)
    sf_known: bool = False
    local_known: bool = False
    writes: list[_Write] = field(default_factory=list)
    held: list[_Write] = field(default_factory=list)   # platform writes while deleted in Salesforce
    relaxed: bool = False                             # convergence not required (see module doc)
    held_until: list[tuple[float, float]] = field(default_factory=list)  # faults: (at, outbound held)
    modified: list[float] = field(default_factory=list)  # when the Salesforce record was written
    local_from_read: bool = False  # the platform's value came from a change read, not streamed
    inbound_held: list[tuple[float, float]] = field(default_factory=list)  # faults: (at, inbound held)
    carried: set[Any] = field(default_factory=set)  # values a conversion wrote into the Contact
    merged: list[_Write] = field(default_factory=list)  # a merge's values for Salesforce, maybe unsent

    def _inbound(self) -> bool:
        return self.direction in (Direction.BOTH, Direction.FROM_SALESFORCE)

    def _outbound(self) -> bool:
        return self.writable and self.direction in (Direction.BOTH, Direction.TO_SALESFORCE)

    def _recent(self, side: str, at: float, propagate: bool, within: float = WINDOW) -> set[Any]:
        """Non-blank values `side` wrote within `within` before `at` (they may still win)."""
        if not propagate:
            return set()
        return {w.value for w in self.writes if w.side == side and at - w.at <= within
                and w.value is not None}

    def write(self, side: str, value: Any, at: float, step: str, *, deleted: bool = False,
              other_exists: bool = True, certain: bool = True, by_read: bool = False) -> None:
        """`other_exists` False: the other side's record may not exist yet (made later from the
        values then: an "unless blank" rule may not hold it back). `by_read`: see `read_over`."""
        value = norm(value)
        w = _Write(at, side, value, step, by_read=by_read)
        if side == "salesforce":
            undelivered = self.undelivered_states(at)
            w.local_before = _platform_state(self)
            self._write_salesforce(value, at, other_exists, certain, undelivered, by_read)
        else:
            self._write_platform(w, deleted, other_exists)
        self.writes.append(w)

    def _write_salesforce(self, value: Any, at: float, other_exists: bool, certain: bool,
                          undelivered: list[tuple[frozenset[Any], bool]],
                          by_read: bool = False) -> None:
        # a value Salesforce certainly held already is no change of the field: an update event
        # lists only the fields that changed (ChangeEventHeader `changedFields`), so nothing of
        # it reaches the platform (seed 50321, Q1.industry: a held platform edit stays there)
        unchanged = self.sf_known and self.sf == {value}
        maybe_unchanged = self.sf_known and value in self.sf  # one of the values it may hold
        # an edit in the outbox is decided on a shadow without this write: may go out over it (2025 L4)
        self.sf = {value} | (in_flight := self._recent("platform", at, self._outbound(), OUTBOUND_LATENCY))
        if self.merge is MergeBehaviour.LOCAL_UNLESS_BLANK and self._outbound():
            # the platform's data is preferred: an edit still in the outbox goes out over this
            self.sf |= {w.value for w in (*self.writes, *self.merged) if w.side == "platform"
                        and w.value is not None and self._maybe_unsent(w, at)}
        self.sf_known = True
        if value is not None and self._inbound() and not unchanged:
            unless_blank = (self.merge is MergeBehaviour.LOCAL_UNLESS_BLANK
                            and self.direction is Direction.BOTH)
            allowed = _may_replace(self.local, self.local_known, unless_blank)
            if allowed == "no" and (not other_exists or self.local_from_read):
                # (or the platform's data came from a change read, not streamed, which a read
                # after this write never sees: the platform may still be blank)
                allowed = "maybe"
            if allowed == "no" and any(_may_replace(set(before), known, unless_blank) != "no"
                                       for before, known in undelivered):
                # Salesforce's earlier values the service had not read yet were replaced there
                # first: it reads this one, decided against what the platform held before them
                allowed = "maybe"
            if allowed == "yes" and (not certain or maybe_unchanged):
                # a change with no event: the refetch may read a later state; or maybe no change
                allowed = "maybe"
            if allowed == "yes":
                self.local = {value} | in_flight | self._recent("platform", at, True)
                self.local_known = True
                self.local_from_read = by_read
            elif allowed == "maybe":
                self.local |= {value}
        elif value is None and not other_exists and self._inbound():
            # the platform record may not exist yet: it is made from Salesforce's values as
            # they are then, blanks included (a blank never blanks an existing one)
            self.local |= {None}
        elif value is None and self._inbound():
            # a blank never blanks the platform, and replaced Salesforce's values the service had
            # not read yet: the platform may keep what it held before them (1097 C2.title)
            self.local |= {v for before, _known in undelivered for v in before}

    def _write_platform(self, w: _Write, deleted: bool, other_exists: bool) -> None:
        value, at = w.value, w.at
        held = (frozenset(self.local), self.local_known)
        self.local = {value} | self._recent("salesforce", at, self._inbound())
        self.local_from_read = False
        last_sf = next((x.value for x in reversed(self.writes) if x.side == "salesforce"), None)
        if self.direction is Direction.FROM_SALESFORCE and last_sf is not None:
            # Salesforce owns the field ("we will never send SalesLoft data back"): its value
            # flows in whatever the time, so one delivered after this edit replaces it
            self.local.add(last_sf)
        self.local_known = True
        if deleted:
            self.held.append(w)
            return
        unsent = self.unsent_states(at)
        w.sf_before = (frozenset(self.sf), self.sf_known)
        sf, sent = _sent_if_changed(self, value, at, held, other_exists)
        # the outbox sends the platform's current value: earlier edits it had not sent yet
        # reach Salesforce as this one (superseded by a later change: no loss), decided
        # against what Salesforce held before them
        for before, known in unsent:
            sf |= _sent_over(self, value, at, set(before), known, other_exists)
        self.sf = sf
        # a blank over an unsent edit leaves Salesforce's earlier value: if the model
        # did not know it, it does not know Salesforce's value now
        unknown = value is None and not all(known for _, known in unsent)
        self.sf_known = (self.sf_known or sent) and not unknown
        earlier = self.read_over(w)
        if earlier is not None:
            if self._inbound():
                self.local.add(earlier)
            self.sf.add(earlier)

    def read_over(self, w: _Write) -> Any:
        """The earlier Salesforce value that may win over platform write `w` (module doc, "Read,
        not streamed"), or None: `most_recent` (or `to_salesforce`, where a platform value older
        than Salesforce's last change is not sent over it), the field's last Salesforce change
        may have reached the service only by a read, and the record was written again after `w`
        while `w` may still have been unsent (so that the read's `LastModifiedDate` is later
        than `w`). A `to_salesforce` value stays in Salesforce only (seed 88001, P1.state)."""
        dated_by_time = ((self.direction is Direction.BOTH and self.merge is MergeBehaviour.MOST_RECENT)
                         or self.direction is Direction.TO_SALESFORCE)
        if not (dated_by_time and self.writable):
            return None
        last_sf = next((x for x in reversed(self.writes) if x.side == "salesforce"), None)
        if last_sf is None or not last_sf.by_read or last_sf.value is None:
            return None
        if any(w.at < at and self._maybe_unsent(w, at) for at in self.modified):
            return last_sf.value
        return None

    def _maybe_unsent(self, w: _Write, at: float) -> bool:
        """May platform write `w` still wait in the outbox at `at`? Within OUTBOUND_LATENCY, or
        while a fault that holds outbound back may still hold it."""
        if at - w.at <= OUTBOUND_LATENCY:
            return True
        return any(f <= at and f + held >= w.at for f, held in self.held_until)

    def undelivered_states(self, at: float) -> list[tuple[frozenset[Any], bool]]:
        return _undelivered_states(self.writes, at, self.inbound_held)

    def unsent_states(self, at: float) -> list[tuple[frozenset[Any], bool]]:
        """What Salesforce held before each of the latest platform writes maybe unsent by `at`."""
        out: list[tuple[frozenset[Any], bool]] = []
        for w in reversed(self.writes):
            if w.side != "platform" or w.sf_before is None or not self._maybe_unsent(w, at):
                break
            out.append(w.sf_before)
        return out

    def undelete(self) -> None:
        if self.held and self._outbound():
            self.sf, self.relaxed = self.sf | {w.value for w in self.held if w.value is not None}, True
        self.held.clear()

    def merge_on_link(self, at: float, step: str) -> None:
        """A merge (conversion): either side may take the other's data where it is blank. What
        it sends waits in the outbox like a platform edit: decided when sent, it may go out over
        a Salesforce write made meanwhile (`_write_salesforce`; chaos seed 40961, L6.phone)."""
        if self._outbound():
            self.sf |= {v for v in self.local if v is not None}
            self.merged = [_Write(at, "platform", v, step) for v in self.local if v is not None]
        if self._inbound():
            self.local |= {v for v in self.sf if v is not None}

    def fill_blanks(self) -> None:
        """A merge the service may run on its own (a backfill or re-import after a resync):
        data wins over a blank, both ways, and where both have data an "unless blank" field
        takes the preferred side's ("SalesLoft selects the preferred data")."""
        both = self.direction is Direction.BOTH
        local_wins = both and self.merge is MergeBehaviour.LOCAL_UNLESS_BLANK
        sf_wins = both and self.merge is MergeBehaviour.SALESFORCE_UNLESS_BLANK
        if (None in self.sf or local_wins) and self._outbound():
            self.sf |= {v for v in self.local if v is not None}
        if (None in self.local or sf_wins) and self._inbound():
            self.local |= {v for v in self.sf if v is not None}

    def steps(self) -> list[str]:
        return [w.step for w in self.writes[-4:]]


def _sent_over(fm: FieldModel, value: Any, at: float, current: set[Any], known: bool,
               other_exists: bool) -> set[Any]:
    """What Salesforce may hold once a platform write of `value` is sent over `current`."""
    if value is None or not fm._outbound():
        return set(current)  # blanks are never written
    unless_blank = fm.merge is MergeBehaviour.SALESFORCE_UNLESS_BLANK and fm.direction is Direction.BOTH
    allowed = _may_replace(current, known, unless_blank)
    if allowed == "no" and not other_exists:
        allowed = "maybe"
    if allowed == "yes":
        # a Salesforce blank within WINDOW may be dated the later one: a value older than a
        # Salesforce user's blank is not sent over it (chaos seed 9157, A1.industry)
        blanked = any(w.side == "salesforce" and w.value is None and at - w.at <= WINDOW
                      for w in fm.writes)
        return {value} | fm._recent("salesforce", at, True) | ({None} if blanked else set())
    if allowed == "maybe":
        return set(current) | {value}
    return set(current)


def _sent_if_changed(fm: FieldModel, value: Any, at: float, held: tuple[frozenset[Any], bool],
                     other_exists: bool) -> tuple[set[Any], bool]:
    """What Salesforce may hold once a platform write of `value` is sent, and was it surely sent?
    A value the platform held already (`held`: its values before the write, known?) is no edit
    of the field: the watcher queues only the fields that changed (the change stream's
    `updatedFields`, or the polled diff), so nothing goes out; if it is one of the values the
    platform may hold, maybe (seed 39157, A1.industry: a save listing the Industry that
    `salesforce_unless_blank` had held back did not send it over a Salesforce user's blank)."""
    values, known = held
    if known and values == {value}:
        return set(fm.sf), False
    sf = _sent_over(fm, value, at, fm.sf, fm.sf_known, other_exists)
    if known and value in values:
        return sf | fm.sf, False
    return sf, value is not None and fm._outbound()


def _conflicted(fm: FieldModel, value: Any) -> bool:
    """Did the platform write `value` within WINDOW of a Salesforce write of this field? Then
    either may win in Salesforce, and the platform, having taken Salesforce's value first,
    may take its own back as Salesforce's current value: a change there, not an echo."""
    return any(w.side == "platform" and w.value == value and o.side == "salesforce"
               and abs(o.at - w.at) <= WINDOW for w in fm.writes for o in fm.writes)


@dataclass
class EntityModel:
    entity: Entity
    fields: dict[str, FieldModel] = field(default_factory=dict)
    sobject: str = ""
    deleted: bool = False
    converted: bool = False
    frozen: set[str] = field(default_factory=set)      # Lead-only fields after conversion
    sf_ops: list[str] = field(default_factory=list)     # steps that wrote it in Salesforce
    pf_ops: list[str] = field(default_factory=list)     # steps that wrote it on the platform
    created_mapped: bool | None = None                  # Salesforce-created with a mapped owner?
    created_by_read: bool = False                       # ... in a window where it may only be read
    owner_sf: Any = None
    merges: int = 0
    modified: list[float] = field(default_factory=list)  # when the Salesforce record was written
    sf_raw: dict[str, Any] = field(default_factory=dict)  # every Salesforce field written, mapped or not
    admin_ops: list[str] = field(default_factory=list)  # merges an admin ran on it (import, retry, remap)
    # a field mapped once and removed since: local field -> (values, known) when it was removed
    unmapped: dict[str, tuple[frozenset[Any], bool]] = field(default_factory=dict)


class Model:
    def __init__(self, mappings: Mappings | None = None) -> None:
        self.mappings = mappings or parse_mappings(CHAOS_MAPPINGS)
        self.entities: dict[str, EntityModel] = {}
        self.early: list[Violation] = []  # found while feeding (a conversion's starting values)
        self.held_until: list[tuple[float, float]] = []  # injected faults that hold outbound back
        self.read_windows: list[tuple[float, float]] = []  # when a change may be read, not streamed
        self.modified: dict[str, list[float]] = {}  # slot -> when its Salesforce record was written
        self.inbound_held: list[tuple[float, float]] = []  # ... and inbound

    def _mapping(self, sobject: str) -> list[FieldMapping]:
        return self.mappings.for_object(sobject)

    def _field(self, em: EntityModel, m: FieldMapping) -> FieldModel:
        fm = em.fields.get(m.local_field)
        if fm is None:
            fm = em.fields[m.local_field] = FieldModel(m.direction, m.merge,
                                                       writable=m.sf_field not in READ_ONLY,
                                                       held_until=self.held_until,
                                                       modified=em.modified,
                                                       inbound_held=self.inbound_held)
        return fm

    def resync(self) -> None:
        """A fault after which the service may resync by a merging backfill (see fill_blanks)."""
        for em in self.entities.values():
            for name, fm in em.fields.items():
                if name not in em.frozen:
                    fm.fill_blanks()

    def feed(self, acks: Iterable[Ack], entities: Mapping[str, Entity],
             faults: Iterable[Mapping[str, Any]] = (),
             service_writes: Mapping[str, Iterable[float]] | None = None) -> None:
        """Acks in acknowledgement order; faults that may make the service resync are merged in
        by time. `service_writes`: when the service wrote each Salesforce record (15-character
        id -> host times), for the "read, not streamed" limit."""
        faults, acks = list(faults), list(acks)
        self.read_windows[:] = _read_windows(faults)
        self.modified = _modified(acks, entities, service_writes or {})
        resyncs = sorted(float(f["at"]) for f in faults
                         if f.get("status") == "injected" and f.get("kind") in RESYNC_FAULTS)
        self.held_until[:] = [(float(f["at"]), OUTBOUND_HELD[str(f["kind"])]) for f in faults
                              if f.get("status") == "injected" and f.get("kind") in OUTBOUND_HELD]
        self.inbound_held[:] = [(float(f["at"]), INBOUND_HELD[str(f["kind"])]) for f in faults
                                if f.get("status") == "injected" and f.get("kind") in INBOUND_HELD]
        for ack in acks:
            while resyncs and resyncs[0] <= ack.at:
                resyncs.pop(0)
                self.resync()
            if ack.kind == "mapping_edit":
                self._remap(ack)
                continue
            if ack.status != "ok" or ack.slot is None or ack.slot not in entities:
                continue
            em = self.entities.get(ack.slot)
            if em is None:
                ent = entities[ack.slot]
                em = self.entities[ack.slot] = EntityModel(ent, sobject=ack.sobject or ent.sobject,
                                                           modified=self.modified.get(ack.slot, []))
            self._apply(em, ack, entities)
        if resyncs:
            self.resync()

    def _apply(self, em: EntityModel, ack: Ack, entities: Mapping[str, Entity]) -> None:
        if ack.side == "salesforce":
            self._apply_salesforce(em, ack, entities)
        elif ack.side == "admin":
            _admin_merge(self._mapping(em.sobject), em, ack)
        else:
            em.pf_ops.append(ack.step)
            seen = em.entity.bound_at is not None and ack.at >= em.entity.bound_at
            for m in self._mapping(em.sobject):
                if m.local_field in ack.fields and m.local_field not in em.frozen:
                    fm = self._field(em, m)
                    unread = _undelivered(fm.writes, ack.at, fm.inbound_held)
                    fm.write("platform", ack.fields[m.local_field], ack.at, ack.step,
                             deleted=em.deleted, other_exists=seen)
                    _unread_fill_blank(fm, ack.fields[m.local_field], unread)
                    if not em.deleted:
                        _sent_over_unread(fm, ack.fields[m.local_field], ack.at, unread, seen)

    def _apply_salesforce(self, em: EntityModel, ack: Ack, entities: Mapping[str, Entity]) -> None:
        kind = ack.kind
        em.sf_ops.append(ack.step)
        if kind in ("sf_create_lead", "sf_create_contact", "sf_create_account"):
            owner = ack.fields.get("OwnerId")
            em.created_mapped = isinstance(owner, str) and self.mappings.local_user(owner) is not None
            em.created_by_read = any(start <= ack.at <= end for start, end in self.read_windows)
        if kind in ("sf_delete", "sf_undelete"):
            em.deleted = kind == "sf_delete"
            for fm in em.fields.values() if not em.deleted else []:
                fm.undelete()
            return
        if kind == "sf_convert":
            self._convert(em, ack, entities)
            return
        seen = em.entity.bound_at is not None and ack.at >= em.entity.bound_at
        if "OwnerId" in ack.fields:
            em.owner_sf = ack.fields["OwnerId"]
            if not seen and em.created_by_read and self.mappings.local_user(em.owner_sf) is None:
                # the create may reach the service only by a read, which shows this owner: no
                # Person for an unmapped owner (seed 1679 x 2000, C3)
                em.created_mapped = None
        em.sf_raw.update(ack.fields)
        silent = ack.kind in ("cdc_gap", "cdc_overflow")
        by_read = silent or any(start <= ack.at <= end for start, end in self.read_windows)
        for m in self._mapping(em.sobject):
            if m.sf_field in ack.fields and m.local_field not in em.frozen:
                fm = self._field(em, m)
                before, written = (frozenset(fm.sf), fm.sf_known), len(fm.writes)
                fm.write("salesforce", ack.fields[m.sf_field], ack.at, ack.step,
                         other_exists=seen, certain=not silent, by_read=by_read)
                if len(fm.writes) > written:  # (a write of the value it holds is no change)
                    fm.writes[-1].sf_before = before  # what a platform edit not seeing it decides on

    def _remap(self, ack: Ack) -> None:
        """A mapping edit: the new rules from now on, and the remerge of the fields it added or
        changed on every linked record (product: "a merge happens ... when you edit field
        mappings"). A removed field is no longer synced: its local values are kept aside, in
        case it is mapped again. Exact only when the remerge was seen to finish."""
        new = parse_mappings(str(ack.fields["mappings"]))
        before, after = self.mappings.model_dump(mode="json"), new.model_dump(mode="json")
        self.mappings = new
        for em in self.entities.values():
            section = "companies" if em.entity.collection == "companies" else "people"
            for name in set(before[section]) - set(after[section]):
                fm = em.fields.pop(name, None)
                if fm is not None:
                    em.unmapped[name] = (frozenset(fm.local), fm.local_known)
            changed = {n for n, spec in after[section].items() if before[section].get(n) != spec}
            mapped = [m for m in self._mapping(em.sobject) if m.local_field in changed
                      and m.local_field not in em.frozen]
            if not mapped:
                continue
            em.merges += 1
            em.admin_ops.append(ack.step)
            exact = ack.status == "ok" and _linked(em, ack.at) and not em.deleted
            for m in mapped:
                fm = em.fields.get(m.local_field)
                if fm is None:
                    fm = self._field(em, m)
                    # Salesforce holds what users last wrote there (blank if never);
                    # the platform what it held when the field was last mapped (never written)
                    fm.sf, fm.sf_known = {norm(em.sf_raw.get(m.sf_field))}, True
                    local, fm.local_known = em.unmapped.pop(m.local_field, (frozenset({None}), True))
                    fm.local = set(local)
                fm.direction, fm.merge = m.direction, m.merge
                merge_now(fm, ack.at, ack.step, exact=exact and m.sf_field not in LINK_FIELDS,
                          began=float(ack.fields.get("started", ack.at)))

    def _convert(self, em: EntityModel, ack: Ack, entities: Mapping[str, Entity]) -> None:
        lead = ack.fields.get("lead_before") or {}
        for m in self._mapping("Lead"):
            fm = em.fields.get(m.local_field)
            if fm is None or not fm.sf_known or m.sf_field in READ_ONLY or m.local_field in em.frozen:
                continue
            actual = norm(lead.get(m.sf_field))
            # platform edits still in the outbox reach the Contact through the conversion's merge
            unsent = fm.unsent_states(ack.at)
            allowed = fm.sf.union(*(before for before, _ in unsent))
            if actual not in allowed and all(known for _, known in unsent):
                self.early.append(Violation(
                    "lost_change", f"{em.entity.slot}.{m.local_field} (Lead.{m.sf_field}) when converted: "
                    f"Salesforce held {actual!r}, model allows {_show(allowed)}", [*fm.steps(), ack.step],
                    em.entity.slot))
            fm.sf = {actual}  # what the Contact and Account are made from
            if actual is not None:
                fm.carried.add(actual)  # a Salesforce operation wrote it into the Contact
        contact = {m.local_field for m in self._mapping("Contact")}
        em.frozen |= {name for name in em.fields if name not in contact}
        em.frozen |= {m.local_field for m in self._mapping("Lead") if m.local_field not in contact}
        em.sobject, em.converted = "Contact", True
        em.merges += 1
        for name, fm in em.fields.items():
            if name not in em.frozen:
                fm.merge_on_link(ack.at, ack.step)
        account = next(m for m in self._mapping("Contact") if m.sf_field == "AccountId")
        self._field(em, account).write("salesforce", ack.fields.get("ConvertedAccountId"), ack.at, ack.step)
        slot = ack.fields.get("account_slot")
        if isinstance(slot, str) and slot in entities:
            acc = self.entities.setdefault(slot, EntityModel(entities[slot], sobject="Account"))
            acc.sf_ops.append(ack.step)
            acc.created_mapped = True
            company = {m.sf_field: m for m in self._mapping("Account")}
            copied = (("Name", "Company"), ("Website", "Website"), ("Industry", "Industry"),
                      ("BillingCity", "City"))
            for sf_field, lead_field in copied:
                if sf_field in company and not blank(lead.get(lead_field)):
                    self._field(acc, company[sf_field]).write("salesforce", lead[lead_field], ack.at,
                                                              ack.step)


# --- admin operations: merges (README "Merge rules", the "at a merge" column) --------------------

LINK_FIELDS = frozenset({"OwnerId", "AccountId"})  # owner and Account links: users / rules, not values


def _admin_merge(mappings: Iterable[FieldMapping], em: EntityModel, ack: Ack) -> None:
    """A re-import or a retry of one record: a merge (product: "a merge happens when you
    retry a failed sync job, when you re-import a Person"). An outbound retry re-sends the
    platform's record as it is now: data fills blanks in Salesforce (as a resync)."""
    em.merges += 1
    em.admin_ops.append(ack.step)
    outbound = ack.kind == "admin_retry" and ack.fields.get("job") == "outbound"
    exact = not outbound and _linked(em, ack.at) and not em.deleted
    for m in mappings:
        fm = em.fields.get(m.local_field)
        if fm is None or m.local_field in em.frozen:
            continue
        if outbound:
            fm.fill_blanks()
        else:
            merge_now(fm, ack.at, ack.step, exact=exact and m.sf_field not in LINK_FIELDS)


def merge_decision(direction: Direction, merge: MergeBehaviour, writable: bool, local: Any,
                   sf: Any) -> tuple[str, Any] | None:
    """What a merge writes for one field whose two sides hold `local` and `sf`: ("local", v),
    ("salesforce", v), None (nothing), or ("either", None) (`most_recent` with data on both
    sides: the later side wins, which field times decide). Product rules: "we will not write
    null values or blanks; if there is data in a field, that value will always win over a blank";
    "Use Salesforce value unless blank" / "Use SalesLoft value unless blank"; a one-way field
    merges its way only; a read-only field only inbound."""
    if (local is None and sf is None) or local == sf:
        return None
    if direction is Direction.BOTH and not writable:
        direction = Direction.FROM_SALESFORCE
    if direction is Direction.FROM_SALESFORCE:
        return None if sf is None else ("local", sf)
    if direction is Direction.TO_SALESFORCE:
        return None if local is None or not writable else ("salesforce", local)
    if local is None:
        return ("local", sf)
    if sf is None:
        return ("salesforce", local)
    if merge is MergeBehaviour.SALESFORCE_UNLESS_BLANK:
        return ("local", sf)
    if merge is MergeBehaviour.LOCAL_UNLESS_BLANK:
        return ("salesforce", local)
    return ("either", None)


def _settled(fm: FieldModel, at: float, began: float) -> bool:
    """Does the model know each side's one value at `at`, nothing in flight either way: no write
    of the field within the latencies before the merge `began`, none a fault may hold back?"""
    quiet_since = began - max(OUTBOUND_LATENCY, INBOUND_LATENCY)
    return (fm.sf_known and fm.local_known and len(fm.sf) == 1 and len(fm.local) == 1 and not fm.relaxed
            and not fm.held and not fm.unsent_states(at) and not fm.undelivered_states(at)
            and not any(w.at >= quiet_since for w in fm.writes))


def _merge_any(fm: FieldModel, at: float) -> None:
    """A merge the model cannot place exactly: each side may keep what it holds, or end as
    `merge_decision` says for any pair of values the two sides may hold (edits still in flight
    either way included: the merge may read a side before they land)."""
    locals_ = set(fm.local).union(*(before for before, _ in fm.undelivered_states(at)))
    unsent = set().union(*(before for before, _ in fm.unsent_states(at)))
    for local in locals_:
        for sf in set(fm.sf) | unsent:
            decision = merge_decision(fm.direction, fm.merge, fm.writable, local, sf)
            if decision is None:
                continue
            side = decision[0]
            if side in ("local", "either"):
                fm.local.add(sf)
            if side in ("salesforce", "either"):
                fm.sf.add(local)
            elif sf in unsent:
                # a platform edit still queued is decided by the rule in force when it goes
                # out, which may hold it back: Salesforce keeps what it held (seed 1873, P2.title)
                fm.sf.add(sf)


def merge_now(fm: FieldModel, at: float, step: str, *, exact: bool, began: float | None = None) -> None:
    """A merge of one field, finished by `at` (`began`: when it began, a mapping edit's restart;
    default `at`). `exact` (the record linked, the merge seen to finish) and settled: the sides
    end as `merge_decision` says; otherwise as `_merge_any`. A value the merge sends to
    Salesforce goes through the outbox: it is in flight like a platform edit made at `at`."""
    if not (exact and _settled(fm, at, at if began is None else began)):
        _merge_any(fm, at)
        return
    [local], [sf] = fm.local, fm.sf
    decision = merge_decision(fm.direction, fm.merge, fm.writable, local, sf)
    if decision is None:
        return
    side, value = decision
    if side == "either":
        fm.sf.add(local)
        fm.local.add(sf)
    elif side == "local":
        fm.local = {value}
    else:
        fm.writes.append(_Write(at, "platform", value, step, sf_before=(frozenset(fm.sf), True)))
        fm.sf = {value}


def _linked(em: EntityModel, at: float) -> bool:
    return em.entity.bound_at is not None and em.entity.bound_at <= at


def _read_windows(faults: list[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """(start, end) host times within which a Salesforce change may be read, not streamed."""
    healed = {str(f.get("step", "")).removesuffix("-heal"): float(f["at"]) for f in faults
              if f.get("status") == "healed"}
    out: list[tuple[float, float]] = []
    for f in faults:
        if f.get("status") == "injected" and f.get("kind") in READ_FAULTS:
            before, after = READ_FAULTS[str(f["kind"])]
            at = float(f["at"])
            out.append((at - before, healed.get(str(f.get("step")), at) + after))
    return out


def _modified(acks: list[Ack], entities: Mapping[str, Entity],
              service_writes: Mapping[str, Iterable[float]]) -> dict[str, list[float]]:
    """Per slot, when its Salesforce record was written: Salesforce operations and the service."""
    out: dict[str, list[float]] = defaultdict(list)
    for ack in acks:
        if ack.side == "salesforce" and ack.status == "ok" and ack.slot is not None:
            out[ack.slot].append(ack.at)
    for slot, ent in entities.items():
        for sf_id in {_key(i) for i in (ent.sf_id, ent.lead_id) if i}:
            out[slot].extend(service_writes.get(sf_id, ()))
    return dict(out)


def service_write_times(writes: list[dict[str, Any]]) -> dict[str, list[float]]:
    """15-character Salesforce id -> when the service wrote it (the emulator's write log)."""
    out: dict[str, list[float]] = defaultdict(list)
    for w in _service_writes(writes):
        if w.get("id") and isinstance(w.get("at"), int | float):
            out[_key(w["id"])].append(float(w["at"]))
    return dict(out)


# --- the checks ---------------------------------------------------------------------------------

def check(obs: Observed, model: Model) -> list[Violation]:
    out: list[Violation] = []
    by_local: dict[str, dict[str, Any]] = {}
    people_by_crm: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for coll in (obs.people, obs.companies):
        for doc in coll:
            by_local[str(doc["_id"])] = doc
            crm = doc.get("crm") or {}
            if crm.get("id"):
                people_by_crm[str(crm["id"])[:15]].append(doc)
    logs_by_record: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for log in obs.sync_logs:
        for key in (log.get("sf_id"), log.get("local_id")):
            if key:
                text = str(key)
                logs_by_record[text[:15] if text.startswith(("00Q", "003", "001")) else text].append(log)
    service = _service_writes(obs.writes)
    out += model.early
    out += _check_liveness(obs)
    out += _check_duplicates(obs, model, people_by_crm, service)
    out += _check_fields(obs, model, by_local, people_by_crm, logs_by_record)
    out += _check_loop(obs, model, service)
    out += _check_offsets(obs.state_writes)
    out += _check_logs(obs, model, by_local, logs_by_record, service)
    out += _check_untouched(obs, model, by_local, logs_by_record)
    return out


def _key(sf_id: Any) -> str:
    return str(sf_id)[:15]


def _check_liveness(obs: Observed) -> list[Violation]:
    if obs.barrier_ok:
        return []
    return [Violation("liveness", f"quiet period never reached: {obs.barrier_detail}")]


def _docs_of(em: EntityModel, people_by_crm: Mapping[str, list[dict[str, Any]]],
             by_local: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    ent = em.entity
    found: dict[str, dict[str, Any]] = {}
    for sf_id in (ent.sf_id, ent.lead_id):
        if sf_id:
            for doc in people_by_crm.get(_key(sf_id), []):
                found[str(doc["_id"])] = doc
    if ent.local_id is not None and str(ent.local_id) in by_local:
        doc = by_local[str(ent.local_id)]
        found[str(doc["_id"])] = doc
    return list(found.values())


def _service_writes(writes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every record the service wrote: {seq, method, sobject, id, fields, ok, status}."""
    out: list[dict[str, Any]] = []
    for w in writes:
        if SERVICE_CLIENT not in str(w.get("client", "")):
            continue
        body = w.get("body")
        if isinstance(body, dict) and isinstance(body.get("compositeRequest"), list):
            out += _composite_writes(w, body["compositeRequest"])
            continue
        path = str(w.get("path", ""))
        records: list[dict[str, Any]] = []
        if isinstance(body, dict) and isinstance(body.get("records"), list):
            records = [r for r in body["records"] if isinstance(r, dict)]
        elif isinstance(body, dict):
            rec = dict(body)
            parts = path.rstrip("/").split("/")
            if w.get("method") == "PATCH" and len(parts) >= 2:
                rec.setdefault("Id", parts[-1])
            records = [rec]
        response = w.get("response") if isinstance(w.get("response"), list) else None
        for index, rec in enumerate(records):
            attributes = rec.get("attributes")
            sobject = attributes.get("type") if isinstance(attributes, dict) else None
            if sobject is None and "/sobjects/" in path:
                sobject = path.split("/sobjects/")[1].split("/")[0]
            result = response[index] if response is not None and index < len(response) else None
            ok = bool(result.get("success")) if isinstance(result, dict) else (
                w.get("status") is not None and int(w["status"]) < 300)
            created = result.get("id") if isinstance(result, dict) and w.get("method") == "POST" else None
            out.append({"seq": w["seq"], "at": w.get("at"), "method": w.get("method"), "sobject": sobject,
                        "id": rec.get("Id") or created, "created": created,
                        "fields": {k: v for k, v in rec.items() if k not in ("attributes", "Id")},
                        "ok": ok, "status": w.get("status")})
    return out


def _composite_writes(w: Mapping[str, Any], subrequests: list[Any]) -> list[dict[str, Any]]:
    """A `/composite` call's subrequests, each a write of the record its url names (sObject Rows:
    `.../sobjects/{sObject}/{id}`), ok per its own `httpStatusCode` (a 412 wrote nothing); with
    no answer recorded (a 5xx, a lock), per the call's status."""
    answer = w.get("response")
    answers = answer.get("compositeResponse") if isinstance(answer, dict) else None
    by_reference = {a.get("referenceId"): a for a in answers or [] if isinstance(a, dict)}
    out: list[dict[str, Any]] = []
    for sub in subrequests:
        if not isinstance(sub, dict) or "/sobjects/" not in str(sub.get("url", "")):
            continue
        sobject, _, sf_id = str(sub["url"]).split("/sobjects/")[1].partition("/")
        result = by_reference.get(sub.get("referenceId"))
        status = result.get("httpStatusCode") if result is not None else w.get("status")
        body = sub.get("body")
        fields: dict[str, Any] = body if isinstance(body, dict) else {}
        out.append({"seq": w["seq"], "at": w.get("at"), "method": sub.get("method"), "sobject": sobject,
                    "id": sf_id or None, "created": None,
                    "fields": {k: v for k, v in fields.items() if k not in ("attributes", "Id")},
                    "ok": status is not None and int(status) < 300, "status": status})
    return out


def _check_duplicates(obs: Observed, model: Model, people_by_crm: Mapping[str, list[dict[str, Any]]],
                      service: list[dict[str, Any]]) -> list[Violation]:
    out: list[Violation] = []
    for sf_id, docs in people_by_crm.items():
        if len(docs) > 1:
            out.append(Violation("duplicate", f"{len(docs)} local records linked to {sf_id}: "
                                 f"{[str(d['_id']) for d in docs]}"))
    known = {_key(i) for e in obs.entities.values() for i in (e.sf_id, e.lead_id) if i}
    known |= {_key(i) for i in obs.barrier_ids}
    created_by_service = {_key(w["created"]) for w in service if w.get("created") and w["ok"]}
    for sf_id, docs in people_by_crm.items():
        if sf_id not in known and sf_id not in created_by_service:
            out.append(Violation("duplicate", f"local record {docs[0]['_id']} is linked to {sf_id}, a record "
                                 "no operation made and the service did not create"))
    # Salesforce side: the service's own creates, per local record (by the values it sent)
    creates_per_local: Counter[str] = Counter()
    slot_of_value = _platform_slots_by_key(model)
    for sw in service:
        if sw["method"] != "POST" or not sw["ok"]:
            continue
        fields = sw["fields"]
        name = next((n for n in ("Email", "Website", "Name") if fields.get(n)), None)
        slot = slot_of_value.get((name, str(fields[name]).lower())) if name else None
        if slot is not None:
            creates_per_local[slot] += 1
    for slot, n in creates_per_local.items():
        if n > 1:
            em = model.entities[slot]
            out.append(Violation("duplicate", f"the service created {n} Salesforce records for {slot} "
                                 f"(local {em.entity.local_id})", em.pf_ops[:2], slot))
    return out


def _platform_slots_by_key(model: Model) -> dict[tuple[str, str], str]:
    """(Salesforce key field, lower-cased value) -> the platform record that wrote it: emails,
    domains, names. A value two records wrote (random names can collide: seed 1388, Q70 and Q72
    both "Company3457") tells neither apart, so it is left out."""
    slots: dict[tuple[str, str], set[str]] = defaultdict(set)
    for em in model.entities.values():
        if em.entity.origin != "platform":
            continue
        for email in em.entity.emails:
            slots[("Email", email.lower())].add(em.entity.slot)
        for local, key in (("domain", "Website"), ("name", "Name")):
            fm = em.fields.get(local)
            for fw in fm.writes if fm is not None else []:
                if fw.side == "platform" and fw.value:
                    slots[(key, str(fw.value).lower())].add(em.entity.slot)
    return {key: next(iter(owners)) for key, owners in slots.items() if len(owners) == 1}


def _final_sf(obs: Observed, ent: Entity) -> dict[str, Any] | None:
    return obs.sf_records.get(_key(ent.sf_id)) if ent.sf_id else None


def _failed_logs(logs_by_record: Mapping[str, list[dict[str, Any]]], ent: Entity) -> list[dict[str, Any]]:
    seen: dict[Any, dict[str, Any]] = {}
    keys = [_key(ent.sf_id) if ent.sf_id else "", str(ent.local_id) if ent.local_id is not None else ""]
    for key in keys:
        for log in logs_by_record.get(key, []) if key else []:
            # a retried log's outcome is the retry's own log (`retried_by`): one job, one open log
            if log.get("status") == "failed" and not log.get("resolved") and not log.get("retried_by"):
                seen[log.get("_id")] = log
    return list(seen.values())


def _check_fields(obs: Observed, model: Model, by_local: Mapping[str, dict[str, Any]],
                  people_by_crm: Mapping[str, list[dict[str, Any]]],
                  logs_by_record: Mapping[str, list[dict[str, Any]]]) -> list[Violation]:
    out: list[Violation] = []
    for slot, em in sorted(model.entities.items()):
        docs = _docs_of(em, people_by_crm, by_local)
        linked = [d for d in docs if (d.get("crm") or {}).get("id")]
        failed = _failed_logs(logs_by_record, em.entity)
        out += _check_record(obs, model, slot, em, linked, failed)
    return out


def _check_record(obs: Observed, model: Model, slot: str, em: EntityModel, linked: list[dict[str, Any]],
                  failed: list[dict[str, Any]]) -> list[Violation]:
    """One record: one local record linked, on the other side (deletes too), linked to the right
    Salesforce record, then its mapped fields and its owner."""
    ent = em.entity
    all_ops = em.sf_ops + em.pf_ops
    if len(linked) > 1:
        return [Violation("duplicate", f"{slot}: {len(linked)} local records for one Salesforce record",
                          all_ops[:3], slot)]
    if not linked:
        return _check_crossed_over(obs, slot, em, failed)
    doc = linked[0]
    out: list[Violation] = []
    record = _final_sf(obs, ent)
    if ent.origin == "salesforce":
        if record and record.get("IsDeleted") and not (doc.get("crm") or {}).get("deleted"):
            out.append(Violation("lost_change", f"{slot}: deleted in Salesforce, the local record does not "
                                 "say so", em.sf_ops[-2:], slot))
        if em.created_mapped is not True:
            return out  # linked later through an owner change: values not modelled (conservative)
    elif record is None:
        record = obs.sf_records.get(_key(doc["crm"]["id"]))
    if record is None:
        return [*out, Violation("lost_change", f"{slot}: linked to {doc.get('crm')}, not found in Salesforce",
                                all_ops[:2], slot)]
    if record.get("IsDeleted") or em.deleted:
        return out
    if _key(doc["crm"]["id"]) != _key(record.get("Id")):
        crm = doc["crm"]
        return [*out, Violation("lost_change", f"{slot}: the local record is linked to {crm.get('id')} "
                                f"({crm.get('object')}), expected {em.sobject} {record.get('Id')}",
                                all_ops[-3:], slot)]
    out += _check_values(model, slot, em, doc, record, failed)
    out += _check_owner(model, slot, em, doc, record, failed)
    return out


def _check_crossed_over(obs: Observed, slot: str, em: EntityModel,
                        failed: list[dict[str, Any]]) -> list[Violation]:
    """A record with no linked local record: it should have crossed over unless its failed sync
    logs explain why not (one per attempt)."""
    ent = em.entity
    if ent.origin == "salesforce":
        record = _final_sf(obs, ent)
        sf_deleted = bool(record and record.get("IsDeleted"))
        must_exist = (em.created_mapped is True and not sf_deleted and not em.deleted)
        if must_exist and len(failed) != 1:
            return [Violation("lost_change", f"{slot} ({ent.sobject} {ent.sf_id}) never reached the "
                              f"platform ({len(failed)} failed logs)", em.sf_ops[:2], slot)]
        return []
    creates = [lg for lg in failed if lg.get("source") == "local"]
    attempts = max(1, len(em.pf_ops))
    if not (1 <= len(creates) <= attempts):
        return [Violation("lost_change", f"{slot} (local {ent.local_id}) never reached Salesforce "
                          f"and {len(creates)} failed logs explain it", em.pf_ops[:2], slot)]
    return []


def _check_values(model: Model, slot: str, em: EntityModel, doc: Mapping[str, Any],
                  record: Mapping[str, Any], failed: list[dict[str, Any]]) -> list[Violation]:
    """Each mapped field: both sides' final values within the model's sets; a `most_recent`
    field with data on both sides holds the same value on both."""
    out: list[Violation] = []
    sobject = em.sobject
    for m in model.mappings.for_object(sobject):
        fm = em.fields.get(m.local_field)
        if fm is None or m.local_field in em.frozen or m.sf_field in READ_ONLY:
            continue
        local_value, sf_value = norm(_path(doc, m.local_field)), norm(record.get(m.sf_field))
        problems: list[str] = []
        if fm.local_known and local_value not in fm.local:
            problems.append(f"platform holds {local_value!r}, model allows {_show(fm.local)}")
        if fm.sf_known and sf_value not in fm.sf:
            problems.append(f"Salesforce holds {sf_value!r}, model allows {_show(fm.sf)}")
        if (fm.direction is Direction.BOTH and fm.merge is MergeBehaviour.MOST_RECENT and not fm.relaxed
                and local_value is not None and sf_value is not None and local_value != sf_value):
            problems.append(f"diverged: platform {local_value!r} vs Salesforce {sf_value!r}")
        # explained by the record's one failed log, or by the one failed log naming the field
        naming = [lg for lg in failed if {m.local_field, m.sf_field} & set(lg.get("fields") or {})]
        if problems and len(failed) != 1 and len(naming) != 1:
            out.append(Violation("lost_change", f"{slot}.{m.local_field} ({sobject}.{m.sf_field}): "
                                 + "; ".join(problems), fm.steps() + em.admin_ops[-2:], slot))
    return out


def _check_owner(model: Model, slot: str, em: EntityModel, doc: Mapping[str, Any],
                 record: Mapping[str, Any], failed: list[dict[str, Any]]) -> list[Violation]:
    """The owner rule: a mapped Salesforce owner is the Person's local owner."""
    owner = record.get("OwnerId")
    user = model.mappings.local_user(owner) if isinstance(owner, str) else None
    wrong_owner = em.entity.collection == "people" and user is not None and doc.get("owner_id") != user
    if wrong_owner and len(failed) != 1:
        return [Violation("lost_change", f"{slot}: Salesforce owner {owner} is local user {user}, the "
                          f"Person says {doc.get('owner_id')!r}", em.sf_ops[-2:], slot)]
    return []


def _path(doc: Mapping[str, Any], path: str) -> Any:
    cur: Any = doc
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def _show(values: set[Any]) -> str:
    return "{" + ", ".join(sorted(repr(v) for v in values)) + "}"


def _check_loop(obs: Observed, model: Model, service: list[dict[str, Any]]) -> list[Violation]:
    out: list[Violation] = []
    if obs.idle_writes or obs.idle_local_changes:
        out.append(Violation("loop", f"after the quiet period the service still wrote: {obs.idle_writes} "
                             f"Salesforce writes, {obs.idle_local_changes} local record changes"))
    from_sf_only = {m.sf_field for s in ("Lead", "Contact", "Account") for m in model.mappings.for_object(s)
                    if m.direction is Direction.FROM_SALESFORCE}
    bad_fields: Counter[str] = Counter()
    blanks: Counter[str] = Counter()
    for w in service:
        for name, value in w["fields"].items():
            if name in READ_ONLY or name in from_sf_only:
                bad_fields[name] += 1
            if blank(value):
                blanks[name] += 1
    for name, n in bad_fields.items():
        out.append(Violation("loop", f"the service wrote {name} (read-only or from_salesforce) {n} times"))
    for name, n in blanks.items():
        out.append(Violation("loop", f"the service wrote a blank {name} {n} times (blanks are never "
                                     f"written)"))
    resend_faults = sum(1 for f in obs.faults if f.get("status") == "injected" and f["kind"] in (
        "apply_then_drop", "rest_5xx", "lock_row", "kill_leader", "stop_leader", "restart_mongo"))
    per_record: Counter[str] = Counter(_key(w["id"]) for w in service if w.get("id"))
    for em in model.entities.values():
        ids = {_key(i) for i in (em.entity.sf_id, em.entity.lead_id) if i}
        n = sum(per_record[i] for i in ids)
        bound = len(em.pf_ops) + em.merges + resend_faults + 2
        if n > bound:
            out.append(Violation("loop", f"{em.entity.slot}: {n} service writes to Salesforce, the model "
                                 f"allows at most {bound}", em.pf_ops[-3:], em.entity.slot))
    return out


def _offset_value(key: str, value: Any) -> Any:
    if not isinstance(value, Mapping):
        return None
    if key.startswith("replay:"):
        rid = value.get("replay_id", value.get("value.replay_id"))
        return rid if isinstance(rid, int) else None
    if key.startswith("watermark:"):
        ts = value.get("ts", value.get("value.ts"))
        return ts if isinstance(ts, datetime) else None
    return None


def _check_offsets(writes: list[StateWrite]) -> list[Violation]:
    out: list[Violation] = []
    last: dict[str, Any] = {}
    for w in writes:
        value = _offset_value(w.key, w.value)
        if value is None:
            continue
        prev = last.get(w.key)
        if prev is not None and value < prev:
            out.append(Violation("offsets", f"{w.key} went backwards: {prev} -> {value}"))
        last[w.key] = value if prev is None else max(prev, value)
    return out


def _echo_logs(em: EntityModel, inbound: list[dict[str, Any]], slot: str) -> list[Violation]:
    """Salesforce-side logs that apply a value only the platform ever wrote: echoes."""
    out: list[Violation] = []
    for lg in inbound:
        for name, change in (lg.get("fields") or {}).items():
            fm = em.fields.get(name)
            if fm is None or not isinstance(change, Mapping):
                continue
            new, old = norm(change.get("new")), norm(change.get("old"))
            sides = {w.side for w in fm.writes if w.value == new}
            if new in fm.carried:
                # the conversion made the Contact from the Lead's values: the conversion's merge
                # may take one back onto the platform (seed 77777, P2.first_name)
                sides.add("salesforce")
            # a conflict converging replaces a value the platform took from Salesforce; an
            # echo replaces the platform's own later edit
            took_salesforce = any(w.side == "salesforce" and w.value == old for w in fm.writes)
            if new is not None and sides == {"platform"} and not (took_salesforce and _conflicted(fm, new)):
                out.append(Violation("logs", f"{slot}: a Salesforce-side log applied "
                                             f"{name}={new!r}, a value "
                                     "only the platform wrote (an echo)", fm.steps(), slot))
    return out


def _formula_only(log: Mapping[str, Any], read_only: frozenset[str]) -> bool:
    names = set(log.get("fields") or {})
    return bool(names) and names <= read_only


def _count_inbound_logs(slot: str, em: EntityModel, inbound: list[dict[str, Any]],
                        service_writes: int, read_only: frozenset[str]) -> list[Violation]:
    """At most one update log per Salesforce operation (+ merges + 1). A formula field (read-only,
    synced from Salesforce only: help text, "read-only ... any formula fields") changes without an
    operation of its own whenever anyone writes one of its inputs, the service's own writes
    included, and reaches the service by a read: its logs are bounded by every write instead."""
    formula = [lg for lg in inbound if _formula_only(lg, read_only)]
    out = []
    bound = len(em.sf_ops) + em.merges + 1
    if len(inbound) - len(formula) > bound:
        out.append(Violation("logs", f"{slot}: {len(inbound) - len(formula)} Salesforce update logs "
                                     f"for {len(em.sf_ops)} Salesforce operations (bound {bound})",
                             em.sf_ops[-3:], slot))
    if len(formula) > len(em.sf_ops) + service_writes + 1:
        out.append(Violation("logs", f"{slot}: {len(formula)} formula-field logs for "
                                     f"{len(em.sf_ops) + service_writes} writes of the record",
                             em.sf_ops[-3:], slot))
    return out


def _check_logs(obs: Observed, model: Model, by_local: Mapping[str, dict[str, Any]],
                logs_by_record: Mapping[str, list[dict[str, Any]]],
                service: list[dict[str, Any]]) -> list[Violation]:
    out: list[Violation] = []
    attempts: Counter[str] = Counter()
    for w in service:
        if w.get("id"):
            attempts[_key(w["id"])] += 1
    for slot, em in sorted(model.entities.items()):
        ent = em.entity
        # the id its Person/Company is linked to too: no operation may have learned it (20719 P19)
        linked = _path(by_local.get(str(ent.local_id), {}), "crm.id")
        keys = [k for k in ({_key(i) for i in (ent.sf_id, ent.lead_id, linked) if i}
                            | ({str(ent.local_id)} if ent.local_id is not None else set()))]
        logs: dict[Any, dict[str, Any]] = {}
        for k in keys:
            for log in logs_by_record.get(k, []):
                logs[log.get("_id")] = log
        inbound = [lg for lg in logs.values() if lg.get("source") == "salesforce"
                   and lg.get("status") == "success" and lg.get("type") in ("update", "owner_change")]
        read_only = frozenset(m.local_field for m in model.mappings.for_object(em.sobject or ent.sobject)
                              if m.sf_field in READ_ONLY)
        out += _count_inbound_logs(slot, em, inbound, sum(attempts[k] for k in keys if len(k) == 15),
                                   read_only)
        out += _echo_logs(em, inbound, slot)
        outbound = [lg for lg in logs.values() if lg.get("source") == "local"
                    and lg.get("type") in ("create", "update")]
        tried = sum(attempts[k] for k in keys if len(k) == 15)
        if outbound and tried == 0 and ent.sf_id:
            out.append(Violation("logs", f"{slot}: {len(outbound)} local-side logs but the service "
                                         f"never wrote "
                                 "the record", em.pf_ops[-3:], slot))
    return out


def _check_untouched(obs: Observed, model: Model, by_local: Mapping[str, dict[str, Any]],
                     logs_by_record: Mapping[str, list[dict[str, Any]]]) -> list[Violation]:
    """Salesforce-side logs of a platform record no Salesforce operation touched: only the service
    wrote its Salesforce record, so each such log applied one of our own writes coming back (an
    echo: a create's echo is logged as a `merge` into the Person even when it changes nothing).
    Not checked after a fault that may resync (a backfill may log a merge on any record)."""
    if any(f.get("status") == "injected" and f.get("kind") in RESYNC_FAULTS for f in obs.faults):
        return []
    out: list[Violation] = []
    for slot, em in sorted(model.entities.items()):
        ent = em.entity
        if ent.origin != "platform" or em.sf_ops or em.merges:
            continue
        # the record's id as its Person/Company holds it too: no operation may have learned it
        linked = _path(by_local.get(str(ent.local_id), {}), "crm.id")
        keys = {_key(i) for i in (ent.sf_id, ent.lead_id, linked) if i} | (
            {str(ent.local_id)} if ent.local_id is not None else set())
        logs = {lg.get("_id"): lg for k in keys for lg in logs_by_record.get(k, [])
                if lg.get("source") == "salesforce"}
        if logs:
            kinds = ", ".join(sorted({str(lg.get("type")) for lg in logs.values()}))
            out.append(Violation("logs", f"{slot}: {len(logs)} Salesforce-side log(s) ({kinds}) of a record "
                                         "no Salesforce operation touched (an echo of our own write)",
                                 em.pf_ops[-3:], slot))
    return out


__all__ = ["WINDOW", "FieldModel", "Model", "Observed", "Violation", "check", "service_write_times"]
