"""The Sync Logs page, rendered on the server: plain HTML forms, no script, everything escaped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from service.admin.filters import OBJECTS, SOURCES, TYPES, LogFilters

NOTICES: dict[str, tuple[str, str]] = {
    "retried": ("ok", "Retried: Salesforce accepted it this time."),
    "retried_failed": ("error", "Retried: it failed again."),
    "queued": ("ok", "Retry queued: Salesforce has not answered yet; the outcome will be a new row "
                     "for that record."),
    "already_retried": ("error", "That sync log was already retried."),
    "retry_queued": ("error", "That sync log's retry is queued: its outcome shows once Salesforce answers."),
    "retried_all": ("ok", "Retried every failed job that no later sync resolved; the outcomes are the "
                          "newest rows."),
    "imported": ("ok", "Re-imported the record."),
    "not_found": ("error", "That sync log no longer exists."),
    "not_failed": ("error", "Only failed sync logs can be retried."),
    "error": ("error", "The retry could not run; see the service logs."),
    "unavailable": ("error", "The service cannot retry right now (MongoDB or the API budget); try again."),
    "standby": ("error", "This replica stands by: retries run on the replica that holds the sync lease."),
}

_FUNNEL = (
    '<svg viewBox="0 0 16 16" width="14" height="14" aria-hidden="true" focusable="false">'
    '<path d="M1.5 2h13l-5 6v5l-3 1.5V8z" fill="currentColor"/></svg>'
)


@dataclass(frozen=True)
class PageView:
    """Everything the Sync Logs page shows."""

    items: Sequence[Mapping[str, Any]]
    status: Mapping[str, Any]
    filters: LogFilters
    next_cursor: str | None
    instance_url: str
    notice: str | None = None
    notice_row: str | None = None      # the retry's outcome row, which the banner links to
    notice_record: str | None = None   # its record (the link shows that record's rows)
    # the rows that `retried_by` and `resolved.by` point at, by id (see `pointed_at`)
    linked: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _document(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{_e(title)} · Salesforce Sync</title>"
        "<link rel=\"stylesheet\" href=\"/logs/style.css\"></head>"
        f"<body>{body}</body></html>\n"
    )


def format_time(value: Any) -> tuple[str, str]:
    """(machine ISO string, short human UTC string) for a datetime or an ISO string."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value, value
    if not isinstance(value, datetime):
        return "", "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z"), value.strftime("%Y-%m-%d %H:%M:%S") + " UTC"


def render_message_page(title: str, message: str) -> str:
    body = f'<main class="narrow"><h1>{_e(title)}</h1><p>{_e(message)}</p></main>'
    return _document(title, body)


def render_login_page(*, error: str | None = None) -> str:
    problem = f'<p class="notice error" role="alert">{_e(error)}</p>' if error else ""
    body = (
        '<main class="narrow"><h1>Sync Logs</h1>'
        "<p>Enter the admin token (<code>SFSYNC_ADMIN__TOKEN</code>) to see the sync logs.</p>"
        f"{problem}"
        '<form class="login" method="post" action="/logs/login">'
        '<label for="token">Admin token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>'
        '<button type="submit">Log in</button></form></main>'
    )
    return _document("Log in", body)


def render_logs_page(view: PageView) -> str:
    body = (
        '<header class="top"><h1>Sync Logs</h1>'
        '<form method="post" action="/logs/logout"><button class="quiet" type="submit">Log out</button>'
        "</form></header>"
        f"{_status_strip(view.status)}{_failures_panel(view.status, view.filters)}{_notice(view)}"
        f"{_filter_form(view.filters)}"
        f"{_table(view)}{_pager(view)}"
    )
    return _document("Sync Logs", f"<main>{body}</main>")


def _notice(view: PageView) -> str:
    code = view.notice
    if not code or code not in NOTICES:
        return ""
    kind, text = NOTICES[code]
    link = ""
    if view.notice_row:
        href = (f"/logs?{urlencode({'record': view.notice_record})}" if view.notice_record else "/logs") \
            + f"#log-{quote(view.notice_row, safe='')}"
        link = f' <a href="{_e(href)}">See the outcome</a>'
    return f'<p class="notice {kind}" role="status">{_e(text)}{link}</p>'


