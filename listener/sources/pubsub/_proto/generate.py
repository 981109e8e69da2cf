"""Regenerate the committed Pub/Sub API stubs: `python -m listener.sources.pubsub._proto.generate`.

The stubs are committed (CI does not run protoc); `tests/unit/test_pubsub_proto.py` regenerates
them into a temporary directory and fails when they differ from the committed ones. Needs the dev
dependency `grpcio-tools`.

Two copies are written from the one `.proto`: the service's (this directory) and the emulator's
(`emulator/_pubsub_proto/`, which may not import `listener`). Both register the same file name
(`pubsub_api.proto`) with identical content, so protobuf accepts both in one process.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "pubsub_api.proto"
ROOT = HERE.parents[3]
TARGETS = (HERE, ROOT / "emulator" / "_pubsub_proto")
GENERATED = ("pubsub_api_pb2.py", "pubsub_api_pb2.pyi", "pubsub_api_pb2_grpc.py")
_GRPC_IMPORT = "import pubsub_api_pb2 as pubsub__api__pb2"


def generate(out_dir: Path) -> dict[str, str]:
    """Run protoc on `pubsub_api.proto` into `out_dir`; returns each generated file's text."""
    from grpc_tools import protoc  # dev dependency, imported only when generating

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copy(PROTO, work / PROTO.name)
        args = ["protoc", f"-I{work}", f"--python_out={work}", f"--pyi_out={work}",
                f"--grpc_python_out={work}", str(work / PROTO.name)]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed")
        texts: dict[str, str] = {}
        for name in GENERATED:
            text = (work / name).read_text(encoding="utf-8")
            # The grpc plugin imports the messages as a top-level module; ours live in a package.
            texts[name] = text.replace(_GRPC_IMPORT, f"from . {_GRPC_IMPORT}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (out_dir / name).write_text(text, encoding="utf-8")
    return texts


def main() -> None:
    for target in TARGETS:
        target.mkdir(parents=True, exist_ok=True)
        if target != HERE:
            shutil.copy(PROTO, target / PROTO.name)
        generate(target)
        print(f"generated {', '.join(GENERATED)} in {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
