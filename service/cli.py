"""`sfsync`: run the service, check the configuration, run the demo, and talk to a running service.

`logs`, `retry`, `import` and `status` call the running service's admin API
(`--url`, default http://127.0.0.1:$SFSYNC_ADMIN__PORT; token from SFSYNC_ADMIN__TOKEN).

Exit codes: 0 ok; 1 the service answered with an error (or a `check-config --online` check
failed); 2 bad configuration or usage -- a bad value, a short admin token, the admin port in use,
a MongoDB URI the driver refuses, credentials or mappings Salesforce refuses; 3 something could
not be reached -- the admin API (for `logs`, `status`, ...), or, for `run`, MongoDB or Salesforce
for `SFSYNC_SYNC__GIVE_UP_SECONDS` (unset: `run` retries forever); 130 interrupted.
Every one of these prints one line on stderr, with no traceback and no secret.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from service.admin.client import AdminApiError, AdminClient, AdminUnreachable
from service.process import Unreachable
from settings import SALESFORCE_OBJECTS, ConfigError, Settings, load_mappings, load_settings
from settings.redaction import redact_text

EXIT_OK, EXIT_API_ERROR, EXIT_CONFIG, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
_FOLLOW_PAGE = 100


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = getattr(args, "handler", cmd_run)
    try:
        return command(args)
    except ConfigError as exc:
        print(redact_text(str(exc)), file=sys.stderr)
        return EXIT_CONFIG
    except Unreachable as exc:
        print(redact_text(str(exc)), file=sys.stderr)
        return EXIT_UNREACHABLE
    except AdminUnreachable as exc:
        print(f"sfsync: {exc}; is the service running? (set --url or SFSYNC_ADMIN__PORT)",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    except AdminApiError as exc:
        hint = " (set SFSYNC_ADMIN__TOKEN to the service's admin token)" if exc.status == 401 else ""
        print(f"sfsync: {exc.status} {exc}{hint}", file=sys.stderr)
        return EXIT_API_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _add_logs(sub: Any) -> None:
    """The `logs` command and its filters (those of `GET /api/sync-logs`)."""
    logs = _api_parser(sub, "logs", "show sync logs, newest first")
    logs.add_argument("--status", choices=["success", "failed"])
    logs.add_argument("--open", action="store_true", help="open failures only: not retried, not resolved")
    logs.add_argument("--record", metavar="ID", help="a Salesforce id or local id")
    logs.add_argument("--source", choices=["salesforce", "local"])
    logs.add_argument("--type", dest="log_type", metavar="TYPE", help="create, update, merge, convert...")
    logs.add_argument("--object", dest="sobject", choices=list(SALESFORCE_OBJECTS))
    logs.add_argument("--error-code", metavar="CODE",
                      help="failures with this Salesforce status code (OTHER: without one)")
    logs.add_argument("--limit", type=int, default=50, help="1-500 (default 50)")
    logs.add_argument("--cursor", help="continue from an earlier page")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new logs")
    logs.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    logs.set_defaults(handler=cmd_logs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sfsync", description="Two-way sync between MongoDB People/Companies and Salesforce.",
        epilog="Without a command, `sfsync` runs the service.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", help="run the service (default)").set_defaults(handler=cmd_run)
    check = sub.add_parser("check-config", help="validate the env and mappings file, print the effective "
                           "configuration (secrets masked)")
    check.add_argument("--online", action="store_true",
                       help="also ask Salesforce and MongoDB: OAuth, API version, mapped fields, Change "
                       "Data Capture selection, limits, replica set, majority writes, indexes, admin token")
    check.set_defaults(handler=cmd_check_config)
    demo = sub.add_parser("demo", help="run a local demo: emulated org, local MongoDB, the service")
    demo.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    demo.add_argument("--port", type=int, default=8080, help="admin port (default 8080)")
    demo.set_defaults(handler=cmd_demo)

    _add_logs(sub)

    retry = _api_parser(sub, "retry", "retry one failed sync log, or all of them")
    target = retry.add_mutually_exclusive_group(required=True)
    target.add_argument("log_id", nargs="?", metavar="ID", help="the sync log id (see `sfsync logs`)")
    target.add_argument("--all", action="store_true", help="retry every failed job")
    retry.set_defaults(handler=cmd_retry)

    imp = _api_parser(sub, "import", "re-import one Salesforce record (a merge)")
    imp.add_argument("sf_id", metavar="SF_ID")
    imp.set_defaults(handler=cmd_import)

    _api_parser(sub, "status", "show the running service's mode, API budget and queues") \
        .set_defaults(handler=cmd_status)
    return parser


def _api_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.add_argument("--url", help="admin API base URL (default http://127.0.0.1:$SFSYNC_ADMIN__PORT)")
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
    parser.add_argument("--timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    return parser


# --- service commands -------------------------------------------------------------------------

def _load() -> tuple[Settings, Any]:
    settings = load_settings()
    return settings, load_mappings(settings.sync.mappings_file)


def cmd_run(args: argparse.Namespace) -> int:
    from service.logs import configure_logging, settings_secrets
    from service.process import run_service

    settings, mappings = _load()
    configure_logging(settings.log.level, settings.log.format.value, secrets=settings_secrets(settings))
    problem = settings.admin.token_problem()
    if problem:
        raise ConfigError(problem)
    return asyncio.run(run_service(settings, mappings))


def cmd_check_config(args: argparse.Namespace) -> int:
    from service.config_report import render_config

    settings, mappings = _load()
    sys.stdout.write(render_config(settings, mappings))
    if not getattr(args, "online", False):
        return EXIT_OK
    from service.logs import configure_logging, settings_secrets
    from service.online_check import online_checks

    # Quiet logs (the lines below say it all), but every secret registered for redaction.
    configure_logging("ERROR", "console", secrets=settings_secrets(settings))
    checks = asyncio.run(online_checks(settings, mappings))
    print("\n# online checks")
    for check in checks:
        print(check.line())
    failed = sum(not c.ok for c in checks)
    print(f"# {len(checks) - failed} of {len(checks)} passed" + ("" if not failed else "; fix the ✗ lines"))
    return EXIT_API_ERROR if failed else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    return asyncio.run(run_demo(duration=args.duration, admin_port=args.port))


# --- admin API commands -----------------------------------------------------------------------

def admin_client(args: argparse.Namespace) -> AdminClient:
    port, token = os.environ.get("SFSYNC_ADMIN__PORT"), os.environ.get("SFSYNC_ADMIN__TOKEN")
    if (port is None and not args.url) or token is None:
        # Fall back to the env file the service reads; an invalid one just gives no defaults.
        try:
            settings: Settings | None = load_settings(require_credentials=False)
        except ConfigError:
            settings = None
        if settings is not None:
            port = port or str(settings.admin.port)
            if token is None and settings.admin.token is not None:
                token = settings.admin.token.get_secret_value()
    if args.url:
        url = args.url
    else:
        if port is not None and not port.strip().isdigit():
            raise ConfigError(f"SFSYNC_ADMIN__PORT: must be a port number (got {port!r})")
        url = f"http://127.0.0.1:{int(port or 8080)}"
    return AdminClient(url, token, timeout=args.timeout)


def cmd_logs(args: argparse.Namespace) -> int:
    client = admin_client(args)
    params: dict[str, str | int | None] = {
        "status": args.status, "record": args.record, "source": args.source, "type": args.log_type,
        "object": args.sobject, "limit": args.limit, "cursor": args.cursor,
        "error_code": args.error_code, "open": "1" if args.open else None,
    }
    if args.follow:
        return _follow(client, params, args)
    page = client.get("/api/sync-logs", params)
    if args.json:
        _print_json(page)
        return EXIT_OK
    items = page.get("items") or []
    print(format_logs(items) if items else "No sync logs match.")
    if page.get("next_cursor"):
        print(f"(older: sfsync logs --cursor {page['next_cursor']})", file=sys.stderr)
    return EXIT_OK


def _follow(client: AdminClient, params: dict[str, str | int | None], args: argparse.Namespace) -> int:
    """Print the newest `--limit` logs oldest first, then only logs newer than those, as they
    arrive (polling), until interrupted. A later page is newest first: what precedes the first
    log already printed is new; what follows it is older history the first page left out."""
    params = {**params, "cursor": None, "limit": min(int(params.get("limit") or 50), _FOLLOW_PAGE)}
    seen: dict[str, None] = {}
    header = not args.json
    while True:
        items = client.get("/api/sync-logs", params).get("items") or []
        fresh: list[dict[str, Any]] = []
        for item in items:  # newest first
            if str(item.get("id")) in seen:
                break
            fresh.append(item)
        fresh.reverse()
        for item in fresh:
            seen[str(item.get("id"))] = None
        while len(seen) > 10 * _FOLLOW_PAGE:  # remember enough to de-duplicate, not everything
            seen.pop(next(iter(seen)))
        if fresh:
            if args.json:
                for item in fresh:
                    print(json.dumps(item, sort_keys=True), flush=True)
            else:
                print(format_logs(fresh, header=header), flush=True)
                header = False
        params["limit"] = _FOLLOW_PAGE
        time.sleep(args.interval)


def cmd_retry(args: argparse.Namespace) -> int:
    client = admin_client(args)
    if args.all:
        result = client.post("/api/retry-failed")
    else:
        result = client.post(f"/api/sync-logs/{args.log_id}/retry")
    if args.json:
        _print_json(result)
    elif args.all:
        print("Retried failed jobs: " + _summary(result))
    else:
        print(f"Retried {args.log_id}: " + _summary({k: v for k, v in result.items() if k != "retried"}))
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    result = admin_client(args).post("/api/import", {"sf_id": args.sf_id})
    if args.json:
        _print_json(result)
    else:
        print(f"Imported {args.sf_id}: " + _summary({k: v for k, v in result.items() if k != "sf_id"}))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    status = admin_client(args).get("/api/status")
    if args.json:
        _print_json(status)
    else:
        print(format_status(status))
    return EXIT_OK


# --- output -----------------------------------------------------------------------------------

def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _summary(result: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result.items()) or "done"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, header: bool = True) -> str:
    """Columns aligned with two spaces; the last column is not padded."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = [list(headers)] if header else []
    lines += [list(r) for r in rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths[:-1], strict=True)) + "  " + line[-1]
        for line in lines
    ).rstrip("\n")