def _status_strip(status: Mapping[str, Any]) -> str:
    mode = str(status.get("mode") or "unknown")
    budget = status.get("budget") if isinstance(status.get("budget"), Mapping) else {}
    assert isinstance(budget, Mapping)
    used, most, pct = budget.get("used"), budget.get("max"), budget.get("remaining_pct")
    if isinstance(used, int | float) and isinstance(most, int | float):
        spent = f"{int(used):,} / {int(most):,}"
    else:
        spent = "—"
    left = f"{float(pct):.1f}% left" if isinstance(pct, int | float) else ""
    iso, shown = format_time(status.get("last_event_at") or status.get("last_event"))
    last = f'<time datetime="{_e(iso)}">{_e(shown)}</time>' if iso else "—"
    cells = [
        ("Mode", f'<span class="mode mode-{_e(mode)}">{_e(mode)}</span>'),
        ("API budget", f"{_e(spent)} <small>{_e(left)}</small>"),
        ("Last event", last),
        ("Queue depth", _e(_queue_depth(status.get("queue_depth")))),
    ]
    inner = "".join(
        f'<div class="stat"><span class="label">{_e(label)}</span><span class="value">{value}</span></div>'
        for label, value in cells
    )
    return f'<section class="strip" aria-label="Service status">{inner}</section>'


def _failures_panel(status: Mapping[str, Any], filters: LogFilters) -> str:
    """Open failures per Salesforce status code (`/api/status` `failures_by_code`), most first;
    each count links to the failed logs with that code."""
    counts = status.get("failures_by_code")
    if not isinstance(counts, Mapping) or not counts:
        return ""
    items: list[str] = []
    for code, count in sorted(counts.items(), key=lambda kv: (-int(kv[1]), str(kv[0]))):
        href = "/logs?" + urlencode({"status": "failed", "error_code": code})
        current = ' aria-current="true"' if filters.error_code == code else ""
        items.append(f'<li><a href="{_e(href)}"{current}><code>{_e(code)}</code> '
                     f'<span class="count">{int(count):,}</span></a></li>')
    return ('<section class="failures" aria-label="Open failures by error code">'
            f'<h2>Open failures by error code</h2><ul>{"".join(items)}</ul></section>')


def _queue_depth(value: Any) -> str:
    if isinstance(value, Mapping):
        total = sum(v for v in value.values() if isinstance(v, int | float))
        parts = ", ".join(f"{k} {v}" for k, v in value.items())
        return f"{int(total)} ({parts})" if parts else "0"
    return "—" if value is None else str(value)


def _select(label: str, name: str, choices: Sequence[tuple[str, str]], current: str | None) -> str:
    """A filter select whose first choice, "All" (value ""), leaves the filter out."""
    options = "".join(
        f'<option value="{_e(v)}"{" selected" if v == (current or "") else ""}>{_e(text)}</option>'
        for v, text in [("", "All"), *choices]
    )
    return f'<label>{label} <select name="{name}">{options}</select></label>'


def _filter_form(filters: LogFilters) -> str:
    choices = [("all", "All"), ("success", "Success"), ("failed", "Failed")]
    current = filters.status or "all"
    options = "".join(
        f'<option value="{v}"{" selected" if v == current else ""}>{label}</option>' for v, label in choices
    )
    selects = (_select("Source", "source", [(s, s.capitalize()) for s in SOURCES], filters.source)
               + _select("Type", "type", [(t, t.replace("_", " ")) for t in TYPES], filters.type)
               + _select("Object", "object", [(o, o) for o in OBJECTS], filters.object))
    kept = "".join(
        f'<input type="hidden" name="{_e(k)}" value="{_e(v)}">' for k, v in filters.query().items()
        if k not in ("status", "record", "open", "source", "type", "object")
    )
    checked = " checked" if filters.open else ""
    return (
        '<div class="toolbar"><form class="filters" method="get" action="/logs">'
        f'<label>Status <select name="status">{options}</select></label>'
        f'<label class="check"><input type="checkbox" name="open" value="1"{checked}> '
        f'Open failures only</label>{selects}'
        '<label>Record <input name="record" placeholder="Salesforce or local id" '
        f'value="{_e(filters.record or "")}" size="22"></label>{kept}'
        '<button type="submit">Filter</button> <a class="clear" href="/logs">Clear</a></form>'
        '<form method="post" action="/logs/retry-failed">'
        f'<input type="hidden" name="back" value="{_e(urlencode(filters.query()))}">'
        '<button class="secondary" type="submit">Retry all failed</button></form></div>'
    )


