"""Pure outbound rules: when to flush, how writes split into calls, what a record carries,
and how local change events become writes."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId

from reconciler.local_changes import is_service_write, plan_changes, plan_polled, touches
from reconciler.outbound import (
    FlushPolicy,
    build_records,
    due_calls,
    is_retriable,
    plan_calls,
    retry_delay,
    sf_value,
)
from reconciler.ports import OutboundWrite, RecordError, RecordResult
from reconciler.retry import AutoRetryScheduler
from reconciler.store import LocalChange, OutboxEntry, OutboxGroup
from settings import SyncSettings, parse_mappings

T0 = datetime(2025, 1, 1, tzinfo=UTC)
S = timedelta(seconds=1)


class TestFlushPolicy:
    @pytest.mark.parametrize(
        ("mode", "pending", "oldest_wait", "since_last", "expected"),
        [
            ("streaming", 0, 10 * S, 10 * S, []),                # nothing to send
            ("streaming", 1, 1 * S, 1 * S, []),                  # a burst may still be coming
            ("streaming", 1, 2 * S, 0 * S, [1]),                 # the oldest waited max_wait
            ("streaming", 199, 0 * S, 0 * S, []),
            ("streaming", 200, 0 * S, 0 * S, [200]),             # a full batch goes at once
            ("streaming", 246, 0 * S, 0 * S, [200]),             # ...without the partial behind it
            ("streaming", 450, 9 * S, 0 * S, [200, 200]),        # the rest is judged by its own oldest
            ("starting", 5, 3 * S, 0 * S, [5]),                  # starting behaves like streaming
            ("polling", 500, 60 * S, 9 * 60 * S, []),            # low budget: once per interval
            ("polling", 609, 1 * S, 10 * 60 * S, [200, 200, 200]),  # full batches at the interval
            ("polling", 9, 1 * S, 10 * 60 * S, []),              # the remainder waits an interval
            ("polling", 9, 10 * 60 * S, 10 * 60 * S, [9]),
            ("paused", 500, 3600 * S, 3600 * S, []),             # below the reserve: never
        ],
    )
    def test_calls_due_for_one_group(self, mode: str, pending: int, oldest_wait: timedelta,
                                     since_last: timedelta, expected: list[int]) -> None:
        """Full batches of 200; a partial one once its oldest waited 2 s (polling: an interval)."""
        policy = FlushPolicy(max_wait=2 * S, poll_interval=timedelta(minutes=10))
        assert policy.sizes_due(mode=mode, pending=pending, oldest_wait=oldest_wait,
                                since_last_flush=since_last) == expected

    @pytest.mark.parametrize(
        ("batch_size", "minutes", "expected"),
        [(500, 10, FlushPolicy(200, 2 * S, timedelta(minutes=10))),   # capped at sObject Collections' 200
         (50, 1, FlushPolicy(50, 2 * S, timedelta(minutes=1)))],
    )
    def test_from_settings(self, batch_size: int, minutes: int, expected: FlushPolicy) -> None:
        """The batch size (at most 200) and the polling interval come from the sync settings."""
        sync = SyncSettings(batch_size=batch_size, frequency_minutes=minutes)
        assert FlushPolicy.from_settings(sync) == expected

    def test_due_calls_per_object_and_kind(self) -> None:
        """Each group is judged alone, in the outbox's oldest-first order."""
        groups = [OutboxGroup("Lead", "update", 230, T0), OutboxGroup("Lead", "create", 3, T0 + 5 * S),
                  OutboxGroup("Account", "update", 2, T0 + 9 * S)]
        calls = due_calls(groups, FlushPolicy(), mode="streaming", now=T0 + 10 * S, since_last_flush=0 * S)
        assert calls == [("Lead", "update", 200), ("Lead", "create", 3)]


class TestPlanCalls:
    @pytest.mark.parametrize(
        ("groups", "expected"),
        [
            ([], []),
            ([("Lead", "update", 1)], [("Lead", "update", 1)]),
            ([("Lead", "update", 200)], [("Lead", "update", 200)]),
            ([("Lead", "update", 450)], [("Lead", "update", 200), ("Lead", "update", 200),
                                          ("Lead", "update", 50)]),
            ([("Lead", "create", 3), ("Lead", "update", 201), ("Account", "update", 2)],
             [("Lead", "create", 3), ("Lead", "update", 200), ("Lead", "update", 1),
              ("Account", "update", 2)]),
        ],
    )
    def test_one_call_per_object_and_kind_at_most_200(
        self, groups: list[tuple[str, str, int]], expected: list[tuple[str, str, int]]
    ) -> None:
        """Each object+kind group splits into calls of at most 200 records."""
        assert plan_calls([OutboxGroup(s, k, n, T0) for s, k, n in groups]) == expected


