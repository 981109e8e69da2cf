"""What protects the admin surface: who the client is, a login limiter, server-side sessions,
and the same-origin check on state-changing forms.

- Client address: the peer, unless the peer is a configured trusted proxy
  (`SFSYNC_ADMIN__TRUSTED_PROXIES`); then the right-most `X-Forwarded-For` entry that is not a
  trusted proxy (the left-most ones are whatever the client wrote). TLS likewise: the request
  itself, or `X-Forwarded-Proto: https` from a trusted proxy.
- Login limiter: a sliding window of attempts per client address and over all addresses.
  An attempt is counted when it *starts* (a burst of concurrent guesses cannot slip in before
  the first failure is recorded); a successful login forgets its address's attempts.
- Sessions: random ids kept in memory with an absolute expiry; logout deletes the id, so a
  copied cookie stops working. Per replica: behind a load balancer over several replicas use
  client-address affinity (deploy/kubernetes does) or the bearer header.
- Same origin: a form authenticated by the cookie must carry an `Origin` (or, failing that, a
  `Referer`) whose host is the request's `Host`.
"""

from __future__ import annotations

import ipaddress
import math
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from urllib.parse import urlsplit

from aiohttp import web

SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 1000
PER_ADDRESS_ATTEMPTS = 10   # login attempts per address per window
GLOBAL_ATTEMPTS = 100       # over all addresses per window
WINDOW_SECONDS = 300.0
MAX_TRACKED_ADDRESSES = 10_000

monotonic = time.monotonic  # a seam for tests

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Proxies:
    """The trusted proxies, and what they may tell us about the client."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self._networks: list[Network] = [ipaddress.ip_network(n, strict=False) for n in networks]

    def trusts(self, address: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in net for net in self._networks)

    def client_address(self, request: web.Request) -> str:
        peer = request.remote or "unknown"
        if not self.trusts(peer):
            return peer
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop
        return peer

    def is_tls(self, request: web.Request) -> bool:
        if request.secure:
            return True
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return proto == "https" and self.trusts(request.remote)


class LoginLimiter:
    """Sliding-window attempt counts per address and overall; `attempt` says how long to wait."""

    def __init__(self, *, per_address: int = PER_ADDRESS_ATTEMPTS, overall: int = GLOBAL_ATTEMPTS,
                 window: float = WINDOW_SECONDS) -> None:
        self._per_address, self._overall, self._window = per_address, overall, window
        self._by_address: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque()

    def attempt(self, address: str) -> int | None:
        """Count an attempt from `address`; None to go ahead, else the seconds to wait (Retry-After)."""
        now = monotonic()
        mine = self._by_address.setdefault(address, deque())
        self._by_address.move_to_end(address)
        for window in (mine, self._all):
            while window and window[0] <= now - self._window:
                window.popleft()
        while len(self._by_address) > MAX_TRACKED_ADDRESSES:
            self._by_address.popitem(last=False)
        for window, limit in ((mine, self._per_address), (self._all, self._overall)):
            if len(window) >= limit:
                return max(1, math.ceil(window[len(window) - limit] + self._window - now))
        mine.append(now)
        self._all.append(now)
        return None

    def succeeded(self, address: str) -> None:
        self._by_address.pop(address, None)


class Sessions:
    """Server-side sessions: a random id -> its expiry; revoked on logout."""

    def __init__(self, lifetime: float = SESSION_SECONDS) -> None:
        self._lifetime = lifetime
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def create(self) -> str:
        now = monotonic()
        for sid in [s for s, exp in self._expiry.items() if exp <= now]:
            del self._expiry[sid]
        while len(self._expiry) >= MAX_SESSIONS:
            self._expiry.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        self._expiry[sid] = now + self._lifetime
        return sid

    def valid(self, sid: str | None) -> bool:
        if not sid:
            return False
        expiry = self._expiry.get(sid)
        if expiry is None:
            return False
        if expiry <= monotonic():
            del self._expiry[sid]
            return False
        return True

    def revoke(self, sid: str | None) -> None:
        if sid:
            self._expiry.pop(sid, None)

    @property
    def max_age(self) -> int:
        return int(self._lifetime)


def same_origin(request: web.Request) -> bool:
    """The form came from a page of this host: `Origin` (else `Referer`) names `Host`."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc == request.host


__all__ = ["SESSION_SECONDS", "LoginLimiter", "Proxies", "Sessions", "same_origin"]
