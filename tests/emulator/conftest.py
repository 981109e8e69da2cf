"""Fixtures for the emulator's own tests: a running org and an authenticated HTTP session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from emulator.state import SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET
from tests.support.emulator import RunningEmulator, running_emulator

API = "/services/data/v62.0"


@pytest.fixture
async def org() -> AsyncIterator[RunningEmulator]:
    async with running_emulator() as emulator:
        yield emulator


async def fetch_token(http: aiohttp.ClientSession, base_url: str, **form: str) -> aiohttp.ClientResponse:
    data = form or {
        "grant_type": "client_credentials",
        "client_id": SAMPLE_CLIENT_ID,
        "client_secret": SAMPLE_CLIENT_SECRET,
    }
    return await http.post(f"{base_url}/services/oauth2/token", data=data)


class Api:
    """Plain HTTP against one org with one access token; methods return (status, json, response)."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str) -> None:
        self.http, self.base_url, self.token = http, base_url, token

    async def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        url = path if path.startswith("http") else f"{self.base_url}{path}"
        hdrs = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        async with self.http.request(method, url, headers=hdrs, **kwargs) as response:
            body = await response.json() if response.content_type == "application/json" else None
            return response.status, body, response

    async def control(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.http.request(method, f"{self.base_url}/_emulator/{path}", **kwargs) as response:
            assert response.status < 300, await response.text()
            return await response.json()


@pytest.fixture
async def api(org: RunningEmulator) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as http:
        response = await fetch_token(http, org.base_url)
        token = (await response.json())["access_token"]
        yield Api(http, org.base_url, token)
