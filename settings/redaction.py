"""What is secret, and the redactor that keeps secrets out of every log line.

Lives beside the settings that name the secrets, so the Salesforce client (which learns access
tokens at run time) and the process's logging both reach it without depending on each other.

Three rules, applied to every string a log line, an error line or `/readyz` carries:

- every configured secret is replaced with `***` whatever its length. A secret of at least
  `WHOLE_TOKEN_BELOW` characters is replaced wherever it occurs; a shorter one only where it
  stands as a whole token (not touching a letter or digit on either side): a three-letter
  password is found in `pw=abc;` or `abc@host`, but the `abc` inside `fabric` is left alone, so
  short secrets do not blank ordinary words in every line;
- any URI's user info (`scheme://user:***@host`) and secret query options
  (`tlsCertificateKeyFilePassword`, `authMechanismProperties`, ...) are masked, configured or not;
- Salesforce session ids / access tokens (`00D...!...`) are replaced by shape.

Secrets learned at run time (renewed access tokens) are kept in a small ring of the most recent
`RUNTIME_SECRETS_KEPT`: an expired token is useless, and the pattern no longer grows with every
renewal.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from structlog.typing import EventDict, WrappedLogger

from settings._env import Settings

REDACTED = "***"
WHOLE_TOKEN_BELOW = 8  # shorter secrets are matched as whole tokens only
MIN_SECRET_LENGTH = 1  # every non-empty secret is redacted (kept for callers of the old name)
RUNTIME_SECRETS_KEPT = 8
# A Salesforce session id / access token: org id (00D + 12 or 15 chars), '!', the token.
SALESFORCE_TOKEN = re.compile(r"00D[A-Za-z0-9]{12}(?:[A-Za-z0-9]{3})?![A-Za-z0-9._\-]+")
# MongoDB URI options whose value is a secret (matched case-insensitively, as the driver does).
SECRET_URI_OPTIONS = ("password", "tlsCertificateKeyFilePassword", "sslPEMKeyPassword",
                      "sslClientCertificateKeyPassword", "authMechanismProperties")
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s/@?#:]*)(?P<pw>:[^\s/@?#]*)?@")
_SECRET_OPTION = re.compile(
    r"(?P<key>[?&](?:" + "|".join(SECRET_URI_OPTIONS) + r")=)[^&\s#\"']*", re.IGNORECASE)


def mask_uri(text: str) -> str:
    """Mask user info (`user:***@`, or `***@` for a lone user name) and secret options of every
    URI in `text`; hosts and other options stay readable."""
    def userinfo(match: re.Match[str]) -> str:
        if match.group("pw") is None:
            return f"{match.group('scheme')}{REDACTED}@"
        return f"{match.group('scheme')}{match.group('user')}:{REDACTED}@"

    return _SECRET_OPTION.sub(rf"\g<key>{REDACTED}", _USERINFO.sub(userinfo, text))


def _alternative(secret: str) -> str:
    literal = re.escape(secret)
    if len(secret) >= WHOLE_TOKEN_BELOW:
        return literal
    return rf"(?<![A-Za-z0-9]){literal}(?![A-Za-z0-9])"


class Redactor:
    """Replaces secrets, URI credentials and Salesforce bearer tokens with `***`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._configured: set[str] = set()
        self._runtime: OrderedDict[str, None] = OrderedDict()
        self._pattern: re.Pattern[str] = SALESFORCE_TOKEN
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        """Configured secrets: kept for the life of the process."""
        new = {s for s in secrets if s} - self._configured
        if new:
            self._configured |= new
            self._compile()

    def add_runtime(self, *secrets: str) -> None:
        """Secrets learned at run time: only the most recent `RUNTIME_SECRETS_KEPT` are kept."""
        changed = False
        for secret in secrets:
            if not secret or secret in self._configured:
                continue
            changed = changed or secret not in self._runtime
            self._runtime[secret] = None
            self._runtime.move_to_end(secret)
        while len(self._runtime) > RUNTIME_SECRETS_KEPT:
            self._runtime.popitem(last=False)
        if changed:
            self._compile()

    def size(self) -> int:
        """How many secrets the redactor holds (configured + recent run-time ones)."""
        return len(self._configured) + len(self._runtime)

    def _compile(self) -> None:
        # Longest first, so a secret containing another is replaced whole.
        ordered = sorted(self._configured | set(self._runtime), key=len, reverse=True)
        alternatives = [_alternative(s) for s in ordered] + [SALESFORCE_TOKEN.pattern]
        self._pattern = re.compile("|".join(alternatives))

    def clear(self) -> None:
        self._configured = set()
        self._runtime.clear()
        self._pattern = SALESFORCE_TOKEN

    def text(self, value: str) -> str:
        return self._pattern.sub(REDACTED, mask_uri(value))

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
    _REDACTOR.add_runtime(*values)


def redact_text(text: str) -> str:
    """`text` with every known secret and URI credential masked (error lines, `/readyz`)."""
    return _REDACTOR.text(text)


def uri_secrets(uri: str) -> list[str]:
    """The password and the secret option values of a MongoDB URI, raw and %-decoded."""
    found: list[str] = []
    netloc = uri.partition("://")[2].split("/", 1)[0].split("?", 1)[0]
    userinfo, at, _ = netloc.rpartition("@")
    if at and ":" in userinfo:
        found.append(userinfo.split(":", 1)[1])
    query = urlsplit(uri).query if "://" in uri else ""
    secret_keys = {k.lower() for k in SECRET_URI_OPTIONS}
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        if eq and key.lower() in secret_keys and value:
            found.append(value)
    return [v for raw in found for v in dict.fromkeys((raw, unquote(raw))) if v]


def settings_secrets(settings: Settings) -> list[str]:
    """Every secret value in the settings: client secret, refresh token, admin token, the alert
    webhook URL, and the MongoDB URI's password and secret options."""
    found = [
        secret.get_secret_value()
        for secret in (settings.salesforce.client_secret, settings.salesforce.refresh_token,
                       settings.admin.token, settings.alerts.webhook_url)
        if secret is not None
    ]
    return found + uri_secrets(settings.mongodb.uri.get_secret_value())


def redactor() -> Redactor:
    """The process-wide redactor the log formatter runs."""
    return _REDACTOR


__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "RUNTIME_SECRETS_KEPT", "SALESFORCE_TOKEN", "Redactor",
           "add_secret", "mask_uri", "redact_text", "redactor", "settings_secrets", "uri_secrets"]
