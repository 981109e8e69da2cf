"""Rules the test suite keeps about itself (issue 14, "the suite's own guarantees").

A test of the project's own code runs or fails; it never skips because that code did not
import -- a broken import would otherwise turn a red test into a quiet "s". Skips are only for
what the project does not ship (a browser binary, a third-party extra).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
PROJECT = ("settings", "reconciler", "listener", "service", "emulator", "bench", "tests")


def _is_project(module: str) -> bool:
    return module.split(".")[0] in PROJECT


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        return f"{func.value.id}.{func.attr}"
    return func.id if isinstance(func, ast.Name) else ""


def skips_of_project_code(source: str) -> list[str]:
    """`importorskip` of a project module, and `except ImportError` handlers around an import
    of a project module (whatever they do: skip, pass, fall back)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and _call_name(node) in ("pytest.importorskip", "importorskip"):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _is_project(arg.value):
                found.append(f"line {node.lineno}: importorskip({arg.value!r})")
        if isinstance(node, ast.Try) and _catches_import_error(node):
            for inner in node.body:
                for sub in ast.walk(inner):
                    module = _imported(sub)
                    if module and _is_project(module):
                        line = getattr(sub, "lineno", "?")
                        found.append(f"line {line}: import of {module} guarded by except ImportError")
    return found


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(k, ast.Name) and k.id in ("ImportError", "ModuleNotFoundError") for k in kinds):
            return True
    return False


def _imported(node: ast.AST) -> str | None:
    if isinstance(node, ast.ImportFrom) and not node.level:
        return node.module
    if isinstance(node, ast.Import):
        return node.names[0].name
    return None


class TestNoTestSkipsTheProjectsOwnCode:
    def test_no_importorskip_or_guarded_import_of_project_modules(self) -> None:
        """No file under tests/ skips (or quietly survives) a failing import of the project."""
        offenders = {
            str(path.relative_to(ROOT)): hits
            for path in sorted(TESTS.rglob("*.py"))
            if (hits := skips_of_project_code(path.read_text(encoding="utf-8")))
        }
        assert offenders == {}

    @pytest.mark.parametrize(
        ("source", "expected"),
        [
            ('pytest.importorskip("service.supervisor")', ["line 1: importorskip('service.supervisor')"]),
            ('importorskip("listener")', ["line 1: importorskip('listener')"]),
            ('pytest.importorskip("playwright.async_api")', []),  # third party: may skip
            ("try:\n    from reconciler import x\nexcept ImportError:\n    pytest.skip('no')\n",
             ["line 2: import of reconciler guarded by except ImportError"]),
            ("try:\n    import yaml\nexcept ModuleNotFoundError:\n    yaml = None\n", []),
            ("from service import supervisor\n", []),
        ],
    )
    def test_the_rule_itself(self, source: str, expected: list[str]) -> None:
        """What counts as skipping the project's own code, and what does not."""
        assert skips_of_project_code(source) == expected
