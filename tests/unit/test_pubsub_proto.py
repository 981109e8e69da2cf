"""The committed Pub/Sub stubs are what protoc makes of the committed `.proto`, which keeps
Salesforce's published `eventbus.v1` names and field numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from listener.sources.pubsub._proto import generate
from listener.sources.pubsub._proto import pubsub_api_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "listener" / "sources" / "pubsub" / "_proto"
EMULATOR = ROOT / "emulator" / "_pubsub_proto"


class TestCommittedStubs:
    def test_the_emulator_has_a_byte_identical_proto(self) -> None:
        assert (EMULATOR / "pubsub_api.proto").read_bytes() == (SERVICE / "pubsub_api.proto").read_bytes()

    @pytest.mark.parametrize("target", [SERVICE, EMULATOR], ids=["service", "emulator"])
    def test_regenerating_changes_nothing(self, target: Path, tmp_path: Path) -> None:
        """`python -m listener.sources.pubsub._proto.generate` would write the same files."""
        pytest.importorskip("grpc_tools")
        fresh = generate.generate(tmp_path)
        for name, text in fresh.items():
            assert (target / name).read_text(encoding="utf-8") == text, f"{target.name}/{name} is stale"


# Salesforce's published eventbus.v1 (github.com/forcedotcom/pub-sub-api, pubsub_api.proto).
PUBLISHED_FIELDS = {
    "FetchRequest": {"topic_name": 1, "replay_preset": 2, "replay_id": 3, "num_requested": 4,
                     "auth_refresh": 5},
    "FetchResponse": {"events": 1, "latest_replay_id": 2, "rpc_id": 3, "pending_num_requested": 4},
    "ConsumerEvent": {"event": 1, "replay_id": 2},
    "ProducerEvent": {"id": 1, "schema_id": 2, "payload": 3, "headers": 4},
    "EventHeader": {"key": 1, "value": 2},
    "TopicRequest": {"topic_name": 1},
    "TopicInfo": {"topic_name": 1, "tenant_guid": 2, "can_publish": 3, "can_subscribe": 4, "schema_id": 5,
                  "rpc_id": 6},
    "SchemaRequest": {"schema_id": 1},
    "SchemaInfo": {"schema_json": 1, "schema_id": 2, "rpc_id": 3},
    "PublishRequest": {"topic_name": 1, "events": 2, "auth_refresh": 3},
    "PublishResponse": {"results": 1, "schema_id": 2, "rpc_id": 3},
    "PublishResult": {"replay_id": 1, "error": 2, "correlation_key": 3},
    "Error": {"code": 1, "msg": 2},
}


class TestPublishedWireFormat:
    @pytest.mark.parametrize("message", sorted(PUBLISHED_FIELDS))
    def test_field_names_and_numbers(self, message: str) -> None:
        descriptor = pb.DESCRIPTOR.message_types_by_name[message]
        assert {f.name: f.number for f in descriptor.fields} == PUBLISHED_FIELDS[message]

    def test_enums_and_service(self) -> None:
        assert dict(pb.ReplayPreset.items()) == {"LATEST": 0, "EARLIEST": 1, "CUSTOM": 2}
        assert dict(pb.ErrorCode.items()) == {"UNKNOWN": 0, "PUBLISH": 1, "COMMIT": 2}
        service = pb.DESCRIPTOR.services_by_name["PubSub"]
        assert pb.DESCRIPTOR.package == "eventbus.v1" and pb.DESCRIPTOR.name == "pubsub_api.proto"
        methods = {m.name: (m.client_streaming if hasattr(m, "client_streaming") else None)
                   for m in service.methods}
        assert set(methods) == {"Subscribe", "GetSchema", "GetTopic", "Publish", "PublishStream",
                                "ManagedSubscribe"}
