"""OAuth 2.0 against `<login_url>/services/oauth2/token`: JWT bearer, client credentials, refresh token.

Building the request (`token_request`) and reading the answer (`parse_token_response`) are
pure functions; `Authenticator` holds the current token and renews it once for everyone.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
import structlog
from pydantic import SecretStr

from listener.salesforce.http import HttpRequest, HttpTransport
from reconciler.errors import FatalError, RetriableError
from settings import AuthFlow, SalesforceSettings
from settings.redaction import add_secret

log = structlog.get_logger(__name__)

TOKEN_PATH = "/services/oauth2/token"
JWT_LIFETIME_S = 180
_JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@dataclass(frozen=True)
class AccessToken:
    access_token: SecretStr
    instance_url: str
    issued_at: datetime
    user_id: str | None = None   # the authenticated (integration) user, from the identity URL


def identity_user(identity: Any) -> str | None:
    """The user id at the end of a token answer's identity URL (`.../id/<org id>/<user id>`)."""
    if not isinstance(identity, str) or "/id/" not in identity:
        return None
    user = identity.rstrip("/").rsplit("/", 1)[-1]
    return user or None


def token_request(settings: SalesforceSettings, *, now: float | None = None) -> dict[str, str]:
    """The form body of the token request for the configured flow (raises `FatalError`)."""
    missing = settings.missing_credentials()
    if missing:
        flow = settings.auth_flow.value
        raise FatalError(f"SFSYNC_SALESFORCE__AUTH_FLOW={flow} needs {', '.join(missing)}")
    assert settings.client_id is not None
    if settings.auth_flow is AuthFlow.JWT_BEARER:
        return {"grant_type": _JWT_GRANT, "assertion": _jwt_assertion(settings, now or time.time())}
    if settings.auth_flow is AuthFlow.CLIENT_CREDENTIALS:
        assert settings.client_secret is not None
        return {
            "grant_type": "client_credentials",
            "client_id": settings.client_id,
            "client_secret": settings.client_secret.get_secret_value(),
        }
    assert settings.refresh_token is not None
    form = {
        "grant_type": "refresh_token",
        "client_id": settings.client_id,
        "refresh_token": settings.refresh_token.get_secret_value(),
    }
    if settings.client_secret is not None:  # connected apps may require the secret too
        form["client_secret"] = settings.client_secret.get_secret_value()
    return form


def _jwt_assertion(settings: SalesforceSettings, now: float) -> str:
    assert settings.private_key_file is not None
    try:
        key = settings.private_key_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FatalError(
            f"SFSYNC_SALESFORCE__PRIVATE_KEY_FILE: cannot read {settings.private_key_file}: "
            f"{type(exc).__name__}"
        ) from None
    claims = {
        "iss": settings.client_id,
        "sub": settings.username,
        "aud": settings.login_url,
        "exp": int(now) + JWT_LIFETIME_S,
    }
    try:
        return jwt.encode(claims, key, algorithm="RS256")
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        raise FatalError(
            f"SFSYNC_SALESFORCE__PRIVATE_KEY_FILE: not a usable RSA private key (PEM): {type(exc).__name__}"
        ) from None


def parse_token_response(status: int, text: str) -> AccessToken:
    """Salesforce's answer -> `AccessToken`, or `FatalError`/`RetriableError` with its error text."""
    try:
        body: Any = json.loads(text) if text else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if status >= 500 or status == 429:
        raise RetriableError(f"OAuth token endpoint answered HTTP {status}")
    if status >= 300 or "access_token" not in body:
        error = body.get("error") or f"HTTP {status}"
        description = body.get("error_description") or "no access token in the response"
        raise FatalError(f"Salesforce authentication failed: {error}: {description}")
    instance_url = str(body.get("instance_url") or "").rstrip("/")
    if not instance_url.startswith(("http://", "https://")):
        raise FatalError("Salesforce authentication failed: the response has no instance_url")
    return AccessToken(
        access_token=SecretStr(str(body["access_token"])),
        instance_url=instance_url,
        issued_at=_issued_at(body.get("issued_at")),
        user_id=identity_user(body.get("id")),
    )


def _issued_at(value: Any) -> datetime:
    # Salesforce sends milliseconds since the epoch as a string.
    try:
        return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
    except (TypeError, ValueError, OverflowError):
        return datetime.now(UTC)


async def fetch_token(http: HttpTransport, settings: SalesforceSettings) -> AccessToken:
    """One token request for the configured flow (network trouble raises `RetriableError`)."""
    form = token_request(settings)
    url = settings.login_url + TOKEN_PATH
    resp = await http.send(HttpRequest("POST", url, form=form, headers={"Accept": "application/json"}))
    token = parse_token_response(resp.status, resp.text)
    add_secret(token.access_token.get_secret_value())
    log.info("salesforce_authenticated", flow=settings.auth_flow.value, instance_url=token.instance_url)
    return token


class Authenticator:
    """Holds the current token; concurrent callers share one authentication and one renewal."""

    def __init__(self, http: HttpTransport, settings: SalesforceSettings) -> None:
        self._http = http
        self._settings = settings
        self._current: AccessToken | None = None
        self._lock = asyncio.Lock()

    @property
    def current(self) -> AccessToken | None:
        return self._current

    async def token(self) -> tuple[str, str]:
        current = self._current
        if current is None:
            async with self._lock:
                if self._current is None:
                    self._current = await fetch_token(self._http, self._settings)
                current = self._current
        return current.access_token.get_secret_value(), current.instance_url

    async def renew(self, stale: str | None = None) -> tuple[str, str]:
        """A fresh token; if `stale` was already replaced by another caller, reuse that one."""
        async with self._lock:
            current = self._current
            if current is None or stale is None or current.access_token.get_secret_value() == stale:
                self._current = await fetch_token(self._http, self._settings)
            assert self._current is not None
            return self._current.access_token.get_secret_value(), self._current.instance_url
