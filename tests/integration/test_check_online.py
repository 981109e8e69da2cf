"""`sfsync check-config --online` against the emulator and a real SecantusDB: one ✓/✗ line per
check, exit 0 only when every check passed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import structlog.testing

from emulator.state import SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET, EmulatorConfig
from service.cli import main
from tests.support.emulator import RunningEmulator, running_emulator
from tests.support.secantus import free_port
from tests.support.service import http

REPO = Path(__file__).resolve().parents[2]
TOKEN = "t" * 40
Configure = Callable[..., None]
SAMPLE_MAPPINGS = (REPO / "emulator" / "sample_mappings.toml").read_text(encoding="utf-8")


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    with structlog.testing.capture_logs():
        async with running_emulator(EmulatorConfig(seed="sample")) as running:
            yield running


@pytest.fixture
def configure(emulator: RunningEmulator, mongo_uri: str, database_name: str, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Configure:
    """Write the sample configuration (env file + mappings), with `overrides` applied."""
    monkeypatch.chdir(tmp_path)

    def write(mappings: str = SAMPLE_MAPPINGS, **overrides: str) -> None:
        env = {
            "SFSYNC_SALESFORCE__LOGIN_URL": emulator.base_url,
            "SFSYNC_SALESFORCE__AUTH_FLOW": "client_credentials",
            "SFSYNC_SALESFORCE__CLIENT_ID": SAMPLE_CLIENT_ID,
            "SFSYNC_SALESFORCE__CLIENT_SECRET": SAMPLE_CLIENT_SECRET,
            "SFSYNC_MONGODB__URI": mongo_uri,
            "SFSYNC_MONGODB__DATABASE": database_name,
            "SFSYNC_SYNC__MAPPINGS_FILE": str(tmp_path / "mappings.toml"),
            "SFSYNC_ADMIN__TOKEN": TOKEN,
            **overrides,
        }
        (tmp_path / "mappings.toml").write_text(mappings, encoding="utf-8")
        (tmp_path / "check.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()), encoding="utf-8")
        for key in [k for k in os.environ if k.startswith("SFSYNC_")]:
            monkeypatch.delenv(key)
        monkeypatch.setenv("SFSYNC_ENV_FILE", str(tmp_path / "check.env"))

    return write


async def check_online(capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """Run the CLI in a thread (the emulator serves on this loop); the ✓/✗ lines it printed."""
    code = await asyncio.to_thread(main, ["check-config", "--online"])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert SAMPLE_CLIENT_SECRET not in out.out + out.err and TOKEN not in out.out + out.err
    return code, [line for line in out.out.splitlines() if line.startswith(("✓", "✗"))]


def failed(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("✗")]


class TestOnlineCheck:
    async def test_sample_configuration_passes(self, configure: Configure,
                                               capsys: pytest.CaptureFixture[str]) -> None:
        """The demo's configuration against the emulator: every check ✓, exit 0."""
        configure()
        code, lines = await check_online(capsys)
        assert failed(lines) == []
        names = [line[2:].split(":")[0] for line in lines]
        assert names == [
            "Salesforce OAuth (client_credentials)", "API version", "Lead fields", "Contact fields",
            "Account fields", "Change Data Capture", "limits", "MongoDB answers", "MongoDB replica set",
            "MongoDB majority write", "MongoDB indexes", "admin token",
        ]
        assert code == 0

    async def test_missing_field(self, configure: Configure, capsys: pytest.CaptureFixture[str]) -> None:
        """A mapping to a field Lead does not have (`Titel`) names the key and the field."""
        configure(SAMPLE_MAPPINGS.replace('lead = "Title"', 'lead = "Titel"'))
        code, lines = await check_online(capsys)
        assert failed(lines) == ["✗ Lead fields: people.title: Lead has no field 'Titel' — fix: use the "
                                 "field's API name (Setup → Object Manager → Lead → Fields), or grant the "
                                 "integration user field access to it"]
        assert code == 1

    async def test_read_only_field_written_to_salesforce(self, configure: Configure,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
        """A formula field mapped both ways is refused: it can only flow from Salesforce."""
        configure(SAMPLE_MAPPINGS + '\n[people.score]\nlead = "Score__c"\n')
        code, lines = await check_online(capsys)
        [line] = failed(lines)
        assert line.startswith("✗ Lead fields: people.score: Lead.Score__c is read-only in Salesforce")
        assert 'fix: set direction = "from_salesforce"' in line
        assert code == 1

    async def test_read_only_field_inbound_is_fine(self, configure: Configure,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
        configure(SAMPLE_MAPPINGS + '\n[people.score]\nlead = "Score__c"\n'
                  'direction = "from_salesforce"\n')
        code, lines = await check_online(capsys)
        assert (code, failed(lines)) == (0, [])

    async def test_type_mismatch(self, configure: Configure, capsys: pytest.CaptureFixture[str]) -> None:
        """A Salesforce id field mapped to a plain local field does not suit it."""
        configure(SAMPLE_MAPPINGS.replace("[people.owner_crm_id]", "[people.owner]"))
        code, lines = await check_online(capsys)
        assert [line.split(" — ")[0] for line in failed(lines)] == [
            "✗ Lead fields: people.owner: Lead.OwnerId (reference) holds Salesforce ids; map it to a "
            "local *_crm_id field",
            "✗ Contact fields: people.owner: Contact.OwnerId (reference) holds Salesforce ids; map it to "
            "a local *_crm_id field",
        ]
        assert code == 1

    async def test_object_not_selected_for_cdc(self, configure: Configure, emulator: RunningEmulator,
                                               capsys: pytest.CaptureFixture[str]) -> None:
        """Contact missing from the Change Data Capture selection: the Tooling API query says so."""
        configure()
        selection = f"{emulator.base_url}/_emulator/change-events/selection"
        reply = await asyncio.to_thread(http, "POST", selection, json_body={"entities": ["Lead", "Account"]})
        assert reply.status == 200
        code, lines = await check_online(capsys)
        assert failed(lines) == [
            "✗ Change Data Capture: Contact not selected for Change Data Capture (without it the stream "
            "stays silent for them) — fix: Setup → Integrations → Change Data Capture: move Contact to "
            "Selected Entities, Save"]
        assert code == 1

    async def test_wrong_secret(self, configure: Configure, capsys: pytest.CaptureFixture[str]) -> None:
        """A wrong client secret fails OAuth; the other Salesforce checks are not run."""
        configure(SFSYNC_SALESFORCE__CLIENT_SECRET="not-the-secret")
        code, lines = await check_online(capsys)
        bad = failed(lines)
        assert bad[0] == ("✗ Salesforce OAuth (client_credentials): Salesforce authentication failed: "
                          "invalid_client: invalid client credentials — fix: check "
                          "SFSYNC_SALESFORCE__CLIENT_ID and CLIENT_SECRET against the connected app's "
                          "consumer key and secret")
        assert [line.split(":")[0] for line in bad[1:]] == [
            "✗ API version", "✗ Lead fields", "✗ Contact fields", "✗ Account fields",
            "✗ Change Data Capture", "✗ limits"]
        assert "not-the-secret" not in "\n".join(lines)
        assert code == 1

    async def test_unreachable_mongodb(self, configure: Configure,
                                       capsys: pytest.CaptureFixture[str]) -> None:
        """Nothing listens at the URI: MongoDB's line fails with a hint, its other checks are not run."""
        configure(
            SFSYNC_MONGODB__URI=f"mongodb://sfsync:hunter2@127.0.0.1:{free_port()}/?directConnection=true")
        code, lines = await check_online(capsys)
        bad = failed(lines)
        assert bad[0].startswith("✗ MongoDB answers: ")
        assert bad[0].endswith("— fix: check SFSYNC_MONGODB__URI's host and port, and that mongod runs "
                               "and is reachable")
        assert bad[1:] == ["✗ MongoDB replica set: not checked (MongoDB does not answer)",
                           "✗ MongoDB majority write: not checked (MongoDB does not answer)",
                           "✗ MongoDB indexes: not checked (MongoDB does not answer)"]
        assert "hunter2" not in "\n".join(lines)
        assert code == 1

    async def test_short_admin_token(self, configure: Configure, capsys: pytest.CaptureFixture[str]) -> None:
        configure(SFSYNC_ADMIN__TOKEN="short-token")
        code, lines = await check_online(capsys)
        assert failed(lines) == ["✗ admin token: SFSYNC_ADMIN__TOKEN is shorter than 32 characters — "
                                 "fix: set SFSYNC_ADMIN__TOKEN=$(openssl rand -hex 32)"]
        assert code == 1
