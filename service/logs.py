"""Logging: structlog JSON lines on stdout (or a console renderer), secrets redacted.

structlog and stdlib logging (aiohttp, aiocometd_ng, aiosfstream_ng, pymongo) share one
processor chain through `ProcessorFormatter`, so every line has the same keys:
`timestamp` (ISO-8601 UTC, `Z`), `level`, `event`, `logger`, plus context bound with
`structlog.contextvars` (`sf_id`, `object`, `channel`, ...). Redaction runs after exceptions
are formatted, so secrets never reach the output, not even inside a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from settings.redaction import REDACTED, Redactor, add_secret, redactor, settings_secrets

_HANDLER_NAME = "sfsync"


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
            redactor(),
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
    redactor().add(*secrets)
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
    redactor().clear()


__all__ = [
    "REDACTED",
    "Redactor",
    "add_secret",
    "configure_logging",
    "reset_logging",
    "settings_secrets",
]
