"""Polling on Salesforce's clock, with an overlap re-read (issue 11 item 3).

The emulator's org clock is moved against the host's (`POST /_emulator/clock`) and a record's
transaction is held open (`POST /_emulator/transactions`: stamped, invisible until committed).
The poller learns Salesforce's time from the `Date` of the emulator's responses.

Record Ids are not allocated in time order on Salesforce (app servers take Id blocks), so these
tests give each new record a *smaller* Id than the last: a watermark that entered a second
Salesforce had not finished would skip the rest of that second.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from emulator.describe import id18
from listener.salesforce import SalesforceClient
from listener.salesforce.http import AiohttpTransport
from listener.salesforce_time import ClockReadingTransport, SalesforceClock
from listener.sources.polling import Poller
from reconciler.inbound import Reconciler
from reconciler.soql import parse_sf_datetime
from reconciler.store import Store
from tests.support.mappings import LEAD_NAME_MAPPINGS as MAPPINGS
from tests.support.org_rig import Org, org_and_store

OWNER = "005000000000001AAA"  # mapped to u-1: a Lead it owns becomes a Person


@dataclass
class Rig:
    org: Org
    store: Store
    sf: SalesforceClient
    clock: SalesforceClock
    poller: Poller
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(9_999_999, -1))

    async def control(self, path: str, body: dict[str, Any]) -> Any:
        return await self.org.control(path, body)

    def next_id(self) -> str:
        return id18(f"00QDn{next(self._ids):010d}")  # each smaller than the last

    def lead(self, last: str) -> dict[str, Any]:
        return {"Id": self.next_id(), "LastName": last, "Company": "Acme", "OwnerId": OWNER}

    async def create(self, last: str) -> str:
        body = await self.control("seed", {"emit_events": False, "records": {"Lead": [self.lead(last)]}})
        sf_id: str = body["ids"]["Lead"][0]
        return sf_id

    async def synced(self) -> set[str]:
        return {d["crm"]["id"] async for d in self.store.db.people.find({}, {"crm.id": 1})}


@pytest.fixture
async def rig(mongo_uri: str, database_name: str) -> AsyncIterator[Rig]:
    clock = SalesforceClock()
    transport = ClockReadingTransport(AiohttpTransport(), clock)
    async with org_and_store(mongo_uri, database_name) as (org, settings, store), \
            SalesforceClient(settings, transport=transport) as sf:
        poller = Poller(sf, store, Reconciler(store, MAPPINGS), MAPPINGS, ["Lead"], sf_clock=clock)
        yield Rig(org, store, sf, clock, poller)


async def create_while_polling(rig: Rig, seconds: float, label: str) -> list[str]:
    """Create a Lead every 50 ms for `seconds` while the poller runs pass after pass."""
    created: list[str] = []
    done = asyncio.Event()

    async def polling() -> None:
        while not done.is_set():
            await rig.poller.run_once()
            await asyncio.sleep(0.05)

    passes = asyncio.create_task(polling())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        created.append(await rig.create(f"{label}{len(created)}"))
        await asyncio.sleep(0.05)
    done.set()
    await passes
    return created


async def settle(rig: Rig) -> None:
    """Passes until everything created is below the signpost (Salesforce's now less the lag)."""
    await rig.poller.wait_until_covered()
    await rig.poller.run_once()


class TestClockSkew:
    async def test_every_record_created_across_passes_is_synced(self, rig: Rig) -> None:
        """Salesforce's clock 3 s behind, then 3 s ahead of the host; Leads created all the while,
        polled pass after pass: every one of them reaches MongoDB."""
        created: list[str] = []
        offsets = (-3, 3)
        for offset in offsets:
            await rig.control("clock", {"offset_seconds": offset})
            await rig.poller.run_once()  # a response under the new clock (learns the offset)
            created += await create_while_polling(rig, 3.0, f"Skew{offset}_")
        await settle(rig)
        assert rig.clock.learned and abs(rig.clock.offset.total_seconds() - offsets[-1]) < 1.5
        missing = set(created) - await rig.synced()
        assert not missing, f"{len(missing)} of {len(created)} never synced"


class TestHeldTransaction:
    async def test_a_record_committed_after_a_later_stamped_one_was_polled_is_synced(self, rig: Rig) -> None:
        """A Lead stamped, then invisible while a later-stamped Lead is polled (the watermark
        moves past its stamp), then committed: the next pass's overlap re-read syncs it."""
        held = await rig.control("transactions", {"sobject": "Lead", "fields": rig.lead("Held")})
        await asyncio.sleep(1.1)
        later = await rig.create("Later")
        await settle(rig)
        assert later in await rig.synced()
        mark = await rig.poller.watermark("Lead")
        assert mark.ts is not None and mark.ts > parse_sf_datetime(held["SystemModstamp"])  # type: ignore[operator]
        assert held["id"] not in await rig.synced()

        await rig.control(f"transactions/{held['hold']}/commit", {})
        await rig.poller.run_once()
        assert held["id"] in await rig.synced()