def _clip(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _time(value: Any) -> str:
    text = str(value or "")
    return text.replace("T", " ")[:19] if text else "-"


def _detail(item: Mapping[str, Any]) -> str:
    if item.get("error"):
        return _clip(str(item["error"]))
    fields = item.get("fields")
    if isinstance(fields, Mapping) and fields:
        return _clip("changed " + ", ".join(fields))
    return ""


def format_logs(items: Sequence[Mapping[str, Any]], *, header: bool = True) -> str:
    headers = ("ID", "TIME (UTC)", "SOURCE", "TYPE", "STATUS", "OBJECT", "SF ID", "LOCAL ID", "DETAIL")
    rows = [
        (str(i.get("id") or "-"), _time(i.get("ts")), str(i.get("source") or "-"), str(i.get("type") or "-"),
         str(i.get("status") or "-") + (" (retried)" if i.get("retried_by") else ""),
         str(i.get("object") or "-"), str(i.get("sf_id") or "-"), str(i.get("local_id") or "-"), _detail(i))
        for i in items
    ]
    return format_table(headers, rows, header=header)


def format_status(status: Mapping[str, Any]) -> str:
    lines: list[tuple[str, str]] = [("mode", str(status.get("mode", "unknown")))]
    budget = status.get("budget")
    if isinstance(budget, Mapping):
        pct = budget.get("remaining_pct")
        left = f" ({float(pct):.1f}% left)" if isinstance(pct, int | float) else ""
        lines.append(("api budget", f"{budget.get('used', '?')} / {budget.get('max', '?')} used{left}"))
    for key, value in status.items():
        if key in ("mode", "budget"):
            continue
        if isinstance(value, Mapping):
            lines.append((key.replace("_", " "), ", ".join(f"{k}={v}" for k, v in value.items()) or "-"))
        else:
            lines.append((key.replace("_", " "), "-" if value is None else str(value)))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
