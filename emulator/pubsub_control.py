"""Pub/Sub fault injection for tests and demos, under ``/_emulator/pubsub/``: drop every open
Subscribe stream, set the keepalive interval, the per-response cap, hold new subscriptions until
released (a slow server), read delivery stats.

Expiring tokens (``/_emulator/tokens/expire``), pausing delivery and publishing GAP, overflow and
malformed (poison) events (``/_emulator/streaming/...``) act on the token store and the event bus
the Pub/Sub API shares with CometD, so they need no routes here."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web

from emulator.control import json_object

CONTROL_PREFIX = "/_emulator/pubsub"


class PubSubControls(Protocol):
    """What these routes need of `emulator.pubsub.PubSubService` (which imports this module)."""

    keepalive_seconds: float
    max_events_per_response: int
    subscribes_held: bool

    def drop_streams(self) -> int: ...

    def stats(self) -> dict[str, Any]: ...


def add_pubsub_control_routes(app: web.Application, service: PubSubControls) -> None:
    async def drop(_: web.Request) -> web.Response:
        return web.json_response({"dropped": service.drop_streams()})

    async def configure(request: web.Request) -> web.Response:
        """``{keepalive_seconds, max_events_per_response, hold_subscribes}``, any of them."""
        body = await json_object(request)
        keepalive = body.get("keepalive_seconds")
        cap = body.get("max_events_per_response")
        hold = body.get("hold_subscribes")
        if hold is not None:
            if not isinstance(hold, bool):
                raise web.HTTPBadRequest(text="hold_subscribes must be true or false")
            service.subscribes_held = hold
        if keepalive is not None:
            if not isinstance(keepalive, int | float) or keepalive <= 0:
                raise web.HTTPBadRequest(text="keepalive_seconds must be a positive number")
            service.keepalive_seconds = float(keepalive)
        if cap is not None:
            if not isinstance(cap, int) or cap <= 0:
                raise web.HTTPBadRequest(text="max_events_per_response must be a positive integer")
            service.max_events_per_response = cap
        return web.json_response(service.stats())

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(service.stats())

    app.router.add_post(f"{CONTROL_PREFIX}/drop", drop)
    app.router.add_post(f"{CONTROL_PREFIX}/config", configure)
    app.router.add_get(f"{CONTROL_PREFIX}/stats", stats)
