"""The emulator's Streaming API, driven with raw Bayeux messages over HTTP long-polling."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from emulator.cometd import invalid_replay_id_error
from emulator.state import SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET, EmulatorConfig
from tests.support.emulator import RunningEmulator, running_emulator

Message = dict[str, Any]
LEAD_CHANNEL = "/data/LeadChangeEvent"
STREAMING = "/_emulator/streaming"


async def fetch_token(http: aiohttp.ClientSession, base_url: str) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": SAMPLE_CLIENT_ID,
        "client_secret": SAMPLE_CLIENT_SECRET,
    }
    async with http.post(f"{base_url}/services/oauth2/token", data=form) as response:
        assert response.status == 200, await response.text()
        token: str = (await response.json())["access_token"]
        return token


class Bayeux:
    """A bare long-polling Bayeux client: sends message batches, returns the reply arrays."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str | None) -> None:
        self.http, self.url, self.token = http, url, token
        self.client_id: str | None = None
        self._next_id = 0

    def message(self, channel: str, **fields: Any) -> Message:
        self._next_id += 1
        message: Message = {"channel": channel, "id": str(self._next_id), **fields}
        if self.client_id is not None and channel != "/meta/handshake":
            message["clientId"] = self.client_id
        return message

    async def send(self, *messages: Message) -> list[Message]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.http.post(self.url, json=list(messages), headers=headers) as response:
            replies: list[Message] = await response.json()
            return replies

    async def handshake(self) -> Message:
        replies = await self.send(
            self.message("/meta/handshake", version="1.0", supportedConnectionTypes=["long-polling"])
        )
        if replies[0]["successful"]:
            self.client_id = replies[0]["clientId"]
        return replies[0]

    async def connect(self) -> list[Message]:
        return await self.send(self.message("/meta/connect", connectionType="long-polling"))

    async def subscribe(self, channel: str, replay_id: int | None = None) -> Message:
        fields: Message = {"subscription": channel}
        if replay_id is not None:
            fields["ext"] = {"replay": {channel: replay_id}}
        return (await self.send(self.message("/meta/subscribe", **fields)))[0]

    async def start(self, channel: str = LEAD_CHANNEL, replay_id: int | None = None) -> None:
        """Handshake, first connect, subscribe: what every CometD client does."""
        assert (await self.handshake())["successful"]
        assert (await self.connect())[0]["successful"]
        assert (await self.subscribe(channel, replay_id))["successful"]


def events_in(replies: list[Message]) -> list[Message]:
    return [reply for reply in replies if not reply["channel"].startswith("/meta/")]


def meta(replies: list[Message], channel: str) -> Message:
    return next(reply for reply in replies if reply["channel"] == channel)


def publish_lead(em: RunningEmulator, **changes: Any) -> int:
    record = {"LastName": "Lovelace", "Company": "Analytical Engines", **changes}
    return em.state.bus.publish_change(
        entity="Lead",
        change_type="CREATE",
        record_ids=["00Q000000000001AAA"],
        record=record,
        changed_fields=[],
        nulled_fields=[],
        diff_fields=[],
        change_origin="com/salesforce/api/rest/62.0",
        transaction_key="tx-1",
        sequence_number=1,
        commit_user="005000000000001AAA",
        commit_timestamp_ms=1_700_000_000_000,
        commit_number=1,
    )


@pytest.fixture
async def em() -> AsyncIterator[RunningEmulator]:
    async with running_emulator(EmulatorConfig()) as running:
        assert running.state.cometd is not None
        running.state.cometd.timeout_ms = 400  # long polls end quickly in tests
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def bayeux(em: RunningEmulator, http: aiohttp.ClientSession) -> Bayeux:
    token = await fetch_token(http, em.base_url)
    return Bayeux(http, f"{em.base_url}/cometd/62.0", token)


