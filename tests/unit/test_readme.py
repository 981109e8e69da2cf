"""The README is part of the contract: its opening commands and its configuration table."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _contract_variables() -> dict[str, object]:
    out: dict[str, object] = {}
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for name, sub in model.model_fields.items():
            default = sub.get_default(call_default_factory=True)
            out[f"SFSYNC_{section.upper()}__{name.upper()}"] = default
    return out


def _readme_table() -> dict[str, str]:
    rows = re.findall(r"^\| `(SFSYNC_[A-Z_]+)` \| ([^|]*) \|", (ROOT / "README.md").read_text(), re.M)
    return {name: default.strip() for name, default in rows}


def _shown(default: object) -> str:
    if default is None or default == []:
        return "—"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, list):
        return "`" + ",".join(map(str, default)) + "`"
    value = getattr(default, "value", None) or getattr(default, "get_secret_value", lambda: None)()
    return f"`{value if value is not None else default}`"


class TestReadmeConfigurationTable:
    def test_every_setting_is_documented_with_its_default(self) -> None:
        """Each Settings field appears in the README table with the default Settings really has."""
        table = _readme_table()
        for name, default in _contract_variables().items():
            assert name in table, f"{name} missing from README configuration table"
            assert table[name] == _shown(default), f"{name}: README says {table[name]}"

    def test_table_documents_nothing_that_does_not_exist(self) -> None:
        """No README row names a variable Settings does not read."""
        assert set(_readme_table()) <= set(_contract_variables())


class TestReadmeOpening:
    def test_opens_with_the_demo_and_test_commands(self) -> None:
        """The first code block holds the demo command and the test command, in that order."""
        text = (ROOT / "README.md").read_text()
        block = re.search(r"```bash\n(.*?)```", text, re.S)
        assert block is not None and text.index("```bash") < text.index("\n---")
        commands = [line for line in block.group(1).splitlines() if line and not line.startswith("#")]
        assert commands == [
            "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/sfsync demo",
            ".ci/run",
        ]


class TestMappingsExample:
    def test_example_mappings_file_is_valid(self) -> None:
        """mappings.example.toml, which the README points admins to, loads without error."""
        from settings import load_mappings

        mappings = load_mappings(ROOT / "mappings.example.toml")
        assert mappings.accounts_importable()
        assert {m.sf_field for m in mappings.for_object("Contact")} >= {"FirstName", "AccountId"}
