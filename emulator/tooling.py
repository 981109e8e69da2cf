"""The Tooling API's query endpoint, for the one object `sfsync check-config --online` asks:
`PlatformEventChannelMember`, the entities selected for Change Data Capture.

Salesforce keeps the Setup → Change Data Capture selection as members of the standard channel
`ChangeEvents` (`SelectedEntity` = `LeadChangeEvent`, ...). The emulator streams every object
whatever the selection; the selection only changes what this query answers. It starts as all
three objects; `POST /_emulator/change-events/selection {"entities": ["Lead", ...]}` replaces it.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from emulator.rest import VERSION, sf_error

SELECTION = web.AppKey("cdc_selection", list[str])
DEFAULT_SELECTION = ("Lead", "Contact", "Account")
_QUERY = re.compile(
    r"^\s*SELECT\s+(?P<fields>[\w\s,]+?)\s+FROM\s+(?P<sobject>\w+)"
    r"(?:\s+WHERE\s+EventChannel\s*=\s*'(?P<channel>[^']*)')?\s*$",
    re.IGNORECASE,
)


def add_tooling_routes(app: web.Application, *, control: bool = True) -> None:
    app[SELECTION] = list(DEFAULT_SELECTION)  # changed in place: the app is frozen once started
    app.router.add_get(f"/services/data/{VERSION}/tooling/query", tooling_query)
    app.router.add_get(f"/services/data/{VERSION}/tooling/query/", tooling_query)
    if control:
        app.router.add_post("/_emulator/change-events/selection", set_selection)


def _member(version: str, index: int, entity: str) -> dict[str, Any]:
    member_id = f"0v8{index:015d}"
    return {
        "attributes": {
            "type": "PlatformEventChannelMember",
            "url": f"/services/data/{version}/tooling/sobjects/PlatformEventChannelMember/{member_id}",
        },
        "Id": member_id,
        "DeveloperName": f"ChangeEvents_{entity}ChangeEvent",
        "MasterLabel": f"{entity}ChangeEvent",
        "EventChannel": "ChangeEvents",
        "SelectedEntity": f"{entity}ChangeEvent",
    }


async def tooling_query(request: web.Request) -> web.Response:
    match = _QUERY.match(request.query.get("q", ""))
    if match is None or match["sobject"].lower() != "platformeventchannelmember":
        return sf_error(400, "MALFORMED_QUERY", "the emulator's Tooling API answers only "
                        "SELECT ... FROM PlatformEventChannelMember [WHERE EventChannel = '...']")
    version = request.match_info["version"]
    selection = request.app[SELECTION]
    members = [_member(version, i, e) for i, e in enumerate(selection, start=1)]
    if match["channel"] is not None:
        members = [m for m in members if m["EventChannel"] == match["channel"]]
    wanted = [f.strip() for f in match["fields"].split(",") if f.strip()]
    records = [{"attributes": m["attributes"], **{f: m.get(f) for f in wanted}} for m in members]
    return web.json_response({"size": len(records), "totalSize": len(records), "done": True,
                              "queryLocator": None, "entityTypeName": "PlatformEventChannelMember",
                              "records": records})


async def set_selection(request: web.Request) -> web.Response:
    body = await request.json()
    entities = body.get("entities") if isinstance(body, dict) else None
    if not isinstance(entities, list) or not all(isinstance(e, str) for e in entities):
        return web.json_response({"error": 'send {"entities": ["Lead", ...]}'}, status=400)
    request.app[SELECTION][:] = list(dict.fromkeys(entities))
    return web.json_response({"entities": request.app[SELECTION]})


__all__ = ["DEFAULT_SELECTION", "SELECTION", "add_tooling_routes"]
