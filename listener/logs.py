"""Logging: structlog JSON lines on stdout (or a console renderer), secrets redacted.

structlog and stdlib logging (aiohttp, aiocometd_ng, aiosfstream_ng, pymongo) share one
processor chain through `ProcessorFormatter`, so every line has the same keys:
`timestamp` (ISO-8601 UTC, `Z`), `level`, `event`, `logger`, plus context bound with
`structlog.contextvars` (`sf_id`, `object`, `channel`, ...). Redaction runs after exceptions
are formatted, so secrets never reach the output, not even inside a traceback.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, Literal, TextIO
from urllib.parse import unquote, urlsplit

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from settings import Settings

REDACTED = "***"
MIN_SECRET_LENGTH = 4  # shorter values would blank out ordinary words in every line
# A Salesforce session id / access token: org id (00D + 12 or 15 chars), '!', the token.
SALESFORCE_TOKEN = re.compile(r"00D[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?![A-Za-z0-9._\-]+")
_HANDLER_NAME = "sfsync"


class Redactor:
    """Replaces configured secret values and Salesforce bearer tokens with `***`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] = SALESFORCE_TOKEN
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        new = {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}
        if new - self._secrets:
            self._secrets |= new
            # Longest first, so a secret containing another is replaced whole.
            literal = "|".join(re.escape(s) for s in sorted(self._secrets, key=len, reverse=True))
            self._pattern = re.compile(f"{literal}|{SALESFORCE_TOKEN.pattern}")

    def clear(self) -> None:
        self._secrets = set()
        self._pattern = SALESFORCE_TOKEN

    def text(self, value: str) -> str:
        return self._pattern.sub(REDACTED, value)

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(v) for v in value)
        return value

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        return {key: self.value(val) for key, val in event_dict.items()}


_REDACTOR = Redactor()


def add_secret(*values: str) -> None:
    """Register secrets learned at run time (e.g. a new access token) for redaction."""
    _REDACTOR.add(*values)


def settings_secrets(settings: Settings) -> list[str]:
    """Every secret value in the settings: client secret, refresh token, MongoDB password, admin token."""
    found = [
        secret.get_secret_value()
        for secret in (settings.salesforce.client_secret, settings.salesforce.refresh_token,
                       settings.admin.token)
        if secret is not None
    ]
    password = urlsplit(settings.mongodb.uri.get_secret_value()).password
    if password:
        found += [password, unquote(password)]
    return found


def rename_level(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """stdlib records report WARNING as `warning`; keep levels lower-case everywhere."""
    level = event_dict.get("level")
    if isinstance(level, str):
        event_dict["level"] = level.lower()
    return event_dict


def lead_with_standard_keys(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """`timestamp`, `level`, `logger`, `event` first: easier to read raw lines."""
    head = {k: event_dict.pop(k) for k in ("timestamp", "level", "logger", "event") if k in event_dict}
    return {**head, **event_dict}


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        rename_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]


def _formatter(fmt: Literal["json", "console"] | str) -> logging.Formatter:
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    ordering: list[Processor] = [] if fmt == "console" else [lead_with_standard_keys]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # traceback -> text, so it can be redacted
            _REDACTOR,
            *ordering,
            renderer,
        ],
    )


def configure_logging(
    level: str = "INFO",
    fmt: Literal["json", "console"] | str = "json",
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Route structlog and stdlib logging to one handler on stdout; safe to call again."""
    if fmt not in ("json", "console"):
        raise ValueError(f"log format must be json or console, not {fmt!r}")
    _REDACTOR.add(*secrets)
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_formatter(fmt))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests (and `capture_logs`) reconfigure structlog at run time.
        cache_logger_on_first_use=False,
    )


def reset_logging() -> None:
    """Undo `configure_logging` (tests use this between cases)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.setLevel(logging.WARNING)
    logging.captureWarnings(False)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    _REDACTOR.clear()


__all__ = [
    "REDACTED",
    "Redactor",
    "add_secret",
    "configure_logging",
    "reset_logging",
    "settings_secrets",
]
