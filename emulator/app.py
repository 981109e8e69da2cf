"""Assembles the emulated org: OAuth, REST, the control API and CometD on one aiohttp app."""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable

from aiohttp import web

from emulator.auth import token_endpoint
from emulator.chaos import add_chaos_routes
from emulator.cometd import add_cometd_routes
from emulator.composite import add_composite_routes
from emulator.control import add_control_routes, traffic_middleware
from emulator.pubsub import add_pubsub
from emulator.rest import add_rest_routes, rest_middleware
from emulator.sample import generate_leads, seed_sample
from emulator.state import EmulatorConfig, EmulatorState
from emulator.streaming_control import add_streaming_control_routes
from emulator.time_control import OrgClock, install_time_control
from emulator.tooling import add_tooling_routes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _instance_url(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Learn the base URL from the first request when the starter did not set it."""
    state: EmulatorState = request.app["state"]
    if not state.instance_url:
        state.instance_url = f"{request.scheme}://{request.host}"
    return await handler(request)


def create_app(config: EmulatorConfig) -> web.Application:
    state = EmulatorState(config, clock=OrgClock())
    app = web.Application(
        middlewares=[_instance_url, traffic_middleware, rest_middleware], client_max_size=64 * 1024 * 1024
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the contract names the key "state" (a plain string key)
        app["state"] = state
    app.router.add_post("/services/oauth2/token", token_endpoint)
    add_rest_routes(app)
    add_composite_routes(app)
    add_tooling_routes(app, control=config.control_enabled)
    install_time_control(app)
    if config.control_enabled:
        add_control_routes(app)
        add_chaos_routes(app)
    cometd = add_cometd_routes(app, state)
    if config.control_enabled:
        add_streaming_control_routes(app, cometd)
    add_pubsub(app, state)  # the Pub/Sub API: served once `start_pubsub` binds its port
    if config.seed == "sample":
        seed_sample(state.org, extra_leads=config.records)
    elif config.records:
        generate_leads(state.org, config.records)
    return app
