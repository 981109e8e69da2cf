"""The Sync Logs page's routes: view, log in/out, and the no-script Retry forms."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

import structlog
from aiohttp import web

from reconciler.errors import BudgetExhaustedError, RetriableError, SyncError
from service.admin import auth
from service.admin._http import (
    CONTEXT,
    LOG_ID,
    cannot_retry,
    css_response,
    find_logs,
    get_log,
    html_response,
)
from service.admin.filters import BadParameter
from service.admin.guard import same_origin
from service.admin.page import (
    PageView,
    pointed_at,
    render_login_page,
    render_logs_page,
    render_message_page,
)
from service.admin.ports import NotLeaderError

log = structlog.get_logger(__name__)

_WRONG_TOKEN_DELAY_S = 0.3  # slows down guessing; the token is the only secret here


def add_page_routes(app: web.Application) -> None:
    app.router.add_get("/logs", _page)
    app.router.add_get("/logs/style.css", _css)
    app.router.add_post("/logs/login", _login)
    app.router.add_post("/logs/logout", _logout)
    app.router.add_post("/logs/retry/{id}", _retry)
    app.router.add_post("/logs/retry-failed", _retry_failed)


def _refusal(request: web.Request, *, form: bool = False) -> web.Response | None:
    """None when the request may see the page (or, `form`, change something); else the page
    that says why not. A form authenticated by the cookie must also come from this origin."""
    ctx = request.app[CONTEXT]
    if ctx.token is None:
        return _no_token()
    if auth.has_valid_bearer(request, ctx.token):
        return None  # a browser never attaches the header cross-site
    if not auth.has_valid_session(request, ctx.sessions):
        return html_response(render_login_page(), status=401)
    if form and not same_origin(request):
        return _cross_origin(request)
    return None


def _no_token() -> web.Response:
    return html_response(render_message_page(
        "Admin token not configured",
        "Set SFSYNC_ADMIN__TOKEN and restart the service to use the Sync Logs page.",
    ), status=503)


def _cross_origin(request: web.Request) -> web.Response:
    log.warning("admin_cross_origin_refused", path=request.path,
                origin=request.headers.get("Origin") or request.headers.get("Referer"))
    return html_response(render_message_page(
        "Refused", "This form did not come from this page (Origin/Referer check)."), status=403)


async def _css(request: web.Request) -> web.Response:
    return css_response()


async def _page(request: web.Request) -> web.Response:
    refused = _refusal(request)
    if refused is not None:
        return refused
    ctx = request.app[CONTEXT]
    try:
        filters, items, next_cursor = await find_logs(request, allow_all=True)
    except BadParameter as exc:
        return html_response(render_message_page("Bad filter", f"{exc.parameter} {exc.reason}"), status=400)
    view = PageView(items=items, status=ctx.status.status(), filters=filters, next_cursor=next_cursor,
                    instance_url=ctx.status.status().get("instance_url") or ctx.instance_url,
                    notice=request.query.get("notice"), notice_row=request.query.get("row"),
                    notice_record=request.query.get("row_record"),
                    linked=await _linked(request, items))
    return html_response(render_logs_page(view))


async def _linked(request: web.Request, items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rows this page's failed rows point at (retry outcomes, resolvers): from the page when
    there, the others read in one query."""
    on_page = {str(i.get("id")): i for i in items}
    targets = {t for t in (pointed_at(i) for i in items) if t}
    out = {t: on_page[t] for t in targets if t in on_page}
    missing = [t for t in targets - out.keys() if LOG_ID.match(t)]
    if missing:
        out.update(await request.app[CONTEXT].store.get_sync_logs(missing))
    return out


