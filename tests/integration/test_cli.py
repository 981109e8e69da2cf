"""`sfsync` commands against a running admin API (real HTTP, sync logs in a real SecantusDB)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog.testing

from reconciler.store import Store
from reconciler.sync_logs import SyncLog
from service.cli import main
from tests.support.admin import TOKEN, RunningAdmin, running_admin
from tests.support.secantus import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def admin(store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[RunningAdmin]:
    monkeypatch.chdir(tmp_path)  # no stray .env from the checkout
    monkeypatch.delenv("SFSYNC_ENV_FILE", raising=False)
    monkeypatch.setenv("SFSYNC_ADMIN__TOKEN", TOKEN)
    # capture_logs: the in-process server's log lines would otherwise share stdout with the CLI's
    with structlog.testing.capture_logs():
        async with running_admin(store) as running:
            monkeypatch.setenv("SFSYNC_ADMIN__PORT", running.url.rsplit(":", 1)[1])
            yield running


async def sfsync(*argv: str) -> int:
    """Run the CLI in a thread: it blocks on HTTP while the admin app serves on this loop."""
    return await asyncio.to_thread(main, list(argv))


class TestLogs:
    async def test_table_newest_first(self, admin: RunningAdmin, capsys: pytest.CaptureFixture[str]) -> None:
        """`sfsync logs` prints an aligned table, newest first, with the ids `retry` needs."""
        assert await sfsync("logs") == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split()[:3] == ["ID", "TIME", "(UTC)"]
        assert [line.split()[0] for line in lines[1:]] == list(reversed(admin.log_ids))
        status_col = lines[0].index("STATUS")
        assert {line[status_col:].split()[0] for line in lines[1:]} == {"success", "failed"}
        assert "REQUIRED_FIELD_MISSING" in lines[1]

    async def test_filters(self, admin: RunningAdmin, capsys: pytest.CaptureFixture[str]) -> None:
        """--status and --record narrow the list."""
        assert await sfsync("logs", "--status", "failed", "--record", "00Q000000000001AAA") == 0
        rows = capsys.readouterr().out.splitlines()[1:]
        assert [r.split()[0] for r in rows] == [admin.log_ids[1]]

    async def test_open_failures(self, admin: RunningAdmin, capsys: pytest.CaptureFixture[str]) -> None:
        """--open lists failed logs neither retried since nor resolved."""
        await admin.store.mark_sync_log(admin.log_ids[1], retried_by=admin.log_ids[0])
        assert await sfsync("logs", "--open") == 0
        rows = capsys.readouterr().out.splitlines()[1:]
        assert [r.split()[0] for r in rows] == [admin.log_ids[5]]

    async def test_json(self, admin: RunningAdmin, capsys: pytest.CaptureFixture[str]) -> None:
        """--json prints the API's page for scripts."""
        assert await sfsync("logs", "--json", "--limit", "2") == 0
        page = json.loads(capsys.readouterr().out)
        assert [i["id"] for i in page["items"]] == admin.log_ids[:-3:-1] and page["next_cursor"]

    async def test_bad_limit_is_an_api_error(self, admin: RunningAdmin,
                                             capsys: pytest.CaptureFixture[str]) -> None:
        """A value the API refuses exits 1 with the API's reason."""
        assert await sfsync("logs", "--limit", "9999") == 1
        assert "limit must be an integer from 1 to 500" in capsys.readouterr().err


