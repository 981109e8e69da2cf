"""The emulator speaks the published Pub/Sub wire format: a client generated here, independently,
from the `.proto` (not the project's stubs or source), subscribes to `python -m emulator
--pubsub-port P` and decodes events with the schema `GetSchema` returns."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emulator.state import SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET
from tests.support.emulator import EmulatorProcess, start_emulator_process
from tests.support.secantus import free_port

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "listener" / "sources" / "pubsub" / "_proto" / "pubsub_api.proto"

# Runs in a separate interpreter whose sys.path holds only the generated stubs and site-packages.
CLIENT = r'''
import io, json, os, sys, threading, urllib.parse, urllib.request
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I left out the script's directory
import fastavro, grpc
import pubsub_api_pb2 as pb, pubsub_api_pb2_grpc as pb_grpc

base, target, client_id, secret, wanted = sys.argv[1:6]
form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": client_id,
                               "client_secret": secret}).encode()
token = json.load(urllib.request.urlopen(base + "/services/oauth2/token", form))
org_id = token["id"].rstrip("/").split("/")[-2]
metadata = (("accesstoken", token["access_token"]), ("instanceurl", token["instance_url"]),
            ("tenantid", org_id))
stub = pb_grpc.PubSubStub(grpc.insecure_channel(target))
topic = stub.GetTopic(pb.TopicRequest(topic_name="/data/LeadChangeEvent"), metadata=metadata)

done = threading.Event()
def requests():
    yield pb.FetchRequest(topic_name=topic.topic_name, replay_preset=pb.ReplayPreset.EARLIEST,
                          num_requested=int(wanted))
    done.wait(30)

events = []
call = stub.Subscribe(requests(), metadata=metadata)
for response in call:
    events.extend(response.events)
    if len(events) >= int(wanted):
        break
done.set()
call.cancel()

def field_names(bitmaps, schema):
    # The documented bitmap form: "0x..." over top-level fields, "pos-0x..." over a compound's fields.
    names = []
    for item in bitmaps:
        if "-" in item:
            pos, bits = item.split("-")
            parent = schema["fields"][int(pos)]
            record = [t for t in parent["type"] if isinstance(t, dict)][0]
            value = int(bits, 16)
            names += [parent["name"] + "." + f["name"]
                      for i, f in enumerate(record["fields"]) if value >> i & 1]
        else:
            value = int(item, 16)
            names += [f["name"] for i, f in enumerate(schema["fields"]) if value >> i & 1]
    return names

out = {"topic": {"name": topic.topic_name, "schema_id": topic.schema_id,
                 "can_subscribe": topic.can_subscribe}, "events": []}
for event in events:
    info = stub.GetSchema(pb.SchemaRequest(schema_id=event.event.schema_id), metadata=metadata)
    schema = json.loads(info.schema_json)
    record = fastavro.schemaless_reader(io.BytesIO(event.event.payload), fastavro.parse_schema(schema), None)
    header = record["ChangeEventHeader"]
    out["events"].append({"replay_id": event.replay_id.hex(), "schema_id": info.schema_id,
                          "changeType": header["changeType"], "recordIds": header["recordIds"],
                          "changedFields": field_names(header["changedFields"], schema),
                          "Name": record.get("Name"), "Company": record.get("Company"),
                          "LastModifiedDate": record.get("LastModifiedDate")})
out["project_modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("listener", "emulator"))
print(json.dumps(out))
'''


@pytest.fixture
def emulator() -> Iterator[tuple[EmulatorProcess, int]]:
    pubsub_port = free_port()
    process = start_emulator_process("--pubsub-port", str(pubsub_port))
    try:
        yield process, pubsub_port
    finally:
        process.stop()


def _http(method: str, url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, json.dumps(body).encode(), method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _generate_client(directory: Path) -> None:
    from grpc_tools import protoc

    (directory / "pubsub_api.proto").write_bytes(PROTO.read_bytes())
    assert protoc.main(["protoc", f"-I{directory}", f"--python_out={directory}",
                        f"--grpc_python_out={directory}", str(directory / "pubsub_api.proto")]) == 0
    (directory / "client.py").write_text(CLIENT, encoding="utf-8")


class TestIndependentClient:
    def test_subscribes_and_decodes_with_the_schema_from_get_schema(
            self, emulator: tuple[EmulatorProcess, int], tmp_path: Path) -> None:
        """EARLIEST with num_requested=2: a create, then an update whose changedFields bitmap
        names `Company` and the nested `Name.LastName`."""
        pytest.importorskip("grpc_tools")
        process, pubsub_port = emulator
        control = f"{process.base_url}/_emulator"
        records = {"Lead": [{"LastName": "Hopper", "Company": "Navy"}]}
        seeded = _http("POST", f"{control}/seed", {"emit_events": True, "records": records})
        sf_id = seeded["ids"]["Lead"][0]
        _http("PATCH", f"{control}/records/Lead/{sf_id}", {"LastName": "Hopper-Murray", "Company": "Yale"})
        _generate_client(tmp_path)

        result = subprocess.run(
            [sys.executable, "-I", str(tmp_path / "client.py"), process.base_url, f"127.0.0.1:{pubsub_port}",
             SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET, "2"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)

        assert out["project_modules"] == []
        assert out["topic"]["name"] == "/data/LeadChangeEvent" and out["topic"]["can_subscribe"]
        created, updated = out["events"]
        assert created["schema_id"] == out["topic"]["schema_id"]
        assert (created["changeType"], created["recordIds"]) == ("CREATE", [sf_id])
        assert created["Name"]["LastName"] == "Hopper" and created["Company"] == "Navy"
        assert isinstance(created["LastModifiedDate"], int)  # epoch milliseconds
        assert updated["changeType"] == "UPDATE" and updated["Company"] == "Yale"
        assert {"Company", "Name.LastName"} <= set(updated["changedFields"])
        assert int(updated["replay_id"], 16) > int(created["replay_id"], 16)
