"""Admin authentication: a bearer token for the API, a session cookie for the page.

The cookie holds an HMAC derived from the token, never the token itself, so a leaked cookie
does not reveal the token and rotating the token logs every browser out.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

COOKIE_NAME = "sfsync_admin"
_COOKIE_CONTEXT = b"sfsync-admin-page-session-v1"


def token_matches(token: str, given: str) -> bool:
    """Constant-time comparison of a presented token with the configured one."""
    return hmac.compare_digest(token.encode("utf-8"), given.encode("utf-8"))


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def has_valid_bearer(request: web.Request, token: str) -> bool:
    given = bearer_token(request)
    return given is not None and token_matches(token, given)


def session_value(token: str) -> str:
    """The cookie value for a browser that logged in with `token`."""
    return hmac.new(token.encode("utf-8"), _COOKIE_CONTEXT, hashlib.sha256).hexdigest()


def has_valid_session(request: web.Request, token: str) -> bool:
    given = request.cookies.get(COOKIE_NAME)
    return given is not None and hmac.compare_digest(session_value(token).encode(), given.encode())


def set_session(response: web.StreamResponse, request: web.Request, token: str) -> None:
    response.set_cookie(
        COOKIE_NAME,
        session_value(token),
        path="/logs",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        max_age=12 * 3600,
    )


def clear_session(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE_NAME, path="/logs")