class TestRetryImportStatus:
    async def test_retry_one(self, admin: RunningAdmin, capsys: pytest.CaptureFixture[str]) -> None:
        """`sfsync retry ID` retries that log and says what happened."""
        assert await sfsync("retry", admin.log_ids[1]) == 0
        assert capsys.readouterr().out.startswith(f"Retried {admin.log_ids[1]}: status success")
        assert admin.jobs.calls == [("retry", admin.log_ids[1])]

    async def test_retry_all_json(self, admin: RunningAdmin, capsys: pytest.CaptureFixture[str]) -> None:
        """`sfsync retry --all --json` prints the summary as JSON."""
        assert await sfsync("retry", "--all", "--json") == 0
        assert json.loads(capsys.readouterr().out)["retried"] == 2

    async def test_retry_unknown_id(self, admin: RunningAdmin, capsys: pytest.CaptureFixture[str]) -> None:
        """Retrying a log that does not exist exits 1 with a reason."""
        assert await sfsync("retry", "0" * 24) == 1
        assert "404 not_found" in capsys.readouterr().err

    async def test_retry_of_an_already_retried_log(self, admin: RunningAdmin,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
        """Issue 10 item 6: retrying a row already retried is an error (exit 1), and runs nothing."""
        assert await sfsync("retry", admin.log_ids[1]) == 0
        capsys.readouterr()
        assert await sfsync("retry", admin.log_ids[1]) == 1
        assert "409 already_retried" in capsys.readouterr().err
        assert admin.jobs.calls == [("retry", admin.log_ids[1])]

    async def test_import_of_an_id_salesforce_does_not_have(self, admin: RunningAdmin,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
        """Issue 10 item 6: importing a record Salesforce does not return is an error (exit 1)."""
        admin.jobs.missing.add("00Q00000000000MAAA")
        assert await sfsync("import", "00Q00000000000MAAA") == 1
        assert "404 not_found" in capsys.readouterr().err

    async def test_import(self, admin: RunningAdmin, capsys: pytest.CaptureFixture[str]) -> None:
        """`sfsync import SF_ID` re-imports one record."""
        assert await sfsync("import", "00Q000000000009AAA") == 0
        assert "Imported 00Q000000000009AAA" in capsys.readouterr().out
        assert admin.jobs.calls == [("import", "00Q000000000009AAA")]

    async def test_status(self, admin: RunningAdmin, capsys: pytest.CaptureFixture[str]) -> None:
        """`sfsync status` shows mode and budget; --json the raw status."""
        assert await sfsync("status") == 0
        out = capsys.readouterr().out
        assert "mode" in out and "streaming" in out and "12345 / 100000 used (87.7% left)" in out
        assert await sfsync("status", "--json") == 0
        assert json.loads(capsys.readouterr().out)["queue_depth"] == {"inbound": 0, "outbox": 2}


class TestConnectionErrors:
    async def test_wrong_token(self, admin: RunningAdmin, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
        """A wrong token exits 1 and says which variable to set."""
        monkeypatch.setenv("SFSYNC_ADMIN__TOKEN", "wrong")
        assert await sfsync("status") == 1
        assert "401" in (err := capsys.readouterr().err) and "SFSYNC_ADMIN__TOKEN" in err

    async def test_service_not_running(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
        """Nothing listening: exit 3 and a clear message, no traceback."""
        monkeypatch.chdir(tmp_path)
        assert await sfsync("logs", "--url", f"http://127.0.0.1:{free_port()}") == 3
        err = capsys.readouterr().err
        assert "cannot reach the admin API" in err and "is the service running" in err
        assert "Traceback" not in err


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
    env.update({
        "SFSYNC_SALESFORCE__AUTH_FLOW": "client_credentials",
        "SFSYNC_SALESFORCE__CLIENT_ID": "sample-client-id",
        "SFSYNC_SALESFORCE__CLIENT_SECRET": "sample-client-secret",
        "SFSYNC_SYNC__MAPPINGS_FILE": str(REPO / "mappings.example.toml"),
        **extra,
    })
    return env


async def _run_module(tmp_path: Path, env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "listener", *argv, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class TestCheckConfig:
    async def test_bad_value_is_one_line_and_exit_2(self, tmp_path: Path) -> None:
        """A bad setting prints one line naming the variable, exits 2, and shows no traceback."""
        code, out, err = await _run_module(tmp_path, _env(tmp_path, SFSYNC_SYNC__FREQUENCY_MINUTES="7"),
                                           "check-config")
        assert code == 2 and out == ""
        assert len(err.strip().splitlines()) == 1
        assert "SFSYNC_SYNC__FREQUENCY_MINUTES" in err and "Traceback" not in err

    async def test_bad_mappings_file_is_one_line(self, tmp_path: Path) -> None:
        """A mappings problem names the key, on one line."""
        bad = tmp_path / "m.toml"
        bad.write_text('[people.email]\ndirection = "sideways"\nlead = "Email"\n')
        code, _, err = await _run_module(tmp_path, _env(tmp_path, SFSYNC_SYNC__MAPPINGS_FILE=str(bad)),
                                         "check-config")
        assert code == 2 and len(err.strip().splitlines()) == 1 and "people.email" in err

    @pytest.mark.parametrize("command", ["check-config", "run"])
    async def test_a_rule_without_the_owner_mapping_refuses_to_start(self, tmp_path: Path,
                                                                     command: str) -> None:
        """The create rules are on (the defaults) but Owner CRM ID is not mapped: one line naming
        the missing mapping, exit 2, before anything connects."""
        mappings = tmp_path / "m.toml"
        mappings.write_text('[people.last_name]\nlead = "LastName"\n')
        code, out, err = await _run_module(
            tmp_path, _env(tmp_path, SFSYNC_SYNC__MAPPINGS_FILE=str(mappings),
                           SFSYNC_ADMIN__TOKEN="a-long-enough-admin-token-0123456789"), command)
        assert code == 2 and out == "", err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert "[people.owner_crm_id]" in err and "rules.create_person_from_salesforce" in err

    async def test_good_config_prints_the_effective_settings(self, tmp_path: Path) -> None:
        """With the example mappings the effective configuration prints, secrets masked."""
        code, out, err = await _run_module(tmp_path, _env(tmp_path), "check-config")
        assert code == 0, err
        assert "SFSYNC_SYNC__FREQUENCY_MINUTES=10" in out and "sample-client-secret" not in out


class TestFollow:
    async def test_follow_prints_new_logs_as_they_arrive(self, admin: RunningAdmin, tmp_path: Path) -> None:
        """`sfsync logs --follow` prints history oldest first, then each new log once."""
        env = {**os.environ, "SFSYNC_ADMIN__PORT": admin.url.rsplit(":", 1)[1]}
        exe = shutil.which("sfsync", path=str(Path(sys.executable).parent)) or "sfsync"
        proc = await asyncio.create_subprocess_exec(
            exe, "logs", "--follow", "--interval", "0.2", "--status", "failed", cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            lines = [(await asyncio.wait_for(proc.stdout.readline(), 20)).decode() for _ in range(3)]
            assert [line.split()[0] for line in lines] == ["ID", admin.log_ids[1], admin.log_ids[5]]
            (new_id,) = await admin.store.insert_sync_logs([
                SyncLog(source="salesforce", type="update", status="failed", error="UNABLE_TO_LOCK_ROW")])
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line.split()[0] == new_id and "UNABLE_TO_LOCK_ROW" in line
        finally:
            proc.terminate()
            await proc.wait()


    async def test_follow_with_a_limit_does_not_dump_older_history(
        self, admin: RunningAdmin, tmp_path: Path
    ) -> None:
        """`--follow --limit 1` prints the newest log, then only logs newer than it: never the
        older history the first page left out."""
        env = {**os.environ, "SFSYNC_ADMIN__PORT": admin.url.rsplit(":", 1)[1]}
        exe = shutil.which("sfsync", path=str(Path(sys.executable).parent)) or "sfsync"
        proc = await asyncio.create_subprocess_exec(
            exe, "logs", "--follow", "--interval", "0.2", "--status", "failed", "--limit", "1",
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            lines = [(await asyncio.wait_for(proc.stdout.readline(), 20)).decode() for _ in range(2)]
            assert [line.split()[0] for line in lines] == ["ID", admin.log_ids[5]]
            await asyncio.sleep(1.0)  # a few polls: nothing older may appear
            (new_id,) = await admin.store.insert_sync_logs([
                SyncLog(source="salesforce", type="update", status="failed", error="UNABLE_TO_LOCK_ROW")])
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line.split()[0] == new_id
        finally:
            proc.terminate()
            await proc.wait()


async def _streams_over_pubsub(port: int, token: str) -> None:
    """The running stream is the Pub/Sub source: its replay ids are Pub/Sub's (hex text)."""
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.get(f"http://127.0.0.1:{port}/api/status") as r:
        status = await r.json()
    assert status["source"] == "stream", status
    assert any(isinstance(v, str) for v in status["replay_ids"].values()), status


def _children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class TestDemo:
    @pytest.mark.parametrize("api", ["cometd", "pubsub"])
    async def test_demo_syncs_both_ways_and_stops_cleanly(self, tmp_path: Path, api: str) -> None:
        """`sfsync demo` shows successes, a conversion and a failure, then SIGTERM leaves no children;
        `SFSYNC_SYNC__STREAM_API=pubsub` streams over the emulator's Pub/Sub API."""
        import aiohttp

        env = {k: v for k, v in os.environ.items() if not k.startswith("SFSYNC_")}
        env["SFSYNC_SYNC__STREAM_API"] = api
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "listener", "demo", "--duration", "100", "--port", str(port),
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        assert proc.stdout is not None
        output: list[str] = []
        try:
            token = ""
            while not output or "Press Ctrl-C" not in output[-1]:  # to the banner's end
                line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
                assert line, "demo exited early:\n" + "".join(output)
                output.append(line)
                if "admin token" in line:
                    token = line.split(":", 1)[1].strip()
            assert any(f"http://127.0.0.1:{port}/logs" in line for line in output)
            children = _children_of(proc.pid)
            assert len(children) == 2  # the emulator and SecantusDB
            seen: set[tuple[str, str]] = set()
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
                for _ in range(120):
                    try:  # the admin API comes up once the service has started
                        async with http.get(f"http://127.0.0.1:{port}/api/sync-logs",
                                            params={"limit": "500"}) as r:
                            if r.status == 200:
                                seen = {(i["type"], i["status"]) for i in (await r.json())["items"]}
                    except aiohttp.ClientConnectionError:
                        pass
                    if {("convert", "success"), ("update", "success")} <= seen and \
                            any(status == "failed" for _, status in seen):
                        break
                    await asyncio.sleep(0.5)
            assert ("convert", "success") in seen, seen
            assert any(status == "failed" for _, status in seen), seen
            [stream_line] = [line for line in output if "CDC stream" in line]
            assert ("Pub/Sub API at" in stream_line) == (api == "pubsub"), stream_line
            if api == "pubsub":
                await _streams_over_pubsub(port, token)
            proc.terminate()
            rest, _ = await asyncio.wait_for(proc.communicate(), 40)
            output.append(rest.decode())
            assert proc.returncode == 0, "".join(output)
            assert "Demo stopped." in output[-1]
            assert not [pid for pid in children if _alive(pid)]
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()  # its children still get SIGTERM (parent-death signal)
                    await proc.wait()
