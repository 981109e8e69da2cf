"""Modules a service does not use stay out of its memory: the Pub/Sub source's gRPC, protobuf
and Avro (13 MiB of RSS) load only when `SFSYNC_SYNC__STREAM_API=pubsub` builds that source."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("grpc", "google.protobuf", "fastavro")


def loaded_after(statement: str) -> set[str]:
    script = f"import sys\n{statement}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(ROOT)})
    return set(out.stdout.split())


def test_the_service_and_its_sources_do_not_load_the_pubsub_stack() -> None:
    assert loaded_after("import service.supervisor, listener.sources") == set()


def test_the_pubsub_source_is_still_importable_from_the_sources_package() -> None:
    assert loaded_after("from listener.sources import PubSubStream") >= {"grpc"}
