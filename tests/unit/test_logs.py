"""Logging: JSON lines with fixed keys, bound context, stdlib routing, secrets never printed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from service.logs import Redactor, add_secret, configure_logging, reset_logging, settings_secrets
from settings import AdminSettings, MongoSettings, SalesforceSettings, Settings
from settings.redaction import RUNTIME_SECRETS_KEPT

SECRET = "cs-9f8e7d6c"
TOKEN = "00Dxx0000001gEF!AQ4AQH0dMHZfz972Szmpsb.e5sbIn"


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    reset_logging()
    yield
    reset_logging()


@pytest.fixture
def out() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("INFO", "json", secrets=[SECRET], stream=stream)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class TestJsonLines:
    def test_standard_keys(self, out: io.StringIO) -> None:
        """One JSON object a line: timestamp (UTC, Z), level, logger, event, then the values."""
        structlog.get_logger("listener.sources.cometd").info("cdc_event", replay_id=42)
        [line] = lines(out)
        assert list(line)[:4] == ["timestamp", "level", "logger", "event"]
        assert line | {"timestamp": None} == {"timestamp": None, "level": "info",
                                              "logger": "listener.sources.cometd", "event": "cdc_event",
                                              "replay_id": 42}
        assert line["timestamp"].endswith("Z")
        stamp = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
        assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60

    def test_level_filters(self, out: io.StringIO) -> None:
        """Below the configured level nothing is written."""
        log = structlog.get_logger("x")
        log.debug("noise")
        log.warning("kept")
        assert [line["event"] for line in lines(out)] == ["kept"]

    def test_context_bound_with_contextvars(self, out: io.StringIO) -> None:
        """Context bound with structlog.contextvars appears on every line until unbound."""
        log = structlog.get_logger("listener.sources.polling")
        with structlog.contextvars.bound_contextvars(sf_id="00Q000000000001AAA", object="Lead"):
            log.info("applied")
        log.info("after")
        first, second = lines(out)
        assert (first["sf_id"], first["object"]) == ("00Q000000000001AAA", "Lead")
        assert "sf_id" not in second

    def test_stdout_by_default(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without a stream, lines go to stdout."""
        configure_logging("INFO", "json")
        structlog.get_logger("x").info("hello")
        assert json.loads(capsys.readouterr().out)["event"] == "hello"

    def test_reconfiguring_does_not_duplicate_lines(self) -> None:
        """Configuring twice still writes each event once."""
        stream = io.StringIO()
        configure_logging("INFO", "json", stream=stream)
        configure_logging("INFO", "json", stream=stream)
        structlog.get_logger("x").info("once")
        assert len(stream.getvalue().splitlines()) == 1

    def test_unknown_format_is_refused(self) -> None:
        """Only json and console exist."""
        with pytest.raises(ValueError, match="json or console"):
            configure_logging("INFO", "xml")


class TestStdlibRouting:
    @pytest.mark.parametrize("name", ["aiohttp.client", "aiocometd_ng.client", "aiosfstream_ng", "pymongo"])
    def test_library_logs_share_the_format(self, out: io.StringIO, name: str) -> None:
        """Libraries logging through stdlib produce the same JSON lines, with bound context."""
        with structlog.contextvars.bound_contextvars(channel="/data/LeadChangeEvent"):
            logging.getLogger(name).warning("reconnecting in %s s", 5)
        [line] = lines(out)
        assert (line["logger"], line["level"], line["event"]) == (name, "warning", "reconnecting in 5 s")
        assert line["channel"] == "/data/LeadChangeEvent"
        assert line["timestamp"].endswith("Z")


class TestRedaction:
    def test_configured_secret_in_values_and_nested(self, out: io.StringIO) -> None:
        """A configured secret is `***` in plain values, inside text and in nested structures."""
        structlog.get_logger("x").info("auth", form={"client_secret": SECRET}, note=f"used {SECRET}!")
        [line] = lines(out)
        assert line["form"] == {"client_secret": "***"}
        assert line["note"] == "used ***!"

    def test_bearer_tokens_without_configuration(self, out: io.StringIO) -> None:
        """Anything shaped like a Salesforce session id (00D...!...) is redacted."""
        structlog.get_logger("x").info("header", value=f"Authorization: Bearer {TOKEN}")
        assert lines(out)[0]["value"] == "Authorization: Bearer ***"

    def test_secrets_in_exception_text(self, out: io.StringIO) -> None:
        """Exception messages and tracebacks are redacted too."""
        try:
            raise RuntimeError(f"login failed for secret {SECRET} token {TOKEN}")
        except RuntimeError:
            structlog.get_logger("x").exception("auth_failed")
        text = out.getvalue()
        assert SECRET not in text and TOKEN not in text
        assert "RuntimeError: login failed for secret *** token ***" in lines(out)[0]["exception"]

    def test_secrets_in_stdlib_messages_and_tracebacks(self, out: io.StringIO) -> None:
        """Library log records (message, args and exc_info) are redacted."""
        try:
            raise ConnectionError(SECRET)
        except ConnectionError:
            logging.getLogger("aiohttp.client").exception("request with %s failed", SECRET)
        assert SECRET not in out.getvalue()
        assert lines(out)[0]["event"] == "request with *** failed"

    def test_secrets_learned_at_run_time(self, out: io.StringIO) -> None:
        """Secrets registered after configuration (new access tokens) are redacted from then on."""
        add_secret("emulator-token-123")
        structlog.get_logger("x").info("token", value="emulator-token-123")
        assert lines(out)[0]["value"] == "***"

    def test_console_format_is_redacted_too(self) -> None:
        """The human console renderer shows the same redacted values."""
        stream = io.StringIO()
        configure_logging("INFO", "console", secrets=[SECRET], stream=stream)
        structlog.get_logger("x").info("auth", value=SECRET)
        text = stream.getvalue()
        assert "auth" in text and "value=***" in text and SECRET not in text
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)


