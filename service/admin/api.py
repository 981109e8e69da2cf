"""The JSON API under `/api/` (token required; see `app._api_auth`)."""

from __future__ import annotations

import json
from typing import Any

import structlog
from aiohttp import web

from service.admin._http import (
    CONTEXT,
    error_response,
    find_logs,
    get_log,
    json_response,
    load_failed_log,
    public_log,
)
from service.admin.filters import BadParameter, is_salesforce_id

log = structlog.get_logger(__name__)


def add_api_routes(app: web.Application) -> None:
    app.router.add_get("/api/status", _status)
    app.router.add_get("/api/sync-logs", _sync_logs)
    app.router.add_get("/api/sync-logs/{id}", _sync_log)
    app.router.add_post("/api/sync-logs/{id}/retry", _retry)
    app.router.add_post("/api/retry-failed", _retry_failed)
    app.router.add_post("/api/import", _import)


async def _status(request: web.Request) -> web.Response:
    return json_response(request.app[CONTEXT].status.status())


async def _sync_logs(request: web.Request) -> web.Response:
    _, items, next_cursor = await find_logs(request, allow_all=False)
    return json_response({"items": items, "next_cursor": next_cursor})


async def _sync_log(request: web.Request) -> web.Response:
    log_id = request.match_info["id"]
    doc = await get_log(request, log_id)
    if doc is None:
        return error_response(404, "not_found", f"no sync log with id {log_id!r}")
    return json_response(public_log(doc))


async def _retry(request: web.Request) -> web.Response:
    log_id = request.match_info["id"]
    found = await load_failed_log(request, log_id)
    if isinstance(found, web.Response):
        return found
    log.info("admin_retry", log_id=log_id)
    result = await request.app[CONTEXT].jobs.retry(log_id)
    return json_response({"retried": log_id, **result})


async def _retry_failed(request: web.Request) -> web.Response:
    log.info("admin_retry_failed")
    return json_response(await request.app[CONTEXT].jobs.retry_failed())


async def _import(request: web.Request) -> web.Response:
    body = await _json_body(request)
    sf_id = body.get("sf_id")
    if not isinstance(sf_id, str) or not is_salesforce_id(sf_id.strip()):
        raise BadParameter("sf_id", "must be a 15- or 18-character Salesforce id")
    sf_id = sf_id.strip()
    log.info("admin_import", sf_id=sf_id)
    result = await request.app[CONTEXT].jobs.import_record(sf_id)
    if any(item.get("status") == "not_found" for item in result.get("items") or []):
        return error_response(404, "not_found", f"Salesforce has no record {sf_id}", **result)
    return json_response({"sf_id": sf_id, **result})


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadParameter("body", "must be a JSON object") from exc
    if not isinstance(body, dict):
        raise BadParameter("body", "must be a JSON object")
    return body
