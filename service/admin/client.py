"""A small blocking client for the admin API, used by the `sfsync` commands that talk to a service.

Blocking (urllib) on purpose: each command makes one or a few calls and exits, and a plain
function is easier to run from a terminal, a script or a thread than an event loop.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode


class AdminUnreachable(Exception):
    """No admin API answered at the URL (service not running, wrong port...)."""


class AdminApiError(Exception):
    """The admin API answered with an error status."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(f"{error}: {reason}" if reason and reason != error else error)
        self.status = status
        self.error = error
        self.reason = reason


class AdminClient:
    def __init__(self, base_url: str, token: str | None, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout

    def get(self, path: str, params: Mapping[str, str | int | None] | None = None) -> Any:
        query = {k: str(v) for k, v in (params or {}).items() if v not in (None, "")}
        return self._call("GET", path + ("?" + urlencode(query) if query else ""), None)

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return self._call("POST", path, dict(body or {}))

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise _api_error(exc) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AdminUnreachable(f"cannot reach the admin API at {self.base_url} ({reason})") from None


def _api_error(exc: urllib.error.HTTPError) -> AdminApiError:
    try:
        payload = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    reason = str(payload.get("reason") or "")
    if payload.get("parameter"):
        reason = f"{payload['parameter']} {reason}"
    return AdminApiError(exc.code, str(payload.get("error") or exc.reason), reason)
