"""Admin authentication: a bearer token for the API, a server-side session cookie for the page.

The cookie holds a random session id (`guard.Sessions`), never the token or anything derived
from it: it expires, logout revokes it on the server, and restarting the process or rotating the
token logs every browser out. `Secure` is set when the request came over TLS, directly or as a
trusted proxy says (`X-Forwarded-Proto`).
"""

from __future__ import annotations

import hmac

from aiohttp import web

from service.admin.guard import Proxies, Sessions

COOKIE_NAME = "sfsync_admin"


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


def has_valid_session(request: web.Request, sessions: Sessions) -> bool:
    return sessions.valid(request.cookies.get(COOKIE_NAME))


def set_session(response: web.StreamResponse, request: web.Request, sessions: Sessions,
                proxies: Proxies) -> None:
    response.set_cookie(
        COOKIE_NAME,
        sessions.create(),
        path="/logs",
        httponly=True,
        samesite="Strict",
        secure=proxies.is_tls(request),
        max_age=sessions.max_age,
    )


def end_session(response: web.StreamResponse, request: web.Request, sessions: Sessions) -> None:
    sessions.revoke(request.cookies.get(COOKIE_NAME))
    response.del_cookie(COOKIE_NAME, path="/logs")