def _table(view: PageView) -> str:
    if not view.items:
        return '<p class="empty">No sync logs match these filters.</p>'
    head = "".join(
        f'<th scope="col">{h}</th>'
        for h in ("Time", "Source", "Type", "Status", "Object", "Record", "Details")
    )
    back = urlencode(view.filters.query(cursor=view.filters.cursor))
    rows = "".join(_row(item, view.instance_url, back, view.linked) for item in view.items)
    return f'<table class="logs"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def _row(item: Mapping[str, Any], instance_url: str, back: str,
         linked: Mapping[str, Mapping[str, Any]]) -> str:
    status = str(item.get("status") or "")
    iso, shown = format_time(item.get("ts"))
    badge = f'<span class="badge {_e(status)}">{_e(status.capitalize() or "—")}</span>'
    cells = [
        ("Time", f'<time datetime="{_e(iso)}">{_e(shown)}</time>'),
        ("Source", _e(item.get("source") or "—")),
        ("Type", _e(item.get("type") or "—")),
        ("Status", badge),
        ("Object", _e(item.get("object") or "—")),
        ("Record", _record_cell(item, instance_url)),
        ("Details", _details_cell(item, back, linked)),
    ]
    tds = "".join(f'<td data-label="{label}"><div class="cell">{html}</div></td>' for label, html in cells)
    return f'<tr class="row-{_e(status)}" id="log-{_e(item.get("id"))}">{tds}</tr>'


def salesforce_url(instance_url: str, sobject: str | None, sf_id: str) -> str:
    base = instance_url.rstrip("/")
    if sobject:
        return f"{base}/lightning/r/{quote(sobject, safe='')}/{quote(sf_id, safe='')}/view"
    return f"{base}/{quote(sf_id, safe='')}"


def _filter_link(record: str) -> str:
    href = "/logs?" + urlencode({"record": record})
    return (
        f'<a class="filter" href="{_e(href)}" title="All actions of {_e(record)}" '
        f'aria-label="Show all actions of {_e(record)}">{_FUNNEL}</a>'
    )


def _record_cell(item: Mapping[str, Any], instance_url: str) -> str:
    sf_id, local_id = item.get("sf_id"), item.get("local_id")
    parts: list[str] = []
    if sf_id:
        href = salesforce_url(instance_url, item.get("object"), str(sf_id))
        parts.append(
            f'<span class="id"><a href="{_e(href)}" target="_blank" rel="noopener noreferrer">'
            f"{_e(sf_id)}</a>{_filter_link(str(sf_id))}</span>"
        )
    if local_id:
        link = "" if sf_id else _filter_link(str(local_id))
        parts.append(f'<span class="id local"><span class="tag">local</span>'
                     f'<span class="value">{_e(local_id)}</span>{link}</span>')
    return "".join(parts) or "—"


def pointed_at(item: Mapping[str, Any]) -> str | None:
    """The id of the row a failed row points at: its retry's outcome, or what resolved it."""
    resolved = item.get("resolved")
    target = item.get("retried_by") or (resolved.get("by") if isinstance(resolved, Mapping) else None)
    return str(target) if target else None