class TestRedactor:
    @pytest.mark.parametrize(
        ("secrets", "text", "expected"),
        [
            (["abcdefgh"], "xabcdefghx", "x***x"),  # 8+ characters: wherever it occurs
            (["abcd"], "xabcdx", "xabcdx"),  # shorter: only as a whole token
            (["abcdefgh", "abcdefghij"], "abcdefghij", "***"),  # the longer secret wins
            (["ab"], "ab", "***"),  # a short secret is still redacted, as a whole token
            (["ab"], "pw=ab; user ab@host", "pw=***; user ***@host"),
            (["ab"], "about a cab", "about a cab"),  # ...but never inside an ordinary word
            (["7"], "port 7 of 17", "port *** of 17"),
            ([], f"sid={TOKEN};", "sid=***;"),
            ([], "00Q000000000001AAA", "00Q000000000001AAA"),  # record ids are not tokens
            (["a.b*c"], "a.b*c", "***"),  # regex metacharacters are literal
        ],
    )
    def test_text(self, secrets: list[str], text: str, expected: str) -> None:
        """Secrets are replaced literally, longest first; short ones only as whole tokens."""
        assert Redactor(secrets).text(text) == expected

    def test_state_is_bounded(self) -> None:
        """Renewed access tokens replace old ones: the redactor keeps a bounded number."""
        redactor = Redactor(["configured-secret"])
        for n in range(1000):
            redactor.add_runtime(f"access-token-{n:04d}")
        assert redactor.size() <= 1 + RUNTIME_SECRETS_KEPT
        assert redactor.text("configured-secret access-token-0999") == "*** ***"

    def test_uri_credentials_and_secret_options_are_masked_in_any_text(self) -> None:
        """User info and secret query options of any URI in a message are masked, configured or not."""
        text = ("failed: mongodb://app:hunter2@db1:27017,db2/?replicaSet=rs0&tlsCertificateKeyFilePassword=kfp"
                "&authMechanismProperties=AWS_SESSION_TOKEN:tok123&w=majority")
        masked = Redactor().text(text)
        for secret in ("hunter2", "kfp", "tok123"):
            assert secret not in masked
        assert "db1:27017,db2" in masked and "replicaSet=rs0" in masked and "w=majority" in masked


class TestSettingsSecrets:
    def test_collects_every_secret(self) -> None:
        """Client secret, refresh token, admin token and the MongoDB password (raw and decoded)."""
        settings = Settings(
            salesforce=SalesforceSettings(client_secret=SecretStr("cs"), refresh_token=SecretStr("rt")),
            mongodb=MongoSettings(uri=SecretStr("mongodb://user:p%40ss@db:27017/?replicaSet=rs0")),
            admin=AdminSettings(token=SecretStr("adm")),
            _env_file=None,  # type: ignore[call-arg]
        )
        assert sorted(settings_secrets(settings)) == sorted(["cs", "rt", "adm", "p%40ss", "p@ss"])

    def test_secret_uri_options_are_secrets(self) -> None:
        """tlsCertificateKeyFilePassword and authMechanismProperties values count as secrets."""
        settings = Settings(
            mongodb=MongoSettings(uri=SecretStr(
                "mongodb://db/?tlsCertificateKeyFilePassword=k%21fp&authMechanismProperties="
                "AWS_SESSION_TOKEN:tok123&replicaSet=rs0")),
            _env_file=None,  # type: ignore[call-arg]
        )
        found = settings_secrets(settings)
        assert "k!fp" in found and "k%21fp" in found and "AWS_SESSION_TOKEN:tok123" in found
        assert "rs0" not in found
