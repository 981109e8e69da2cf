"""A platform edit Salesforce refused because its record was deleted goes out when the record is
undeleted (the org emulator over HTTP, SecantusDB), as an edit made while it was deleted does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from bson import ObjectId

from reconciler.inbound import Reconciler
from reconciler.ports import ChangeKind, ChangeSource, OutboundWrite, SalesforceChange
from reconciler.soql import parse_sf_datetime
from reconciler.store import Store
from tests.integration.test_outbound_lost_response import (
    MAPPINGS,
    Org,
    flush_until_empty,
    flusher_for,
    running_org,
)


@pytest.fixture(name="org")
async def org_fixture() -> AsyncIterator[Org]:
    async with running_org() as running:
        yield running


async def user_deletes(org: Org, sf_id: str, *, undelete: bool = False) -> None:
    """A Salesforce user deletes the Lead (or undeletes it) through the emulator's control API."""
    url = f"{org.emulator.base_url}/_emulator/records/Lead/{sf_id}"
    async with aiohttp.ClientSession() as session:
        answer = await (session.post(f"{url}/undelete") if undelete else session.delete(url))
        assert answer.status == 200


async def event(org: Org, sf_id: str, kind: ChangeKind) -> SalesforceChange:
    """The Lead's DELETE or UNDELETE event as the stream hands it over (an undelete carries the
    whole record), stamped with the record's `LastModifiedDate`."""
    soql = f"SELECT Id, LastName, Company, Phone, LastModifiedDate FROM Lead WHERE Id = '{sf_id}'"
    [lead] = [r async for page in org.client.query(soql, include_deleted=True) for r in page]
    fields = {k: v for k, v in lead.items() if k not in ("attributes", "Id", "LastModifiedDate")}
    return SalesforceChange(sobject="Lead", sf_id=sf_id, kind=kind,
                            fields=fields if kind is ChangeKind.UNDELETE else {},
                            changed_at=parse_sf_datetime(lead["LastModifiedDate"]),
                            source=ChangeSource.STREAM)


async def linked_person_with_a_queued_phone(store: Store, org: Org) -> tuple[str, ObjectId]:
    """A Lead (Phone "Theirs", a Salesforce user's, a minute ago) and its Person, whose Phone the
    platform set to "Ours" a few seconds ago (before the delete to come, whose stamp has whole
    seconds): the write is queued."""
    sf_id = await org.seed_as_user({"LastName": "Ng", "Company": "Acme", "Phone": "Theirs"})
    now = datetime.now(UTC) - timedelta(seconds=3)
    local_id = ObjectId()
    await store.db.people.insert_one({
        "_id": local_id, "last_name": "Ng", "company_name": "Acme", "phone": "Ours", "updated_at": now,
        "crm": {"object": "Lead", "id": sf_id},
        "_sync": {"written_at": now, "field_times": {"phone": now},
                  "sf": {"Lead": {"LastName": {"v": "Ng", "at": None}, "Company": {"v": "Acme", "at": None},
                                  "Phone": {"v": "Theirs", "at": now - timedelta(minutes=1)}}}}})
    return sf_id, local_id


async def phone_in_salesforce(org: Org, sf_id: str) -> Any:
    [lead] = await org.rows(f"SELECT Phone FROM Lead WHERE Id = '{sf_id}'")
    return lead["Phone"]


class TestAWriteRefusedBecauseTheRecordWasDeleted:
    """Chaos seed 1291 x 2000, L6.phone (415 s to converge) and 1970 x 2000, L3 (255 s): the
    platform set Phone; a Salesforce user deleted the Lead before the write reached it, so
    Salesforce refused it (`ENTITY_IS_DELETED`, an open failed log, not retried automatically).
    The Lead was undeleted seconds later, but the undelete sent only the edits made *after* the
    delete: the platform's value waited for an admin's retry (and with no admin, for ever)."""

    async def test_it_goes_out_on_the_undelete_and_resolves_its_failure(self, org: Org, store: Store) -> None:
        outbox, flusher = flusher_for(store, org)
        reconciler = Reconciler(store, MAPPINGS, outbox=outbox)
        sf_id, local_id = await linked_person_with_a_queued_phone(store, org)
        await outbox.enqueue([OutboundWrite("Lead", sf_id, "people", local_id, {"Phone": "Ours"},
                                            "local_edit")])
        await user_deletes(org, sf_id)
        await flush_until_empty(outbox, flusher)  # before the delete is read: sent, refused
        logs, _ = await store.find_sync_logs(limit=10)
        [refused] = [x for x in logs if x["status"] == "failed"]
        assert refused["error"].startswith("ENTITY_IS_DELETED")
        await reconciler.apply([await event(org, sf_id, ChangeKind.DELETE)])

        await user_deletes(org, sf_id, undelete=True)
        await reconciler.apply([await event(org, sf_id, ChangeKind.UNDELETE)])
        await flush_until_empty(outbox, flusher)

        assert await phone_in_salesforce(org, sf_id) == "Ours"
        logs, _ = await store.find_sync_logs(limit=10)
        [sent] = [x for x in logs if x["source"] == "local" and x["status"] == "success"]
        assert sent["fields"]["Phone"]["new"] == "Ours"
        [refused] = [x for x in logs if x["status"] == "failed"]
        assert refused.get("resolved")

    async def test_an_edit_salesforce_took_before_the_delete_is_not_sent_again(
            self, org: Org, store: Store) -> None:
        """Only what Salesforce refused goes out: a write that landed before the delete is in the
        undeleted record already, and the undelete sends nothing."""
        outbox, flusher = flusher_for(store, org)
        reconciler = Reconciler(store, MAPPINGS, outbox=outbox)
        sf_id, local_id = await linked_person_with_a_queued_phone(store, org)
        await outbox.enqueue([OutboundWrite("Lead", sf_id, "people", local_id, {"Phone": "Ours"},
                                            "local_edit")])
        await flush_until_empty(outbox, flusher)
        await user_deletes(org, sf_id)
        await reconciler.apply([await event(org, sf_id, ChangeKind.DELETE)])
        await user_deletes(org, sf_id, undelete=True)
        calls = len(org.emulator.state.requests.entries)

        await reconciler.apply([await event(org, sf_id, ChangeKind.UNDELETE)])
        await flush_until_empty(outbox, flusher)

        assert await phone_in_salesforce(org, sf_id) == "Ours"
        entries = org.emulator.state.requests.entries
        writes = [entries[i] for i in range(calls, len(entries)) if entries[i]["method"] in ("PATCH", "POST")]
        assert writes == []
