"""The REST API under `/services/data/vNN.N/`: versions, limits, describe, query/queryAll with
paging, sObject rows, and sObject Collections — with Salesforce's status codes and error bodies."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from emulator.auth import bearer_token
from emulator.describe import SOBJECTS, FieldDef, FieldError, SObjectDef, normalize_id, rest_value, sobject
from emulator.org import Actor, RecordRejected, Transaction, read_value
from emulator.soql import Cursor, SoqlError, parse

if TYPE_CHECKING:
    from emulator.state import EmulatorState

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
VERSION = r"{version:v\d+\.\d}"
PAGE_SIZE = 2000
COLLECTION_LIMIT = 200
ACTOR = web.RequestKey("actor", Actor)
_LOCATOR = re.compile(r"^(01g[A-Za-z0-9]{15})-(\d+)$")
_VERSIONS = [
    ("Winter '24", "59.0"),
    ("Spring '24", "60.0"),
    ("Summer '24", "61.0"),
    ("Winter '25", "62.0"),
    ("Spring '25", "63.0"),
    ("Summer '25", "64.0"),
]


class RestError(Exception):
    """Raised inside a handler to answer with a Salesforce error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def sf_error(status: int, code: str, message: str, fields: list[str] | None = None) -> web.Response:
    body: dict[str, Any] = {"message": message, "errorCode": code}
    if fields is not None:
        body["fields"] = fields
    return web.json_response([body], status=status)


def _not_found() -> web.Response:
    return sf_error(404, "NOT_FOUND", "The requested resource does not exist")


def _state(request: web.Request) -> EmulatorState:
    state: EmulatorState = request.app["state"]
    return state


