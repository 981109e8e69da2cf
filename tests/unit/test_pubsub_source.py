"""The Pub/Sub source's flow control, offsets and error paths, against the scripted connection
(`tests.support.pubsub_fakes.ScriptedPubSub`, the one Pub/Sub fake the suite has)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import grpc
import grpc.aio
import pytest

from listener.sources import Source
from listener.sources.pubsub import PubSubOptions, PubSubStream
from listener.sources.pubsub._proto import pubsub_api_pb2 as pb
from listener.sources.pubsub._wire import (
    REPLAY_ID_CORRUPTED,
    DeliveryLimitError,
    Endpoint,
    PubSubAuthError,
    ReplayIdInvalidError,
    tenant_id,
    translate,
)
from reconciler.errors import FatalError, RetriableError
from reconciler.ports import RejectedEvent, SalesforceChange
from reconciler.store.state_keys import pubsub_replay_key
from reconciler.watermark import Watermark
from tests.support.eventually import eventually
from tests.support.pubsub_fakes import ScriptedPubSub, ScriptedSubscription, lead_event

CHANNEL = "/data/LeadChangeEvent"


class FakeTokens:
    instance_url = "https://example.my.salesforce.com"

    def __init__(self) -> None:
        self.renewed = 0

    async def access_token(self) -> str:
        return "00D000000000001!AQtoken"

    async def reauthenticate(self) -> str:
        self.renewed += 1
        return "00D000000000001!AQfresh"


class FakeStore:
    def __init__(self, state: dict[str, dict[str, Any]] | None = None) -> None:
        self.state = dict(state or {})
        self.saves: list[tuple[str, dict[str, Any]]] = []

    async def load_state(self, key: str) -> dict[str, Any] | None:
        return self.state.get(key)

    async def save_state(self, key: str, value: dict[str, Any], *, fence: Any = None) -> None:
        self.saves.append((key, value))
        self.state[key] = value


@dataclass
class FakeSink:
    applied: list[SalesforceChange] = field(default_factory=list)
    rejected: list[RejectedEvent] = field(default_factory=list)
    failing: bool = False

    async def apply(self, changes: Sequence[SalesforceChange]) -> None:
        if self.failing:
            raise RetriableError("MongoDB unavailable")
        self.applied.extend(changes)

    async def reject(self, events: Sequence[RejectedEvent]) -> None:
        self.rejected.extend(events)


class FakeCatchUp:
    def __init__(self) -> None:
        self.polls: list[list[str]] = []

    async def run_once(self, objects: Sequence[str] | None = None, *, through_now: bool = False) -> Any:
        self.polls.append(list(objects or []))

    async def poll_since(self, sobject: str, since: datetime) -> int:
        return 0

    async def fetch_by_ids(self, sobject: str, ids: Iterable[str]) -> list[SalesforceChange]:
        return []

    async def watermark(self, sobject: str) -> Watermark:
        return Watermark(None)

    async def wait_until_covered(self) -> None:
        return None


@dataclass
class Harness:
    store: FakeStore = field(default_factory=FakeStore)
    sink: FakeSink = field(default_factory=FakeSink)
    tokens: FakeTokens = field(default_factory=FakeTokens)
    catch_up: FakeCatchUp = field(default_factory=FakeCatchUp)
    org: ScriptedPubSub = field(default_factory=ScriptedPubSub)
    batch: int = 5
    read_ahead: int = 1

    def stream(self) -> PubSubStream:
        options = PubSubOptions(client_name="salesforce-sync", endpoint="127.0.0.1:1", batch_size=self.batch,
                                batch_wait_ms=5, subscribe_settle=0, read_ahead=self.read_ahead)
        return PubSubStream(sf=self.tokens, store=self.store, sink=self.sink, catch_up=self.catch_up,
                            objects=["Lead"], options=options, connect=self.org.connect)

    async def subscription(self, index: int = -1) -> ScriptedSubscription:
        await eventually(lambda: bool(self.org.subscriptions))
        return self.org.subscriptions[index]


@pytest.fixture
async def running() -> Any:
    tasks: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def start(stream: PubSubStream) -> asyncio.Event:
        stop = asyncio.Event()
        tasks.append((stop, asyncio.create_task(stream.run(stop))))
        return stop

    yield start
    for stop, task in tasks:
        stop.set()
        await asyncio.wait_for(task, 5)


STORED = {pubsub_replay_key(CHANNEL): {"replay_id": (41).to_bytes(8, "big")}}


class TestSubscribing:
    def test_the_source_keeps_the_source_protocol(self) -> None:
        """The shell needs nothing of the Pub/Sub source but the `Source` protocol."""
        assert isinstance(Harness().stream(), Source)

    async def test_a_stored_replay_id_resumes_custom_asking_for_one_batch(self, running: Any) -> None:
        """CUSTOM after the stored bytes, `num_requested` = batch size; no catch-up poll."""
        rig = Harness(store=FakeStore(STORED))
        running(rig.stream())
        first = (await rig.subscription()).requests[0]
        assert (first.topic_name, first.replay_preset, first.num_requested) == (CHANNEL, pb.CUSTOM, rig.batch)
        assert first.replay_id == (41).to_bytes(8, "big")
        assert rig.catch_up.polls == []

    async def test_without_a_replay_id_subscribes_latest_and_polls_around_it(self, running: Any) -> None:
        rig = Harness()
        stream = rig.stream()
        running(stream)
        first = (await rig.subscription()).requests[0]
        assert first.replay_preset == pb.LATEST and first.num_requested == rig.batch
        await eventually(lambda: stream.ready)
        assert rig.catch_up.polls == [["Lead"]]

    async def test_the_first_response_to_latest_polls_again_before_its_events(self, running: Any) -> None:
        """Its first response proves a LATEST subscription holds: the objects are polled once
        more, before that response's events are applied; later responses poll nothing."""
        rig = Harness()
        stream = rig.stream()
        running(stream)
        await eventually(lambda: stream.ready)
        polls_when_applied: list[int] = []
        apply = rig.sink.apply

        async def noting(changes: Sequence[SalesforceChange]) -> None:
            polls_when_applied.append(len(rig.catch_up.polls))
            await apply(changes)
        rig.sink.apply = noting  # type: ignore[method-assign]
        rig.org.deliver(lead_event(1))
        rig.org.deliver(lead_event(2))
        await eventually(lambda: len(rig.sink.applied) == 2)
        assert polls_when_applied[0] == 2 and rig.catch_up.polls == [["Lead"], ["Lead"]]


