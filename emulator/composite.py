"""`POST /services/data/vNN.N/composite`: up to 25 subrequests in ONE API call, each with its own
`httpHeaders`, answered one by one (`{"compositeResponse": [{"body", "httpHeaders",
"httpStatusCode", "referenceId"}]}`, HTTP 200 whatever the subrequests' statuses).

The emulator serves the subrequest the service sends: PATCH of an sObject Rows record
(`/services/data/vNN.N/sobjects/{sObject}/{id}`), with `If-Unmodified-Since` honoured as the
single-record PATCH does (`rest.precondition_failure`). Any other subrequest answers 400
`NOT_SUPPORTED_BY_EMULATOR` (say so rather than pretend). `allOrNone: true`: every subrequest is
checked first and nothing is written when one fails (it answers its error, the others 400
`PROCESSING_HALTED`); `false` (the default): each is written, or fails, on its own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from emulator.describe import SObjectDef
from emulator.org import RecordRejected, Transaction
from emulator.rest import ACTOR, VERSION, find_row, precondition_failure, sf_error

if TYPE_CHECKING:
    from emulator.state import EmulatorState

COMPOSITE_LIMIT = 25
_REFERENCE = re.compile(r"^[A-Za-z0-9_]+$")
_ROW_URL = re.compile(r"^/services/data/v\d+\.\d/sobjects/([^/?]+)/([^/?]+)$")
# The top-level request's own headers: a subrequest inherits them and may not set them.
_INHERITED = frozenset({"accept", "authorization", "content-type"})
_HALTED = [{"errorCode": "PROCESSING_HALTED",
            "message": "The transaction was rolled back since another operation in the same "
                       "transaction failed."}]


@dataclass
class _Sub:
    """One subrequest: its reference, and either the checked write or its failed answer."""

    reference: str
    write: tuple[SObjectDef, dict[str, Any], dict[str, Any]] | None = None
    status: int = 204
    body: Any = None

    def answer(self) -> dict[str, Any]:
        return {"body": self.body, "httpHeaders": {}, "httpStatusCode": self.status,
                "referenceId": self.reference}


async def composite(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError as exc:
        return sf_error(400, "JSON_PARSER_ERROR", f"Unexpected character: {exc}")
    invalid = _invalid(body)
    if invalid is not None:
        return sf_error(400, "INVALID_INPUT", invalid)
    state: EmulatorState = request.app["state"]
    org, actor = state.org, request[ACTOR]
    if bool(body.get("allOrNone", False)):
        subs = [_check(state, sub) for sub in body["compositeRequest"]]
        if any(s.write is None for s in subs):
            for s in subs:
                if s.write is not None:
                    s.write, s.status, s.body = None, 400, _HALTED
        tx = org.transaction(actor)
        for s in subs:
            _write(state, s, tx)
    else:
        subs = []
        for sub in body["compositeRequest"]:  # in order: each sees what the earlier ones wrote
            subs.append(_check(state, sub))
            _write(state, subs[-1], org.transaction(actor))
    return web.json_response({"compositeResponse": [s.answer() for s in subs]})


def _invalid(body: Any) -> str | None:
    """Why the request as a whole is refused (nothing runs), or None."""
    subs = body.get("compositeRequest") if isinstance(body, dict) else None
    if not isinstance(subs, list) or not subs or not all(isinstance(s, dict) for s in subs):
        return "compositeRequest: a non-empty array of subrequests is required"
    if len(subs) > COMPOSITE_LIMIT:
        return f"Composite request may contain at most {COMPOSITE_LIMIT} subrequests, got {len(subs)}"
    references = [s.get("referenceId") for s in subs]
    if not all(isinstance(r, str) and _REFERENCE.match(r) for r in references):
        return "referenceId: letters, numbers and underscores only, required in every subrequest"
    if len(set(references)) != len(references):
        return "referenceId: each subrequest needs its own"
    for s in subs:
        headers = s.get("httpHeaders") or {}
        if not isinstance(headers, dict) or any(str(k).lower() in _INHERITED for k in headers):
            return "httpHeaders: a map; Accept, Authorization and Content-Type are inherited, not set"
        if not isinstance(s.get("method"), str) or not isinstance(s.get("url"), str):
            return "method and url are required in every subrequest"
    return None


def _check(state: EmulatorState, sub: dict[str, Any]) -> _Sub:
    """The subrequest checked against the record as it is now: ready to write, or answered."""
    out = _Sub(str(sub["referenceId"]))
    match = _ROW_URL.match(sub["url"])
    if sub["method"] != "PATCH" or match is None:
        out.status, out.body = 400, [{"errorCode": "NOT_SUPPORTED_BY_EMULATOR", "message":
                                      "the emulator's composite serves PATCH sObject Rows subrequests only"}]
        return out
    found = find_row(state, match[1], match[2])
    if isinstance(found, web.Response):
        return _failed(out, found)
    sobj, record = found
    refused = precondition_failure(sub.get("httpHeaders") or {}, record)
    if refused is not None:
        return _failed(out, refused)
    payload = sub.get("body")
    if not isinstance(payload, dict):
        out.status, out.body = 400, [{"errorCode": "JSON_PARSER_ERROR",
                                      "message": "Cannot deserialize instance of sObject"}]
        return out
    try:
        _, values = state.org.prepare_update(sobj, record["Id"], payload)
    except RecordRejected as exc:
        out.status = 400
        out.body = [{"message": e.message, "errorCode": e.status_code, "fields": list(e.fields)}
                    for e in exc.errors]
        return out
    out.write = (sobj, record, values)
    return out


def _failed(out: _Sub, response: web.Response) -> _Sub:
    out.write, out.status = None, response.status
    out.body = json.loads(response.text or "null")
    return out


def _write(state: EmulatorState, sub: _Sub, tx: Transaction) -> None:
    if sub.write is not None:
        sobj, record, values = sub.write
        state.org.update(sobj, record, values, tx)


def add_composite_routes(app: web.Application) -> None:
    app.router.add_post(f"/services/data/{VERSION}/composite", composite)
    app.router.add_post(f"/services/data/{VERSION}/composite/", composite)