def entry(fields: dict[str, Any], sf_id: str | None = "00Q000000000001AAA") -> OutboxEntry:
    write = OutboundWrite("Lead", sf_id, "people", "p-1", fields, "local_edit")
    return OutboxEntry(ObjectId(), "k", "update" if sf_id else "create", write, T0, T0)


class TestBuildRecords:
    def test_updates_carry_the_id_and_no_blanks_or_read_only_fields(self) -> None:
        """Blank values and read-only fields are left out; an update carries its Id."""
        records, skipped = build_records(
            [entry({"City": "Paris", "Title": " ", "IsConverted": True, "Unknown__c": 1})], "update",
            {"IsConverted": False, "City": True})
        assert records == [{"City": "Paris", "Unknown__c": 1, "Id": "00Q000000000001AAA"}]
        assert skipped == {"IsConverted"}

    def test_creates_have_no_id_and_keep_their_order(self) -> None:
        """Create records match entries by position."""
        records, _ = build_records([entry({"LastName": "A"}, None), entry({"LastName": "B"}, None)],
                                   "create", {})
        assert records == [{"LastName": "A"}, {"LastName": "B"}]

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (datetime(2025, 3, 4, 5, 6, 7, 891000, tzinfo=UTC), "2025-03-04T05:06:07.891+0000"),
            (datetime(2025, 3, 4).date(), "2025-03-04"),
            ("text", "text"),
            (3.5, 3.5),
        ],
    )
    def test_values_take_salesforce_json_forms(self, value: Any, expected: Any) -> None:
        """Datetimes and dates are sent in Salesforce's formats."""
        assert sf_value(value) == expected


class TestRetries:
    @pytest.mark.parametrize(
        ("codes", "expected"),
        [
            (["UNABLE_TO_LOCK_ROW"], True),
            (["REQUEST_RUNNING_TOO_LONG"], True),
            (["REQUIRED_FIELD_MISSING"], False),
            (["UNABLE_TO_LOCK_ROW", "FIELD_CUSTOM_VALIDATION_EXCEPTION"], False),
            ([], False),
        ],
    )
    def test_only_transient_codes_are_retriable(self, codes: list[str], expected: bool) -> None:
        """A failure is retriable only when every error is transient."""
        result = RecordResult(False, None, [RecordError(c, "m") for c in codes])
        assert is_retriable(result) is expected

    @pytest.mark.parametrize(("attempt", "low", "high"),
                             [(0, 2.5, 5), (1, 2.5, 10), (3, 2.5, 40), (20, 2.5, 300)])
    def test_backoff_grows_to_a_cap_with_jitter(self, attempt: int, low: float, high: float) -> None:
        """Delay is full jitter up to min(cap, base * 2**attempt), never below base/2."""
        rng = random.Random(attempt)
        delays = [retry_delay(attempt, base=5 * S, cap=300 * S, rng=rng).total_seconds() for _ in range(200)]
        assert all(low <= delay <= high for delay in delays)
        # full jitter: the whole range is used, not only its upper half
        assert min(delays) < low + (high - low) / 4 and max(delays) > high - (high - low) / 4


MAPPINGS = parse_mappings("""
[people.first_name]
lead = "FirstName"
[people.last_name]
lead = "LastName"
contact = "LastName"
[people.score]
lead = "Score__c"
direction = "from_salesforce"
[people."custom_fields.linkedin"]
lead = "LinkedIn__c"
[people.owner_crm_id]
contact = "OwnerId"
direction = "from_salesforce"
[rules]
create_in_salesforce = "contact"
""")
OBJECTS = ("Lead", "Contact", "Account")


def linked(**fields: Any) -> dict[str, Any]:
    return {"_id": "p-1", "crm": {"object": "Lead", "id": "00Q000000000001AAA"}, "first_name": "Ann",
            "last_name": "Lee", "updated_at": T0, **fields}


def change(op: str, doc: dict[str, Any] | None, *paths: str) -> LocalChange:
    return LocalChange(op, "p-1", doc, frozenset(paths), T0)