class TestFlowControl:
    async def test_reads_ahead_one_batch_at_a_time(self, running: Any) -> None:
        """With `read_ahead=2` the stream opens with two FetchRequests of one batch each."""
        rig = Harness(store=FakeStore(STORED), read_ahead=2)
        running(rig.stream())
        subscription = await rig.subscription()
        await eventually(lambda: len(subscription.requests) == 2)
        assert [r.num_requested for r in subscription.requests] == [rig.batch, rig.batch]

    async def test_asks_again_for_as_many_as_were_applied(self, running: Any) -> None:
        """After a batch is applied, the channel asks for exactly as many events as it delivered."""
        rig = Harness(store=FakeStore(STORED))
        running(rig.stream())
        subscription = await rig.subscription()
        rig.org.respond(pb.FetchResponse(events=[lead_event(42), lead_event(43), lead_event(44)],
                                         pending_num_requested=2))
        await eventually(lambda: len(subscription.requests) == 2)
        assert subscription.requests[1].num_requested == 3
        assert [c.fields["LastName"] for c in rig.sink.applied] == ["Valid42", "Valid43", "Valid44"]
        assert rig.store.state[pubsub_replay_key(CHANNEL)] == {"replay_id": (44).to_bytes(8, "big")}

    async def test_nothing_is_requested_or_committed_when_apply_fails(self, running: Any) -> None:
        """A batch the sink could not apply: its offset is not stored and no more is asked for."""
        rig = Harness(store=FakeStore(STORED), sink=FakeSink(failing=True))
        running(rig.stream())
        subscription = await rig.subscription()
        rig.org.deliver(lead_event(42))
        await eventually(lambda: len(rig.org.subscriptions) >= 2)  # the session ended and reopens
        assert rig.store.saves == []
        assert subscription.requests[1:] == []
        assert (await rig.subscription()).requests[0].replay_id == (41).to_bytes(8, "big")

    async def test_a_keepalive_advances_an_idle_channels_offset(self, running: Any) -> None:
        rig = Harness(store=FakeStore(STORED))
        running(rig.stream())
        subscription = await rig.subscription()
        rig.org.respond(pb.FetchResponse(latest_replay_id=(99).to_bytes(8, "big"),
                                                          pending_num_requested=rig.batch))
        await eventually(lambda: rig.store.saves != [])
        assert rig.store.saves == [(pubsub_replay_key(CHANNEL), {"replay_id": (99).to_bytes(8, "big")})]
        assert subscription.requests[1:] == []  # a keepalive uses no capacity

    async def test_the_schema_is_fetched_once_per_schema_id(self, running: Any) -> None:
        rig = Harness(store=FakeStore(STORED))
        running(rig.stream())
        await rig.subscription()
        rig.org.deliver(lead_event(42))
        rig.org.deliver(lead_event(43))
        await eventually(lambda: len(rig.sink.applied) == 2)
        assert rig.org.schema_calls == 1

    async def test_echoes_are_flagged_and_poison_is_rejected(self, running: Any) -> None:
        rig = Harness(store=FakeStore(STORED))
        running(rig.stream())
        await rig.subscription()
        poison = lead_event(42, payload=b"\x01\xff")
        echo = lead_event(43, header={"changeOrigin": "com/salesforce/api/rest/62.0;client=salesforce-sync"})
        rig.org.deliver(poison, echo)
        await eventually(lambda: rig.store.saves != [])
        assert [c.is_echo for c in rig.sink.applied] == [True]
        [rejected] = rig.sink.rejected
        assert rejected.replay_id == rejected.raw["pubsubReplayId"] == (42).to_bytes(8, "big").hex()
        assert rig.store.state[pubsub_replay_key(CHANNEL)]["replay_id"] == (43).to_bytes(8, "big")


