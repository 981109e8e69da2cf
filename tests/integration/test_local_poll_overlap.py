"""The local watcher's polling mode re-reads an overlap window each pass (issue 11 item 3, local
side): a platform write stamped `updated_at` before the watermark -- a slow commit, or a writer
whose clock runs behind -- is still read and sent; a document already handled at the same
`updated_at` is not handled again (dedup by (_id, updated_at))."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bson import ObjectId

from reconciler.local_changes import LocalChangeWatcher
from reconciler.outbox import Outbox
from reconciler.store import Store
from settings import Mappings, parse_mappings
from tests.integration.test_local_changes import MAPPINGS


def polling(store: Store, outbox: Outbox, mappings: Mappings, **options: object) -> LocalChangeWatcher:
    return LocalChangeWatcher(store, mappings, outbox, force_polling=True, settle=timedelta(0),
                              **options)  # type: ignore[arg-type]


async def linked_person(store: Store, at: datetime, lead_id: str) -> ObjectId:
    doc_id = ObjectId()
    await store.db.people.insert_one({
        "_id": doc_id, "first_name": "Ann", "last_name": "Lee", "updated_at": at,
        "crm": {"object": "Lead", "id": lead_id, "linked_at": at}, "_sync": {"written_at": at}})
    return doc_id


class TestLocalPollingOverlap:
    async def test_an_edit_stamped_before_the_watermark_is_still_sent(self, store: Store) -> None:
        mappings, outbox = parse_mappings(MAPPINGS), Outbox(store.outbox)
        watcher = polling(store, outbox, mappings, overlap=timedelta(minutes=2))
        await watcher.start_mode()
        people = store.watched("people")
        await watcher.poll_once(people)  # first pass: the watermark starts about now
        first = await linked_person(store, datetime.now(UTC), "00Q000000000001AAA")
        second = await linked_person(store, datetime.now(UTC), "00Q000000000002AAA")
        await watcher.poll_once(people)  # the service's own writes: snapshots, nothing sent
        assert await outbox.pending() == []
        edited_at = datetime.now(UTC)
        await store.db.people.update_one({"_id": second},
                                         {"$set": {"last_name": "Paris", "updated_at": edited_at}})
        await watcher.poll_once(people)  # the watermark moves past `edited_at`
        assert [e.write.fields for e in await outbox.pending()] == [{"LastName": "Paris"}]

        # committed only now, but stamped 30 s ago by the platform writer (below the watermark)
        await store.db.people.update_one({"_id": first}, {"$set": {
            "first_name": "Late", "updated_at": edited_at - timedelta(seconds=30)}})
        await watcher.poll_once(people)
        fields = sorted(str(e.write.fields) for e in await outbox.pending())
        assert fields == ["{'FirstName': 'Late'}", "{'LastName': 'Paris'}"]

        enqueued = watcher.edits_enqueued
        await watcher.poll_once(people)  # the overlap re-reads both: nothing handled twice
        assert watcher.edits_enqueued == enqueued
        state = await store.load_state("local_watermark:people")
        assert state is not None and state["updated_at"] >= edited_at  # never back
