"""The emulator's Streaming API driven by a real CometD client: aiosfstream-ng 0.7.5.

Works around the client's known defects the way production code must: the
CometD URL's API version is hard-coded to 45.0 (overridden to 62.0 here),
`connection_timeout` must be 0 (its timeout path calls `asyncio.wait_for(loop=...)`,
a TypeError on Python 3.10+), and the client is built inside a running coroutine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiosfstream_ng.auth import AuthenticatorBase
from aiosfstream_ng.client import Client
from aiosfstream_ng.exceptions import ReplayError, ServerError
from aiosfstream_ng.replay import ReplayMarker, ReplayOption

from emulator.state import SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET, EmulatorConfig
from tests.support.emulator import RunningEmulator, running_emulator

LEAD_CHANNEL = "/data/LeadChangeEvent"
STREAMING = "/_emulator/streaming"
CLIENT_NAME = "salesforce-sync"
RECEIVE_TIMEOUT = 5.0


class EmulatorAuthenticator(AuthenticatorBase):
    """OAuth client credentials against the emulator; counts how often the client re-authenticates."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url
        self.authentications = 0

    async def _authenticate(self) -> tuple[int, dict[str, Any]]:
        form = {
            "grant_type": "client_credentials",
            "client_id": SAMPLE_CLIENT_ID,
            "client_secret": SAMPLE_CLIENT_SECRET,
        }
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{self.base_url}/services/oauth2/token", data=form) as response,
        ):
            self.authentications += 1
            body: dict[str, Any] = await response.json()
            return response.status, body


class StreamingClient(Client):
    """aiosfstream-ng's Client, pointed at /cometd/62.0 instead of its hard-coded 45.0."""

    @staticmethod
    def get_cometd_url(instance_url: str) -> str:
        return f"{instance_url}/cometd/62.0"


@asynccontextmanager
async def streaming_client(
    em: RunningEmulator, channel: str = LEAD_CHANNEL, **options: Any
) -> AsyncIterator[tuple[StreamingClient, EmulatorAuthenticator]]:
    authenticator = EmulatorAuthenticator(em.base_url)
    client = StreamingClient(authenticator, connection_timeout=0, **options)
    await client.open()
    try:
        await client.subscribe(channel)
        yield client, authenticator
    finally:
        await client.close()


async def receive(client: StreamingClient) -> dict[str, Any]:
    message: dict[str, Any] = await asyncio.wait_for(client.receive(), RECEIVE_TIMEOUT)
    return message


