"""The reconciler merges into a working copy: the documents the store returned stay as read (a
conflict's re-merge compares the fresh document with them), and the write carries the changes."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from reconciler.inbound import Reconciler
from reconciler.store import BulkOutcome, Fence, RecordWrite
from reconciler.sync_logs import SyncLog
from tests.support.salesforce_changes import MAPPINGS, T0, change

LEAD = "00Q000000000001AAA"


class ReadOnlyStore:
    """An in-memory store of one linked Person: returns the same document objects on every
    read, and records the writes."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.writes: list[RecordWrite] = []

    async def find_linked(self, collection: str, sf_ids: Any, *,
                          converted: bool = False) -> list[dict[str, Any]]:
        return [self.doc] if collection == "people" and LEAD in sf_ids else []

    async def find_unlinked_matches(self, collection: str, local_field: str,
                                    values: Any) -> list[dict[str, Any]]:
        return []

    async def find_records(self, collection: str, ids: Any) -> list[dict[str, Any]]:
        return []

    async def bulk_apply(self, collection: str, writes: Sequence[RecordWrite], *,
                         fence: Fence | None = None, journaled: bool = True) -> BulkOutcome:
        self.writes.extend(writes)
        return BulkOutcome()

    async def write_in_order(self, collection: str, writes: Sequence[RecordWrite], *,
                             fence: Fence | None = None) -> BulkOutcome:
        return await self.bulk_apply(collection, writes)

    async def insert_sync_logs(self, logs: Sequence[SyncLog]) -> list[str]:
        return [str(i) for i, _ in enumerate(logs)]

    async def journal_barrier(self) -> None:
        pass


def person() -> dict[str, Any]:
    return {
        "_id": 1, "first_name": "Ann", "last_name": "Old", "email": "ann@example.com",
        "crm": {"id": LEAD, "object": "Lead", "linked_at": T0},
        "updated_at": T0,
        "_sync": {"version": 3, "written_at": T0, "field_times": {"last_name": T0},
                  "sf": {"Lead": {"LastName": {"v": "Old", "at": T0}}}},
    }


class TestWorkingCopy:
    async def test_a_merged_change_leaves_the_document_as_read(self) -> None:
        """Applying a change to nested paths (field time, shadow entry) writes them and changes
        nothing in the document object the store returned."""
        store = ReadOnlyStore(person())
        as_read = copy.deepcopy(store.doc)
        result = await Reconciler(store, MAPPINGS).apply_batch(
            [change(LEAD, {"LastName": "New"}, at=T0.replace(hour=11))])
        assert result.applied == 1
        assert store.doc == as_read
        written = store.writes[0].set
        assert written["last_name"] == "New"
        assert written["_sync.field_times.last_name"] == T0.replace(hour=11)
        assert written["_sync.sf.Lead.LastName"]["v"] == "New"

    async def test_two_changes_of_one_record_in_a_batch_fold_into_one_write(self) -> None:
        """The second change of a record merges over the first one's working copy (not over the
        document as read), and the document as read is still untouched."""
        store = ReadOnlyStore(person())
        as_read = copy.deepcopy(store.doc)
        await Reconciler(store, MAPPINGS).apply_batch([
            change(LEAD, {"LastName": "First"}, at=T0.replace(hour=11)),
            change(LEAD, {"FirstName": "Anna"}, at=T0.replace(hour=12)),
        ])
        assert store.doc == as_read
        assert len(store.writes) == 1
        written = store.writes[0].set
        assert (written["last_name"], written["first_name"]) == ("First", "Anna")
        assert written["_sync.sf.Lead.LastName"]["v"] == "First"
        assert written["_sync.sf.Lead.FirstName"]["v"] == "Anna"
