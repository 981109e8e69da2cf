"""OAuth token flows of the emulated org, and what REST does with expired or unknown tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from emulator.state import SAMPLE_CLIENT_ID, SAMPLE_CLIENT_SECRET, SAMPLE_REFRESH_TOKEN, EmulatorConfig
from tests.emulator.conftest import API, fetch_token
from tests.support.emulator import RunningEmulator, running_emulator

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _keypair() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


PRIVATE_KEY, PUBLIC_KEY = _keypair()
OTHER_PRIVATE_KEY, _ = _keypair()


@pytest.fixture
async def jwt_org() -> AsyncIterator[RunningEmulator]:
    async with running_emulator(
        EmulatorConfig(jwt_public_key_pem=PUBLIC_KEY, token_ttl_seconds=0.5)
    ) as emulator:
        yield emulator


def _assertion(key: bytes = PRIVATE_KEY, **overrides: Any) -> str:
    claims = {
        "iss": SAMPLE_CLIENT_ID,
        "sub": "integration@example.com",
        "aud": "https://login.salesforce.com",
        "exp": int(time.time()) + 180,
        **overrides,
    }
    return jwt.encode(claims, key, algorithm="RS256")


async def _grant(base_url: str, **form: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        response = await fetch_token(http, base_url, **form)
        return response.status, await response.json()


async def _limits_status(base_url: str, token: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{base_url}{API}/limits", headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        return response.status, await response.json()


class TestTokenGrants:
    async def test_client_credentials_issue_a_salesforce_shaped_token(self, jwt_org: RunningEmulator) -> None:
        """client_credentials answers with a Salesforce-shaped token response."""
        status, body = await _grant(
            jwt_org.base_url,
            grant_type="client_credentials",
            client_id=SAMPLE_CLIENT_ID,
            client_secret=SAMPLE_CLIENT_SECRET,
        )
        assert status == 200
        assert body["token_type"] == "Bearer"
        assert body["instance_url"] == jwt_org.base_url
        assert set(body) >= {"access_token", "id", "issued_at", "signature", "scope"}
        assert (await _limits_status(jwt_org.base_url, body["access_token"]))[0] == 200

    async def test_jwt_bearer_with_a_valid_assertion_issues_a_token(self, jwt_org: RunningEmulator) -> None:
        """An RS256 assertion signed by the configured key, for a known client and user, is accepted."""
        status, body = await _grant(jwt_org.base_url, grant_type=JWT_GRANT, assertion=_assertion())
        assert status == 200, body
        assert (await _limits_status(jwt_org.base_url, body["access_token"]))[0] == 200

    async def test_refresh_token_grant_issues_a_token(self, jwt_org: RunningEmulator) -> None:
        """The sample refresh token works with the sample client id (secret optional)."""
        status, body = await _grant(
            jwt_org.base_url,
            grant_type="refresh_token",
            client_id=SAMPLE_CLIENT_ID,
            refresh_token=SAMPLE_REFRESH_TOKEN,
        )
        assert status == 200 and body["access_token"]


@pytest.mark.parametrize(
    ("form", "error", "description"),
    [
        (
            {"grant_type": "client_credentials", "client_id": SAMPLE_CLIENT_ID, "client_secret": "wrong"},
            "invalid_client",
            "invalid client credentials",
        ),
        (
            {"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"},
            "invalid_client_id",
            "client identifier invalid",
        ),
        (
            {"grant_type": "refresh_token", "client_id": SAMPLE_CLIENT_ID, "refresh_token": "revoked"},
            "invalid_grant",
            "expired access/refresh token",
        ),
        (
            {"grant_type": "password", "username": "u", "password": "p"},
            "unsupported_grant_type",
            "grant type not supported",
        ),
        (
            {"grant_type": JWT_GRANT, "assertion": lambda: _assertion(OTHER_PRIVATE_KEY)},
            "invalid_grant",
            "invalid assertion",
        ),
        ({"grant_type": JWT_GRANT, "assertion": "not-a-jwt"}, "invalid_grant", "invalid assertion"),
        (
            {"grant_type": JWT_GRANT, "assertion": lambda: _assertion(aud="https://evil.example.com")},
            "invalid_grant",
            "audience is invalid",
        ),
        (
            {"grant_type": JWT_GRANT, "assertion": lambda: _assertion(exp=int(time.time()) - 60)},
            "invalid_grant",
            "expired authorization code",
        ),
        (
            {"grant_type": JWT_GRANT, "assertion": lambda: _assertion(iss="unknown-client")},
            "invalid_client_id",
            "client identifier invalid",
        ),
        (
            {"grant_type": JWT_GRANT, "assertion": lambda: _assertion(sub="someone@else.com")},
            "invalid_grant",
            "user hasn't approved this consumer",
        ),
    ],
)
class TestTokenErrors:
    async def test_rejected_grants_answer_400_with_salesforce_error(
        self, jwt_org: RunningEmulator, form: dict[str, Any], error: str, description: str
    ) -> None:
        """Each bad grant is a 400 with Salesforce's error and error_description."""
        # Assertions are signed now, not at collection: a long session must not expire them first.
        fields = {k: v() if callable(v) else v for k, v in form.items()}
        status, body = await _grant(jwt_org.base_url, **fields)
        assert (status, body) == (400, {"error": error, "error_description": description})


class TestSessions:
    async def test_expired_token_gets_401_invalid_session_id(self, jwt_org: RunningEmulator) -> None:
        """After token_ttl_seconds the token is refused with INVALID_SESSION_ID."""
        _, body = await _grant(jwt_org.base_url, grant_type=JWT_GRANT, assertion=_assertion())
        await asyncio.sleep(0.6)
        status, error = await _limits_status(jwt_org.base_url, body["access_token"])
        assert (status, error) == (
            401,
            [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}],
        )

    async def test_unknown_token_gets_401(self, org: RunningEmulator) -> None:
        """A token the org never issued is refused."""
        assert (await _limits_status(org.base_url, "00Dbogus"))[0] == 401

    async def test_control_expiry_invalidates_current_tokens_only(self, org: RunningEmulator) -> None:
        """POST /_emulator/tokens/expire ends current sessions; a new grant works again."""
        _, old = await _grant(org.base_url)
        async with aiohttp.ClientSession() as http:
            await http.post(f"{org.base_url}/_emulator/tokens/expire")
        assert (await _limits_status(org.base_url, old["access_token"]))[0] == 401
        _, new = await _grant(org.base_url)
        assert (await _limits_status(org.base_url, new["access_token"]))[0] == 200
