"""A lookup by many ids is sent in slices (`Store.lookup_chunk`), and the slices are in flight
together: their round-trips overlap instead of adding up (bench/README.md, "Inbound replay:
round 6"). Driven through a stand-in database handle whose `find` holds every reply until the
slices it expects have all been sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo.errors import AutoReconnect

from reconciler.errors import RetriableError
from reconciler.store import Store

WITHIN = 30.0  # seconds: only a lookup that sends its slices one after the other waits this long


class HeldCursor:
    def __init__(self, db: HeldDatabase, query: dict[str, Any]) -> None:
        self.db = db
        self.query = query

    async def to_list(self, length: int | None) -> list[dict[str, Any]]:
        db = self.db
        db.in_flight += 1
        db.most_in_flight = max(db.most_in_flight, db.in_flight)
        if db.in_flight >= db.release_at:
            db.released.set()
        try:
            await db.released.wait()
            ids = self.query["crm.id"]["$in"]
            if db.failing in ids:
                raise AutoReconnect("connection reset")
            return [{"_id": i, "crm": {"id": i}} for i in ids]
        finally:
            db.in_flight -= 1
            db.finished += 1


class HeldDatabase:
    """`db[collection].find(query, ...)`: each reply waits until `release_at` finds are in flight."""

    def __init__(self, release_at: int, failing: str | None = None) -> None:
        self.release_at = release_at
        self.failing = failing
        self.released = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0
        self.finished = 0

    def with_options(self, **options: Any) -> HeldDatabase:
        return self

    def __getitem__(self, collection: str) -> HeldDatabase:
        return self

    def find(self, query: dict[str, Any], **options: Any) -> HeldCursor:
        return HeldCursor(self, query)


def ids(count: int) -> list[str]:
    return [f"00Q{n:015d}" for n in range(count)]


class TestSlicedLookup:
    async def test_the_slices_of_one_lookup_are_in_flight_together(self) -> None:
        """A micro-batch's 200 ids are four slices of 50, all sent before any reply is needed;
        every linked document comes back once."""
        db = HeldDatabase(release_at=4)
        store = Store(client=None, db=db)
        assert store.lookup_chunk == 50
        found = await asyncio.wait_for(store.find_linked("people", ids(200)), WITHIN)
        assert sorted(d["crm"]["id"] for d in found) == ids(200)
        assert db.most_in_flight == 4

    async def test_a_lookup_within_one_slice_is_one_find(self) -> None:
        db = HeldDatabase(release_at=1)
        found = await asyncio.wait_for(Store(client=None, db=db).find_linked("people", ids(50)), WITHIN)
        assert len(found) == 50 and db.finished == 1

    async def test_a_failed_slice_fails_the_lookup_and_leaves_no_slice_running(self) -> None:
        """The driver's error becomes the store's (retriable), and the other slices are over by
        the time the lookup raises: nothing of it runs on after the caller has given up."""
        db = HeldDatabase(release_at=4, failing=ids(200)[120])
        with pytest.raises(RetriableError):
            await asyncio.wait_for(Store(client=None, db=db).find_linked("people", ids(200)), WITHIN)
        assert db.in_flight == 0 and db.finished == 4
