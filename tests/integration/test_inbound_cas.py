"""Inbound writes are compare-and-set (issue 11 item 6): a platform edit that lands between the
reconciler's read and its write survives, and Salesforce's values are merged again on the fresh
document per the rules.

The race is made by a store wrapper (a seam): right before the reconciler's first People write
it performs the platform's edit, as a platform writer would (new value, new `updated_at`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from listener.salesforce_time import SalesforceClock
from reconciler.inbound import Reconciler
from reconciler.objects import PEOPLE
from reconciler.ports import ChangeKind, ChangeSource, SalesforceChange
from reconciler.store import BulkOutcome, RecordWrite, Store
from settings import parse_mappings
from tests.support.mappings import LEAD_NAME_MAPPINGS

LEAD = "00Q000000000001AAA"
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


class PlatformEditsDuringWrite:
    """Delegates to the store; before the first `times` People writes, runs the platform edit."""

    def __init__(self, store: Store, edit: dict[str, Any], *, times: int = 1) -> None:
        self._store = store
        self._edit = edit
        self._left = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def bulk_apply(self, collection: str, writes: Sequence[RecordWrite], **kw: Any) -> BulkOutcome:
        if collection == PEOPLE and self._left > 0:
            self._left -= 1
            edit = dict(self._edit)  # every platform write sets a new updated_at
            edit["updated_at"] = edit["updated_at"] + timedelta(milliseconds=self._left)
            await self._store.db.people.update_one({"crm.id": LEAD}, {"$set": edit})
        return await self._store.bulk_apply(collection, writes, **kw)


@pytest.fixture
async def store(mongo_uri: str, database_name: str) -> AsyncIterator[Store]:
    store = await Store.connect(mongo_uri, database_name)
    await store.ensure_indexes()
    await store.db.people.insert_one({
        "first_name": "Ann", "last_name": "Lee", "crm": {"object": "Lead", "id": LEAD}, "updated_at": T0,
        "_sync": {"field_times": {"first_name": T0, "last_name": T0}}})
    try:
        yield store
    finally:
        await store.close()


def edits(store: Store, *, at: int, times: int = 1, **fields: Any) -> Any:
    """The wrapped store (typed Any: it stands in for the store the reconciler expects)."""
    return PlatformEditsDuringWrite(store, {**fields, "updated_at": T0 + timedelta(seconds=at)}, times=times)


def salesforce_update(at: datetime) -> SalesforceChange:
    return SalesforceChange(sobject="Lead", sf_id=LEAD, kind=ChangeKind.UPDATE, changed_at=at,
                            fields={"FirstName": "Anna", "LastName": "Lea"}, source=ChangeSource.STREAM)


class TestPlatformEditDuringInboundWrite:
    async def test_a_newer_platform_edit_survives_and_the_rest_is_merged(self, store: Store) -> None:
        """Platform sets first_name at T0+20s while a T0+10s Salesforce update is being applied:
        first_name keeps the platform's value (most recent), last_name takes Salesforce's."""
        racing = edits(store, first_name="Annie", at=20)
        await Reconciler(racing, LEAD_NAME_MAPPINGS).apply([salesforce_update(T0 + timedelta(seconds=10))])
        doc = await store.db.people.find_one({"crm.id": LEAD})
        assert doc is not None
        assert (doc["first_name"], doc["last_name"]) == ("Annie", "Lea")

    async def test_an_older_platform_edit_loses_to_salesforce_per_the_rules(self, store: Store) -> None:
        """The same race with the platform edit older than Salesforce's: Salesforce's value wins."""
        racing = edits(store, first_name="Annie", at=5)
        await Reconciler(racing, LEAD_NAME_MAPPINGS).apply([salesforce_update(T0 + timedelta(seconds=10))])
        doc = await store.db.people.find_one({"crm.id": LEAD})
        assert doc is not None
        assert (doc["first_name"], doc["last_name"]) == ("Anna", "Lea")

    @pytest.mark.parametrize(("platform_at", "expected"), [(5, "Anna"), (20, "Annie")])
    async def test_salesforce_unless_blank_after_the_race(self, store: Store, platform_at: int,
                                                          expected: str) -> None:
        """With `salesforce_unless_blank` the re-merge gives Salesforce's live edit, unless the
        platform's edit is the later one: an older Salesforce edit read late does not replace a
        newer platform edit (chaos seed 40961, A4; at a merge Salesforce's value still wins)."""
        mappings = parse_mappings('[people.first_name]\nlead = "FirstName"\n'
                                  'merge = "salesforce_unless_blank"\n'
                                  '[people.last_name]\nlead = "LastName"\n'
                                  '[people.owner_crm_id]\nlead = "OwnerId"\n')
        racing = edits(store, first_name="Annie", at=platform_at)
        await Reconciler(racing, mappings).apply([salesforce_update(T0 + timedelta(seconds=10))])
        doc = await store.db.people.find_one({"crm.id": LEAD})
        assert doc is not None
        assert doc["first_name"] == expected

    async def test_an_unstamped_edit_read_first_still_counts_after_the_re_read(self, store: Store) -> None:
        """Issue 10 x 11: the platform edited first_name at T0+12s (the watcher has not stamped it)
        before the read; last_name changes under the write. After the re-read first_name keeps its
        edit's time (it beats Salesforce's T0+10s), and last_name counts as edited at T0+20s."""
        await store.db.people.update_one({"crm.id": LEAD}, {"$set": {
            "first_name": "Platform", "updated_at": T0 + timedelta(seconds=12), "_sync.written_at": T0}})
        racing = edits(store, last_name="Racer", at=20)
        await Reconciler(racing, LEAD_NAME_MAPPINGS).apply([salesforce_update(T0 + timedelta(seconds=10))])
        doc = await store.db.people.find_one({"crm.id": LEAD})
        assert doc is not None
        assert (doc["first_name"], doc["last_name"]) == ("Platform", "Racer")

    async def test_a_record_that_keeps_changing_is_a_failed_retriable_log(self, store: Store) -> None:
        """Edited before every attempt: after the bounded retries, a failed log an admin can retry."""
        racing = edits(store, at=30, times=100)
        await Reconciler(racing, LEAD_NAME_MAPPINGS).apply([salesforce_update(T0 + timedelta(seconds=10))])
        [failed] = [d async for d in store.db.sync_logs.find({"status": "failed"})]
        assert failed["sf_id"] == LEAD and "CONFLICT" in failed["error"] and failed["retriable"] is True


class WatcherStampsDuringWrite:
    """Delegates to the store; before the first People write, the local watcher stamps the
    platform's edits with their own times (its real store call)."""

    def __init__(self, store: Store, times: dict[str, datetime]) -> None:
        self._store = store
        self._times: dict[str, datetime] | None = times

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def bulk_apply(self, collection: str, writes: Sequence[RecordWrite], **kw: Any) -> BulkOutcome:
        if collection == PEOPLE and self._times is not None:
            doc = await self._store.db.people.find_one({"crm.id": LEAD})
            assert doc is not None
            await self._store.watched(PEOPLE).record_field_times({doc["_id"]: self._times}, datetime.now(UTC))
            self._times = None
        return await self._store.bulk_apply(collection, writes, **kw)


class TestTheWatcherStampsDuringInboundWrite:
    async def test_the_edits_own_time_decides_not_the_documents_latest_edit(self, store: Store) -> None:
        """Chaos seed 11376, P3.first_name: the platform edited first_name at T0+8s, then
        last_name at T0+12s, both unstamped when a T0+10s Salesforce FirstName edit is read
        (first_name's time is guessed as the document's `updated_at`, T0+12s: later than
        Salesforce's). The watcher stamps the edits with their own times before the write; after
        the re-read, first_name's own time decides: Salesforce's edit is newer and is applied.
        Deciding on the guess, the platform kept its value while the flusher, seeing the stamp,
        dropped it as older than Salesforce's: the sides stayed apart."""
        await store.db.people.update_one({"crm.id": LEAD}, {"$set": {
            "first_name": "Platform", "last_name": "Later", "updated_at": T0 + timedelta(seconds=12),
            "_sync.written_at": T0}})
        racing: Any = WatcherStampsDuringWrite(store, {"first_name": T0 + timedelta(seconds=8),
                                                       "last_name": T0 + timedelta(seconds=12)})
        await Reconciler(racing, LEAD_NAME_MAPPINGS).apply([salesforce_update(T0 + timedelta(seconds=10))])
        doc = await store.db.people.find_one({"crm.id": LEAD})
        assert doc is not None
        assert (doc["first_name"], doc["last_name"]) == ("Anna", "Later")


class FixedOffset:
    def __init__(self, seconds: float) -> None:
        self.offset = timedelta(seconds=seconds)

    def offset_at(self, salesforce_time: datetime) -> timedelta:
        return self.offset


class TestMergeClock:
    @pytest.mark.parametrize(("sf_ahead", "first_name"), [(0, "Anna"), (15, "Ann")])
    async def test_salesforce_time_is_moved_onto_the_host_clock(self, store: Store, sf_ahead: int,
                                                                first_name: str) -> None:
        """Item 10: a LastModifiedDate 10 s after the local edit on Salesforce's clock, which
        runs 15 s ahead, is 5 s before it on the host's: the local value stays."""
        sink = Reconciler(store, LEAD_NAME_MAPPINGS, sf_clock=FixedOffset(sf_ahead))
        await sink.apply([salesforce_update(T0 + timedelta(seconds=10))])
        doc = await store.db.people.find_one({"crm.id": LEAD})
        assert doc is not None and doc["first_name"] == first_name

    async def test_a_stale_offset_never_dates_a_change_after_it_was_applied(self, store: Store) -> None:
        """Salesforce's clock ran 4 s behind, then stepped back in line before the service learned
        it: a change made now would be dated 4 s ahead, and outrank a platform edit made in those
        4 s (chaos seed 8, C4.last_name). A change received cannot be later than its apply: its
        time on this host's clock is capped there, field time and shadow alike."""
        sink = Reconciler(store, LEAD_NAME_MAPPINGS, sf_clock=FixedOffset(-4))
        before = datetime.now(UTC).replace(microsecond=0)  # stored dates keep milliseconds
        await sink.apply([salesforce_update(before)])
        after = datetime.now(UTC)
        doc = await store.db.people.find_one({"crm.id": LEAD})
        assert doc is not None and doc["first_name"] == "Anna"
        stamped = doc["_sync"]["field_times"]["first_name"].replace(tzinfo=UTC)
        seen = doc["_sync"]["sf"]["Lead"]["FirstName"]["at"].replace(tzinfo=UTC)
        assert before <= stamped <= after and before <= seen <= after


def http_date(at: datetime) -> str:
    return at.strftime("%a, %d %b %Y %H:%M:%S GMT")


def clock_that_saw_a_step(last_asked: float) -> SalesforceClock:
    """Responses at offset 0 from T0-10 s to T0+`last_asked`; the org's clock stepped 3 s ahead
    at T0+5 s; the next response, at T0+8 s, shows it (the clock a new leader has then)."""
    clock = SalesforceClock()
    at = -10.0
    while at <= last_asked:
        asked = (T0 + timedelta(seconds=at)).timestamp()
        clock.observe(http_date(T0 + timedelta(seconds=at)), sent=asked, received=asked + 0.05)
        at += 1.0
    asked = (T0 + timedelta(seconds=8)).timestamp()
    clock.observe(http_date(T0 + timedelta(seconds=11)), sent=asked, received=asked + 0.05)
    return clock


class TestAnEditStampedBeforeAClockStep:
    """Chaos seed 8191, L5.first_name: the platform set first_name at T0; a Salesforce user set it
    2 s later, stamped T0+2 s on an org clock at offset 0; the org's clock then stepped 3 s ahead,
    and the edit was applied after the service had learned the new offset. Moved onto this host's
    clock by that offset, the stamp fell before the platform's edit, which kept its value by the
    most recent value: the newer Salesforce edit lost. It is dated by the offset of when it was
    stamped: the clock's span of Salesforce time it falls in."""

    @pytest.mark.parametrize(("last_asked", "why"), [
        (3.0, "the old offset's responses go on past the stamp: it was stamped at offset 0"),
        (-4.0, "no response between T0-4 s and the step: stamped before it or after, it cannot "
               "be ordered against the platform's edit, and a tie goes to Salesforce"),
    ])
    async def test_it_is_dated_by_the_offset_it_was_stamped_at(self, store: Store, last_asked: float,
                                                                  why: str) -> None:
        clock = clock_that_saw_a_step(last_asked)
        assert clock.offset > timedelta(seconds=2.5)  # the offset learned since the step
        await Reconciler(store, LEAD_NAME_MAPPINGS, sf_clock=clock).apply(
            [salesforce_update(T0 + timedelta(seconds=2))])
        doc = await store.db.people.find_one({"crm.id": LEAD})
        assert doc is not None and doc["first_name"] == "Anna", why
        assert doc["_sync"]["field_times"]["first_name"].replace(tzinfo=UTC) == T0 + timedelta(seconds=2)
