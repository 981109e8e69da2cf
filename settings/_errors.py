"""Turn validation errors into the one readable line start-up prints."""

from __future__ import annotations

from pydantic import ValidationError


class ConfigError(Exception):
    """Configuration is invalid; the message is one line naming the variable and what is allowed."""


def env_name(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if not str(p).isdigit()]
    return "SFSYNC_" + "__".join(p.upper() for p in parts) if parts else "SFSYNC_*"


def mapping_key(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(root)"


def first_line(exc: ValidationError, *, mapping: bool) -> str:
    err = exc.errors()[0]
    loc = tuple(err.get("loc", ()))
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if mapping and not loc:
        return message  # a whole-file rule (the rules and the mappings they need) names its keys
    where = mapping_key(loc) if mapping else env_name(loc)
    given = err.get("input")
    secret = any(word in where for word in ("SECRET", "TOKEN", "URI", "KEY"))
    shown = "" if given is None or isinstance(given, dict | list) or secret else f" (got {given!r})"
    return f"{where}: {message}{shown}"
