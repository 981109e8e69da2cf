"""OAuth 2.0 token endpoint (JWT bearer, client credentials, refresh token) and the access tokens
it issues. Errors are Salesforce's: 400 with `{"error", "error_description"}`."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import TYPE_CHECKING, Any

import jwt
import structlog
from aiohttp import web

from emulator.org import INTEGRATION_USER_ID
from emulator.tokens import ORG_ID

if TYPE_CHECKING:
    from emulator.state import EmulatorState

log = structlog.get_logger(__name__)

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_STANDARD_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")


class OAuthError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status


def bearer_token(request: web.Request) -> str | None:
    """The access token of `Authorization: Bearer <t>` (Salesforce also accepts `OAuth <t>`)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() in ("bearer", "oauth") and token.strip() else None


async def token_endpoint(request: web.Request) -> web.Response:
    state: EmulatorState = request.app["state"]
    form = await request.post()
    params = {k: str(v) for k, v in form.items()}
    grant = params.get("grant_type", "")
    try:
        if grant == JWT_GRANT:
            client_id = _jwt_client(state, params.get("assertion", ""))
        elif grant == "client_credentials":
            client_id = _client(state, params, secret_required=True)
        elif grant == "refresh_token":
            client_id = _client(state, params, secret_required=False)
            if params.get("refresh_token") not in state.config.refresh_tokens:
                raise OAuthError("invalid_grant", "expired access/refresh token")
        else:
            raise OAuthError("unsupported_grant_type", "grant type not supported")
    except OAuthError as exc:
        log.info("oauth_rejected", grant_type=grant, error=exc.error)
        return web.json_response(
            {"error": exc.error, "error_description": exc.description}, status=exc.status
        )
    log.info("oauth_token_issued", grant_type=grant)
    return web.json_response(_token_response(state, client_id))


def _client(state: EmulatorState, params: dict[str, str], *, secret_required: bool) -> str:
    client_id = params.get("client_id", "")
    if client_id not in state.config.clients:
        raise OAuthError("invalid_client_id", "client identifier invalid")
    secret = params.get("client_secret")
    if (secret_required or secret is not None) and not hmac.compare_digest(
        (secret or "").encode(), state.config.clients[client_id].encode()
    ):
        raise OAuthError("invalid_client", "invalid client credentials")
    return client_id


def _jwt_client(state: EmulatorState, assertion: str) -> str:
    key = state.config.jwt_public_key_pem
    if key is None:
        raise OAuthError("invalid_grant", "invalid assertion")
    audiences = [*_STANDARD_AUDIENCES, state.instance_url]
    if state.config.login_url:
        audiences.append(state.config.login_url.rstrip("/"))
    try:
        claims: dict[str, Any] = jwt.decode(
            assertion,
            key,
            algorithms=["RS256"],
            audience=audiences,
            options={"require": ["iss", "sub", "aud", "exp"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise OAuthError("invalid_grant", "expired authorization code") from exc
    except jwt.InvalidAudienceError as exc:
        raise OAuthError("invalid_grant", "audience is invalid") from exc
    except jwt.PyJWTError as exc:
        raise OAuthError("invalid_grant", "invalid assertion") from exc
    if claims["iss"] not in state.config.clients:
        raise OAuthError("invalid_client_id", "client identifier invalid")
    if claims["sub"] != state.config.username:
        raise OAuthError("invalid_grant", "user hasn't approved this consumer")
    return str(claims["iss"])


def _token_response(state: EmulatorState, client_id: str) -> dict[str, str]:
    token = state.tokens.issue(INTEGRATION_USER_ID)
    identity = f"{state.instance_url}/id/{ORG_ID}/{INTEGRATION_USER_ID}"
    issued_at = str(int(state.clock() * 1000))
    secret = state.config.clients.get(client_id, "").encode()
    signature = base64.b64encode(hmac.new(secret, (identity + issued_at).encode(), hashlib.sha256).digest())
    return {
        "access_token": token,
        "instance_url": state.instance_url,
        "id": identity,
        "token_type": "Bearer",
        "issued_at": issued_at,
        "signature": signature.decode(),
        "scope": "api",
    }