class TestHandshake:
    async def test_handshake_opens_a_long_polling_session(self, bayeux: Bayeux) -> None:
        """A valid token gets a clientId, long-polling only, the replay extension and 110 s-style advice."""
        reply = await bayeux.handshake()
        assert reply["successful"] is True
        assert reply["clientId"]
        assert reply["supportedConnectionTypes"] == ["long-polling"]
        assert reply["ext"]["replay"] is True
        assert reply["advice"] == {"interval": 0, "timeout": 400, "reconnect": "retry"}

    async def test_default_connect_timeout_is_110_seconds(self, em: RunningEmulator, bayeux: Bayeux) -> None:
        """Without test tuning the advice is Salesforce's 110000 ms."""
        assert em.state.cometd is not None
        em.state.cometd.timeout_ms = 110_000
        assert (await bayeux.handshake())["advice"]["timeout"] == 110_000

    async def test_invalid_token_is_denied_like_salesforce(self, bayeux: Bayeux) -> None:
        """A bad token: 403::Handshake denied, failureReason 401::Authentication invalid, reconnect none."""
        bayeux.token = "not-a-token"
        reply = await bayeux.handshake()
        assert reply["successful"] is False
        assert reply["error"] == "403::Handshake denied"
        assert reply["ext"] == {"sfdc": {"failureReason": "401::Authentication invalid"}}
        assert reply["advice"] == {"reconnect": "none"}

    async def test_missing_token_is_denied(self, bayeux: Bayeux) -> None:
        """No Authorization header: the failure reason says authentication is required."""
        bayeux.token = None
        reply = await bayeux.handshake()
        assert reply["error"] == "403::Handshake denied"
        assert reply["ext"]["sfdc"]["failureReason"] == "401::Request requires authentication"

    @pytest.mark.parametrize("version", ["45.0", "62.0", "63.0"])
    async def test_any_supported_api_version_is_served(self, bayeux: Bayeux, version: str) -> None:
        """/cometd/NN.N works for any version from 37.0."""
        bayeux.url = bayeux.url.replace("62.0", version)
        assert (await bayeux.handshake())["successful"] is True

    async def test_too_old_api_version_is_refused(self, bayeux: Bayeux) -> None:
        """Versions below 37.0 get Salesforce's unsupported-version error."""
        bayeux.url = bayeux.url.replace("62.0", "36.0")
        reply = await bayeux.handshake()
        assert reply["successful"] is False
        assert reply["error"].startswith("400::Unsupported API version")


