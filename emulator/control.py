"""The control API under `/_emulator/` (no auth; tests, the demo and benchmarks drive the org with
it), plus what it steers: injected faults and the request log."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import structlog
from aiohttp import web

from emulator.describe import rest_value, sobject
from emulator.org import OWNER_USER_ID, Actor, RecordRejected, convert_lead
from emulator.sample import seed_sample
from emulator.traffic import Fault, Faults, RequestLog

if TYPE_CHECKING:
    from emulator.state import EmulatorState

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SECRET_FORM_FIELDS = frozenset({"client_secret", "assertion", "refresh_token", "password"})
_MAX_LOGGED_BODY = 64 * 1024
_FAULT_BODIES = {
    500: (
        "UNKNOWN_EXCEPTION",
        "An unexpected error occurred. Please include this ErrorId if you contact "
        "support: 1893245162-23617 (-1325456937)",
    ),
    502: ("SERVER_UNAVAILABLE", "Bad Gateway"),
    503: ("SERVER_UNAVAILABLE", "Server temporarily unavailable"),
    401: ("INVALID_SESSION_ID", "Session expired or invalid"),
    403: ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
}


def _logged_body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if len(raw) > _MAX_LOGGED_BODY:
        return f"<{len(raw)} bytes>"
    text = raw.decode("utf-8", "replace")
    if content_type == "application/x-www-form-urlencoded":
        return {k: ("<redacted>" if k in _SECRET_FORM_FIELDS else v) for k, v in parse_qsl(text)}
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@web.middleware
async def traffic_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Logs every non-control request and applies injected faults before the request is served."""
    if request.path.startswith("/_emulator"):
        return await handler(request)
    state: EmulatorState = request.app["state"]
    entry: dict[str, Any] = {
        "ts": time.time(),
        "method": request.method,
        "path": request.path,
        "query": dict(request.query),
        "headers": {
            k: ("<redacted>" if k.lower() == "authorization" else v) for k, v in request.headers.items()
        },
        "body": _logged_body(await request.read(), request.content_type) if request.can_read_body else None,
        "status": None,
    }
    state.requests.entries.append(entry)
    fault = state.faults.take(request.path)
    if fault is not None and fault.apply_then_drop:
        return await _apply_then_drop(request, handler, fault, entry)
    if fault is not None and fault.latency_ms:
        await asyncio.sleep(fault.latency_ms / 1000)
    if fault is not None and fault.status is not None:
        response: web.StreamResponse = _fault_response(request, fault.status)
        if request.path.startswith("/services/data/v"):
            response.headers["Sforce-Limit-Info"] = state.limits.usage_header()
        log.info("fault_injected", path=request.path, status=fault.status)
    else:
        response = await handler(request)
    entry["status"] = response.status
    return response


async def _apply_then_drop(
    request: web.Request, handler: Handler, fault: Fault, entry: dict[str, Any]
) -> web.StreamResponse:
    response = await handler(request)
    entry["status"] = response.status
    await asyncio.sleep(fault.latency_ms / 1000)
    log.info("fault_injected", path=request.path, status=response.status, dropped=True)
    if request.transport is not None:
        request.transport.abort()  # the client sees the connection reset, never the answer
    return response


def _fault_response(request: web.Request, status: int) -> web.Response:
    if request.path.startswith("/services/oauth2"):
        return web.json_response(
            {"error": "unknown_error", "error_description": "retry your request"}, status=status
        )
    code, message = _FAULT_BODIES.get(status, ("SERVER_UNAVAILABLE", "Service Unavailable"))
    return web.json_response([{"message": message, "errorCode": code}], status=status)


# --- routes --------------------------------------------------------------------------------------


