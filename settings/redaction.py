"""What is secret, and the redactor that keeps secrets out of every log line.

Lives beside the settings that name the secrets, so the Salesforce client (which learns access
tokens at run time) and the process's logging both reach it without depending on each other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from structlog.typing import EventDict, WrappedLogger

from settings._env import Settings

REDACTED = "***"
MIN_SECRET_LENGTH = 4  # shorter values would blank out ordinary words in every line
# A Salesforce session id / access token: org id (00D + 12 or 15 chars), '!', the token.
SALESFORCE_TOKEN = re.compile(r"00D[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?![A-Za-z0-9._\-]+")


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


def redactor() -> Redactor:
    """The process-wide redactor the log formatter runs."""
    return _REDACTOR


__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "SALESFORCE_TOKEN", "Redactor", "add_secret", "redactor",
           "settings_secrets"]
