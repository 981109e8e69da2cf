"""CDC messages -> inbound changes: a pure translation, table-tested.

A CometD CDC message looks like
``{"channel": "/data/LeadChangeEvent", "data": {"payload": {"ChangeEventHeader": {...}, ...},
"event": {"replayId": 7}}}``. `parse_message` turns it into one of:

- `list[SalesforceChange]` (one per record id; an UPDATE may name several records),
- `GapRequest` (GAP_CREATE/UPDATE/DELETE/UNDELETE: the event carries no field values,
  the records must be fetched by id),
- `OverflowRequest` (GAP_OVERFLOW: too many changes in one transaction; poll the object),
- `RejectedEvent` (malformed: no header, unknown entity, wrong types, oversized, not JSON,
  a date a `datetime` cannot hold or later than `latest`). `parse_message` never raises on
  bad input: whatever a message does to the parser becomes a rejected event with a reason, and
  its `raw` is always storable (a JSON copy, or a truncated text of an unreadable message).

Compound fields arrive nested (`Name.FirstName`, `Address.City`, `MailingAddress.City`) and are
flattened to the flat API names the mappings use (`FirstName`, `City`, `MailingCity`).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from reconciler.objects import OBJECTS
from reconciler.ports import ChangeKind, ChangeSource, RejectedEvent, SalesforceChange
from reconciler.soql import parse_sf_datetime

log = structlog.get_logger(__name__)

MAX_EVENT_BYTES = 1_000_000  # Salesforce caps a CDC event at 1 MB; anything bigger is not one
GAP_KINDS = {
    "GAP_CREATE": ChangeKind.CREATE,
    "GAP_UPDATE": ChangeKind.UPDATE,
    "GAP_DELETE": ChangeKind.DELETE,
    "GAP_UNDELETE": ChangeKind.UNDELETE,
}
GAP_OVERFLOW = "GAP_OVERFLOW"
_KINDS = {
    "CREATE": ChangeKind.CREATE,
    "UPDATE": ChangeKind.UPDATE,
    "DELETE": ChangeKind.DELETE,
    "UNDELETE": ChangeKind.UNDELETE,
}
# Header entries, not record fields.
_HEADER = "ChangeEventHeader"


@dataclass(frozen=True)
class GapRequest:
    """Records whose change was not captured in full: fetch them by id and apply as upserts."""

    sobject: str
    record_ids: tuple[str, ...]
    change_type: str
    committed_at: datetime
    channel: str
    replay_id: int | None
    raw: dict[str, Any]


@dataclass(frozen=True)
class OverflowRequest:
    """Too many changes to describe: poll the object from the event's commit time."""

    sobject: str
    since: datetime
    channel: str
    replay_id: int | None
    raw: dict[str, Any]


Parsed = list[SalesforceChange] | GapRequest | OverflowRequest | RejectedEvent


class _Invalid(Exception):
    """A message that is not a well-formed CDC event (internal to this module)."""


def channel_object(channel: str) -> str | None:
    """`/data/LeadChangeEvent` -> `Lead`; None for any other channel."""
    if channel.startswith("/data/") and channel.endswith("ChangeEvent"):
        return channel[len("/data/"):-len("ChangeEvent")] or None
    return None


def flat_field_name(dotted: str) -> str:
    """`Name.FirstName` -> `FirstName`; `Address.City` -> `City`; `MailingAddress.City` -> `MailingCity`."""
    parent, _, part = dotted.partition(".")
    if not part:
        return dotted
    return part if parent in ("Name", "Address") else _address_prefix(parent) + part


def _address_prefix(parent: str) -> str:
    # MailingAddress -> Mailing, BillingAddress -> Billing; other compounds keep their name.
    return parent[: -len("Address")] if parent.endswith("Address") else parent


