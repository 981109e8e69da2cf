"""Poison CDC events (issue 11 item 1): the stream logs them, moves past them and keeps going.

A scripted CometD session (the stream's `session_factory` seam) delivers one batch with valid
events around each kind of poison; the real Reconciler writes to a real SecantusDB.
"""

from __future__ import annotations

import asyncio
from typing import Any

from reconciler.inbound import Reconciler
from reconciler.store import Store
from reconciler.store.state_keys import replay_key
from tests.support.eventually import eventually
from tests.support.mappings import LEAD_NAME_MAPPINGS
from tests.support.stream_fakes import CHANNEL, ScriptedSession, event, lead_id, scripted_stream

FAR_FUTURE_MS = 10**15  # year ~33658: not a datetime


def circular() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


# (replay id, what is wrong with it, the message)
POISON: list[tuple[int, str, dict[str, Any]]] = [
    (2, "missing header", event(2, drop_header=True)),
    (4, "recordIds not a list", event(4, header={"recordIds": lead_id(4)})),
    (6, "commitTimestamp far in the future", event(6, header={"commitTimestamp": FAR_FUTURE_MS})),
    (8, "integer LastModifiedDate far in the future", event(8, fields={"LastModifiedDate": FAR_FUTURE_MS})),
    (10, "LastModifiedDate in year 9999", event(10, fields={"LastModifiedDate": "9999-12-31T23:59:59Z"})),
    (12, "unknown entity", event(12, header={"entityName": "Opportunity"})),
    (14, "payload not JSON-able (a cycle)", event(14, fields={"Description": circular()})),
    (16, "payload not JSON-able (non-string keys)", event(16, fields={"Description": {(1, 2): "x"}})),
    (18, "changedFields of the wrong type", event(18, header={"changeType": "UPDATE", "changedFields": [1]})),
]
VALID = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]


class TestPoisonEvents:
    async def test_poison_is_logged_skipped_and_the_stream_goes_on(self, store: Store) -> None:
        """Valid events around every kind of poison are applied; each poison is a failed log
        naming its replay id and reason; the stored replay id moves past all of them; the
        stream is still running and applies what comes next."""
        await store.save_state(replay_key(CHANNEL), {"replay_id": 0})
        by_id = {rid: msg for rid, _, msg in POISON}
        batch = [by_id.get(rid) or event(rid) for rid in range(1, 20)]
        session = ScriptedSession(batch)
        sink = Reconciler(store, LEAD_NAME_MAPPINGS, client_name="salesforce-sync")
        stream = scripted_stream(store, sink, session, batch_size=50)
        stop = asyncio.Event()
        task = asyncio.create_task(stream.run(stop))
        try:
            async def offset_is(n: int) -> bool:
                if task.done():
                    task.result()  # the stream died: show why
                state = await store.load_state(replay_key(CHANNEL))
                return state is not None and state["replay_id"] == n
            await eventually(lambda: offset_is(19))

            people = {d["crm"]["id"] async for d in store.db.people.find({}, {"crm.id": 1})}
            assert people == {lead_id(n) for n in VALID}

            failed = [d async for d in store.db.sync_logs.find({"status": "failed", "type": "event"})]
            logged = {d["job"]["raw"]["replay_id"]: d["error"] for d in failed}
            assert sorted(logged) == [rid for rid, _, _ in POISON]
            assert all(reason for reason in logged.values())

            session.deliver(event(20))
            await eventually(lambda: offset_is(20))
            assert await store.db.people.count_documents({"crm.id": lead_id(20)}) == 1
            assert not task.done()
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
