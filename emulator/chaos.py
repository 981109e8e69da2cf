"""Extra controls for the fault-injection run (`python -m bench.chaos`), under `/_emulator/chaos/`.

Kept out of the core control modules on purpose: one hook in `emulator.app.create_app` adds
these routes and one innermost middleware.

- `GET  /_emulator/chaos/writes?after=N`: every REST write (POST/PATCH/DELETE under
  `/services/data/`) with a sequence number, the host time it arrived (`at`), the
  `Sforce-Call-Options` client, the body and the status: unbounded by the 2,000-entry request
  log, so a long run can count the writes the service made without missing any.
- `POST /_emulator/chaos/lock-row {count, path_prefix}`: the next `count` REST calls under the
  prefix answer 400 `UNABLE_TO_LOCK_ROW` (Salesforce's row-lock contention), before the handler
  runs (nothing applied).
- `POST /_emulator/chaos/retention {seconds}`: set the CDC retention window and prune now (a
  stored replay id becomes older than retention).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CHAOS_PREFIX = "/_emulator/chaos"
_WRITE_METHODS = frozenset({"POST", "PATCH", "DELETE"})
_LOCK_MESSAGE = "unable to obtain exclusive access to this record or 1 records: {id}"


class ChaosState:
    def __init__(self, *, max_writes: int = 200_000) -> None:
        self.writes: deque[dict[str, Any]] = deque(maxlen=max_writes)
        self.seq = itertools.count(1)
        self.lock_faults: list[list[Any]] = []  # [path_prefix, remaining]

    def take_lock_fault(self, path: str) -> bool:
        for fault in self.lock_faults:
            if path.startswith(fault[0]):
                fault[1] -= 1
                if fault[1] <= 0:
                    self.lock_faults.remove(fault)
                return True
        return False


CHAOS_KEY = web.AppKey("chaos", ChaosState)


def _chaos(request: web.Request) -> ChaosState:
    return request.app[CHAOS_KEY]


@web.middleware
async def chaos_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/services/data/"):
        return await handler(request)
    chaos = _chaos(request)
    if chaos.take_lock_fault(request.path):
        return web.json_response(
            [{"message": _LOCK_MESSAGE.format(id="chaos"), "errorCode": "UNABLE_TO_LOCK_ROW"}], status=400)
    if request.method not in _WRITE_METHODS:
        return await handler(request)
    raw = await request.read()  # cached when an outer middleware read it (can_read_body is False then)
    try:
        body: Any = json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    entry: dict[str, Any] = {
        "seq": next(chaos.seq), "at": time.time(), "method": request.method, "path": request.path,
        "client": request.headers.get("Sforce-Call-Options", ""), "body": body, "status": None,
    }
    chaos.writes.append(entry)
    response = await handler(request)
    entry["status"] = response.status
    if isinstance(response, web.Response) and response.body is not None and response.status < 300:
        with contextlib.suppress(TypeError, ValueError):  # JSONDecodeError is a ValueError
            entry["response"] = json.loads(bytes(response.body))  # type: ignore[arg-type]
    return response


async def _writes(request: web.Request) -> web.Response:
    after = int(request.query.get("after", "0"))
    items = [w for w in _chaos(request).writes if w["seq"] > after]
    return web.json_response({"writes": items})


async def _lock_row(request: web.Request) -> web.Response:
    body = await request.json() if request.can_read_body else {}
    _chaos(request).lock_faults.append([str(body.get("path_prefix", "/services/data/")),
                                        int(body.get("count", 1))])
    return web.json_response({"lock_faults": len(_chaos(request).lock_faults)})


async def _retention(request: web.Request) -> web.Response:
    body = await request.json() if request.can_read_body else {}
    bus = request.app["state"].bus
    bus.retention_seconds = float(body["seconds"])
    retained = bus.retained_count  # prunes
    return web.json_response({"retention_seconds": bus.retention_seconds, "retained": retained})


def add_chaos_routes(app: web.Application) -> None:
    """Register the routes and the (innermost) middleware; call before the app starts."""
    app[CHAOS_KEY] = ChaosState()
    app.middlewares.append(chaos_middleware)
    app.router.add_get(f"{CHAOS_PREFIX}/writes", _writes)
    app.router.add_post(f"{CHAOS_PREFIX}/lock-row", _lock_row)
    app.router.add_post(f"{CHAOS_PREFIX}/retention", _retention)


__all__ = ["CHAOS_PREFIX", "ChaosState", "add_chaos_routes", "chaos_middleware"]
