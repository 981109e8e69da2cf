"""Change events in the Pub/Sub API's form: per-object Avro schemas and binary payloads.

The event bus keeps each change event once, in CometD's JSON form (`emulator.cdc`). The Pub/Sub
side transcodes it on delivery, the way Salesforce's own bus serves both APIs:

- one Avro schema per object (`<Object>ChangeEvent`, namespace `com.sforce.eventbus`), built
  from the emulator's describe: `ChangeEventHeader` first, then every field but `Id` as an
  optional value; compound fields (`Name`, `Address`, `MailingAddress`, `BillingAddress`) nested
  as records at the position of their first component; date-times as epoch milliseconds
  (`doc` `...:DateTime`), dates as epoch days (`doc` `...:Date`);
- `changedFields`, `nulledFields` and `diffFields` as bitmaps: `"0x..."` over the top-level
  fields (bit *i* = field *i*), then `"<pos>-0x..."` per compound field over its components;
- an event the schema cannot carry (a malformed event published through the control API) is
  delivered as a payload no Avro reader can decode: a poison event.

Schema ids are the bus's (`emulator.cdc.schema_id`), the same as CometD's `data.schema`.
"""

from __future__ import annotations

import functools
import io
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date
from typing import Any

import fastavro

from emulator.cdc import COMPOUND_FIELDS, schema_id
from emulator.describe import FieldDef, parse_date, parse_datetime, sobject

NAMESPACE = "com.sforce.eventbus"
CDC_OBJECTS = ("Lead", "Contact", "Account")
CHANGE_TYPES = ("CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE", "GAP_UPDATE", "GAP_DELETE",
                "GAP_UNDELETE", "GAP_OVERFLOW")
# A zig-zag varint of -1 where the header's first string length belongs: no Avro reader accepts it.
POISON_PREFIX = b"\x01\xff\xff"
_BITMAP_HEADER_FIELDS = ("nulledFields", "diffFields", "changedFields")
_NUMBER_PARTS = frozenset({"Latitude", "Longitude"})

_HEADER_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "ChangeEventHeader", "namespace": NAMESPACE,
    "fields": [
        {"name": "entityName", "type": "string"},
        {"name": "recordIds", "type": {"type": "array", "items": "string"}},
        {"name": "changeType", "type": {"type": "enum", "name": "ChangeType", "namespace": NAMESPACE,
                                        "symbols": list(CHANGE_TYPES)}},
        {"name": "changeOrigin", "type": "string"},
        {"name": "transactionKey", "type": "string"},
        {"name": "sequenceNumber", "type": "int"},
        {"name": "commitTimestamp", "type": "long"},
        {"name": "commitNumber", "type": "long"},
        {"name": "commitUser", "type": "string"},
        {"name": "nulledFields", "type": {"type": "array", "items": "string"}},
        {"name": "diffFields", "type": {"type": "array", "items": "string"}},
        {"name": "changedFields", "type": {"type": "array", "items": "string"}},
    ],
}


def _avro_type(fd: FieldDef) -> tuple[str, str]:
    """(Avro type, Salesforce type in the field's `doc`) of a plain field."""
    return {
        "boolean": ("boolean", "Boolean"),
        "int": ("int", "Int"),
        "double": ("double", "Double"),
        "currency": ("double", "Currency"),
        "percent": ("double", "Percent"),
        "datetime": ("long", "DateTime"),
        "date": ("int", "Date"),
    }.get(fd.type, ("string", "Text"))


@dataclass(frozen=True)
class ObjectSchema:
    """One object's change-event schema, and what encoding needs of it."""

    entity: str
    schema_id: str
    schema_json: str
    parsed: Any
    fields: tuple[str, ...]                          # top-level, schema order
    components: dict[str, tuple[str, ...]]           # compound field -> its parts, in order
    kinds: dict[str, str]                            # top-level field -> "DateTime" | "Date" | avro type

    def position(self, name: str) -> int | None:
        try:
            return self.fields.index(name)
        except ValueError:
            return None


