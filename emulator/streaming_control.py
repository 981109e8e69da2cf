"""Streaming fault injection for tests and demos, under ``/_emulator/streaming/``: drop long
polls, forget clients, pause delivery, publish raw/GAP/overflow events, set the connect timeout."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from emulator.control import json_object

if TYPE_CHECKING:
    from emulator.cometd import CometdServer

CONTROL_PREFIX = "/_emulator/streaming"


def add_streaming_control_routes(app: web.Application, server: CometdServer) -> None:
    _StreamingControl(server).add_routes(app)


class _StreamingControl:
    """Fault injection for tests and demos, under ``/_emulator/streaming/``."""

    def __init__(self, server: CometdServer) -> None:
        self.server = server
        self.bus = server.bus

    def add_routes(self, app: web.Application) -> None:
        for name, handler in (
            ("drop", self.drop),
            ("forget-clients", self.forget_clients),
            ("pause", self.pause),
            ("resume", self.resume),
            ("publish", self.publish),
            ("gap", self.gap),
            ("overflow", self.overflow),
            ("config", self.configure),
        ):
            app.router.add_post(f"{CONTROL_PREFIX}/{name}", handler)
        app.router.add_get(f"{CONTROL_PREFIX}/stats", self.stats)

    async def drop(self, _: web.Request) -> web.Response:
        return web.json_response({"dropped": self.server.drop_connections()})

    async def forget_clients(self, _: web.Request) -> web.Response:
        return web.json_response({"forgotten": self.server.forget_clients()})

    async def pause(self, _: web.Request) -> web.Response:
        self.bus.pause_delivery()
        return web.json_response({"paused": True})

    async def resume(self, _: web.Request) -> web.Response:
        self.bus.resume_delivery()
        return web.json_response({"paused": False})

    async def publish(self, request: web.Request) -> web.Response:
        """``{channel, data}`` published as-is: malformed events too."""
        body = await json_object(request)
        channel, data = body.get("channel"), body.get("data")
        if not isinstance(channel, str) or not channel.startswith("/") or not isinstance(data, dict):
            raise web.HTTPBadRequest(text="expected {channel: '/...', data: {...}}")
        return web.json_response({"replayId": self.bus.publish_raw(channel, data)})

    async def gap(self, request: web.Request) -> web.Response:
        """``{entity, change_type: GAP_CREATE|GAP_UPDATE|GAP_DELETE|GAP_UNDELETE, record_ids}``."""
        body = await json_object(request)
        try:
            replay_id = self.bus.publish_gap(
                str(body["entity"]),
                str(body.get("change_type", "GAP_UPDATE")),
                [str(record_id) for record_id in body.get("record_ids", [])],
                commit_timestamp_ms=body.get("commit_timestamp_ms"),
            )
        except (KeyError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"bad gap request: {exc}") from exc
        return web.json_response({"replayId": replay_id})

    async def overflow(self, request: web.Request) -> web.Response:
        """``{entity, commit_timestamp_ms}``: one GAP_OVERFLOW event."""
        body = await json_object(request)
        if not isinstance(body.get("entity"), str):
            raise web.HTTPBadRequest(text="expected {entity: 'Lead', commit_timestamp_ms: ...}")
        timestamp = body.get("commit_timestamp_ms")
        replay_id = self.bus.publish_overflow(body["entity"], commit_timestamp_ms=timestamp)
        return web.json_response({"replayId": replay_id})

    async def configure(self, request: web.Request) -> web.Response:
        """``{timeout_ms}``: how long a connect waits for events (110000 by default)."""
        body = await json_object(request)
        timeout_ms = body.get("timeout_ms")
        if not isinstance(timeout_ms, int) or timeout_ms <= 0:
            raise web.HTTPBadRequest(text="expected {timeout_ms: positive int}")
        self.server.timeout_ms = timeout_ms
        return web.json_response({"timeout_ms": timeout_ms})

    async def stats(self, _: web.Request) -> web.Response:
        return web.json_response(self.server.stats())
