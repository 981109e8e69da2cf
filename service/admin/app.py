"""The admin HTTP surface: health, readiness, metrics, the sync-log API and the Sync Logs page.

Routes and their auth follow the admin contract in the design. `/api/*`, `/metrics` (unless
`SFSYNC_ADMIN__METRICS_PUBLIC`) and the page need the admin token; with no token configured
they answer 503 rather than being open. `/healthz` and `/readyz` are open; a `/readyz` reason
is redacted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from listener.metrics import METRICS
from reconciler.errors import SyncError
from service.admin import auth
from service.admin._http import (
    CONTEXT,
    AdminContext,
    error_response,
    json_response,
    sync_error_response,
)
from service.admin.api import add_api_routes
from service.admin.filters import BadParameter
from service.admin.guard import Proxies
from service.admin.ports import JobRunner, StatusProvider, SyncLogReader
from service.admin.views import add_page_routes
from settings import AdminSettings
from settings.redaction import redact_text

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_admin_app(
    *,
    status: StatusProvider,
    store: SyncLogReader,
    jobs: JobRunner,
    token: str | None,
    instance_url: str,
    settings: AdminSettings | None = None,
) -> web.Application:
    """Build the admin application; `token` None or empty keeps `/api/*` and the page closed (503)."""
    settings = settings or AdminSettings()
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_errors, _api_auth])
    app[CONTEXT] = AdminContext(status=status, store=store, jobs=jobs, token=token or None,
                                instance_url=instance_url, metrics_public=settings.metrics_public,
                                proxies=Proxies(settings.trusted_proxies))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    add_api_routes(app)
    add_page_routes(app)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """JSON errors with a reason for the API; no traceback ever reaches a client."""
    try:
        return await handler(request)
    except BadParameter as exc:
        return error_response(400, "bad_request", exc.reason, parameter=exc.parameter)
    except SyncError as exc:
        log.warning("admin_request_failed", path=request.path, error=str(exc),
                    error_type=type(exc).__name__)
        return sync_error_response(exc)
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    except Exception:
        log.exception("admin_request_crashed", path=request.path)
        return error_response(500, "internal", "unexpected error; see the service logs")


@web.middleware
async def _api_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    if request.path.startswith("/api/") or (request.path == "/metrics" and not ctx.metrics_public):
        refused = _bearer_refusal(request)
        if refused is not None:
            return refused
    return await handler(request)


def _bearer_refusal(request: web.Request) -> web.Response | None:
    """None when the request carries the token; else 503 (no token configured), 429 (too many
    wrong tokens from this address) or 401."""
    ctx = request.app[CONTEXT]
    if ctx.token is None:
        return error_response(503, "admin token not configured",
                              "set SFSYNC_ADMIN__TOKEN to enable the admin API and /metrics")
    if auth.has_valid_bearer(request, ctx.token):
        return None
    if auth.bearer_token(request) is not None:
        wait = ctx.limiter.attempt(ctx.proxies.client_address(request))
        if wait is not None:
            response = error_response(429, "too_many_attempts", f"too many wrong tokens; retry in {wait} s")
            response.headers["Retry-After"] = str(wait)
            return response
    return error_response(401, "unauthorized", "send Authorization: Bearer <SFSYNC_ADMIN__TOKEN>")


async def _healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    try:
        ready, reason = request.app[CONTEXT].status.ready()
    except Exception as exc:  # a probe must answer, whatever the supervisor does
        ready, reason = False, f"readiness check failed: {type(exc).__name__}"
    reason = redact_text(reason)  # unauthenticated: never a secret, nor a URI's credentials
    if ready:
        # A reason on a ready replica says what it is doing (e.g. "standby: ...").
        return json_response({"ready": True, "reason": reason} if reason else {"ready": True})
    return json_response({"ready": False, "reason": reason or "not ready"}, status=503)


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=METRICS.render().encode("utf-8"),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


class AdminServer:
    """A started admin app; `stop()` closes the listening socket and the app."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self._runner = runner
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        await self._runner.cleanup()


async def start_admin(app: web.Application, host: str, port: int) -> AdminServer:
    """Serve `app` on host:port (port 0 picks a free one, see `AdminServer.port`)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = int(runner.addresses[0][1]) if runner.addresses else port
    log.info("admin_listening", host=host, port=bound)
    return AdminServer(runner, host, bound)