class TestConnect:
    async def test_first_connect_answers_at_once(self, bayeux: Bayeux) -> None:
        """The first connect after a handshake does not wait for the long-poll timeout."""
        await bayeux.handshake()
        replies = await asyncio.wait_for(bayeux.connect(), 0.3)
        assert replies[0]["successful"] is True
        assert replies[0]["advice"]["reconnect"] == "retry"

    async def test_events_arrive_as_soon_as_published(self, em: RunningEmulator, bayeux: Bayeux) -> None:
        """A waiting connect returns as soon as an event is published."""
        assert em.state.cometd is not None
        em.state.cometd.timeout_ms = 30_000
        await bayeux.start()
        pending = asyncio.ensure_future(bayeux.connect())
        await asyncio.sleep(0.05)
        replay_id = publish_lead(em)
        replies = await asyncio.wait_for(pending, 2)
        [event] = events_in(replies)
        assert event["channel"] == LEAD_CHANNEL
        assert event["data"]["event"]["replayId"] == replay_id
        assert event["data"]["payload"]["ChangeEventHeader"]["entityName"] == "Lead"

    async def test_idle_connect_times_out_empty_with_retry_advice(self, bayeux: Bayeux) -> None:
        """With no events, a connect ends after the timeout, successful, advising to reconnect."""
        await bayeux.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        replies = await bayeux.connect()
        assert loop.time() - started >= 0.35
        assert events_in(replies) == []
        assert replies[0]["successful"] is True
        assert replies[0]["advice"] == {"interval": 0, "timeout": 400, "reconnect": "retry"}

    async def test_unknown_client_must_handshake_again(self, bayeux: Bayeux) -> None:
        """A clientId the server does not know gets 403::Unknown client and advice to handshake."""
        await bayeux.handshake()
        bayeux.client_id = "nosuchclient"
        [reply] = await bayeux.connect()
        assert reply["successful"] is False
        assert reply["error"] == "403::Unknown client"
        assert reply["advice"] == {"reconnect": "handshake", "interval": 0}

    async def test_expired_token_is_rejected_on_connect(self, em: RunningEmulator, bayeux: Bayeux) -> None:
        """Once the session is gone, connect answers 401::Authentication invalid, reconnect none."""
        await bayeux.start()
        em.state.tokens.expire_all()
        [reply] = await bayeux.connect()
        assert reply["successful"] is False
        assert reply["error"] == "401::Authentication invalid"
        assert reply["advice"] == {"reconnect": "none", "interval": 0}

    async def test_token_expiring_during_a_long_poll_is_noticed(
        self, em: RunningEmulator, bayeux: Bayeux
    ) -> None:
        """A connect that was waiting when the token expired ends with 401::Authentication invalid."""
        await bayeux.start()
        pending = asyncio.ensure_future(bayeux.connect())
        await asyncio.sleep(0.05)
        em.state.tokens.expire_all()
        [reply] = await asyncio.wait_for(pending, 2)
        assert reply["error"] == "401::Authentication invalid"

    async def test_subscribe_and_connect_can_share_a_batch(self, em: RunningEmulator, bayeux: Bayeux) -> None:
        """A batch of connect plus subscribe gets both replies, and replayed events, in one response."""
        replay_id = publish_lead(em)
        await bayeux.handshake()
        replies = await bayeux.send(
            bayeux.message("/meta/connect", connectionType="long-polling"),
            bayeux.message("/meta/subscribe", subscription=LEAD_CHANNEL, ext={"replay": {LEAD_CHANNEL: -2}}),
        )
        assert meta(replies, "/meta/connect")["successful"] is True
        assert meta(replies, "/meta/subscribe")["successful"] is True
        assert [e["data"]["event"]["replayId"] for e in events_in(replies)] == [replay_id]

    async def test_events_reach_every_matching_subscription(
        self, em: RunningEmulator, bayeux: Bayeux
    ) -> None:
        """An event goes out once on its object channel and once on /data/ChangeEvents."""
        await bayeux.start()
        assert (await bayeux.subscribe("/data/ChangeEvents"))["successful"]
        publish_lead(em)
        events = events_in(await bayeux.connect())
        assert sorted(e["channel"] for e in events) == ["/data/ChangeEvents", LEAD_CHANNEL]

    async def test_unsubscribed_channel_stops_delivering(self, em: RunningEmulator, bayeux: Bayeux) -> None:
        """After unsubscribe, events of that channel are no longer delivered."""
        await bayeux.start()
        [reply] = await bayeux.send(bayeux.message("/meta/unsubscribe", subscription=LEAD_CHANNEL))
        assert reply == {**reply, "successful": True, "subscription": LEAD_CHANNEL}
        publish_lead(em)
        assert events_in(await bayeux.connect()) == []

    async def test_disconnect_ends_the_session(self, bayeux: Bayeux) -> None:
        """After /meta/disconnect the clientId is unknown."""
        await bayeux.start()
        [reply] = await bayeux.send(bayeux.message("/meta/disconnect"))
        assert reply["successful"] is True
        assert (await bayeux.connect())[0]["error"] == "403::Unknown client"


class TestReplay:
    async def test_minus_one_delivers_only_new_events(self, em: RunningEmulator, bayeux: Bayeux) -> None:
        """Replay -1 skips retained events and delivers later ones."""
        publish_lead(em)
        await bayeux.start(replay_id=-1)
        new = publish_lead(em)
        assert [e["data"]["event"]["replayId"] for e in events_in(await bayeux.connect())] == [new]

    async def test_no_replay_extension_means_new_events(self, em: RunningEmulator, bayeux: Bayeux) -> None:
        """A subscribe without ext.replay behaves like -1."""
        publish_lead(em)
        await bayeux.start()
        assert events_in(await bayeux.connect()) == []

    async def test_minus_two_replays_all_retained_events(self, em: RunningEmulator, bayeux: Bayeux) -> None:
        """Replay -2 delivers every retained event of the channel, oldest first."""
        ids = [publish_lead(em) for _ in range(3)]
        await bayeux.start(replay_id=-2)
        assert [e["data"]["event"]["replayId"] for e in events_in(await bayeux.connect())] == ids

    async def test_stored_id_resumes_after_it(self, em: RunningEmulator, bayeux: Bayeux) -> None:
        """A stored replay id delivers the events after it."""
        ids = [publish_lead(em) for _ in range(4)]
        await bayeux.start(replay_id=ids[1])
        assert [e["data"]["event"]["replayId"] for e in events_in(await bayeux.connect())] == ids[2:]

    @pytest.mark.parametrize("offset", [1, 1000])
    async def test_never_issued_id_is_invalid(self, em: RunningEmulator, bayeux: Bayeux, offset: int) -> None:
        """An id the org never issued fails the subscribe with Salesforce's replayId error."""
        issued = publish_lead(em)
        await bayeux.handshake()
        reply = await bayeux.subscribe(LEAD_CHANNEL, issued + offset)
        assert reply["successful"] is False
        assert reply["subscription"] == LEAD_CHANNEL
        assert reply["error"] == invalid_replay_id_error(issued + offset)
        assert reply["error"] == (
            f"400::The replayId {{{issued + offset}}} you provided was invalid.  Please provide a valid ID, "
            "-2 to replay all events, or -1 to replay only new events."
        )

    async def test_id_older_than_retention_is_invalid(self, em: RunningEmulator, bayeux: Bayeux) -> None:
        """Once an event leaves the retention window, its replay id is refused."""
        expired = publish_lead(em)
        em.state.bus.retention_seconds = 0.05
        await asyncio.sleep(0.1)
        publish_lead(em)
        await bayeux.handshake()
        reply = await bayeux.subscribe(LEAD_CHANNEL, expired)
        assert reply["error"] == invalid_replay_id_error(expired)

    async def test_unknown_channel_is_refused(self, bayeux: Bayeux) -> None:
        """Subscribing to a channel that does not exist fails with 400."""
        await bayeux.handshake()
        reply = await bayeux.subscribe("/event/Nothing__e")
        assert reply["successful"] is False
        assert reply["error"].startswith("400::The channel you requested to subscribe to does not exist")