def flatten_fields(payload: dict[str, Any]) -> dict[str, Any]:
    """Record fields of a CDC payload with compound values spread into flat API names."""
    flat: dict[str, Any] = {}
    for key, value in payload.items():
        if key == _HEADER:
            continue
        if isinstance(value, dict) and (key == "Name" or key.endswith("Address")):
            for part, inner in value.items():
                flat[flat_field_name(f"{key}.{part}")] = inner
        else:
            flat[key] = value
    return flat


def is_echo(change_origin: str | None, client_name: str) -> bool:
    """Whether `changeOrigin` (`com/salesforce/api/rest/62.0;client=<name>`) names our client."""
    if not change_origin:
        return False
    for part in change_origin.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key == "client" and value == client_name:
            return True
    return False


def parse_message(
    message: dict[str, Any],
    *,
    client_name: str,
    objects: Collection[str],
    max_bytes: int = MAX_EVENT_BYTES,
    latest: datetime | None = None,
) -> Parsed:
    """Translate one CometD message; never raises for bad input (returns a `RejectedEvent`).

    `latest`: a `commitTimestamp` or `LastModifiedDate` after it is out of range (the stream
    passes Salesforce's now plus a day: such a date would push watermarks into the future).
    """
    channel = message.get("channel") if isinstance(message.get("channel"), str) else None
    replay_id = _replay_id(message)
    try:
        if _size(message) > max_bytes:
            raise _Invalid(f"event larger than {max_bytes} bytes")
        parsed = _parse(message, channel or "", replay_id, client_name, objects)
        _check_dates(parsed, latest)
        return parsed
    except _Invalid as exc:
        return RejectedEvent(reason=str(exc), raw=_storable(message), channel=channel,
                             replay_id=_rejected_id(message, replay_id))
    except Exception as exc:  # bad input must never escape the parser (issue 11): a bug shows here
        log.warning("cdc_event_unparseable", channel=channel, replay_id=replay_id, exc_info=True)
        return RejectedEvent(reason=f"unreadable event: {type(exc).__name__}: {exc}", raw=_storable(message),
                             channel=channel, replay_id=_rejected_id(message, replay_id))


def _check_dates(parsed: Parsed, latest: datetime | None) -> None:
    if latest is None:
        return
    if isinstance(parsed, list):
        dates = [c.changed_at for c in parsed]
    elif isinstance(parsed, GapRequest):
        dates = [parsed.committed_at]
    elif isinstance(parsed, OverflowRequest):
        dates = [parsed.since]
    else:
        dates = []
    if any(d > latest for d in dates):
        raise _Invalid(f"date after {latest.isoformat()} (out of range)")


_RAW_TEXT_LIMIT = 10_000


def _storable(message: Any) -> dict[str, Any]:
    """What a failed log can keep of a message: a JSON copy, else a truncated text of it."""
    try:
        text = json.dumps(message, default=str)
    except (TypeError, ValueError, RecursionError):
        try:
            text = repr(message)
        except RecursionError:
            text = "<unprintable message>"
    else:
        if len(text) <= MAX_EVENT_BYTES:
            copy = json.loads(text)
            if isinstance(copy, dict):
                return copy
    return {"unreadable": text[:_RAW_TEXT_LIMIT]}


def _parse(
    message: dict[str, Any], channel: str, replay_id: int | None, client_name: str,
    objects: Collection[str],
) -> Parsed:
    data = message.get("data")
    payload = data.get("payload") if isinstance(data, dict) else None
    if not isinstance(payload, dict):
        raise _Invalid("no payload")
    header = payload.get(_HEADER)
    if not isinstance(header, dict):
        raise _Invalid("no ChangeEventHeader")
    entity = _str(header, "entityName")
    if entity not in objects:
        raise _Invalid(f"unknown entity {entity!r}")
    change_type = _str(header, "changeType")
    committed_at = _commit_time(header)
    if change_type == GAP_OVERFLOW:
        return OverflowRequest(entity, committed_at, channel, replay_id, message)
    ids = _str_list(header, "recordIds")
    if not ids:
        raise _Invalid("recordIds is empty")
    if change_type in GAP_KINDS:
        return GapRequest(entity, tuple(ids), change_type, committed_at, channel, replay_id, message)
    kind = _KINDS.get(change_type)
    if kind is None:
        raise _Invalid(f"unknown changeType {change_type!r}")
    return _changes(header, payload, entity, kind, ids, committed_at, client_name, replay_id, message)


