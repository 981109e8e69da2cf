"""`sfsync check-config --online`: ask Salesforce and MongoDB whether this configuration can run.

Each check gives one `Check` (printed as one ✓/✗ line with a fix hint); the command exits 0 only
when every one passed. The Salesforce checks follow the service's start-up: OAuth with the
configured flow, the API version, the describe of each synced object (every mapped field exists,
its type suits the local field, it is updateable where the direction writes to Salesforce), the
Change Data Capture selection and `limits`. A check whose prerequisite failed (no token, no
MongoDB) is reported as not checked, and so fails too.

Change Data Capture is checked with the Tooling API (`PlatformEventChannelMember` of the
standard `ChangeEvents` channel, the selection Setup → Change Data Capture edits), not with a
subscribe handshake: `/data/LeadChangeEvent` accepts a subscription whether or not Lead is
selected -- an unselected object just never sends an event, so a handshake proves nothing.
The query needs "View Setup and Configuration", which the service needs for `limits` anyway.

The MongoDB checks: it answers (`ping`), is a replica set (`hello` has `setName`: change streams
need one), accepts a majority write (inserted into, then dropped with, `sfsync_check`), and the
service's own indexes can be created (the same `ensure_indexes` that `run` calls; idempotent).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import WriteConcern
from pymongo.errors import PyMongoError

from listener.salesforce.auth import AccessToken, fetch_token
from listener.salesforce.http import AiohttpTransport, HttpRequest, HttpTransport, NetworkError
from reconciler.errors import SyncError
from reconciler.mapping_check import mapping_problems
from reconciler.objects import collection_for
from reconciler.store import Store
from settings import Direction, Mappings, Settings
from settings._env import ADMIN_TOKEN_MIN_LENGTH
from settings.redaction import redact_text

PROBE_COLLECTION = "sfsync_check"
# Salesforce field types the sync cannot carry as one local value (compound, binary, polymorphic).
UNSUPPORTED_TYPES = frozenset({"address", "location", "base64", "anyType", "complexvalue"})
ID_TYPES = frozenset({"id", "reference"})


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""

    def line(self) -> str:
        if self.ok:
            return redact_text(f"✓ {self.name}: {self.detail}")
        hint = f" — fix: {self.hint}" if self.hint else ""
        return redact_text(f"✗ {self.name}: {self.detail}{hint}")


def not_checked(name: str, why: str) -> Check:
    return Check(name, False, f"not checked ({why})")


# --- pure rules -------------------------------------------------------------------------------

def type_problems(mappings: Mappings, objects: Sequence[str],
                  describes: Mapping[str, dict[str, Any]]) -> list[str]:
    """One line per mapped field whose Salesforce type does not suit its local field: local
    `*_crm_id` fields hold Salesforce ids (id/reference fields), no other local field takes an
    id, and compound or binary fields (address, location, base64) are never mapped whole."""
    problems: list[str] = []
    for sobject in objects:
        fields = {f["name"]: f for f in describes.get(sobject, {}).get("fields", [])}
        for mapping in mappings.for_object(sobject):
            described = fields.get(mapping.sf_field)
            if described is None:
                continue  # mapping_problems names it
            sf_type = str(described.get("type", ""))
            key = f"{collection_for(sobject)}.{mapping.local_field}"
            where = f"{sobject}.{mapping.sf_field} ({sf_type})"
            if sf_type in UNSUPPORTED_TYPES:
                problems.append(f"{key}: {where} is a compound or binary field; map its parts "
                                "(e.g. BillingCity) instead")
            elif mapping.local_field.endswith("_crm_id") and sf_type not in ID_TYPES:
                problems.append(f"{key}: holds a Salesforce id, but {where} is not an id or lookup")
            elif not mapping.local_field.endswith("_crm_id") and sf_type in ID_TYPES:
                problems.append(f"{key}: {where} holds Salesforce ids; map it to a local *_crm_id field")
    return problems


def admin_token_check(settings: Settings) -> Check:
    name = "admin token"
    token = settings.admin.token
    if token is None:
        return Check(name, False, "SFSYNC_ADMIN__TOKEN is unset (the admin API and page stay closed)",
                     "set SFSYNC_ADMIN__TOKEN=$(openssl rand -hex 32)")
    if len(token.get_secret_value()) < ADMIN_TOKEN_MIN_LENGTH:
        return Check(name, False, f"SFSYNC_ADMIN__TOKEN is shorter than {ADMIN_TOKEN_MIN_LENGTH} characters",
                     "set SFSYNC_ADMIN__TOKEN=$(openssl rand -hex 32)")
    return Check(name, True, f"set, {len(token.get_secret_value())} characters")


# --- Salesforce -------------------------------------------------------------------------------

class _Org:
    """Plain GETs with the token: no retries, the status code is the answer."""

    def __init__(self, http: HttpTransport, token: AccessToken, api_version: str) -> None:
        self.http, self.token = http, token
        self.base = f"{token.instance_url}/services/data/v{api_version}"

    async def get(self, url: str, params: Mapping[str, str] | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token.access_token.get_secret_value()}",
                   "Accept": "application/json"}
        response = await self.http.send(HttpRequest("GET", url, params=params, headers=headers))
        try:
            body = json.loads(response.text) if response.body else None
        except ValueError:
            body = None
        return response.status, body


def _fault(status: int, body: Any) -> str:
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return f"HTTP {status} {body[0].get('errorCode', '')}: {body[0].get('message', '')}".strip()
    return f"HTTP {status}"


async def salesforce_checks(settings: Settings, mappings: Mappings, http: HttpTransport) -> list[Check]:
    sf = settings.salesforce
    oauth = f"Salesforce OAuth ({sf.auth_flow.value})"
    try:
        token = await fetch_token(http, sf)
    except SyncError as exc:
        return [Check(oauth, False, str(exc), _oauth_hint(settings, exc)),
                *(not_checked(name, "no Salesforce session") for name in _salesforce_names(settings))]
    user = token.user_id or "(unknown)"
    checks = [Check(oauth, True, f"authenticated as user {user} at {token.instance_url}")]
    org = _Org(http, token, sf.api_version)
    try:
        checks.append(await _api_version(org, sf.api_version))
        checks.extend(await _describes(org, settings, mappings))
        checks.append(await _cdc_selection(org, settings.sync.objects))
        checks.append(await _limits(org))
    except SyncError as exc:  # the org stopped answering half-way: the checks after it are not run
        checks.append(Check("Salesforce", False, str(exc), "check the network path to the instance"))
    return checks


def _salesforce_names(settings: Settings) -> list[str]:
    return ["API version", *(f"{o} fields" for o in settings.sync.objects),
            "Change Data Capture", "limits"]


def _oauth_hint(settings: Settings, exc: SyncError) -> str:
    sf, error = settings.salesforce, str(exc)
    if "PRIVATE_KEY_FILE" in error:
        return ("point SFSYNC_SALESFORCE__PRIVATE_KEY_FILE at the PEM key whose certificate is on the "
                "connected app, readable by this user")
    if isinstance(exc, NetworkError) or "HTTP 5" in error:
        return f"check SFSYNC_SALESFORCE__LOGIN_URL ({sf.login_url}) and the network path to it"
    if "invalid_client" in error:
        return ("check SFSYNC_SALESFORCE__CLIENT_ID and CLIENT_SECRET against the connected app's "
                "consumer key and secret")
    if "approved" in error or "invalid_grant" in error:
        return ("the connected app must have 'Admin approved users are pre-authorized' and the "
                "integration user its permission set; the JWT user is SFSYNC_SALESFORCE__USERNAME, "
                "the audience SFSYNC_SALESFORCE__LOGIN_URL")
    return "check the SFSYNC_SALESFORCE__* credentials for the configured flow"


async def _api_version(org: _Org, wanted: str) -> Check:
    name = "API version"
    status, body = await org.get(f"{org.token.instance_url}/services/data")
    offered = [str(v.get("version")) for v in body if isinstance(v, dict)] if isinstance(body, list) else []
    if status != 200 or not offered:
        return Check(name, False, f"GET /services/data: {_fault(status, body)}",
                     "check the instance URL the token answered with")
    if wanted in offered:
        return Check(name, True, f"{wanted} offered (latest {offered[-1]})")
    return Check(name, False, f"{wanted} is not offered (offered: {', '.join(offered)})",
                 f"set SFSYNC_SALESFORCE__API_VERSION={offered[-1]}")


async def _describes(org: _Org, settings: Settings, mappings: Mappings) -> list[Check]:
    checks: list[Check] = []
    for sobject in settings.sync.objects:
        name = f"{sobject} fields"
        status, body = await org.get(f"{org.base}/sobjects/{sobject}/describe")
        if status != 200 or not isinstance(body, dict):
            checks.append(Check(name, False, f"describe {sobject}: {_fault(status, body)}",
                                f"give the integration user's permission set Read and Edit on {sobject}"))
            continue
        describes = {sobject: body}
        problems = mapping_problems(mappings, [sobject], describes) + type_problems(
            mappings, [sobject], describes)
        if not problems:
            mapped = mappings.for_object(sobject)
            writes = sum(m.direction is not Direction.FROM_SALESFORCE for m in mapped)
            checks.append(Check(name, True, f"{len(mapped)} mapped field(s) exist with suitable types; "
                                f"{writes} written to Salesforce, all updateable"))
        for problem in problems:
            checks.append(Check(name, False, problem, _field_hint(problem, sobject)))
    return checks


def _field_hint(problem: str, sobject: str) -> str:
    if "has no field" in problem:
        return (f"use the field's API name (Setup → Object Manager → {sobject} → Fields), or grant "
                "the integration user field access to it")
    if "read-only" in problem:
        return 'set direction = "from_salesforce", or make the field editable for the integration user'
    return "map a field of a suitable type"


async def _cdc_selection(org: _Org, objects: Sequence[str]) -> Check:
    name = "Change Data Capture"
    soql = ("SELECT Id, DeveloperName, SelectedEntity FROM PlatformEventChannelMember "
            "WHERE EventChannel = 'ChangeEvents'")
    status, body = await org.get(f"{org.base}/tooling/query", {"q": soql})
    if status != 200 or not isinstance(body, dict):
        return Check(name, False, f"Tooling API query on PlatformEventChannelMember: {_fault(status, body)}",
                     "give the integration user 'View Setup and Configuration'")
    selected = {str(r.get("SelectedEntity")) for r in body.get("records", []) if isinstance(r, dict)}
    missing = [o for o in objects if f"{o}ChangeEvent" not in selected]
    if missing:
        return Check(name, False, f"{', '.join(missing)} not selected for Change Data Capture (without "
                     "it the stream stays silent for them)",
                     f"Setup → Integrations → Change Data Capture: move {', '.join(missing)} to "
                     "Selected Entities, Save")
    return Check(name, True, f"{', '.join(objects)} selected (Tooling API PlatformEventChannelMember)")


async def _limits(org: _Org) -> Check:
    name = "limits"
    status, body = await org.get(f"{org.base}/limits")
    daily = body.get("DailyApiRequests") if isinstance(body, dict) else None
    if status != 200 or not isinstance(daily, dict):
        return Check(name, False, f"GET limits: {_fault(status, body)}",
                     "give the integration user 'View Setup and Configuration' (the service "
                     "watches the API budget with it)")
    return Check(name, True, f"readable: {daily.get('Remaining')} of {daily.get('Max')} daily API "
                 "requests remaining")


# --- MongoDB ----------------------------------------------------------------------------------

MONGO_NAMES = ("MongoDB replica set", "MongoDB majority write", "MongoDB indexes")


async def mongodb_checks(settings: Settings, *, timeout_s: float = 5.0) -> list[Check]:
    name = "MongoDB answers"
    uri = settings.mongodb.uri.get_secret_value()
    try:
        conn = await Store.connect(
            uri, settings.mongodb.database,
            sync_log_retention_days=settings.mongodb.sync_log_retention_days,
            server_selection_timeout_ms=int(timeout_s * 1000))
    except PyMongoError as exc:
        return [Check(name, False, f"the driver refuses SFSYNC_MONGODB__URI: {type(exc).__name__}: {exc}",
                      "fix SFSYNC_MONGODB__URI (mongodb://host:27017/?replicaSet=rs0)"),
                *(not_checked(n, "no MongoDB") for n in MONGO_NAMES)]
    try:
        return await _mongodb_steps(conn, settings.mongodb.database)
    finally:
        await conn.close()


async def _mongodb_steps(conn: Store, database: str) -> list[Check]:
    steps: list[tuple[str, Callable[[], Awaitable[Check]]]] = [
        ("MongoDB answers", lambda: _ping(conn)),
        ("MongoDB replica set", lambda: _replica_set(conn)),
        ("MongoDB majority write", lambda: _majority_write(conn)),
        ("MongoDB indexes", lambda: _indexes(conn, database)),
    ]
    checks: list[Check] = []
    for index, (name, step) in enumerate(steps):
        try:
            check = await step()
        except (PyMongoError, SyncError) as exc:
            check = Check(name, False, f"{type(exc).__name__}: {exc}", _mongo_hint(name))
        checks.append(check)
        if index == 0 and not check.ok:
            checks.extend(not_checked(n, "MongoDB does not answer") for n, _ in steps[1:])
            break
    return checks


def _mongo_hint(name: str) -> str:
    return {
        "MongoDB answers": "check SFSYNC_MONGODB__URI's host and port, and that mongod runs and is reachable",
        "MongoDB majority write": "the user needs readWrite on the database; the set needs a majority of "
                                  "its members up",
        "MongoDB indexes": "the user needs createIndex (readWrite or dbAdmin) on the database",
    }.get(name, "")


async def _ping(conn: Store) -> Check:
    started = time.monotonic()
    await conn.ping()
    return Check("MongoDB answers", True, f"ping in {(time.monotonic() - started) * 1000:.0f} ms")


async def _replica_set(conn: Store) -> Check:
    hello = await conn.db.command("hello")
    set_name = hello.get("setName")
    if not set_name:
        return Check("MongoDB replica set", False, "not a replica set member (no setName in hello): "
                     "change streams need one",
                     "start mongod with --replSet rs0, run rs.initiate(), add ?replicaSet=rs0 to the URI")
    return Check("MongoDB replica set", True, f"replica set {set_name!r}")


async def _majority_write(conn: Store) -> Check:
    probe = conn.db.get_collection(PROBE_COLLECTION).with_options(
        write_concern=WriteConcern(w="majority", j=True, wtimeout=10_000))
    await probe.insert_one({"checked_at": time.time()})
    await conn.db.drop_collection(PROBE_COLLECTION)
    return Check("MongoDB majority write", True, f"accepted (w=majority, j=true; {PROBE_COLLECTION} dropped)")


async def _indexes(conn: Store, database: str) -> Check:
    await conn.ensure_indexes()
    return Check("MongoDB indexes", True, f"the service's indexes exist in {database!r}")


# --- all of it --------------------------------------------------------------------------------

async def online_checks(settings: Settings, mappings: Mappings, *, mongo_timeout_s: float = 5.0,
                        http: HttpTransport | None = None) -> list[Check]:
    """Every check, Salesforce and MongoDB side by side; the admin token last."""
    transport = http or AiohttpTransport(timeout=20)
    try:
        sf_checks, mongo = await asyncio.gather(
            salesforce_checks(settings, mappings, transport),
            mongodb_checks(settings, timeout_s=mongo_timeout_s),
        )
    finally:
        if http is None:
            await transport.aclose()
    return [*sf_checks, *mongo, admin_token_check(settings)]


__all__ = ["Check", "admin_token_check", "mongodb_checks", "online_checks", "salesforce_checks",
           "type_problems"]