class TestEventsAllocation:
    async def test_delivery_stops_at_the_daily_allocation(self, http: aiohttp.ClientSession) -> None:
        """Events are delivered up to DailyDeliveredPlatformEvents, then connect answers 403."""
        async with running_emulator(EmulatorConfig(events_max=2)) as em:
            assert em.state.cometd is not None
            em.state.cometd.timeout_ms = 400
            bayeux = Bayeux(http, f"{em.base_url}/cometd/62.0", await fetch_token(http, em.base_url))
            for _ in range(3):
                publish_lead(em)
            await bayeux.start(replay_id=-2)
            assert len(events_in(await bayeux.connect())) == 2
            [reply] = await bayeux.connect()
            assert reply["successful"] is False
            assert reply["error"] == "403::Organization total events daily limit exceeded"
            assert em.state.limits.events_used == 2
            refused = await bayeux.subscribe("/data/ContactChangeEvent")
            assert refused["error"] == "403::Organization total events daily limit exceeded"


class TestFaultInjection:
    async def test_drop_closes_open_connects_abruptly(
        self, em: RunningEmulator, bayeux: Bayeux, http: aiohttp.ClientSession
    ) -> None:
        """`drop` ends a waiting connect without a reply; the client id stays valid."""
        assert em.state.cometd is not None
        em.state.cometd.timeout_ms = 30_000
        await bayeux.start()
        pending = asyncio.ensure_future(bayeux.connect())
        await asyncio.sleep(0.05)
        async with http.post(f"{em.base_url}{STREAMING}/drop") as response:
            assert (await response.json()) == {"dropped": 1}
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await asyncio.wait_for(pending, 2)
        em.state.cometd.timeout_ms = 400
        assert (await bayeux.connect())[0]["successful"] is True

    async def test_forget_clients_simulates_a_restart(
        self, em: RunningEmulator, bayeux: Bayeux, http: aiohttp.ClientSession
    ) -> None:
        """After `forget-clients`, the old clientId gets 403::Unknown client."""
        await bayeux.start()
        async with http.post(f"{em.base_url}{STREAMING}/forget-clients") as response:
            assert (await response.json()) == {"forgotten": 1}
        [reply] = await bayeux.connect()
        assert reply["error"] == "403::Unknown client"
        assert reply["advice"]["reconnect"] == "handshake"

    async def test_pause_holds_events_until_resume(
        self, em: RunningEmulator, bayeux: Bayeux, http: aiohttp.ClientSession
    ) -> None:
        """While paused, connects return nothing; resume releases the held events."""
        await bayeux.start()
        await http.post(f"{em.base_url}{STREAMING}/pause")
        replay_id = publish_lead(em)
        assert events_in(await bayeux.connect()) == []
        pending = asyncio.ensure_future(bayeux.connect())
        await asyncio.sleep(0.05)
        await http.post(f"{em.base_url}{STREAMING}/resume")
        events = events_in(await asyncio.wait_for(pending, 2))
        assert [e["data"]["event"]["replayId"] for e in events] == [replay_id]

    async def test_malformed_event_is_delivered_as_is(
        self, em: RunningEmulator, bayeux: Bayeux, http: aiohttp.ClientSession
    ) -> None:
        """`publish` sends raw data, even without a ChangeEventHeader."""
        await bayeux.start()
        body: dict[str, Any] = {
            "channel": LEAD_CHANNEL,
            "data": {"schema": "x", "payload": {"LastName": "NoHeader"}},
        }
        async with http.post(f"{em.base_url}{STREAMING}/publish", json=body) as response:
            replay_id = (await response.json())["replayId"]
        [event] = events_in(await bayeux.connect())
        assert event["data"] == {**body["data"], "event": {"replayId": replay_id}}

    async def test_gap_event_is_delivered(
        self, em: RunningEmulator, bayeux: Bayeux, http: aiohttp.ClientSession
    ) -> None:
        """`gap` publishes a GAP_* event naming the records, with no field values."""
        await bayeux.start()
        body = {"entity": "Lead", "change_type": "GAP_UPDATE", "record_ids": ["00Q000000000009AAA"]}
        await http.post(f"{em.base_url}{STREAMING}/gap", json=body)
        [event] = events_in(await bayeux.connect())
        payload = event["data"]["payload"]
        assert list(payload) == ["ChangeEventHeader"]
        assert payload["ChangeEventHeader"]["changeType"] == "GAP_UPDATE"
        assert payload["ChangeEventHeader"]["recordIds"] == ["00Q000000000009AAA"]

    async def test_overflow_event_is_delivered(
        self, em: RunningEmulator, bayeux: Bayeux, http: aiohttp.ClientSession
    ) -> None:
        """`overflow` publishes a GAP_OVERFLOW event with the given commit time."""
        await bayeux.start()
        body = {"entity": "Lead", "commit_timestamp_ms": 1_700_000_000_123}
        await http.post(f"{em.base_url}{STREAMING}/overflow", json=body)
        [event] = events_in(await bayeux.connect())
        header = event["data"]["payload"]["ChangeEventHeader"]
        assert (header["changeType"], header["entityName"], header["commitTimestamp"]) == (
            "GAP_OVERFLOW",
            "Lead",
            1_700_000_000_123,
        )

    async def test_bad_gap_request_is_rejected(
        self, em: RunningEmulator, http: aiohttp.ClientSession
    ) -> None:
        """A gap with a non-gap change type is a 400."""
        body = {"entity": "Lead", "change_type": "UPDATE", "record_ids": ["00Q000000000009AAA"]}
        async with http.post(f"{em.base_url}{STREAMING}/gap", json=body) as response:
            assert response.status == 400

    async def test_stats_report_clients_and_deliveries(
        self, em: RunningEmulator, bayeux: Bayeux, http: aiohttp.ClientSession
    ) -> None:
        """`stats` counts clients, subscriptions, delivered events and errors."""
        await bayeux.start()
        publish_lead(em)
        await bayeux.connect()
        bayeux.client_id = "nosuchclient"
        await bayeux.connect()
        async with http.get(f"{em.base_url}{STREAMING}/stats") as response:
            stats = await response.json()
        assert stats["clients"] == 1
        assert stats["subscriptions"] == [LEAD_CHANNEL]
        assert stats["delivered"] == 1
        assert stats["errors"] == {"403::Unknown client": 1}

    async def test_config_sets_the_connect_timeout(
        self, em: RunningEmulator, bayeux: Bayeux, http: aiohttp.ClientSession
    ) -> None:
        """`config` changes the long-poll timeout advertised and applied."""
        async with http.post(f"{em.base_url}{STREAMING}/config", json={"timeout_ms": 250}) as response:
            assert response.status == 200
        assert (await bayeux.handshake())["advice"]["timeout"] == 250

    async def test_control_routes_are_absent_when_disabled(self, http: aiohttp.ClientSession) -> None:
        """With control disabled, the streaming control routes do not exist."""
        async with running_emulator(EmulatorConfig(control_enabled=False)) as em:
            response = await http.post(f"{em.base_url}{STREAMING}/drop")
            assert response.status == 404