def _changes(
    header: dict[str, Any], payload: dict[str, Any], entity: str, kind: ChangeKind, ids: list[str],
    committed_at: datetime, client_name: str, replay_id: int | None, raw: dict[str, Any],
) -> list[SalesforceChange]:
    for key in _compound_fields(entity):
        if key in payload and payload[key] is not None and not isinstance(payload[key], dict):
            raise _Invalid(f"compound field {key} is not an object")
    everything = flatten_fields(payload)
    nulled = frozenset(flat_field_name(f) for f in _str_list(header, "nulledFields", optional=True))
    if kind is ChangeKind.UPDATE:
        changed = {flat_field_name(f) for f in _str_list(header, "changedFields", optional=True)}
        changed.add("LastModifiedDate")
        fields = {k: v for k, v in everything.items() if k in changed and v is not None}
    elif kind is ChangeKind.DELETE:
        fields = {}
    else:
        fields = {k: v for k, v in everything.items() if v is not None}
    changed_at = _modified_at(everything) or committed_at
    origin = header.get("changeOrigin")
    echo = is_echo(origin if isinstance(origin, str) else None, client_name)
    txn = header.get("transactionKey")
    return [
        SalesforceChange(
            sobject=entity, sf_id=sf_id, kind=kind, fields=dict(fields), changed_at=changed_at,
            source=ChangeSource.STREAM, nulled_fields=nulled, is_echo=echo,
            transaction_key=txn if isinstance(txn, str) else None, replay_id=replay_id, raw=raw,
        )
        for sf_id in ids
    ]


def _compound_fields(entity: str) -> tuple[str, ...]:
    """The object's compound fields (`reconciler.objects`; Account `Name` is plain text)."""
    known = OBJECTS.get(entity)
    return known.compound_fields if known else ()


def _size(message: dict[str, Any]) -> int:
    try:
        return len(json.dumps(message, default=str))
    except (TypeError, ValueError) as exc:
        raise _Invalid("event is not JSON") from exc


def _replay_id(message: dict[str, Any]) -> int | None:
    data = message.get("data")
    event = data.get("event") if isinstance(data, dict) else None
    value = event.get("replayId") if isinstance(event, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _rejected_id(message: dict[str, Any], replay_id: int | None) -> int | str | None:
    """What a failed log names the event by: CometD's replay id, else the Pub/Sub source's (hex)."""
    pubsub = message.get("pubsubReplayId")
    return replay_id if replay_id is not None or not isinstance(pubsub, str) else pubsub


def _str(header: dict[str, Any], key: str) -> str:
    value = header.get(key)
    if not isinstance(value, str) or not value:
        raise _Invalid(f"header {key} must be a non-empty string")
    return value


def _str_list(header: dict[str, Any], key: str, *, optional: bool = False) -> list[str]:
    value = header.get(key)
    if value is None and optional:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Invalid(f"header {key} must be a list of strings")
    return value


def _commit_time(header: dict[str, Any]) -> datetime:
    value = header.get("commitTimestamp")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _Invalid("header commitTimestamp must be epoch milliseconds")
    parsed = parse_sf_datetime(value)
    if parsed is None:
        raise _Invalid("header commitTimestamp out of range")
    return parsed


def _modified_at(fields: dict[str, Any]) -> datetime | None:
    value = fields.get("LastModifiedDate")
    if value is None:
        return None
    parsed = parse_sf_datetime(value)
    if parsed is None:
        raise _Invalid("LastModifiedDate is not a date-time (or out of range)")
    return parsed