async def _login(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    if ctx.token is None:
        return _no_token()
    if not same_origin(request):
        return _cross_origin(request)
    address = ctx.proxies.client_address(request)
    wait = ctx.limiter.attempt(address)
    if wait is not None:
        log.warning("admin_login_limited", remote=address, retry_after=wait)
        response = html_response(render_login_page(
            error=f"Too many attempts; try again in {wait} s."), status=429)
        response.headers["Retry-After"] = str(wait)
        return response
    form = await request.post()
    given = form.get("token")
    if not isinstance(given, str) or not auth.token_matches(ctx.token, given.strip()):
        log.warning("admin_login_refused", remote=address)
        await asyncio.sleep(_WRONG_TOKEN_DELAY_S)
        return html_response(render_login_page(error="That token is not right."), status=401)
    ctx.limiter.succeeded(address)
    response = _redirect("/logs")
    auth.set_session(response, request, ctx.sessions, ctx.proxies)
    return response


async def _logout(request: web.Request) -> web.Response:
    if not same_origin(request):  # a cross-site logout would be a nuisance, nothing more; refuse it
        return _cross_origin(request)
    response = _redirect("/logs")
    auth.end_session(response, request, request.app[CONTEXT].sessions)
    return response


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _back_to(back: object, notice: str, row: Mapping[str, Any] | None = None) -> web.Response:
    """Redirect to the page the form came from; only its query survives, so no open redirect.
    `row`: the retry's outcome row, which the banner links to (`row`, `row_record`)."""
    pairs = [(k, v) for k, v in parse_qsl(back if isinstance(back, str) else "")
             if k not in ("notice", "row", "row_record")]
    pairs.append(("notice", notice))
    if row and row.get("id"):
        pairs.append(("row", str(row["id"])))
        record = row.get("sf_id") or row.get("local_id")
        if record:
            pairs.append(("row_record", str(record)))
    return _redirect("/logs?" + urlencode(pairs))


async def _retry(request: web.Request) -> web.Response:
    refused = _refusal(request, form=True)
    if refused is not None:
        return refused
    form = await request.post()
    log_id = request.match_info["id"]
    why_not = cannot_retry(await get_log(request, log_id), log_id)
    if why_not is not None:
        return _back_to(form.get("back"), why_not[1])
    log.info("admin_retry", log_id=log_id, via="page")
    notice, outcome = await _run(request, "retried", log_id)
    return _back_to(form.get("back"), notice, outcome)


async def _retry_failed(request: web.Request) -> web.Response:
    refused = _refusal(request, form=True)
    if refused is not None:
        return refused
    form = await request.post()
    log.info("admin_retry_failed", via="page")
    notice, _ = await _run(request, "retried_all", None)
    return _back_to(form.get("back"), notice)


# a job's outcome status (`reconciler.jobs.Status`) -> the notice that tells it
_OUTCOME_NOTICES = {"queued": "queued", "already_retried": "already_retried", "not_found": "not_found",
                    "not_failed": "not_failed", "paused": "unavailable", "unsupported": "error"}


async def _run(request: web.Request, done: str, log_id: str | None
               ) -> tuple[str, Mapping[str, Any] | None]:
    """Run a retry; the notice code to show and, for one log, the outcome row (the new log)."""
    ctx = request.app[CONTEXT]
    try:
        if log_id is None:
            await ctx.jobs.retry_failed()
            return done, None
        result = await ctx.jobs.retry(log_id)
    except (RetriableError, BudgetExhaustedError):
        return "unavailable", None
    except NotLeaderError:
        return "standby", None
    except SyncError as exc:
        log.warning("admin_retry_failed_to_run", log_id=log_id, error=str(exc))
        return "error", None
    items = result.get("items") or [{"status": "retried", "new_log_ids": [result.get("new_log_id")]}]
    status = str(items[0].get("status"))
    if status != "retried":
        return _OUTCOME_NOTICES.get(status, "error"), None
    new_ids = [i for i in items[0].get("new_log_ids") or [] if i]
    row = await get_log(request, str(new_ids[0])) if new_ids else None
    return ("retried_failed" if row and row.get("status") == "failed" else done), row
