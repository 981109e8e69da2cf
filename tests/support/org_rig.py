"""An in-process emulator org, a client for its control API, and a real Store: the rig the
integration tests of the poller share (`org_and_store`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import SecretStr

from emulator.state import SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET
from reconciler.store import Store
from settings import AuthFlow, SalesforceSettings
from tests.support.emulator import RunningEmulator, running_emulator


@dataclass
class Org:
    """The emulator's control API (`/_emulator/...`): costs no API calls, emits no events unless asked."""

    emu: RunningEmulator
    http: aiohttp.ClientSession

    async def control(self, path: str, body: dict[str, Any]) -> Any:
        async with self.http.post(f"{self.emu.base_url}/_emulator/{path}", json=body) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def seed(self, sobject: str, records: list[dict[str, Any]]) -> list[str]:
        body = await self.control("seed", {"emit_events": False, "records": {sobject: records}})
        ids: list[str] = body["ids"][sobject]
        return ids

    async def touch(self, sobject: str, sf_id: str, **fields: Any) -> None:
        url = f"{self.emu.base_url}/_emulator/records/{sobject}/{sf_id}?emit_event=false"
        async with self.http.patch(url, json=fields) as r:
            assert r.status == 200, await r.text()

    async def delete(self, sobject: str, sf_id: str) -> None:
        async with self.http.delete(f"{self.emu.base_url}/_emulator/records/{sobject}/{sf_id}") as r:
            assert r.status == 200, await r.text()


def sample_app_settings(base_url: str) -> SalesforceSettings:
    """Client credentials of the emulator's built-in connected app."""
    return SalesforceSettings(
        login_url=base_url, auth_flow=AuthFlow.CLIENT_CREDENTIALS,
        client_id=SAMPLE_CLIENT_ID, client_secret=SecretStr(SAMPLE_CLIENT_SECRET))


@asynccontextmanager
async def org_and_store(mongo_uri: str, database_name: str
                        ) -> AsyncIterator[tuple[Org, SalesforceSettings, Store]]:
    """A fresh emulator org (and its control client), settings to log in to it, and a connected,
    indexed Store; all closed on exit."""
    async with running_emulator() as emu, aiohttp.ClientSession() as http:
        store = await Store.connect(mongo_uri, database_name)
        await store.ensure_indexes()
        try:
            yield Org(emu, http), sample_app_settings(emu.base_url), store
        finally:
            await store.close()