class TestErrors:
    async def test_unauthenticated_reauthenticates_and_resubscribes(self, running: Any) -> None:
        rig = Harness(store=FakeStore(STORED))
        running(rig.stream())
        await rig.subscription()
        rig.org.respond(PubSubAuthError("UNAUTHENTICATED"))
        await eventually(lambda: rig.org.connections == 2 and len(rig.org.subscriptions) == 2)
        assert rig.tokens.renewed == 1

    async def test_an_invalid_replay_id_polls_then_subscribes_latest(self, running: Any) -> None:
        rig = Harness(store=FakeStore(STORED))
        stream = rig.stream()
        running(stream)
        await rig.subscription()
        rig.org.respond(ReplayIdInvalidError("corrupted", CHANNEL))
        await eventually(lambda: rig.org.connections == 2 and len(rig.org.subscriptions) == 2)
        assert (await rig.subscription()).requests[0].replay_preset == pb.LATEST
        await eventually(lambda: stream.ready)
        assert rig.catch_up.polls == [["Lead"], ["Lead"]]  # the resync poll, then the closing poll

    async def test_the_events_limit_tells_the_governor_and_returns(self) -> None:
        rig = Harness(store=FakeStore(STORED))

        class Governor:
            told = 0

            def events_exhausted(self) -> None:
                self.told += 1

        governor = Governor()
        stream = rig.stream()
        stream._governor = governor
        task = asyncio.create_task(stream.run(asyncio.Event()))
        await rig.subscription()
        rig.org.respond(DeliveryLimitError("limit"))
        await asyncio.wait_for(task, 5)
        assert governor.told == 1


def _rpc_error(code: grpc.StatusCode, error_code: str = "") -> grpc.aio.AioRpcError:
    trailers = grpc.aio.Metadata(("error-code", error_code)) if error_code else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details="details")


class TestWire:
    @pytest.mark.parametrize(("error", "expected"), [
        (_rpc_error(grpc.StatusCode.UNAUTHENTICATED, "sfdc.platform.eventbus.grpc.service.auth.error"),
         PubSubAuthError),
        (_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, REPLAY_ID_CORRUPTED), ReplayIdInvalidError),
        (_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "sfdc.platform.eventbus.grpc.subscription.limit.exceeded"), DeliveryLimitError),
        (_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED), RetriableError),
        (_rpc_error(grpc.StatusCode.PERMISSION_DENIED), FatalError),
        (_rpc_error(grpc.StatusCode.NOT_FOUND), FatalError),
        (_rpc_error(grpc.StatusCode.UNAVAILABLE), RetriableError),
        (_rpc_error(grpc.StatusCode.INTERNAL), RetriableError),
        (OSError("reset"), RetriableError),
    ])
    def test_grpc_errors_map_by_status_and_error_code(self, error: BaseException, expected: type) -> None:
        translated = translate(error, CHANNEL)
        assert type(translated) is expected
        if isinstance(translated, ReplayIdInvalidError):
            assert translated.channel == CHANNEL

    @pytest.mark.parametrize(("text", "target", "tls"), [
        ("api.pubsub.salesforce.com:7443", "api.pubsub.salesforce.com:7443", True),
        ("127.0.0.1:7011", "127.0.0.1:7011", False),
        ("localhost:7011", "localhost:7011", False),
        ("[::1]:7011", "[::1]:7011", False),
        ("http://emulator:7011", "emulator:7011", False),
        ("https://127.0.0.1:7011/", "127.0.0.1:7011", True),
    ])
    def test_endpoints_use_tls_unless_loopback_or_http(self, text: str, target: str, tls: bool) -> None:
        assert Endpoint.parse(text) == Endpoint(target, tls)

    @pytest.mark.parametrize(("token", "tenant"), [
        ("00D000000000001!AQabc", "00D000000000001"), ("no-bang", ""), ("005x!y", "")])
    def test_the_tenant_id_is_the_tokens_org_prefix(self, token: str, tenant: str) -> None:
        assert tenant_id(token) == tenant
