"""Issue 11 item 1, the store's part: the driver's encoding errors become per-record failures
(bulk writes) or `UnencodableError` (a skippable `SyncError`), never a raw bson/pymongo error."""

from __future__ import annotations

from decimal import Decimal

import pytest

from reconciler.errors import SkippableError
from reconciler.store import RecordWrite, Store
from reconciler.sync_logs import SyncLog


class TestEncodingErrorsInABulkWrite:
    @pytest.mark.parametrize("bad_value", [
        pytest.param(2**64, id="integer-beyond-64-bits"),
        pytest.param(Decimal("1.5"), id="unsupported-type"),
        pytest.param("x" * (17 * 1024 * 1024), id="over-16MB"),
    ])
    async def test_the_bad_record_fails_alone_and_the_rest_is_written(
        self, store: Store, bad_value: object
    ) -> None:
        """The record the driver cannot encode is an INVALID_DOCUMENT error at its index; the
        batch's other records are written."""
        writes = [RecordWrite({"_id": 1}, set={"city": "Oslo"}, upsert=True),
                  RecordWrite({"_id": 2}, set={"city": bad_value}, upsert=True),
                  RecordWrite({"_id": 3}, set={"city": "Rome"}, upsert=True)]
        outcome = await store.bulk_apply("people", writes)
        assert list(outcome.errors) == [1]
        assert outcome.errors[1].startswith("INVALID_DOCUMENT")
        assert sorted(outcome.upserted) == [0, 2]
        cities = {d["_id"]: d["city"] async for d in store.db.people.find({})}
        assert cities == {1: "Oslo", 3: "Rome"}

    async def test_in_an_ordered_write_the_rest_is_not_run(self, store: Store) -> None:
        """write_in_order: the writes before the bad one apply, the ones after are NOT_RUN."""
        writes = [RecordWrite({"_id": 1}, set={"n": 1}, upsert=True),
                  RecordWrite({"_id": 2}, set={"n": 2**70}, upsert=True),
                  RecordWrite({"_id": 3}, set={"n": 3}, upsert=True)]
        outcome = await store.write_in_order("people", writes)
        assert outcome.errors[1].startswith("INVALID_DOCUMENT")
        assert outcome.errors[2].startswith("NOT_RUN")
        assert [d["_id"] async for d in store.db.people.find({})] == [1]


class TestEncodingErrorsElsewhere:
    async def test_an_unencodable_sync_log_is_a_skippable_error(self, store: Store) -> None:
        """A single write the driver cannot encode raises a SkippableError, not a bson error."""
        bad = SyncLog(source="local", type="update", status="failed", fields={"n": {"new": 2**70}})
        with pytest.raises(SkippableError):
            await store.insert_sync_logs([bad])
        with pytest.raises(SkippableError):
            await store.save_state("watermark:Lead", {"ts": Decimal("1")})