class TestLocalChangePlanning:
    @pytest.mark.parametrize(
        ("local_field", "path", "expected"),
        [("first_name", "first_name", True), ("custom_fields.linkedin", "custom_fields", True),
         ("custom_fields", "custom_fields.linkedin", True), ("first_name", "first_name_2", False),
         ("custom_fields.linkedin", "custom_fields.twitter", False)],
    )
    def test_touches(self, local_field: str, path: str, expected: bool) -> None:
        """A write to a path changes a field at, above or below it."""
        assert touches(local_field, path) is expected

    @pytest.mark.parametrize(
        ("event", "expected"),
        [
            (change("update", linked(), "_sync.written_at", "first_name", "updated_at"), True),
            (change("update", linked(), "first_name", "updated_at"), False),
            (change("insert", linked(_sync={"written_at": T0})), True),
            (change("insert", linked(_sync={"written_at": T0 - S})), False),
            (change("replace", linked()), False),
        ],
    )
    def test_service_writes_are_recognised(self, event: LocalChange, expected: bool) -> None:
        """Ours: `_sync.written_at` among the updated paths, or updated_at == written_at."""
        assert is_service_write(event) is expected

    def test_an_update_sends_only_changed_outbound_fields(self) -> None:
        """Changed both/to_salesforce fields go out; inbound-only ones only get a field time."""
        plan = plan_changes(MAPPINGS, OBJECTS, "people", [
            change("update", linked(score=3, custom_fields={"linkedin": "in/ann"}),
                   "score", "custom_fields.linkedin", "updated_at")])
        [write] = plan.writes
        assert (write.sobject, write.sf_id, write.fields) == ("Lead", "00Q000000000001AAA",
                                                              {"LinkedIn__c": "in/ann"})
        assert plan.field_times == {"p-1": {"score": T0, "custom_fields.linkedin": T0}}

    def test_an_unlinked_person_is_created_per_the_rules(self) -> None:
        """A new Person is a create of the configured object, with every mapped value."""
        plan = plan_changes(MAPPINGS, OBJECTS, "people", [
            change("insert", {"_id": "p-1", "last_name": "Lee", "first_name": "", "updated_at": T0})])
        [write] = plan.writes
        assert (write.sobject, write.sf_id, write.fields, write.reason) == (
            "Contact", None, {"LastName": "Lee"}, "create")

    def test_blank_edits_and_unmapped_fields_send_nothing(self) -> None:
        """Clearing a field or editing an unmapped one enqueues no write."""
        plan = plan_changes(MAPPINGS, OBJECTS, "people", [
            change("update", linked(first_name=""), "first_name"),
            change("update", linked(nickname="A"), "nickname"),
            change("delete", None)])
        assert plan.writes == []

    def test_polling_diffs_against_the_last_snapshot(self) -> None:
        """Polled documents send what changed since last seen; own writes send nothing."""
        seen = {"p-1": {"first_name": "Ann", "last_name": "Lee", "score": None,
                        "custom_fields.linkedin": None}}
        plan = plan_polled(MAPPINGS, OBJECTS, "people", [linked(last_name="Li")], seen)
        assert [w.fields for w in plan.writes] == [{"LastName": "Li"}]
        own = linked(last_name="Li", _sync={"written_at": T0})
        assert plan_polled(MAPPINGS, OBJECTS, "people", [own], seen).writes == []


class TestAutoRetry:
    class Budget:
        def __init__(self, allowed: bool) -> None:
            self.allowed = allowed
            self.mode = "streaming" if allowed else "paused"

        def allows_optional_calls(self) -> bool:
            return self.allowed

    class Jobs:
        def __init__(self) -> None:
            self.calls: list[int] = []

        async def __call__(self, *, max_attempts: int) -> int:
            self.calls.append(max_attempts)
            return 2

    async def test_retries_due_transient_failures_with_the_attempt_cap(self) -> None:
        """Each round asks the jobs module for retriable failures below max_attempts."""
        jobs = self.Jobs()
        scheduler = AutoRetryScheduler(jobs, self.Budget(True), max_attempts=10)
        assert await scheduler.run_once() == 2
        assert jobs.calls == [10]

    async def test_never_retries_below_the_budget_reserve(self) -> None:
        """With optional calls forbidden the round does nothing."""
        jobs = self.Jobs()
        assert await AutoRetryScheduler(jobs, self.Budget(False)).run_once() == 0
        assert jobs.calls == []

    async def test_runs_every_interval_until_stopped(self) -> None:
        """The loop waits an interval before each round and stops promptly."""
        jobs = self.Jobs()
        scheduler = AutoRetryScheduler(jobs, self.Budget(True), interval=timedelta(milliseconds=20))
        stop = asyncio.Event()
        task = asyncio.create_task(scheduler.run(stop))
        await asyncio.sleep(0.11)
        stop.set()
        await asyncio.wait_for(task, 1)
        assert 3 <= len(jobs.calls) <= 6
