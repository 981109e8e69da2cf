"""The outbound flusher: drains the outbox into `composite/sobjects` calls.

Per object and kind (create vs update), up to 200 pending writes go out in ONE call; results
are matched to records by position (failed records carry no id). A record Salesforce refuses
becomes a `failed` sync log (that log is what an admin or the auto-retry re-runs) and leaves
the outbox; a call that fails as a whole (network, 5xx, lock storm) leaves its writes in the
outbox with exponential backoff (`retry_delay`: full jitter above a floor; each write by its own
failed calls since queued, `_retry_each`); with the budget
below its reserve nothing is claimed at all. A write that has failed retriably
`FlushPolicy.max_attempts` times (whole-call failures and expired claims count alike) is given
up when next claimed: an open `failed` sync log with its last error (retriable from the page)
and no more calls until that retry. Nothing is ever dropped silently.

What to send on a tick is a pure function per object and kind (`FlushPolicy.sizes_due`):
only full batches of 200, and a partial batch only once its oldest write has waited `max_wait`
(streaming: a burst of edits to one record coalesces into one write, and a burst of edits to
many records goes out as full calls) or one polling interval (polling mode, low budget: full
batches once per interval; a remainder waits at most one more interval). After full batches
go, the remainder is looked at again with its own oldest write (one more outbox read, no API
call). `flush()` sends everything due at once (an explicit drain).

Updates the gate decided on their record read again (late or re-sent writes) go out through
`/composite` instead, each only if Salesforce has not modified the record since that read
(`If-Unmodified-Since`, 25 a call); one modified since stays queued and is re-decided (`_write`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol

import structlog

from reconciler.errors import (
    BudgetExhaustedError,
    FatalError,
    FencedError,
    OutcomeUnknownError,
    RetriableError,
    SkippableError,
)
from reconciler.linking import match_keys
from reconciler.objects import OBJECTS
from reconciler.outbound_shadow import Screened, ShadowGate
from reconciler.outbox import Clock, utcnow
from reconciler.pacing import backoff_seconds, every
from reconciler.ports import PRECONDITION_FAILED, Budget, RecordResult, ResendGuard, SalesforceApi
from reconciler.records import is_blank
from reconciler.soql import format_sf_datetime, parse_sf_datetime, soql_string
from reconciler.store import CREATE, Fence, OutboxEntry, OutboxGroup
from reconciler.sync_logs import SyncLog
from settings import SyncSettings

log = structlog.get_logger(__name__)

BATCH_SIZE = 200  # sObject Collections' limit per call
COMPOSITE_LIMIT = 25  # the Composite resource's subrequests per call (conditional updates)
# Per-record status codes worth an automatic retry: the record was fine, the moment was not.
RETRIABLE_CODES = frozenset({
    "UNABLE_TO_LOCK_ROW", "REQUEST_RUNNING_TOO_LONG", "SERVER_UNAVAILABLE", "QUERY_TIMEOUT",
    "ALL_OR_NONE_OPERATION_ROLLED_BACK", "TOO_MANY_ENQUEUED_JOBS",
})

# Slack between the first send (this host's clock, moved onto Salesforce's by the learned offset
# when the flusher has `sf_clock`, less its uncertainty) and `CreatedDate` (whole seconds) when
# looking for a lost create's record; the creator filter (`CreatedById` = the integration user),
# not the time, keeps other users' records out.
RECOVERY_SKEW = timedelta(seconds=1)
# How often the flusher returns dead claims to the queue: expired ones, and older leader terms'
# (a fenced leader's last claim can land just after the new term's first look), and held writes
# past the recycle bin. Two indexed queries.
RECOVER_EVERY = timedelta(seconds=2)
RECYCLED = ("deleted in Salesforce and not undeleted within its recycle bin's 15 days: the {sobject} "
            "is gone for good, so the edits held for its undelete were dropped")
RECOVERED = ("linked after lost response: the create's answer was lost; the record the "
             "integration user created after the first send was found by {key} and linked")


class FlushOutbox(Protocol):
    """What the flusher needs of the outbox (`reconciler.outbox.Outbox` provides it)."""

    @property
    def lease(self) -> timedelta: ...

    async def due_groups(self) -> list[OutboxGroup]: ...

    async def claim(self, sobject: str, kind: str, limit: int, *,
                    sf_offset: timedelta = ...) -> list[OutboxEntry]: ...

    async def done(self, entries: Sequence[OutboxEntry]) -> None: ...

    async def retry_later(self, entries: Sequence[OutboxEntry], delay: timedelta, *,
                          count_attempt: bool = True, error: str | None = None) -> None: ...

    async def give_up(self, entries: Sequence[OutboxEntry]) -> None: ...

    async def hold(self, entries: Sequence[OutboxEntry]) -> None: ...

    async def recover_expired(self) -> int: ...

    async def held_past_recycle_bin(self) -> list[OutboxEntry]: ...

    async def drop_held(self, entries: Sequence[OutboxEntry]) -> None: ...

    async def created(self, collection: str, local_id: object, sobject: str, sf_id: str) -> None: ...

    def fence(self) -> Fence | None: ...


class FlushStore(Protocol):
    """What the flusher needs from the store (`reconciler.store.Store` provides it)."""

    async def check_fence(self, fence: Fence) -> None: ...

    async def insert_sync_logs(self, logs: Sequence[SyncLog]) -> Any: ...

    async def link_created(self, collection: str, local_id: Any, *, sobject: str, sf_id: str) -> bool: ...

    async def find_linked(self, collection: str, sf_ids: Collection[str]) -> list[dict[str, Any]]: ...


class SalesforceTime(Protocol):
    """Salesforce's clock minus this host's, and how far that may be off
    (`listener.salesforce_time.SalesforceClock`)."""

    @property
    def offset(self) -> timedelta: ...

    @property
    def uncertainty(self) -> timedelta: ...

    @property
    def latest(self) -> datetime | None: ...


class FlushSalesforce(SalesforceApi, Protocol):
    """The REST client as the flusher uses it: also who it is authenticated as, and conditional
    updates (each record written only if unmodified since the datetime given with it)."""

    async def user_id(self) -> str | None: ...

    async def update_if_unmodified(self, sobject: str, records: Sequence[tuple[dict[str, Any], datetime]],
                                   *, before_resend: ResendGuard | None = None) -> list[RecordResult]: ...


@dataclass(frozen=True)
class FlushPolicy:
    batch_size: int = BATCH_SIZE
    max_wait: timedelta = timedelta(seconds=2)
    poll_interval: timedelta = timedelta(minutes=10)
    max_attempts: int = 10   # retriable failures before a write is given up (a failed sync log)
    # streaming: a write queued this long ago waited past the normal flush (2 s wait after the
    # watcher), so Salesforce may have changed since without the shadow showing it yet
    stale_after: timedelta = timedelta(seconds=5)

    @classmethod
    def from_settings(cls, sync: SyncSettings) -> FlushPolicy:
        """`SFSYNC_SYNC__BATCH_SIZE` (at most sObject Collections' 200), the polling interval and
        `SFSYNC_SYNC__OUTBOX_MAX_ATTEMPTS`."""
        return cls(batch_size=min(sync.batch_size, BATCH_SIZE),
                   poll_interval=timedelta(minutes=sync.frequency_minutes),
                   max_attempts=sync.outbox_max_attempts)

    def refresh_before(self, mode: str, now: datetime, since: datetime | None = None) -> datetime | None:
        """Writes queued before this are re-decided against Salesforce's records, read again (one
        query per call). Streaming only: polling-mode writes wait an interval by design, and a
        query per call would double that mode's API cost; its shadow is as old as its last poll.
        `since`: the leader term's start: edits made before it are read again however recent
        (the new term's stream has not read what Salesforce changed in the leader gap yet)."""
        if mode != "streaming":
            return None
        return now - self.stale_after if since is None else max(now - self.stale_after, since)

    def sizes_due(self, *, mode: str, pending: int, oldest_wait: timedelta,
                  since_last_flush: timedelta) -> list[int]:
        """Calls to make now for ONE object+kind group of `pending` due writes (their sizes).

        Full batches only; a partial batch only when it is all there is (so `oldest_wait` is
        its own oldest write's) and that write has waited `max_wait` (polling: an interval).
        Polling mode sends at most once per interval; paused (below the reserve) never.
        """
        if pending <= 0 or mode == "paused":
            return []
        if mode == "polling" and since_last_flush < self.poll_interval:
            return []
        full, rest = divmod(pending, self.batch_size)
        if full:
            return [self.batch_size] * full
        patience = self.poll_interval if mode == "polling" else self.max_wait
        return [rest] if oldest_wait >= patience else []


def due_calls(groups: Sequence[OutboxGroup], policy: FlushPolicy, *, mode: str, now: datetime,
              since_last_flush: timedelta) -> list[tuple[str, str, int]]:
    """(sobject, kind, size) per call due now, in the groups' order (oldest first)."""
    return [(g.sobject, g.kind, size) for g in groups
            for size in policy.sizes_due(mode=mode, pending=g.count, oldest_wait=now - g.oldest,
                                         since_last_flush=since_last_flush)]


def plan_calls(groups: Sequence[OutboxGroup], batch_size: int = BATCH_SIZE) -> list[tuple[str, str, int]]:
    """(sobject, kind, size) per call: each group of one object and kind in chunks of `batch_size`."""
    calls: list[tuple[str, str, int]] = []
    for group in groups:
        remaining = group.count
        while remaining > 0:
            calls.append((group.sobject, group.kind, min(batch_size, remaining)))
            remaining -= batch_size
    return calls


def build_records(entries: Sequence[OutboxEntry], kind: str, writable: Mapping[str, bool]
                  ) -> tuple[list[dict[str, Any]], set[str]]:
    """The request records, in entry order, and the read-only fields left out.

    Blank values are never sent; a field `writable` marks False is never sent; a field it does
    not list is sent (Salesforce answers an unknown field with a per-record error).
    """
    records: list[dict[str, Any]] = []
    skipped: set[str] = set()
    for entry in entries:
        record: dict[str, Any] = {}
        for name, value in entry.write.fields.items():
            if is_blank(value):
                continue
            if not writable.get(name, True):
                skipped.add(name)
                continue
            record[name] = sf_value(value)
        if kind != CREATE:
            record["Id"] = entry.write.sf_id
        records.append(record)
    return records, skipped


def sf_value(value: Any) -> Any:
    """BSON values in the JSON form Salesforce takes."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}" + (
            value.strftime("%z") or "+0000")
    if isinstance(value, date):
        return value.isoformat()
    return value


def match_key(sobject: str, record: Mapping[str, Any]) -> tuple[str, str] | None:
    """(Salesforce field, normalised value) that finds a created record again, if it has one:
    the first of the object's match fields (`reconciler.objects`) the record has."""
    keys = match_keys(sobject, record)
    return keys[0] if keys else None


def recovery_query(sobject: str, records: Sequence[Mapping[str, Any]], since: datetime,
                   created_by: str) -> str | None:
    """One SOQL query for records of `sobject` that `created_by` created since `since` with any
    of the records' keys (every key: an edit since the lost send may have changed the first)."""
    values: dict[str, set[str]] = {}
    for record in records:
        for name, _ in match_keys(sobject, record):
            values.setdefault(name, set()).add(str(record[name]).strip())
    if not values:
        return None
    selected = ["Id", "CreatedDate", *sorted(OBJECTS[sobject].match_fields)]
    found_by = " OR ".join(f"{name} IN ({', '.join(soql_string(v) for v in sorted(vals))})"
                           for name, vals in sorted(values.items()))
    return (f"SELECT {', '.join(selected)} FROM {sobject} WHERE ({found_by}) "
            f"AND CreatedById = {soql_string(created_by)} "
            f"AND CreatedDate >= {format_sf_datetime(since)} ORDER BY CreatedDate, Id")


def match_recovered(sobject: str, records: Sequence[Mapping[str, Any]],
                    found: Sequence[Mapping[str, Any]],
                    not_before: Sequence[datetime] | None = None) -> dict[int, str]:
    """Record position -> id of the Salesforce record it created; each found record used once.
    With `not_before` (per record), a found record whose `CreatedDate` is earlier is not its.

    A found record matches a write by any key both have, its own keys in order: one sent by a
    later match field (an Account by Name) may come back with an earlier one (a Website someone
    set since), and the write may carry a key edited since its lost send (a new Website)."""
    keys_of = {index: set(match_keys(sobject, record)) for index, record in enumerate(records)}
    matched: dict[int, str] = {}
    for sf_record in found:
        created = parse_sf_datetime(sf_record.get("CreatedDate"))
        for key in match_keys(sobject, sf_record) if sf_record.get("Id") else []:
            eligible = [i for i, keys in keys_of.items() if i not in matched and key in keys and (
                not_before is None or (created is not None and created >= not_before[i]))]
            if eligible:
                matched[eligible[0]] = str(sf_record["Id"])
                break
    return matched


def retry_delay(attempt: int, *, base: timedelta, cap: timedelta, rng: random.Random) -> timedelta:
    """How long a whole-call failure's writes wait: `pacing.backoff_seconds` (full jitter) with a
    floor of base/2, so a failed batch is never re-sent on the next tick (250 ms) and a lost
    create's record has time to commit before the recovery query looks for it."""
    seconds = backoff_seconds(attempt, base=base.total_seconds(), cap=cap.total_seconds(),
                              floor=base.total_seconds() / 2, rng=rng)
    return timedelta(seconds=seconds)


async def _retry_each(outbox: FlushOutbox, entries: Sequence[OutboxEntry], error: str, *,
                      backoff: tuple[timedelta, timedelta], rng: random.Random) -> timedelta:
    """A whole-call failure: each write waits by its own failed calls since it was queued
    (`failures`), not by the call's largest `attempt`, which counts admin retries of a refused
    record too: a fresh write sharing a call with one retried eight times waited 4 minutes
    (chaos seed 1194 x 2000, P150). Returns the longest wait."""
    by_failures: dict[int, list[OutboxEntry]] = {}
    for entry in entries:
        by_failures.setdefault(entry.failures, []).append(entry)
    longest = timedelta(0)
    for failures, group in sorted(by_failures.items()):
        delay = retry_delay(failures, base=backoff[0], cap=backoff[1], rng=rng)
        await outbox.retry_later(group, delay, error=error)
        longest = max(longest, delay)
    return longest


def error_text(result: RecordResult) -> str:
    if not result.errors:
        return "UNKNOWN: Salesforce reported a failure without an error"
    return "; ".join(f"{e.status_code}: {e.message}" for e in result.errors)


def is_retriable(result: RecordResult) -> bool:
    return bool(result.errors) and all(e.status_code in RETRIABLE_CODES for e in result.errors)


def _job(entry: OutboxEntry) -> dict[str, Any]:
    write = entry.write
    return {"kind": "outbound", "sobject": write.sobject, "sf_id": write.sf_id,
            "collection": write.collection, "local_id": str(write.local_id)}


def _log(entry: OutboxEntry, kind: str, *, sf_id: str | None, record: Mapping[str, Any],
         error: str | None = None, retriable: bool = False,
         old: Mapping[str, Any] | None = None) -> SyncLog:
    """`old` is Salesforce's side before the write, from the shadow (issue 10)."""
    old = old or {}
    fields = {name: {"old": sf_value(old.get(name)), "new": value}
              for name, value in record.items() if name != "Id"}
    return SyncLog(
        source="local", type="create" if kind == CREATE else "update",
        status="failed" if error else "success", object=entry.write.sobject, sf_id=sf_id,
        local_id=str(entry.write.local_id), collection=entry.write.collection, fields=fields,
        error=error, job=_job(entry) if error else None, attempt=entry.write.attempt + 1,
        retriable=retriable,
    )


def _given_up_log(entry: OutboxEntry) -> SyncLog:
    """An open failed log for a write the flusher stopped retrying (what a retry re-runs)."""
    error = (f"GAVE_UP: {entry.failures} attempts failed, last: "
             f"{entry.last_error or 'no error recorded'}")
    return SyncLog(
        source="local", type="create" if entry.kind == CREATE else "update", status="failed",
        object=entry.write.sobject, sf_id=entry.write.sf_id, local_id=str(entry.write.local_id),
        collection=entry.write.collection,
        fields={name: {"old": None, "new": sf_value(v)} for name, v in entry.write.fields.items()},
        error=error, job=_job(entry), attempt=entry.write.attempt, retriable=False,
    )


def _past_recycle_bin_log(entry: OutboxEntry) -> SyncLog:
    """A `skipped` log for a held write dropped: its record is gone from Salesforce for good."""
    reason = RECYCLED.format(sobject=entry.write.sobject)
    return SyncLog(
        source="local", type="skipped", status="success", object=entry.write.sobject,
        sf_id=entry.write.sf_id, local_id=str(entry.write.local_id), collection=entry.write.collection,
        fields={name: {"old": None, "new": sf_value(v), "reason": reason}
                for name, v in entry.write.fields.items()},
        note=reason, attempt=entry.write.attempt + 1,
    )


def _recovered_log(entry: OutboxEntry, sf_id: str, record: Mapping[str, Any]) -> SyncLog:
    """Not "created": this run did not see Salesforce create it; it found and linked it."""
    key = match_key(entry.write.sobject, record)
    return SyncLog(
        source="local", type="link", status="success", object=entry.write.sobject, sf_id=sf_id,
        local_id=str(entry.write.local_id), collection=entry.write.collection,
        attempt=entry.write.attempt + 1, note=RECOVERED.format(key=key[0] if key else "its key"),
    )


class LostCreates:
    """Finds the records an earlier create call made when its answer was lost (issue 11 item 7).

    A retried create (attempt > 0) is looked for before it is sent again: a record of the same
    object with its match key (email / website / name), created by the integration user (the
    client's authenticated user) no earlier than this write's first send, and not linked to any
    local document already. Without a match key, or without a known integration user, it cannot
    be verified: it is sent again (warned), a possible duplicate rather than a wrong link.
    A found record is linked, and the write is queued again as an update of it: edits made
    since the lost send coalesced into it (`_requeue_recovered`).
    """

    def __init__(self, sf: FlushSalesforce, store: FlushStore,
                 sf_clock: SalesforceTime | None = None) -> None:
        self._sf, self._store, self._sf_clock = sf, store, sf_clock

    def offset(self) -> timedelta:
        """Salesforce's clock minus this host's, as known now: what a claim stamps its send with.
        No later than the latest `Date` Salesforce sent: its clock never goes back, so a record
        the send makes is created no earlier, while the offset learned runs ahead of its clock
        as it slews back after a skew (chaos seed 57329: eight lost creates not found, sent again)."""
        if self._sf_clock is None:
            return timedelta(0)
        latest = self._sf_clock.latest
        offset = self._sf_clock.offset
        return offset if latest is None else min(offset, latest - datetime.now(UTC))

    def _not_before(self, entry: OutboxEntry) -> datetime:
        """The earliest `CreatedDate` (Salesforce's clock) a record made by that send can have:
        its first send on Salesforce's clock as known then (a later step of the clock does not
        move it; seed 1194, P38)."""
        assert entry.first_sent_at is not None
        unsure = self._sf_clock.uncertainty if self._sf_clock is not None else timedelta(0)
        if entry.first_sent_sf_at is not None:
            return entry.first_sent_sf_at - unsure - RECOVERY_SKEW
        return entry.first_sent_at + self.offset() - unsure - RECOVERY_SKEW

    async def find(self, sobject: str, entries: Sequence[OutboxEntry],
                   records: Sequence[Mapping[str, Any]]) -> dict[int, str]:
        """Entry position -> id of the record its lost call created."""
        retried = [i for i, e in enumerate(entries) if e.write.attempt > 0]
        user = await self._sf.user_id() if retried else None
        keyed = [i for i in retried if match_key(sobject, records[i]) is not None
                 and entries[i].first_sent_at is not None and user is not None]
        if len(keyed) < len(retried):
            log.warning("outbound_create_unverifiable", sobject=sobject, integration_user=user,
                        local_ids=[str(entries[i].write.local_id) for i in retried if i not in keyed])
        since = min((self._not_before(entries[i]) for i in keyed), default=None)
        if user is None or since is None:
            return {}
        soql = recovery_query(sobject, [records[i] for i in keyed], since, user)
        if soql is None:
            return {}
        found = [r async for page in self._sf.query(soql) for r in page]
        # A found record linked to another document is not ours; one linked to the write's own
        # document already is (the inbound side linked it by its match key meanwhile: a poll or
        # gap read has no changeOrigin, so the lost create came back as an ordinary change).
        already: dict[int, str] = {}
        if found:
            collection = entries[keyed[0]].write.collection
            own = {entries[i].write.local_id: i for i in keyed}
            docs = await self._store.find_linked(collection, [str(r["Id"]) for r in found if r.get("Id")])
            for doc in docs:
                if doc["_id"] in own:
                    already[own[doc["_id"]]] = str(doc["crm"]["id"])
            taken = {d["crm"]["id"] for d in docs}
            found = [r for r in found if r.get("Id") not in taken]
        rest = [i for i in keyed if i not in already]
        not_before = [self._not_before(entries[i]) for i in rest]
        matched = match_recovered(sobject, [records[i] for i in rest], found, not_before)
        log.info("outbound_creates_checked", sobject=sobject, checked=len(keyed),
                 recovered=len(matched) + len(already), already_linked=len(already))
        return {**already, **{rest[position]: sf_id for position, sf_id in matched.items()}}


class OutboundFlusher:
    """Sends the outbox to Salesforce. Safe to run in several replicas (claims are leased)."""

    def __init__(
        self, outbox: FlushOutbox, sf: FlushSalesforce, store: FlushStore, budget: Budget, *,
        client_name: str, policy: FlushPolicy | None = None,
        writable: Mapping[str, Mapping[str, bool]] | None = None,
        backoff_base: timedelta = timedelta(seconds=5), backoff_cap: timedelta = timedelta(minutes=5),
        budget_wait: timedelta = timedelta(minutes=1), tick: timedelta = timedelta(milliseconds=250),
        clock: Clock = utcnow, rng: random.Random | None = None, gate: ShadowGate | None = None,
        sf_clock: SalesforceTime | None = None) -> None:
        self._outbox, self._sf, self._store, self._budget, self._gate = outbox, sf, store, budget, gate
        self._term_started: datetime | None = None  # when run() started: its leader term's start
        self._lost = LostCreates(sf, store, sf_clock)
        self.client_name, self.policy = client_name, policy or FlushPolicy()
        self._writability = Writability(sf, writable).fields
        self._backoff_base, self._backoff_cap, self._budget_wait = backoff_base, backoff_cap, budget_wait
        self._tick, self._clock, self._rng = tick, clock, rng or random.Random()
        self._last_flush = clock()
        self.calls_made = 0        # write calls (composite/sobjects, /composite): "calls per 1,000 edits"
        self.records_sent, self.records_failed = 0, 0  # records written / failed (logged)

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set: recover expired leases, flush when the policy says so."""
        log.info("outbound_flusher_started", client=self.client_name)
        self._term_started = self._clock()
        recovered_at = self._clock() - self._outbox.lease
        async for _ in every(self._tick.total_seconds(), stop):
            try:
                if self._clock() - recovered_at >= min(self._outbox.lease / 4, RECOVER_EVERY):
                    await self._outbox.recover_expired()
                    await _drop_past_recycle_bin(self._outbox, self._store)
                    recovered_at = self._clock()
                await self.tick()
            except RetriableError as exc:
                log.warning("outbound_tick_failed", error=str(exc))
        log.info("outbound_flusher_stopped", calls=self.calls_made)

    async def tick(self) -> bool:
        """Send the calls the policy says are due; True when it made any."""
        mode, now = self._budget.mode, self._clock()
        since_last_flush = now - self._last_flush
        groups = await self._outbox.due_groups()
        if mode == "polling" and groups and since_last_flush >= self.policy.poll_interval:
            self._last_flush = now  # this interval's turn is taken, whether or not a call is due
        calls = due_calls(groups, self.policy, mode=mode, now=now, since_last_flush=since_last_flush)
        if not calls:
            return False
        self._last_flush = now if mode != "polling" else self._last_flush
        sent, ok = await self._send_calls(calls)
        if ok and any(size == self.policy.batch_size for _, _, size in calls):
            # What is left of a group after its full batches has its own, younger, oldest write.
            groups = await self._outbox.due_groups()
            more, _ = await self._send_calls(due_calls(groups, self.policy, mode=mode, now=self._clock(),
                                                       since_last_flush=since_last_flush))
            sent += more
        return sent > 0

    async def flush(self, groups: Sequence[OutboxGroup] | None = None) -> int:
        """Send every due write now, partial batches included (budget permitting); calls made."""
        self._last_flush = self._clock()
        if groups is None:
            groups = await self._outbox.due_groups()
        calls, _ = await self._send_calls(plan_calls(groups, self.policy.batch_size))
        return calls

    async def _send_calls(self, planned: Sequence[tuple[str, str, int]]) -> tuple[int, bool]:
        """Claim and send each planned call; (calls made, False if it stopped early)."""
        calls = 0
        for sobject, kind, size in planned:
            if not self._budget.allows_optional_calls():
                log.info("outbound_waiting_for_budget", mode=self._budget.mode)
                return calls, False
            claimed = await self._outbox.claim(sobject, kind, size, sf_offset=self._lost.offset())
            entries = await self._give_up_exhausted(claimed)
            if entries:
                if not await self._send(sobject, kind, entries):
                    return calls, False  # the org is unreachable or out of budget: the rest waits too
                calls += 1
        return calls, True

    async def _send(self, sobject: str, kind: str, entries: list[OutboxEntry]) -> bool:
        """One call for `entries`. False when the call failed as a whole (entries kept)."""
        try:
            if self._gate is not None:
                entries = await self._screen(self._gate, sobject, kind, entries)
                if not entries:
                    return True
            writable = await self._writability(sobject, kind)
            records, skipped = build_records(entries, kind, writable)
            if skipped:
                log.warning("outbound_fields_read_only", sobject=sobject, fields=sorted(skipped))
            if kind == CREATE and any(e.write.attempt > 0 for e in entries):
                entries, records = await self._recover_lost_creates(sobject, entries, records)
                if not entries:
                    return True
            guard = await _check_term(self._outbox, self._store, entries)
            written = await _write(self._sf, self._gate, sobject, kind, entries, records, guard=guard)
            self.calls_made += written.calls
            entries, records, results = await written.settle(self._outbox, self._delay)
        except BudgetExhaustedError:
            log.warning("outbound_budget_exhausted", sobject=sobject, writes=len(entries))
            await self._outbox.retry_later(entries, self._budget_wait, count_attempt=False)
            return False
        except RetriableError as exc:
            # A lost create's records are looked for before they are sent again (next attempt).
            unknown = isinstance(exc, OutcomeUnknownError) and kind == CREATE
            event = "outbound_create_outcome_unknown" if unknown else "outbound_call_failed"
            longest = await _retry_each(self._outbox, entries, f"{type(exc).__name__}: {exc}",
                                        backoff=(self._backoff_base, self._backoff_cap), rng=self._rng)
            log.warning(event, sobject=sobject, kind=kind, writes=len(entries),
                        error=str(exc), retry_in_s=round(longest.total_seconds(), 1))
            return False
        except SkippableError as exc:
            await self._finish(kind, entries, *_refused(entries), call_error=str(exc))
            return True
        except FatalError:
            await self._outbox.retry_later(entries, timedelta(0), count_attempt=False)
            raise
        if len(results) != len(records):
            await self._outbox.retry_later(entries, timedelta(0), count_attempt=False)
            raise FatalError(f"composite/sobjects {sobject}: {len(results)} results for {len(records)}")
        await self._finish(kind, entries, records, results)
        return True

    async def _screen(self, gate: ShadowGate, sobject: str, kind: str,
                      entries: list[OutboxEntry]) -> list[OutboxEntry]:
        """The writes still to send once re-decided against the shadow; the rest are done."""
        stale = self.policy.refresh_before(self._budget.mode, self._clock(), since=self._term_started)
        screened = await gate.screen(sobject, kind, entries, refresh_before=stale)
        if screened.logs:
            await self._store.insert_sync_logs(screened.logs)
        await _settle_unsent(self._outbox, screened)
        return screened.send

    def _delay(self, entries: Sequence[OutboxEntry]) -> timedelta:
        return retry_delay(max(e.write.attempt for e in entries), base=self._backoff_base,
                           cap=self._backoff_cap, rng=self._rng)

    async def _give_up_exhausted(self, entries: list[OutboxEntry]) -> list[OutboxEntry]:
        """Writes failed retriably `max_attempts` times: parked, with open failed logs; the rest."""
        exhausted = await _give_up(self._outbox, self._store, entries, self.policy.max_attempts)
        self.records_failed += len(exhausted)
        return [e for e in entries if e not in exhausted]

    async def _recover_lost_creates(
        self, sobject: str, entries: list[OutboxEntry], records: list[dict[str, Any]]
    ) -> tuple[list[OutboxEntry], list[dict[str, Any]]]:
        """Link writes an earlier, lost call already created; return the writes still to send."""
        recovered = await self._lost.find(sobject, entries, records)
        if recovered:
            order = sorted(recovered)
            await _remember_lost(self._gate, sobject, [entries[i] for i in order])  # before the link
            await self._finish(CREATE, [entries[i] for i in order], [records[i] for i in order],
                               [RecordResult(True, recovered[i]) for i in order], recovered=True)
        rest = [i for i in range(len(entries)) if i not in recovered]
        return [entries[i] for i in rest], [records[i] for i in rest]

    async def _finish(self, kind: str, entries: Sequence[OutboxEntry], records: Sequence[dict[str, Any]],
                      results: Sequence[RecordResult], call_error: str | None = None,
                      recovered: bool = False) -> None:
        """Log every record's outcome, link created records, then drop the writes."""
        if not entries:
            return  # none answered: all were modified since they were read (`Written.settle`)
        logs: list[SyncLog] = []
        for entry, record, result in zip(entries, records, results, strict=True):
            if not result.success:
                retriable = is_retriable(result)
                logs.append(_log(entry, kind, sf_id=entry.write.sf_id, record=record,
                                 error=call_error or error_text(result), retriable=retriable))
                self.records_failed += 1
                continue
            sf_id = result.id or entry.write.sf_id
            old = self._gate.old_values(entry) if self._gate else {}
            logs.append(_recovered_log(entry, str(sf_id), record) if recovered
                        else _log(entry, kind, sf_id=sf_id, record=record, old=old))
            self.records_sent += 1
            if kind == CREATE and sf_id:
                logs.extend(await self._link(entry, sf_id))
        again = [] if self._gate is None or recovered else await self._gate.remember(  # a lost call: unknown
            entries[0].write.sobject, kind, entries, [r.success for r in results])  # overtaken: sent again
        # Logs before the outbox delete: a crash in between re-sends (at least once), never loses.
        await self._store.insert_sync_logs(logs)
        await (_requeue_recovered(self._outbox, self._store, entries, results) if recovered
               else _done_or_again(self._outbox, entries, again))
        log.info("outbound_batch_done", sobject=entries[0].write.sobject, kind=kind,
                 written=sum(r.success for r in results), failed=sum(not r.success for r in results))

    async def _link(self, entry: OutboxEntry, sf_id: str) -> list[SyncLog]:
        write = entry.write
        linked = await self._store.link_created(write.collection, write.local_id,
                                                sobject=write.sobject, sf_id=sf_id)
        if linked or await _linked_to(self._store, entry, sf_id):
            await self._outbox.created(write.collection, write.local_id, write.sobject, sf_id)
            return []
        log.warning("outbound_link_failed", sobject=write.sobject, sf_id=sf_id,
                    local_id=str(write.local_id))
        return [SyncLog(source="local", type="link", status="failed", object=write.sobject, sf_id=sf_id,
                        local_id=str(write.local_id), collection=write.collection,
                        error=f"ALREADY_LINKED: the local record was linked meanwhile; {sf_id} is not")]



async def _drop_past_recycle_bin(outbox: FlushOutbox, store: FlushStore) -> None:
    """Held writes no undelete can release any more leave the outbox, each with a `skipped`
    log (written first: a crash between the two logs it again rather than not at all)."""
    stale = await outbox.held_past_recycle_bin()
    if not stale:
        return
    await store.insert_sync_logs([_past_recycle_bin_log(e) for e in stale])
    await outbox.drop_held(stale)
    log.warning("outbox_held_writes_dropped", writes=len(stale),
                records=sorted(f"{e.write.sobject}:{e.write.sf_id}" for e in stale))


async def _give_up(outbox: FlushOutbox, store: FlushStore, entries: Sequence[OutboxEntry],
                   max_attempts: int) -> list[OutboxEntry]:
    """Park the writes that failed retriably `max_attempts` times, with open failed logs."""
    exhausted = [e for e in entries if e.failures >= max_attempts]
    if exhausted:
        await store.insert_sync_logs([_given_up_log(e) for e in exhausted])
        await outbox.give_up(exhausted)
        log.error("outbound_writes_given_up", sobject=exhausted[0].write.sobject, writes=len(exhausted),
                  attempts=max_attempts, last_error=exhausted[0].last_error)
    return exhausted


@dataclass
class Written:
    """One call's writes and records, their results by position (a conditional update's record
    modified after the gate read it is `stale`: not written), and the API calls it took."""

    entries: Sequence[OutboxEntry]
    records: Sequence[dict[str, Any]]
    results: dict[int, RecordResult] = field(default_factory=dict)
    calls: int = 0

    @property
    def stale(self) -> list[OutboxEntry]:
        return [self.entries[i] for i, r in self.results.items() if r.precondition_failed]

    async def settle(self, outbox: FlushOutbox, delay: Callable[[Sequence[OutboxEntry]], timedelta]
                     ) -> tuple[list[OutboxEntry], list[dict[str, Any]], list[RecordResult]]:
        """Queue the stale writes again (`_requeue_stale`); the writes answered (written or
        failed), their records and results."""
        stale = self.stale
        if stale:
            await _requeue_stale(outbox, self.entries[0].write.sobject, stale, delay(stale))
        keep = [i for i, e in enumerate(self.entries) if e not in stale]
        return ([self.entries[i] for i in keep], [self.records[i] for i in keep],
                [self.results[i] for i in keep if i in self.results])


async def _write(sf: FlushSalesforce, gate: ShadowGate | None, sobject: str, kind: str,
                 entries: Sequence[OutboxEntry], records: Sequence[dict[str, Any]], *,
                 guard: ResendGuard) -> Written:
    """Creates, and updates decided on the shadow, go out in ONE composite/sobjects call; updates
    decided on their record read again (late or re-sent writes) through `/composite`, each only if
    Salesforce has not modified the record since that read (a user's edit made after the read
    stands: chaos seeds 1582 and 1679), 25 a call. `If-Unmodified-Since` has whole seconds: an
    edit in the same second as the read is not seen."""
    since = {i: gate.unmodified_since(e) for i, e in enumerate(entries)} if gate and kind != CREATE else {}
    checked = {i: at for i, at in since.items() if at is not None}
    plain = [i for i in range(len(entries)) if i not in checked]
    out = Written(entries, records)
    if plain:
        out.calls += 1
        call = sf.create if kind == CREATE else sf.update
        answers = await call(sobject, [records[i] for i in plain], before_resend=guard)
        out.results.update(zip(plain, answers, strict=False))
    if checked:
        out.calls += -(-len(checked) // COMPOSITE_LIMIT)
        answers = await sf.update_if_unmodified(sobject, [(records[i], at) for i, at in checked.items()],
                                                before_resend=guard)
        out.results.update(zip(checked, answers, strict=False))
    return out


async def _requeue_stale(outbox: FlushOutbox, sobject: str, stale: Sequence[OutboxEntry],
                         delay: timedelta) -> None:
    """Writes whose records Salesforce modified after the gate read them: not written, not logged,
    queued again, to be re-decided against the record read again when next sent. Counted as
    attempts with the whole-call backoff: a record edited faster than it can be re-read and
    written is given up after `max_attempts` (an open failed log, retriable), not re-sent in a loop."""
    log.info("outbound_precondition_failed", sobject=sobject, writes=len(stale),
             sf_ids=[e.write.sf_id for e in stale], retry_in_s=round(delay.total_seconds(), 1))
    await outbox.retry_later(stale, delay, error=f"{PRECONDITION_FAILED}: the record was modified "
                             "after it was read; re-decided when sent again")


def _refused(entries: Sequence[OutboxEntry]) -> tuple[list[dict[str, Any]], list[RecordResult]]:
    """A call refused as a whole: each write's fields (its failed log names what a later success
    must cover) and a failed result."""
    return [dict(e.write.fields) for e in entries], [RecordResult(success=False, errors=[]) for _ in entries]


async def _check_term(outbox: FlushOutbox, store: FlushStore, entries: Sequence[OutboxEntry]
                      ) -> ResendGuard:
    """Right before a call: a leader paused between its claim and its call (SIGSTOP, a long
    stall) must not send once another term took over, which has taken its updates back and may
    have looked for its creates already (chaos seed 11376, P23: a create sent twice). Fenced, it
    hands its claims back unsent, so the new term need not wait out their lease. Returns the
    check the client repeats before it sends again."""
    try:
        await _still_leading(outbox, store)
    except FencedError:
        await outbox.retry_later(entries, timedelta(0), count_attempt=False)
        raise
    return lambda: _still_leading(outbox, store)


async def _still_leading(outbox: FlushOutbox, store: FlushStore) -> None:
    """`FencedError` once this leader's term is over; also what the client runs before it sends
    a write again (a retry after UNABLE_TO_LOCK_ROW or a 5xx, the next chunk): a retry must not
    cross into the next term either (chaos seed 35107, P3: a retried create landed there)."""
    fence = outbox.fence()
    if fence is not None:
        await store.check_fence(fence)


async def _settle_unsent(outbox: FlushOutbox, screened: Screened) -> None:
    """Writes left with nothing to send are done; those for records deleted in Salesforce are held
    until an undelete is read (`Outbox.hold`). Creates of documents linked meanwhile go
    back to the outbox as updates of the linked record (re-decided against the shadow when
    sent); one linked to another object (a conversion) is dropped: that link merged the
    platform's values into the new record."""
    if screened.empty:
        await outbox.done(screened.empty)
    if screened.held:
        await outbox.hold(screened.held)
        log.info("outbound_held_for_deleted_records", sobject=screened.held[0].write.sobject,
                 sf_ids=sorted(str(e.write.sf_id) for e in screened.held))
    for entry, sobject, sf_id in screened.linked:
        write = entry.write
        log.warning("outbound_create_of_linked_record", sobject=write.sobject, linked_to=sf_id,
                    local_id=str(write.local_id))
        if sobject != write.sobject:
            await outbox.done([entry])
            continue
        await outbox.retry_later([entry], timedelta(0), count_attempt=False)
        await outbox.created(write.collection, write.local_id, sobject, sf_id)


async def _done_or_again(outbox: FlushOutbox, entries: Sequence[OutboxEntry],
                         again: Sequence[OutboxEntry]) -> None:
    """Written writes are done; those an inbound apply overtook go back to the queue, due now."""
    await outbox.done([e for e in entries if e not in again])
    if again:
        await outbox.retry_later(again, timedelta(0), count_attempt=False)


async def _requeue_recovered(outbox: FlushOutbox, store: FlushStore, entries: Sequence[OutboxEntry],
                             results: Sequence[RecordResult]) -> None:
    """Recovered creates go back to the outbox as updates of the records they were linked to.
    Salesforce holds what the lost call sent, and the write may carry more: platform edits made
    before the retry coalesced into it (the document was not linked yet). As a re-sent update
    the gate reads the record and re-decides each field: values Salesforce has are dropped, the
    rest goes out. One whose document is linked to another record is done (its failed link log
    says so)."""
    for entry, result in zip(entries, results, strict=True):
        write = entry.write
        if result.id and await _linked_to(store, entry, result.id):
            await outbox.retry_later([entry], timedelta(0), count_attempt=False)
            await outbox.created(write.collection, write.local_id, write.sobject, result.id)
        else:
            await outbox.done([entry])


async def _remember_lost(gate: ShadowGate | None, sobject: str, entries: Sequence[OutboxEntry]) -> None:
    """The values the lost calls sent, where they agree, as the write's own (`remember_lost`)."""
    if gate is not None:
        await gate.remember_lost(sobject, entries)


async def _linked_to(store: FlushStore, entry: OutboxEntry, sf_id: str) -> bool:
    """Whether the write's document is linked to `sf_id` already (a recovered create the
    inbound side linked first)."""
    docs = await store.find_linked(entry.write.collection, [sf_id])
    return any(d["_id"] == entry.write.local_id for d in docs)

class Writability:
    """Field -> may we send it, per object and kind: the configured map, else (once per object
    and kind) the describe."""

    def __init__(self, sf: SalesforceApi, writable: Mapping[str, Mapping[str, bool]] | None) -> None:
        self._sf = sf
        self._writable = {k: dict(v) for k, v in (writable or {}).items()}
        self._described: dict[tuple[str, str], dict[str, bool]] = {}

    async def fields(self, sobject: str, kind: str) -> Mapping[str, bool]:
        if sobject in self._writable:
            return self._writable[sobject]
        cached = self._described.get((sobject, kind))
        if cached is None:
            described = await self._sf.describe(sobject)
            flag = "createable" if kind == CREATE else "updateable"
            cached = {str(f["name"]): bool(f.get(flag)) and not bool(f.get("calculated"))
                      for f in described.get("fields", [])}
            self._described[(sobject, kind)] = cached
        return cached