def _state(request: web.Request) -> EmulatorState:
    state: EmulatorState = request.app["state"]
    return state


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body ({} when there is none); 400 for anything else."""
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text=f"invalid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


def _actor(body: dict[str, Any]) -> Actor:
    """Control writes act as a person in the Salesforce UI unless the body says otherwise."""
    return Actor(str(body.get("userId", OWNER_USER_ID)), str(body.get("changeOrigin", "")))


def _rejected(exc: RecordRejected, **extra: Any) -> web.Response:
    return web.json_response({"errors": [e.as_json() for e in exc.errors], **extra}, status=400)


async def reset(request: web.Request) -> web.Response:
    """Empty the org (users stay), zero the allocations, drop faults, cursors and the request log."""
    state = _state(request)
    state.org.reset()
    state.limits.set(used=0, events_used=0)
    state.faults.clear()
    state.cursors.clear()
    state.requests.clear()
    return web.json_response({"ok": True})


async def seed(request: web.Request) -> web.Response:
    state, body = _state(request), await json_object(request)
    emit = bool(body.get("emit_events", True))
    ids: dict[str, list[str]] = {}
    if body.get("sample"):
        ids = seed_sample(state.org, emit_events=emit)
    tx = state.org.transaction(_actor(body), emit=emit)
    for name, records in (body.get("records") or {}).items():
        sobj = sobject(name)
        if sobj is None or not isinstance(records, list):
            raise web.HTTPBadRequest(text=f"unknown object {name!r} or records not a list")
        for index, payload in enumerate(records):
            try:
                values = state.org.prepare_create(sobj, payload, trusted=True)
            except RecordRejected as exc:
                return _rejected(exc, object=sobj.name, index=index, ids=ids)
            ids.setdefault(sobj.name, []).append(state.org.create(sobj, values, tx))
    return web.json_response({"ids": ids})


def _control_record(request: web.Request) -> tuple[Any, dict[str, Any]]:
    sobj = sobject(request.match_info["sobject"])
    found = _state(request).org.find(request.match_info["id"])
    if sobj is None or found is None or found[0] is not sobj:
        raise web.HTTPNotFound(text="no such record")
    return found


async def get_record(request: web.Request) -> web.Response:
    """Read a record (deleted ones too) without spending API calls."""
    sobj, record = _control_record(request)
    return web.json_response(
        {fd.name: rest_value(record.get(fd.name)) for fd in sobj.fields if record.get(fd.name) is not None}
    )


async def patch_record(request: web.Request) -> web.Response:
    """Change a record as a UI user would; `?emit_event=false` changes it with no CDC event (only
    the poller can see it). Read-only fields (e.g. LastModifiedDate, SystemModstamp) may be set."""
    sobj, record = _control_record(request)
    body = await json_object(request)
    org = _state(request).org
    emit = request.query.get("emit_event", "true").lower() != "false"
    fields = {k: v for k, v in body.items() if k not in ("userId", "changeOrigin")}
    try:
        _, values = org.prepare_update(sobj, record["Id"], fields, trusted=True)
    except RecordRejected as exc:
        return _rejected(exc)
    org.update(sobj, record, values, org.transaction(_actor(body), emit=emit))
    return web.json_response({"id": record["Id"]})


async def delete_record(request: web.Request) -> web.Response:
    sobj, record = _control_record(request)
    org = _state(request).org
    emit = request.query.get("emit_event", "true").lower() != "false"
    if not record.get("IsDeleted"):
        org.delete(sobj, record, org.transaction(_actor({}), emit=emit))
    return web.json_response({"id": record["Id"]})


async def undelete_record(request: web.Request) -> web.Response:
    sobj, record = _control_record(request)
    org = _state(request).org
    if record.get("IsDeleted"):
        org.undelete(sobj, record, org.transaction(_actor({})))
    return web.json_response({"id": record["Id"]})


async def convert(request: web.Request) -> web.Response:
    body = await json_object(request)
    if not isinstance(body.get("leadId"), str):
        raise web.HTTPBadRequest(text="leadId is required")
    try:
        result = convert_lead(
            _state(request).org,
            body["leadId"],
            _actor(body),
            account_id=body.get("accountId"),
            contact_id=body.get("contactId"),
            converted_status=body.get("convertedStatus", "Closed - Converted"),
        )
    except RecordRejected as exc:
        return _rejected(exc)
    return web.json_response(result)


async def budget(request: web.Request) -> web.Response:
    body = await json_object(request)
    limits = _state(request).limits
    limits.set(
        used=body.get("used"),
        max_=body.get("max"),
        events_used=body.get("events_used"),
        events_max=body.get("events_max"),
    )
    return web.json_response(
        {
            "used": limits.api_used,
            "max": limits.api_max,
            "events_used": limits.events_used,
            "events_max": limits.events_max,
        }
    )


async def expire_tokens(request: web.Request) -> web.Response:
    return web.json_response({"expired": _state(request).tokens.expire_all()})


async def add_fault(request: web.Request) -> web.Response:
    body = await json_object(request)
    status = body.get("status")
    fault = Fault(
        str(body.get("path_prefix", "/")),
        int(status) if status is not None else None,
        int(body.get("count", 1)),
        int(body.get("latency_ms", 0)),
        bool(body.get("apply_then_drop", False)),
    )
    _state(request).faults.add(fault)
    return web.json_response({"faults": len(_state(request).faults.active)})


async def clear_faults(request: web.Request) -> web.Response:
    _state(request).faults.clear()
    return web.json_response({"faults": 0})


async def list_requests(request: web.Request) -> web.Response:
    return web.json_response({"requests": list(_state(request).requests.entries)})


async def clear_requests(request: web.Request) -> web.Response:
    _state(request).requests.clear()
    return web.json_response({"requests": []})


def add_control_routes(app: web.Application) -> None:
    for method, path, handler in (
        ("POST", "reset", reset),
        ("POST", "seed", seed),
        ("POST", "convert-lead", convert),
        ("GET", "records/{sobject}/{id}", get_record),
        ("PATCH", "records/{sobject}/{id}", patch_record),
        ("DELETE", "records/{sobject}/{id}", delete_record),
        ("POST", "records/{sobject}/{id}/undelete", undelete_record),
        ("POST", "budget", budget),
        ("POST", "tokens/expire", expire_tokens),
        ("POST", "faults", add_fault),
        ("DELETE", "faults", clear_faults),
        ("GET", "requests", list_requests),
        ("DELETE", "requests", clear_requests),
    ):
        app.router.add_route(method, f"/_emulator/{path}", handler)


__all__ = ["Fault", "Faults", "RequestLog", "add_control_routes", "traffic_middleware"]