@web.middleware
async def rest_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Session check, then the daily API allocation; every response carries Sforce-Limit-Info."""
    if not re.match(r"^/services/data/v\d+\.\d", request.path):
        return await handler(request)
    state = _state(request)
    token = bearer_token(request)
    user = state.tokens.user_of(token) if token else None
    response: web.StreamResponse
    if user is None:
        response = sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid")
    elif not state.limits.count_api_request():
        response = sf_error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
    else:
        request[ACTOR] = Actor(user, _change_origin(request))
        try:
            response = await handler(request)
        except RestError as exc:
            response = sf_error(exc.status, exc.code, exc.message)
        except web.HTTPException as exc:
            response = (
                _not_found()
                if exc.status == 404
                else sf_error(
                    exc.status, "METHOD_NOT_ALLOWED" if exc.status == 405 else "UNKNOWN_EXCEPTION", exc.reason
                )
            )
    response.headers["Sforce-Limit-Info"] = state.limits.usage_header()
    return response


def _change_origin(request: web.Request) -> str:
    version = request.path.split("/")[3][1:]
    origin = f"com/salesforce/api/rest/{version}"
    for option in request.headers.get("Sforce-Call-Options", "").split(","):
        key, _, value = option.strip().partition("=")
        if key == "client" and value:
            return f"{origin};client={value}"
    return origin


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RestError(400, "JSON_PARSER_ERROR", f"Unexpected character: {exc}") from exc


# --- discovery -----------------------------------------------------------------------------------


async def versions(request: web.Request) -> web.Response:
    return web.json_response(
        [{"label": label, "url": f"/services/data/v{v}", "version": v} for label, v in _VERSIONS]
    )


async def resources(request: web.Request) -> web.Response:
    base = f"/services/data/{request.match_info['version']}"
    return web.json_response(
        {name: f"{base}/{name}" for name in ("limits", "sobjects", "query", "queryAll", "composite")}
    )


async def limits(request: web.Request) -> web.Response:
    return web.json_response(_state(request).limits.as_json())


async def global_describe(request: web.Request) -> web.Response:
    version = request.match_info["version"][1:]
    return web.json_response(
        {
            "encoding": "UTF-8",
            "maxBatchSize": COLLECTION_LIMIT,
            "sobjects": [
                {k: v for k, v in o.describe(version).items() if k != "fields"} for o in SOBJECTS.values()
            ],
        }
    )


async def describe(request: web.Request) -> web.Response:
    found = sobject(request.match_info["sobject"])
    if found is None:
        return _not_found()
    return web.json_response(found.describe(request.match_info["version"][1:]))


# --- query ---------------------------------------------------------------------------------------


async def query(request: web.Request) -> web.Response:
    resource = "queryAll" if request.path.rstrip("/").endswith("queryAll") else "query"
    state = _state(request)
    text = request.query.get("q")
    if not text:
        return sf_error(400, "MALFORMED_QUERY", "A query string has to be specified")
    try:
        parsed = parse(text)
    except SoqlError as exc:
        return sf_error(400, exc.error_code, exc.message)
    table = state.org.tables[parsed.sobject.name].values()
    records = table if resource == "queryAll" else (r for r in table if not r.get("IsDeleted"))
    rows = parsed.run(records)
    if parsed.count_only:
        return web.json_response({"totalSize": len(rows), "done": True, "records": []})
    cursor = Cursor(parsed, rows, resource, _batch_size(request))
    locator = state.cursors.open(cursor) if len(rows) > cursor.batch_size else ""
    return web.json_response(_page(request, cursor, locator, 0))


async def query_more(request: web.Request) -> web.Response:
    match = _LOCATOR.match(request.match_info["locator"])
    cursor = _state(request).cursors.get(match[1]) if match else None
    if match is None or cursor is None:
        return sf_error(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
    return web.json_response(_page(request, cursor, match[1], int(match[2])))


def _batch_size(request: web.Request) -> int:
    options = request.headers.get("Sforce-Query-Options", "")
    match = re.search(r"batchSize=(\d+)", options)
    return min(PAGE_SIZE, max(200, int(match[1]))) if match else PAGE_SIZE


def _page(request: web.Request, cursor: Cursor, locator: str, start: int) -> dict[str, Any]:
    version = request.match_info["version"]
    end = start + cursor.batch_size
    fields = cursor.query.fields
    page = [_project(cursor.query.sobject, fields, r, version) for r in cursor.rows[start:end]]
    body: dict[str, Any] = {"totalSize": len(cursor.rows), "done": end >= len(cursor.rows), "records": page}
    if body["done"]:
        _state(request).cursors.close(locator)
    else:
        body["nextRecordsUrl"] = f"/services/data/{version}/{cursor.resource}/{locator}-{end}"
    return body


def _project(
    sobj: SObjectDef, fields: list[FieldDef], record: dict[str, Any], version: str
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "attributes": {
            "type": sobj.name,
            "url": f"/services/data/{version}/sobjects/{sobj.name}/{record['Id']}",
        }
    }
    for fd in fields:
        value = (
            read_value(fd, record) if fd.formula is not None or fd.type == "address" else record.get(fd.name)
        )
        out[fd.name] = rest_value(value)
    return out


# --- rows ----------------------------------------------------------------------------------------


def _record_errors(exc: RecordRejected) -> list[dict[str, Any]]:
    return [{"message": e.message, "errorCode": e.status_code, "fields": list(e.fields)} for e in exc.errors]


def _actor(request: web.Request) -> Actor:
    return request[ACTOR]


async def create_row(request: web.Request) -> web.Response:
    sobj = sobject(request.match_info["sobject"])
    if sobj is None:
        return _not_found()
    payload = await _json_body(request)
    if not isinstance(payload, dict):
        return sf_error(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from START_ARRAY")
    org = _state(request).org
    try:
        values = org.prepare_create(sobj, payload)
    except RecordRejected as exc:
        return web.json_response(_record_errors(exc), status=400)
    record_id = org.create(sobj, values, org.transaction(_actor(request)))
    return web.json_response({"id": record_id, "success": True, "errors": []}, status=201)


def _row(request: web.Request) -> tuple[SObjectDef, dict[str, Any]] | web.Response:
    return find_row(_state(request), request.match_info["sobject"], request.match_info["id"])


def find_row(
    state: EmulatorState, name: str, raw_id: str
) -> tuple[SObjectDef, dict[str, Any]] | web.Response:
    """An sObject Rows resource's record, or the error Salesforce answers for it."""
    sobj = sobject(name)
    record_id = normalize_id(raw_id)
    if sobj is None:
        return _not_found()
    if record_id is None:
        return sf_error(
            404,
            "NOT_FOUND",
            f"Provided external ID field does not exist or is not accessible: {raw_id}",
        )
    record = state.org.tables[sobj.name].get(record_id)
    if record is None:
        return _not_found()
    if record.get("IsDeleted"):
        return sf_error(404, "ENTITY_IS_DELETED", "entity is deleted")
    return sobj, record