@functools.cache
def object_schema(entity: str) -> ObjectSchema:
    """The Avro schema of `<entity>ChangeEvent`, built from the emulator's describe."""
    definition = sobject(entity)
    if definition is None:
        raise KeyError(entity)
    compounds = COMPOUND_FIELDS.get(entity, {})
    parents = {parent for parent, _ in compounds.values()}
    fields: list[dict[str, Any]] = [{"name": "ChangeEventHeader", "type": _HEADER_SCHEMA,
                                     "doc": "Data:ChangeEventHeader"}]
    components: dict[str, tuple[str, ...]] = {}
    kinds: dict[str, str] = {}
    defined: set[str] = set()
    for fd in definition.fields:
        target = compounds.get(fd.name)
        if target is not None:
            parent = target[0]
            if parent not in components:
                parts = tuple(p for c, p in compounds.values() if c == parent)
                components[parent] = parts
                fields.append(_compound(parent, parts, defined))
                kinds[parent] = "record"
            continue
        if fd.name == "Id" or fd.name in parents:
            continue
        avro, kind = _avro_type(fd)
        fields.append({"name": fd.name, "type": ["null", avro], "default": None, "doc": f"Data:{kind}"})
        kinds[fd.name] = kind if kind in ("DateTime", "Date") else avro
    raw = {"type": "record", "name": f"{entity}ChangeEvent", "namespace": NAMESPACE, "fields": fields}
    text = json.dumps(raw, separators=(",", ":"))
    return ObjectSchema(entity, schema_id(entity), text, fastavro.parse_schema(json.loads(text)),
                        tuple(f["name"] for f in fields), components, kinds)


def _compound(parent: str, parts: tuple[str, ...], defined: set[str]) -> dict[str, Any]:
    type_name = "Switchable_PersonName" if parent == "Name" else "Address"
    if type_name in defined:
        record: Any = f"{NAMESPACE}.{type_name}"
    else:
        defined.add(type_name)
        record = {"type": "record", "name": type_name, "namespace": NAMESPACE, "fields": [
            {"name": p, "type": ["null", "double" if p in _NUMBER_PARTS else "string"], "default": None}
            for p in parts]}
    return {"name": parent, "type": ["null", record], "default": None, "doc": f"Data:{type_name}"}


def schema_by_id(wanted: str) -> ObjectSchema | None:
    for entity in CDC_OBJECTS:
        if schema_id(entity) == wanted:
            return object_schema(entity)
    return None


def encode_replay_id(replay_id: int) -> bytes:
    """The bus's replay id as Pub/Sub's opaque bytes (8 bytes, big-endian, as Salesforce's look)."""
    return struct.pack(">Q", replay_id)


def decode_replay_id(value: bytes) -> int | None:
    return struct.unpack(">Q", value)[0] if len(value) == 8 else None


def bitmaps(names: Iterable[str], schema: ObjectSchema) -> list[str]:
    """Field names as CometD lists them (`Company`, `Name.LastName`) -> Pub/Sub's bitmap strings."""
    top = 0
    nested: dict[int, int] = {}
    for name in names:
        parent, _, part = name.partition(".")
        pos = schema.position(parent)
        if pos is None:
            continue
        if not part:
            top |= 1 << pos
            continue
        parts = schema.components.get(parent, ())
        if part in parts:
            nested[pos] = nested.get(pos, 0) | 1 << parts.index(part)
    out = [f"0x{top:X}"] if top or not nested else []
    return out + [f"{pos}-0x{bits:X}" for pos, bits in sorted(nested.items())]


def encode_event(entity: str, data: dict[str, Any]) -> tuple[str, bytes]:
    """A bus event's `data` (CometD form) -> (schema id, Avro binary); a poison payload when the
    event does not fit the schema."""
    schema = object_schema(entity)
    try:
        record = _record(data.get("payload"), schema)
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema.parsed, record)
        return schema.schema_id, out.getvalue()
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
        return schema.schema_id, POISON_PREFIX + json.dumps(data, default=str).encode()


def _record(payload: Any, schema: ObjectSchema) -> dict[str, Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("ChangeEventHeader"), dict):
        raise ValueError("no ChangeEventHeader")
    header = dict(payload["ChangeEventHeader"])
    for key in _BITMAP_HEADER_FIELDS:
        header[key] = bitmaps(header.get(key) or [], schema)
    record: dict[str, Any] = {"ChangeEventHeader": header}
    for name in schema.fields[1:]:
        value = payload.get(name)
        kind = schema.kinds[name]
        if kind == "record":
            parts = schema.components[name]
            record[name] = None if value is None else {p: value.get(p) for p in parts}
        else:
            record[name] = _value(value, kind)
    return record


def _value(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "DateTime":
        moment = parse_datetime(value) if isinstance(value, str) else None
        if moment is None:
            raise ValueError(f"not a date-time: {value!r}")
        return int(moment.astimezone(UTC).timestamp() * 1000)
    if kind == "Date":
        day = parse_date(value) if isinstance(value, str) else None
        if day is None:
            raise ValueError(f"not a date: {value!r}")
        return (day - date(1970, 1, 1)).days
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


__all__ = ["CDC_OBJECTS", "ObjectSchema", "bitmaps", "decode_replay_id", "encode_event", "encode_replay_id",
           "object_schema", "schema_by_id"]
