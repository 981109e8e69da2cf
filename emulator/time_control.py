"""The org's own clock and its not-yet-committed transactions, steered from the control API.

Salesforce's clock is not the client's, and a record is stamped (`SystemModstamp`) when its
transaction writes it but visible to queries only at commit. Two control routes reproduce both:

    GET  /_emulator/clock                      -> {"offset_seconds": N, "now": "<org time>"}
    POST /_emulator/clock {"offset_seconds": N}   the org's clock runs N seconds ahead of the host
                                                  (negative: behind). It dates CreatedDate,
                                                  LastModifiedDate, SystemModstamp, CDC
                                                  commitTimestamp and every response's `Date`.
                                                  Never backwards: a lower offset is reached
                                                  by a slew (`SLEW_RATE`), as NTP does.
    POST /_emulator/transactions {"sobject": "Lead", "fields": {...}}
                                               -> {"id", "hold", "SystemModstamp"}: a record created and
                                                  stamped now, invisible to queries and reads
    POST /_emulator/transactions/{hold}/commit -> {"id": ...}: the record becomes visible with
                                                  its original stamps (no CDC event is published)

`install_time_control(app)` is the one hook `emulator.app` calls; `OrgClock` is the clock it
builds the state with.
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from aiohttp import web

from emulator.describe import SObjectDef, rest_value, sobject
from emulator.org import OWNER_USER_ID, Actor

if TYPE_CHECKING:
    from emulator.state import EmulatorState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HOLDS_KEY = "held_transactions"
_UI_ACTOR = Actor(OWNER_USER_ID)  # a held transaction is someone's edit in the Salesforce UI


# How fast the org's clock runs, against the host's, while it slews back to a lowered offset.
SLEW_RATE = 0.8


@dataclass
class OrgClock:
    """The org's time: the host's plus `offset_seconds` (a callable `clock` for the state).

    Never backwards, and never standing still, as Salesforce's clock: a higher offset is a
    step forward, a lower one is reached by a slew (the clock runs at `SLEW_RATE` of the
    host's rate until it meets host + offset). Records, events and `Date` are all read from
    it, so stamps never go back, and a client that extrapolates from the last `Date` at its
    own rate (the service's polling signpost does) is off by at most a fifth of the time since."""

    offset_seconds: float = 0.0
    _org_at: float | None = field(default=None, repr=False)   # the last time handed out
    _host_at: float = field(default=0.0, repr=False)          # the host's time then

    def __call__(self) -> float:
        host = time.time()
        target = host + self.offset_seconds
        if self._org_at is None:
            value = target
        else:
            slewed = self._org_at + SLEW_RATE * max(0.0, host - self._host_at)
            value = max(target, slewed)
        # one event loop calls this (no lock): the read and the store cannot interleave
        self._org_at, self._host_at = value, host
        return value


@dataclass
class HeldTransactions:
    """Records written by transactions that have not committed yet, by hold id."""

    held: dict[str, tuple[SObjectDef, dict[str, Any]]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def hold(self, state: EmulatorState, sobj: SObjectDef,
             payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        org = state.org
        values = org.prepare_create(sobj, payload, trusted=True)
        record_id = org.create(sobj, values, org.transaction(_UI_ACTOR, emit=False))
        record = org.tables[sobj.name].pop(record_id)  # stamped, not visible
        hold = f"tx-{next(self._ids)}"
        self.held[hold] = (sobj, record)
        return hold, record

    def commit(self, state: EmulatorState, hold: str) -> str:
        sobj, record = self.held.pop(hold)
        state.org.tables[sobj.name][record["Id"]] = record
        return str(record["Id"])


def _org_time_header(clock: Callable[[], float]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def org_date(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every response's `Date` is the org's time, as Salesforce's is its own."""
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers["Date"] = formatdate(clock(), usegmt=True)
            raise
        if not response.prepared:
            response.headers["Date"] = formatdate(clock(), usegmt=True)
        return response
    return org_date


def _state(request: web.Request) -> EmulatorState:
    state: EmulatorState = request.app["state"]
    return state


def _clock(request: web.Request) -> OrgClock:
    clock = _state(request).clock
    if not isinstance(clock, OrgClock):
        raise web.HTTPConflict(text="this org's clock cannot be moved")
    return clock


async def _body(request: web.Request) -> dict[str, Any]:
    body = await request.json() if request.can_read_body else {}
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


async def get_clock(request: web.Request) -> web.Response:
    clock = _clock(request)
    now = datetime.fromtimestamp(clock(), UTC).isoformat()
    return web.json_response({"offset_seconds": clock.offset_seconds, "now": now})


async def set_clock(request: web.Request) -> web.Response:
    offset = (await _body(request)).get("offset_seconds")
    if not isinstance(offset, int | float) or isinstance(offset, bool):
        raise web.HTTPBadRequest(text="offset_seconds must be a number")
    _clock(request).offset_seconds = float(offset)
    return await get_clock(request)


async def hold_transaction(request: web.Request) -> web.Response:
    body = await _body(request)
    sobj = sobject(str(body.get("sobject", "")))
    if sobj is None or not isinstance(body.get("fields"), dict):
        raise web.HTTPBadRequest(text="expected {'sobject': <name>, 'fields': {...}}")
    hold, record = request.app[_HOLDS_KEY].hold(_state(request), sobj, body["fields"])
    return web.json_response({"hold": hold, "id": record["Id"],
                              "SystemModstamp": rest_value(record["SystemModstamp"])})


async def commit_transaction(request: web.Request) -> web.Response:
    holds: HeldTransactions = request.app[_HOLDS_KEY]
    hold = request.match_info["hold"]
    if hold not in holds.held:
        raise web.HTTPNotFound(text="no such held transaction")
    return web.json_response({"id": holds.commit(_state(request), hold)})


def install_time_control(app: web.Application) -> None:
    """The org's `Date` on every response, and (control API on) the clock and hold routes."""
    state: EmulatorState = app["state"]
    app.middlewares.insert(0, _org_time_header(state.clock))
    if not state.config.control_enabled:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a plain string key, like "state"
        app[_HOLDS_KEY] = HeldTransactions()
    app.router.add_get("/_emulator/clock", get_clock)
    app.router.add_post("/_emulator/clock", set_clock)
    app.router.add_post("/_emulator/transactions", hold_transaction)
    app.router.add_post("/_emulator/transactions/{hold}/commit", commit_transaction)


__all__ = ["SLEW_RATE", "HeldTransactions", "OrgClock", "install_time_control"]
