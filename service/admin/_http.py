"""HTTP plumbing shared by the API and the page: the app context, responses, sync-log lookups."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from reconciler.errors import BudgetExhaustedError, RetriableError, SkippableError, SyncError
from service.admin.filters import BadParameter, LogFilters, parse_filters
from service.admin.guard import LoginLimiter, Proxies, Sessions
from service.admin.ports import JobRunner, NotLeaderError, StatusProvider, SyncLogReader

LOG_ID = re.compile(r"^[0-9a-fA-F]{24}$")
_CSS = Path(__file__).with_name("style.css").read_text(encoding="utf-8")
_HTML_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends `Origin: null` on form
    # posts, and the same-origin check on the Retry forms needs the real one.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class AdminContext:
    status: StatusProvider
    store: SyncLogReader
    jobs: JobRunner
    token: str | None
    instance_url: str
    metrics_public: bool = False
    proxies: Proxies = field(default_factory=Proxies)
    sessions: Sessions = field(default_factory=Sessions)
    limiter: LoginLimiter = field(default_factory=LoginLimiter)


CONTEXT = web.AppKey("admin_context", AdminContext)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)  # ObjectId and other driver types


def json_response(data: Any, *, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=_default), status=status,
                        content_type="application/json")


def error_response(status: int, error: str, reason: str, **extra: Any) -> web.Response:
    return json_response({"error": error, "reason": reason, **extra}, status=status)


def html_response(text: str, *, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", headers=_HTML_HEADERS)


def css_response() -> web.Response:
    return web.Response(text=_CSS, content_type="text/css", headers={"Cache-Control": "max-age=300"})


def public_log(doc: dict[str, Any]) -> dict[str, Any]:
    """A sync log as the API shows it: `id` as a string instead of Mongo's `_id`."""
    out = {k: v for k, v in doc.items() if k != "_id"}
    if "_id" in doc:
        out["id"] = str(doc["_id"])
    elif "id" in out:
        out["id"] = str(out["id"])
    return out


def sync_error_response(exc: SyncError) -> web.Response:
    """Map the project's errors to HTTP: what the caller should do decides the status."""
    if isinstance(exc, NotLeaderError):
        return error_response(409, "not_leader", str(exc), leader=exc.leader)
    if isinstance(exc, BudgetExhaustedError):
        return error_response(503, "budget_exhausted", "the Salesforce API budget is spent; try later")
    if isinstance(exc, RetriableError):
        return error_response(503, "unavailable", f"temporarily unavailable: {exc}")
    if isinstance(exc, SkippableError):
        return error_response(422, "rejected", str(exc))
    return error_response(500, "failed", str(exc))


async def find_logs(
    request: web.Request, *, allow_all: bool
) -> tuple[LogFilters, list[dict[str, Any]], str | None]:
    """Validated filters, one page of logs (newest first) and the next cursor."""
    filters = parse_filters(request.query, allow_all=allow_all)
    try:
        items, next_cursor = await request.app[CONTEXT].store.find_sync_logs(**filters.store_kwargs())
    except ValueError as exc:  # the store's word on a cursor it cannot decode
        raise BadParameter("cursor", "is not a cursor this API returned") from exc
    return filters, [public_log(item) for item in items], next_cursor


async def get_log(request: web.Request, log_id: str) -> dict[str, Any] | None:
    if not LOG_ID.match(log_id):
        return None
    return await request.app[CONTEXT].store.get_sync_log(log_id)


def cannot_retry(doc: dict[str, Any] | None, log_id: str) -> tuple[int, str, str] | None:
    """(HTTP status, code, message) saying why this log cannot be retried, or None."""
    if doc is None:
        return 404, "not_found", f"no sync log with id {log_id!r}"
    if doc.get("status") != "failed":
        return 409, "not_failed", "only failed sync logs can be retried"
    if doc.get("retried_by"):
        return 409, "already_retried", f"already retried: its outcome is sync log {doc['retried_by']}"
    if doc.get("retry_queued"):
        return 409, "retry_queued", "a retry is queued: its outcome is linked once Salesforce answers"
    return None


async def load_failed_log(request: web.Request, log_id: str) -> dict[str, Any] | web.Response:
    """The sync log to retry, or the error response that says why it cannot be retried."""
    doc = await get_log(request, log_id)
    refused = cannot_retry(doc, log_id)
    if refused is not None:
        return error_response(*refused)
    assert doc is not None
    return doc
