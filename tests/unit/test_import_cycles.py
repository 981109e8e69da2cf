"""No import cycles among the project's modules, type-only (`if TYPE_CHECKING:`) imports included.

A cycle, even one only the type checker follows, means two modules cannot be understood or
moved apart; the layering test says which package may import which, this one that inside a
package the arrows never come back.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("settings", "reconciler", "listener", "service", "emulator", "bench")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _targets(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules `name` imports (a package's own submodules excepted: `__init__` re-exports)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and not name.startswith(candidate + "."):
                found.add(candidate)
    return found


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


class TestImportCycles:
    def test_the_checker_finds_a_cycle(self) -> None:
        """The detector is live: a two-module loop is reported, a chain is not."""
        assert find_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
        assert find_cycles({"a": {"b"}, "b": {"c"}}) == []

    @pytest.mark.parametrize("package", PACKAGES)
    def test_no_cycles(self, package: str) -> None:
        """No module of the project reaches itself through imports, type-only ones included."""
        known = _modules()
        graph = {name: _targets(name, path, known) for name, path in known.items()}
        cycles = [c for c in find_cycles(graph) if any(m.split(".")[0] == package for m in c)]
        assert cycles == []