def _state_html(item: Mapping[str, Any], state: str, linked: Mapping[str, Mapping[str, Any]]) -> str:
    """"retried → failed at …" / "resolved by update at …", a link to that row once it is known."""
    target_id = pointed_at(item) if state in ("retried", "resolved") else None
    target = linked.get(target_id) if target_id else None
    if target is None:
        return f'<span class="meta">{_e(state)}</span>'
    _, when = format_time(target.get("ts"))
    what = f"retried → {target.get('status')}" if state == "retried" else f"resolved by {target.get('type')}"
    record = target.get("sf_id") or target.get("local_id")
    page = f"/logs?{urlencode({'record': record})}" if record else "/logs"
    href = f"{page}#log-{quote(str(target_id), safe='')}"
    return f'<a class="meta outcome" href="{_e(href)}">{_e(what)} at {_e(when)}</a>'


def _details_cell(item: Mapping[str, Any], back: str, linked: Mapping[str, Mapping[str, Any]]) -> str:
    parts: list[str] = []
    if item.get("error"):
        parts.append(f'<p class="error">{_e(item["error"])}</p>')
    fields = item.get("fields")
    if isinstance(fields, Mapping) and fields:
        parts.append(f'<div class="fields">{_fields_summary(fields)}</div>')
    meta: list[str] = []
    count = item.get("count")
    if isinstance(count, int) and (count > 1 or item.get("type") == "import"):
        meta.append(f'<span class="meta">{count:,} record{"s" if count != 1 else ""}</span>')
    attempt = item.get("attempt")
    if isinstance(attempt, int) and attempt > 1:
        meta.append(f'<span class="meta">attempt {attempt}</span>')
    state = _retry_state(item) if item.get("status") == "failed" else None
    if state:
        meta.append(_state_html(item, state, linked))
    if meta:
        parts.append(" · ".join(meta))
    if item.get("status") == "failed" and state is None:
        parts.append(_retry_form(item, back))
    return "".join(parts) or '<span class="meta">—</span>'


def _retry_state(item: Mapping[str, Any]) -> str | None:
    """Why a failed row has no Retry button, or None when it has one."""
    if item.get("retried_by"):
        return "retried"
    if item.get("retry_queued"):
        return "retry queued"  # its outcome becomes `retried_by` once the flusher logs it
    if item.get("resolved"):
        return "resolved"  # a later sync of the same record and fields succeeded
    # `retriable` only says whether the automatic retry may re-run it; an admin can retry any
    # failure that recorded its job (after fixing the data, for a permanent error).
    if "job" in item and not item.get("job"):
        return "nothing to retry"
    return None


def _retry_form(item: Mapping[str, Any], back: str) -> str:
    action = "/logs/retry/" + quote(str(item.get("id") or ""), safe="")
    return (
        f'<form class="retry" method="post" action="{_e(action)}">'
        f'<input type="hidden" name="back" value="{_e(back)}">'
        '<button type="submit">Retry</button></form>'
    )


def _short(value: Any, width: int = 40) -> str:
    text = "∅" if value in (None, "") else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _fields_summary(fields: Mapping[str, Any], most: int = 4) -> str:
    shown = [_field_change(name, change) for name, change in fields.items()]
    if len(shown) <= most:
        return "".join(shown)
    rest = "".join(shown[most:])
    return ("".join(shown[:most]) +
            f'<details class="more"><summary>+{len(shown) - most} more</summary>{rest}</details>')


def _field_change(name: str, change: Any) -> str:
    if isinstance(change, Mapping) and ("old" in change or "new" in change):
        text = f"{name}: {_short(change.get('old'))} → {_short(change.get('new'))}"
    else:
        text = f"{name}: {_short(change)}"
    return f"<span>{_e(text)}</span>"


def _pager(view: PageView) -> str:
    links: list[str] = []
    if view.filters.cursor:
        first = "/logs?" + urlencode(view.filters.query())
        links.append(f'<a href="{_e(first.rstrip("?"))}">← Newest</a>')
    if view.next_cursor:
        older = "/logs?" + urlencode(view.filters.query(cursor=view.next_cursor))
        links.append(f'<a class="older" href="{_e(older)}">Older →</a>')
    return f'<nav class="pager" aria-label="Pages">{"".join(links)}</nav>' if links else ""