def header(message: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = message["data"]["payload"]["ChangeEventHeader"]
    return result


async def control(em: RunningEmulator, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{em.base_url}{STREAMING}/{action}", json=body or {}) as response,
    ):
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result


async def stats(em: RunningEmulator) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{em.base_url}{STREAMING}/stats") as response:
        result: dict[str, Any] = await response.json()
        return result


class Rest:
    """Just enough of the emulator's REST API to make records change."""

    def __init__(self, em: RunningEmulator) -> None:
        self.em = em

    async def _call(self, method: str, path: str, body: dict[str, Any]) -> Any:
        async with aiohttp.ClientSession() as http:
            form = {
                "grant_type": "client_credentials",
                "client_id": SAMPLE_CLIENT_ID,
                "client_secret": SAMPLE_CLIENT_SECRET,
            }
            async with http.post(f"{self.em.base_url}/services/oauth2/token", data=form) as response:
                token = (await response.json())["access_token"]
            headers = {"Authorization": f"Bearer {token}", "Sforce-Call-Options": f"client={CLIENT_NAME}"}
            url = f"{self.em.base_url}/services/data/v62.0/sobjects/{path}"
            async with http.request(method, url, json=body, headers=headers) as response:
                assert response.status < 300, await response.text()
                return await response.json() if response.status != 204 else None

    async def create_lead(self, **fields: Any) -> str:
        body = {"LastName": "Lovelace", "Company": "Analytical Engines", **fields}
        record_id: str = (await self._call("POST", "Lead", body))["id"]
        return record_id

    async def update_lead(self, record_id: str, **fields: Any) -> None:
        await self._call("PATCH", f"Lead/{record_id}", fields)


def publish_gap(em: RunningEmulator) -> int:
    return em.state.bus.publish_gap("Lead", "GAP_UPDATE", ["00Q000000000009AAA"])


@pytest.fixture
async def em() -> AsyncIterator[RunningEmulator]:
    async with running_emulator(EmulatorConfig()) as running:
        assert running.state.cometd is not None
        running.state.cometd.timeout_ms = 500
        yield running


class TestChangeEventsFromWrites:
    async def test_rest_create_arrives_as_a_cdc_event_with_our_origin(self, em: RunningEmulator) -> None:
        """A REST create made with Sforce-Call-Options reaches the client with changeOrigin naming us."""
        async with streaming_client(em) as (client, _):
            record_id = await Rest(em).create_lead(FirstName="Ada", Salutation="Ms.", City="London")
            message = await receive(client)
        assert message["channel"] == LEAD_CHANNEL
        assert header(message)["changeType"] == "CREATE"
        assert header(message)["recordIds"] == [record_id]
        assert header(message)["changeOrigin"] == f"com/salesforce/api/rest/62.0;client={CLIENT_NAME}"
        payload = message["data"]["payload"]
        assert payload["Name"] == {"Salutation": "Ms.", "FirstName": "Ada", "LastName": "Lovelace"}
        assert payload["Address"] == {"City": "London"}
        assert payload["Company"] == "Analytical Engines"

    async def test_rest_update_lists_compound_components_in_dotted_form(self, em: RunningEmulator) -> None:
        """An update of FirstName is listed as Name.FirstName and carried nested."""
        rest = Rest(em)
        record_id = await rest.create_lead()
        async with streaming_client(em) as (client, _):
            await rest.update_lead(record_id, FirstName="Augusta")
            message = await receive(client)
        assert header(message)["changeType"] == "UPDATE"
        assert "Name.FirstName" in header(message)["changedFields"]
        assert message["data"]["payload"]["Name"] == {"FirstName": "Augusta"}


class TestReplay:
    async def test_stored_replay_id_resumes_after_it(self, em: RunningEmulator) -> None:
        """A client whose storage holds a replay id receives the events after it, in order."""
        ids = [publish_gap(em) for _ in range(3)]
        storage = {LEAD_CHANNEL: ReplayMarker(date="0", replay_id=ids[0])}
        async with streaming_client(em, replay=storage) as (client, _):
            received = [(await receive(client))["data"]["event"]["replayId"] for _ in range(2)]
        assert received == ids[1:]
        assert storage[LEAD_CHANNEL].replay_id == ids[-1]

    async def test_all_events_replays_the_retained_log(self, em: RunningEmulator) -> None:
        """ReplayOption.ALL_EVENTS (-2) receives events published before the subscription."""
        ids = [publish_gap(em) for _ in range(2)]
        async with streaming_client(em, replay=ReplayOption.ALL_EVENTS) as (client, _):
            received = [(await receive(client))["data"]["event"]["replayId"] for _ in range(2)]
        assert received == ids

    async def test_new_events_skips_the_retained_log(self, em: RunningEmulator) -> None:
        """ReplayOption.NEW_EVENTS (-1) receives only events published after the subscription."""
        publish_gap(em)
        async with streaming_client(em, replay=ReplayOption.NEW_EVENTS) as (client, _):
            new = publish_gap(em)
            assert (await receive(client))["data"]["event"]["replayId"] == new

    async def test_invalid_replay_id_fails_the_subscription(self, em: RunningEmulator) -> None:
        """A replay id the org never issued makes subscribe raise Salesforce's 400 replayId error."""
        storage = {LEAD_CHANNEL: ReplayMarker(date="0", replay_id=999)}
        with pytest.raises(ServerError) as failure:
            async with streaming_client(em, replay=storage):
                pass
        assert failure.value.error_code == 400
        assert failure.value.error_message == (
            "The replayId {999} you provided was invalid.  Please provide a valid ID, "
            "-2 to replay all events, or -1 to replay only new events."
        )

    async def test_replay_fallback_recovers_from_an_invalid_id(self, em: RunningEmulator) -> None:
        """With replay_fallback=ALL_EVENTS the client resubscribes with -2 after the 400."""
        retained = publish_gap(em)
        storage = {LEAD_CHANNEL: ReplayMarker(date="0", replay_id=999)}
        async with streaming_client(em, replay=storage, replay_fallback=ReplayOption.ALL_EVENTS) as (
            client,
            _,
        ):
            assert (await receive(client))["data"]["event"]["replayId"] == retained


class TestSessionLoss:
    async def test_expired_token_is_refreshed_and_streaming_continues(self, em: RunningEmulator) -> None:
        """On 401::Authentication invalid the client re-authenticates and keeps receiving."""
        async with streaming_client(em, replay={}) as (client, authenticator):
            em.state.tokens.expire_all()
            await asyncio.sleep(0.7)  # the open long poll ends and finds the token gone
            replay_id = publish_gap(em)
            assert (await receive(client))["data"]["event"]["replayId"] == replay_id
        assert authenticator.authentications >= 2
        assert (await stats(em))["errors"].get("401::Authentication invalid", 0) >= 1

    async def test_forgotten_client_rehandshakes_and_resumes(self, em: RunningEmulator) -> None:
        """After a server restart (forget-clients) the client re-handshakes and gets missed events."""
        async with streaming_client(em, replay={}) as (client, _):
            first = publish_gap(em)
            assert (await receive(client))["data"]["event"]["replayId"] == first
            await control(em, "forget-clients")
            missed = publish_gap(em)
            assert (await receive(client))["data"]["event"]["replayId"] == missed
        assert (await stats(em))["errors"].get("403::Unknown client", 0) >= 1

    async def test_dropped_connection_is_reestablished(self, em: RunningEmulator) -> None:
        """After the network drops the open connect, the client reconnects with the same session."""
        assert em.state.cometd is not None
        em.state.cometd.timeout_ms = 30_000
        async with streaming_client(em, replay={}) as (client, _):
            await asyncio.sleep(0.1)
            assert (await control(em, "drop"))["dropped"] == 1
            replay_id = publish_gap(em)
            assert (await receive(client))["data"]["event"]["replayId"] == replay_id
        assert (await stats(em))["errors"] == {}


class TestEventsAllocation:
    async def test_spent_allocation_closes_the_stream_with_403(self) -> None:
        """Once DailyDeliveredPlatformEvents is spent, receive raises the 403 limit error."""
        async with running_emulator(EmulatorConfig(events_max=1)) as em:
            assert em.state.cometd is not None
            em.state.cometd.timeout_ms = 500
            first, _ = publish_gap(em), publish_gap(em)
            async with streaming_client(em, replay=ReplayOption.ALL_EVENTS) as (client, _):
                assert (await receive(client))["data"]["event"]["replayId"] == first
                with pytest.raises(ServerError) as failure:
                    await receive(client)
            assert failure.value.error_code == 403
            assert failure.value.error_message == "Organization total events daily limit exceeded"
            with pytest.raises(ServerError, match="Connect request failed"):
                async with streaming_client(em):
                    pass


class TestUnusualEvents:
    async def test_malformed_event_raises_replay_error_and_stream_goes_on(self, em: RunningEmulator) -> None:
        """An event without ChangeEventHeader makes receive raise ReplayError; the next one arrives."""
        async with streaming_client(em, replay={}) as (client, _):
            await control(em, "publish", {"channel": LEAD_CHANNEL, "data": {"payload": {"LastName": "x"}}})
            good = publish_gap(em)
            with pytest.raises(ReplayError):
                await receive(client)
            assert (await receive(client))["data"]["event"]["replayId"] == good

    async def test_gap_and_overflow_events_arrive(self, em: RunningEmulator) -> None:
        """Gap and overflow events reach the client with the documented headers."""
        async with streaming_client(em, replay={}) as (client, _):
            await control(em, "gap", {"entity": "Lead", "change_type": "GAP_DELETE", "record_ids": ["00Q1"]})
            await control(em, "overflow", {"entity": "Lead", "commit_timestamp_ms": 1_700_000_000_000})
            gap, overflow = header(await receive(client)), header(await receive(client))
        assert (gap["changeType"], gap["recordIds"]) == ("GAP_DELETE", ["00Q1"])
        assert (overflow["changeType"], overflow["commitTimestamp"]) == ("GAP_OVERFLOW", 1_700_000_000_000)

    async def test_pause_holds_events_until_resume(self, em: RunningEmulator) -> None:
        """While delivery is paused nothing arrives; resume releases the events."""
        async with streaming_client(em, replay={}) as (client, _):
            await control(em, "pause")
            held = publish_gap(em)
            await asyncio.sleep(0.7)  # longer than a long poll
            assert client.pending_count == 0
            await control(em, "resume")
            assert (await receive(client))["data"]["event"]["replayId"] == held
