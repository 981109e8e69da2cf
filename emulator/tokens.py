"""The access tokens the emulated org issues: plain data the state holds and every REST and
CometD call checks (the OAuth endpoint itself is `emulator.auth`)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

ORG_ID = "00D000000000001AAA"


@dataclass
class IssuedToken:
    user_id: str
    expires_at: float


class TokenStore:
    """Access tokens and their expiry. `validate` is what every REST and CometD call checks."""

    def __init__(self, *, ttl_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._tokens: dict[str, IssuedToken] = {}

    def issue(self, user_id: str) -> str:
        token = f"{ORG_ID[:15]}!AQ{secrets.token_urlsafe(72)}"
        self._tokens[token] = IssuedToken(user_id, self.clock() + self.ttl_seconds)
        return token

    def validate(self, access_token: str) -> bool:
        return self.user_of(access_token) is not None

    def user_of(self, access_token: str) -> str | None:
        issued = self._tokens.get(access_token)
        if issued is None or issued.expires_at <= self.clock():
            return None
        return issued.user_id

    def expire_all(self) -> int:
        """Make every current token invalid (sessions revoked or timed out); returns how many."""
        count = len(self._tokens)
        self._tokens.clear()
        return count

    def clear(self) -> None:
        self._tokens.clear()
