"""Issue 11, the store's part: durable data writes (item 9), monotonic and fenced offsets
(item 4), compare-and-set record writes (item 6), driver encoding errors (item 1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import ObjectId
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import monitoring

from reconciler.ports import OutboundWrite
from reconciler.store import RecordWrite, Store
from reconciler.sync_logs import SyncLog

WRITE_COMMANDS = {"insert", "update", "delete", "findAndModify"}


class WriteConcerns(monitoring.CommandListener):
    """Every write command's collection and write concern, as sent on the wire."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in WRITE_COMMANDS:
            command = event.command
            self.sent.append((event.command_name, str(command[event.command_name]),
                              command.get("writeConcern")))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def watched_store(mongo_uri: str, database_name: str) -> AsyncIterator[tuple[Store, WriteConcerns]]:
    """A Store over a client whose URI asks for w=1, with a command listener."""
    listener = WriteConcerns()
    sep = "&" if "?" in mongo_uri else "/?"
    client: Any = AsyncIOMotorClient(f"{mongo_uri}{sep}w=1", tz_aware=True, event_listeners=[listener])
    store = Store(client, client[database_name])
    await store.ensure_indexes()
    await store.outbox.ensure_indexes()
    yield store, listener
    await client.drop_database(database_name)
    client.close()


class TestDataIsAsDurableAsOffsets:
    async def test_records_logs_and_outbox_are_written_majority_journaled(
        self, watched_store: tuple[Store, WriteConcerns]
    ) -> None:
        """Item 9: even on a w=1 URI, people, companies, outbox and sync_logs writes carry
        {w: majority, j: true}, the write concern offsets use."""
        store, listener = watched_store
        listener.sent.clear()
        person = ObjectId()
        await store.bulk_apply("people", [RecordWrite({"_id": person}, set={"email": "a@x.com"},
                                                      upsert=True)])
        await store.write_in_order("companies", [RecordWrite({"_id": 1}, set={"name": "A"}, upsert=True)])
        await store.insert_sync_logs([SyncLog(source="local", type="update", status="success")])
        await store.link_created("people", person, sobject="Lead", sf_id="00Q000000000001AAA")
        await store.outbox.add([OutboundWrite("Lead", None, "people", person, {"LastName": "A"}, "create")],
                               datetime.now(UTC))
        await store.save_state("replay:x", {"replay_id": 1})
        collections = {name for _, name, _ in listener.sent}
        assert {"people", "companies", "sync_logs", "outbox", "sync_state"} <= collections
        for command, name, concern in listener.sent:
            assert concern == {"w": "majority", "j": True}, (command, name, concern)
