"""A create batch of Accounts whose sender dies after the org applied it (chaos seed 76): a new
leader term takes the claims back once their lease ran out (an older term's creates wait for
it: its call may still be on its way, chaos seed 35107) and recovers every Account, even those the inbound
side already linked by Website meanwhile (a poll or gap read has no `changeOrigin`, so the lost
create's records come back as ordinary changes and match their unlinked Companies by domain).
Three Accounts in Salesforce, each linked once, none created again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from pydantic import SecretStr

from emulator.state import SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET
from listener.salesforce import RetryPolicy, SalesforceClient
from reconciler.outbound import OutboundFlusher
from reconciler.outbox import Outbox
from reconciler.ports import OutboundWrite
from reconciler.store import Fence, Store
from settings import AuthFlow, SalesforceSettings
from tests.support.emulator import running_emulator

COLLECTIONS = "/services/data/v62.0/composite/sobjects"
ACCOUNTS = [
    {"Name": "Qa1234", "Website": "q1d1.example.org", "Industry": "Energy"},
    {"Name": "Qb5678", "Website": "q2d2.example.org", "Industry": "Retail"},
    {"Name": "Qc9012", "Website": "q3d3.example.org", "Industry": "Banking"},
]


class Budget:
    mode = "streaming"

    def allows_optional_calls(self) -> bool:
        return True


class TermFence:
    def __init__(self) -> None:
        self.current: Fence | None = None

    def __call__(self) -> Fence | None:
        return self.current


@pytest.fixture
async def client() -> AsyncIterator[SalesforceClient]:
    async with running_emulator() as em:
        settings = SalesforceSettings(login_url=em.base_url, auth_flow=AuthFlow.CLIENT_CREDENTIALS,
                                      client_id=SAMPLE_CLIENT_ID,
                                      client_secret=SecretStr(SAMPLE_CLIENT_SECRET))
        async with SalesforceClient(settings, retry=RetryPolicy(attempts=2, base=0.001, cap=0.005),
                                    timeout=5.0) as sf:
            yield sf


async def take_lease(store: Store, owner: str) -> Fence:
    lease = store.lease("sync", owner=owner, ttl=0.3)
    assert await lease.acquire()
    fence = lease.fence()
    assert fence is not None
    return fence


async def rows(sf: SalesforceClient, soql: str) -> list[dict[str, Any]]:
    return [r async for page in sf.query(soql) for r in page]


@pytest.mark.parametrize("linked_by_inbound", [0, 2])
async def test_a_dead_senders_account_batch_is_recovered_by_the_next_term(
        client: SalesforceClient, store: Store, linked_by_inbound: int) -> None:
    old_term, new_term = TermFence(), TermFence()
    old = Outbox(store.outbox, lease=timedelta(minutes=2), fence=old_term)
    # the new term runs past the old claims' 2-minute lease
    new = Outbox(store.outbox, lease=timedelta(minutes=2), fence=new_term,
                 clock=lambda: datetime.now(UTC) + timedelta(minutes=3))
    old_term.current = await take_lease(store, "old-leader")
    ids = [ObjectId() for _ in ACCOUNTS]
    for local_id, account in zip(ids, ACCOUNTS, strict=True):
        await store.db.companies.insert_one({"_id": local_id, "name": account["Name"],
                                             "domain": account["Website"]})
    await old.enqueue([OutboundWrite("Account", None, "companies", local_id, dict(account), "create")
                       for local_id, account in zip(ids, ACCOUNTS, strict=True)])
    claimed = await old.claim("Account", "create", 200)
    assert len(claimed) == 3
    # The old leader sends the batch; the org applies it; the leader dies before the answer.
    results = await client.create("Account", [dict(e.write.fields) for e in claimed])
    created = {e.write.local_id: r.id for e, r in zip(claimed, results, strict=True)}

    # Inbound (a poll, no changeOrigin) links some of the Companies by domain meanwhile.
    for local_id in ids[:linked_by_inbound]:
        await store.db.companies.update_one(
            {"_id": local_id}, {"$set": {"crm": {"object": "Account", "id": created[local_id],
                                                 "linked_at": datetime.now(UTC)}}})

    await store.db.sync_state.update_one({"_id": "lease:sync"},
                                         {"$set": {"expires_at": datetime.now(UTC)}})
    new_term.current = await take_lease(store, "new-leader")
    flusher = OutboundFlusher(new, client, store, Budget(), client_name="salesforce-sync",
                              backoff_base=timedelta(milliseconds=20), backoff_cap=timedelta(milliseconds=20))
    assert await new.recover_expired() == 3
    for _ in range(10):
        await flusher.flush()
        if await new.depth() == 0:
            break

    accounts = await rows(client, "SELECT Id, Website FROM Account")
    assert sorted(a["Website"] for a in accounts) == sorted(a["Website"] for a in ACCOUNTS)
    linked = {d["_id"]: d.get("crm", {}).get("id") async for d in store.db.companies.find({})}
    assert linked == created
    logs, _ = await store.find_sync_logs(limit=20)
    assert [entry for entry in logs if entry["status"] != "success"] == []