async def get_row(request: web.Request) -> web.Response:
    found = _row(request)
    if isinstance(found, web.Response):
        return found
    sobj, record = found
    names = [n.strip() for n in request.query.get("fields", "").split(",") if n.strip()]
    fields: list[FieldDef] = []
    for name in names:
        fd = sobj.field(name)
        if fd is None:
            return sf_error(
                400,
                "INVALID_FIELD",
                f"No such column '{name}' on entity '{sobj.name}'. If you are "
                "attempting to use a custom field, be sure to append the '__c' after the custom "
                "field name. Please reference your WSDL or the describe call for the appropriate "
                "names.",
            )
        fields.append(fd)
    return web.json_response(
        _project(sobj, fields or list(sobj.fields), record, request.match_info["version"])
    )


async def update_row(request: web.Request) -> web.Response:
    found = _row(request)
    if isinstance(found, web.Response):
        return found
    sobj, record = found
    payload = await _json_body(request)
    if not isinstance(payload, dict):
        return sf_error(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from START_ARRAY")
    refused = precondition_failure(request.headers, record)
    if refused is not None:
        return refused
    org = _state(request).org
    try:
        _, values = org.prepare_update(sobj, record["Id"], payload)
    except RecordRejected as exc:
        return web.json_response(_record_errors(exc), status=400)
    org.update(sobj, record, values, org.transaction(_actor(request)))
    return web.Response(status=204)


def precondition_failure(headers: Mapping[str, str], record: Mapping[str, Any]) -> web.Response | None:
    """`If-Unmodified-Since` on an sObject Rows PATCH: 412 when the record was modified after the
    date (nothing written), 400 when the value is not an HTTP date. Both sides have whole-second
    precision (`Org.now`): a change in the same second as the date is not "since"."""
    raw = next((v for k, v in headers.items() if k.lower() == "if-unmodified-since"), None)
    if raw is None:
        return None
    since = _http_date(raw)
    if since is None:
        return sf_error(400, "INVALID_HEADER_VALUE", f"If-Unmodified-Since: invalid date: {raw}")
    modified = record.get("LastModifiedDate")
    if isinstance(modified, datetime) and modified.replace(microsecond=0) > since:
        return sf_error(412, "PRECONDITION_FAILED",
                        "The record was modified since the If-Unmodified-Since date")
    return None


def _http_date(raw: str) -> datetime | None:
    """`EEE, dd MMM yyyy HH:mm:ss z` (RFC 7231's IMF-fixdate) as an aware datetime, else None."""
    try:
        parsed = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


async def delete_row(request: web.Request) -> web.Response:
    found = _row(request)
    if isinstance(found, web.Response):
        return found
    sobj, record = found
    org = _state(request).org
    org.delete(sobj, record, org.transaction(_actor(request)))
    return web.Response(status=204)


# --- sObject Collections -------------------------------------------------------------------------

_ROLLED_BACK = FieldError(
    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "Record rolled back because not all records were valid and the request was using AllOrNone header",
)
Prepared = tuple[SObjectDef, dict[str, Any] | None, dict[str, Any]]  # (object, stored record or None, values)


async def collection_write(request: web.Request) -> web.Response:
    """POST creates, PATCH updates up to 200 records; results in input order, failures carry no id."""
    body = await _json_body(request)
    checked = _collection_records(body)
    if isinstance(checked, web.Response):
        return checked
    types, records = checked
    creating = request.method == "POST"
    all_or_none = bool(body.get("allOrNone", False))
    org = _state(request).org
    tx = org.transaction(_actor(request))
    outcomes: list[Prepared | RecordRejected] = []
    for sobj, payload in zip(types, records, strict=True):
        outcome = _prepare(request, sobj, payload, creating)
        if not all_or_none and not isinstance(outcome, RecordRejected):
            outcome = (outcome[0], outcome[1], {**outcome[2], "Id": _apply(request, outcome, tx)})
        outcomes.append(outcome)
    if all_or_none:
        if any(isinstance(o, RecordRejected) for o in outcomes):
            return web.json_response(
                [
                    _result(None, o if isinstance(o, RecordRejected) else RecordRejected(_ROLLED_BACK))
                    for o in outcomes
                ]
            )
        outcomes = [
            (o[0], o[1], {**o[2], "Id": _apply(request, o, tx)})
            for o in outcomes
            if not isinstance(o, RecordRejected)
        ]
    return web.json_response(
        [
            _result(o[2]["Id"], None) if not isinstance(o, RecordRejected) else _result(None, o)
            for o in outcomes
        ]
    )


def _collection_records(body: Any) -> web.Response | tuple[list[SObjectDef], list[dict[str, Any]]]:
    """The records of a collection request with their objects, or the error Salesforce answers."""
    records = body.get("records") if isinstance(body, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        return sf_error(400, "JSON_PARSER_ERROR", "Expected a JSON object with a 'records' array")
    if len(records) > COLLECTION_LIMIT:
        return sf_error(
            400,
            "EXCEEDED_ID_LIMIT",
            f"record limit reached. cannot submit more than {COLLECTION_LIMIT} records into this call",
        )
    types = [sobject(str((r.get("attributes") or {}).get("type", ""))) for r in records]
    known = [t for t in types if t is not None]
    if len(known) != len(types):
        return sf_error(
            400,
            "INVALID_TYPE",
            "sObject type is missing or not supported in the records' "
            "attributes: every record needs attributes.type",
        )
    return known, records


def _prepare(
    request: web.Request, sobj: SObjectDef, payload: dict[str, Any], creating: bool
) -> Prepared | RecordRejected:
    org = _state(request).org
    fields = {k: v for k, v in payload.items() if k != "attributes"}
    record_id = next((fields.pop(k) for k in list(fields) if k.lower() == "id"), None)
    try:
        if creating:
            if record_id is not None:
                raise RecordRejected(
                    FieldError("INVALID_FIELD", "cannot specify Id in an insert call", ("Id",))
                )
            return sobj, None, org.prepare_create(sobj, fields)
        if record_id is None:
            raise RecordRejected(
                FieldError("MISSING_ARGUMENT", "Id not specified in an update call", ("Id",))
            )
        record, values = org.prepare_update(sobj, record_id, fields)
        return sobj, record, values
    except RecordRejected as exc:
        return exc


def _apply(request: web.Request, prepared: Prepared, tx: Transaction) -> str:
    sobj, record, values = prepared
    org = _state(request).org
    if record is None:
        return org.create(sobj, values, tx)
    org.update(sobj, record, values, tx)
    return str(record["Id"])


def _result(record_id: str | None, rejected: RecordRejected | None) -> dict[str, Any]:
    if rejected is None:
        return {"id": record_id, "success": True, "errors": []}
    return {"success": False, "errors": [e.as_json() for e in rejected.errors]}


async def collection_delete(request: web.Request) -> web.Response:
    ids = [i for i in request.query.get("ids", "").split(",") if i]
    if len(ids) > COLLECTION_LIMIT:
        return sf_error(
            400,
            "EXCEEDED_ID_LIMIT",
            f"record limit reached. cannot submit more than {COLLECTION_LIMIT} records into this call",
        )
    org = _state(request).org
    tx = org.transaction(_actor(request))
    results: list[dict[str, Any]] = []
    for raw in ids:
        found = org.find(raw)
        if found is None:
            results.append(_result(None, RecordRejected(FieldError("MALFORMED_ID", f"malformed id {raw}"))))
        elif found[1].get("IsDeleted"):
            results.append(
                _result(None, RecordRejected(FieldError("ENTITY_IS_DELETED", "entity is deleted")))
            )
        else:
            org.delete(found[0], found[1], tx)
            results.append(_result(found[1]["Id"], None))
    return web.json_response(results)


def add_rest_routes(app: web.Application) -> None:
    base = f"/services/data/{VERSION}"
    app.router.add_get("/services/data", versions)
    app.router.add_get("/services/data/", versions)
    app.router.add_get(f"{base}/", resources)
    app.router.add_get(f"{base}/limits", limits)
    app.router.add_get(f"{base}/sobjects", global_describe)
    app.router.add_get(f"{base}/sobjects/{{sobject}}/describe", describe)
    for resource in ("query", "queryAll"):
        app.router.add_get(f"{base}/{resource}", query)
        app.router.add_get(f"{base}/{resource}/", query)
        app.router.add_get(f"{base}/{resource}/{{locator}}", query_more)
    app.router.add_post(f"{base}/sobjects/{{sobject}}", create_row)
    app.router.add_get(f"{base}/sobjects/{{sobject}}/{{id}}", get_row)
    app.router.add_patch(f"{base}/sobjects/{{sobject}}/{{id}}", update_row)
    app.router.add_delete(f"{base}/sobjects/{{sobject}}/{{id}}", delete_row)
    app.router.add_post(f"{base}/composite/sobjects", collection_write)
    app.router.add_patch(f"{base}/composite/sobjects", collection_write)
    app.router.add_delete(f"{base}/composite/sobjects", collection_delete)
