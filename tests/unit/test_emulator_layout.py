"""The emulator's state holds plain data: it imports none of its route handlers (no cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HANDLERS = {"emulator.auth", "emulator.cometd", "emulator.control", "emulator.rest",
            "emulator.streaming_control", "emulator.app"}


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, `if TYPE_CHECKING:` blocks included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


class TestEmulatorState:
    def test_state_imports_no_handler(self) -> None:
        """`emulator.state` (and the data modules it holds) import no handler, not even for types."""
        data_modules = {m for m in _imports(ROOT / "emulator" / "state.py") if m.startswith("emulator.")}
        for module in {"emulator.state", *data_modules}:
            path = ROOT / (module.replace(".", "/") + ".py")
            assert _imports(path) & HANDLERS == set(), module

    def test_cometd_does_not_import_its_control_routes(self) -> None:
        """The streaming control routes depend on the CometD server, not the other way round."""
        assert "emulator.streaming_control" not in _imports(ROOT / "emulator" / "cometd.py")
