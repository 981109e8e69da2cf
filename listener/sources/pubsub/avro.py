"""Pub/Sub API change events: Avro payload -> the JSON shape CometD delivers, a pure translation.

Pub/Sub delivers each CDC event as Avro binary encoded with the schema its `schema_id` names
(fetched once with `GetSchema`, cached by id). Decoded, it differs from a CometD event in three
ways, all undone here so `listener.events.parse_message` handles both sources alike:

- `ChangeEventHeader.changedFields`, `nulledFields` and `diffFields` are **bitmaps**: a list of
  hex strings. The first (`"0x..."`) has bit *i* (least significant first) set for the schema's
  top-level field *i*; each further element `"<pos>-0x..."` is a bitmap over the fields of the
  compound (record-typed) field at top-level position *pos*: `"3-0x06"` -> `Name.FirstName`,
  `Name.LastName` when field 3 is `Name`. A bit for a compound field itself stands for all its
  components (Salesforce sets it when every component was nulled at once).
- Date-time fields (schema `doc` ending `:DateTime`) are epoch milliseconds, date fields
  (`:Date`/`:DateOnly`) epoch days or milliseconds: turned into Salesforce's text forms.
- Every field is present, null when unchanged; `parse_message` already drops nulls.

Compound fields stay nested (`Name`, `Address`, `MailingAddress`), as in CometD payloads.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import fastavro

HEADER = "ChangeEventHeader"
BITMAP_FIELDS = ("changedFields", "nulledFields", "diffFields")
_EPOCH = date(1970, 1, 1)
# An epoch-days value for any plausible date is far below this; epoch milliseconds are above it
# for any date after 2 January 1970.
_DAYS_LIMIT = 100_000_000


class AvroDecodeError(ValueError):
    """A payload, schema or bitmap that cannot be decoded (the event is rejected, not retried)."""


@dataclass(frozen=True)
class EventSchema:
    """One parsed Avro event schema and what decoding needs of it."""

    schema_id: str
    parsed: Any                                    # fastavro's parsed schema
    fields: tuple[str, ...]                        # top-level field names, in schema order
    components: dict[int, tuple[str, ...]]         # position of a compound field -> its fields
    datetimes: frozenset[str]
    dates: frozenset[str]

    @classmethod
    def parse(cls, schema_id: str, schema_json: str) -> EventSchema:
        try:
            raw = json.loads(schema_json)
            parsed = fastavro.parse_schema(raw)
        except (ValueError, TypeError, KeyError, fastavro.schema.SchemaParseException) as exc:
            raise AvroDecodeError(f"schema {schema_id} is not a valid Avro schema: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("type") != "record":
            raise AvroDecodeError(f"schema {schema_id} is not an Avro record")
        fields = raw.get("fields", [])
        components: dict[int, tuple[str, ...]] = {}
        datetimes: set[str] = set()
        dates: set[str] = set()
        for pos, spec in enumerate(fields):
            record = _record_branch(spec.get("type"))
            if record is not None and spec["name"] != HEADER:
                components[pos] = tuple(f["name"] for f in record.get("fields", []))
            kind = str(spec.get("doc") or "").rpartition(":")[2]
            if kind == "DateTime":
                datetimes.add(spec["name"])
            elif kind in ("Date", "DateOnly"):
                dates.add(spec["name"])
        return cls(schema_id, parsed, tuple(f["name"] for f in fields), components,
                   frozenset(datetimes), frozenset(dates))


def _record_branch(avro_type: Any) -> dict[str, Any] | None:
    """The record schema of a field typed `record` or a union holding one (`["null", {...}]`)."""
    if isinstance(avro_type, dict) and avro_type.get("type") == "record":
        return avro_type
    if isinstance(avro_type, list):
        for branch in avro_type:
            if isinstance(branch, dict) and branch.get("type") == "record":
                return branch
    return None


def decode_bitmap(bitmaps: Sequence[str], schema: EventSchema) -> list[str]:
    """Bitmap strings -> field names in CometD's form (`Company`, `Name.FirstName`), schema order."""
    names: list[str] = []
    for item in bitmaps:
        parent, sep, bits = item.partition("-")
        if not sep:
            for pos in _set_bits(item, len(schema.fields)):
                names.extend(_top_level(schema, pos))
            continue
        if not parent.isdigit() or int(parent) not in schema.components:
            raise AvroDecodeError(f"bitmap {item!r} names no compound field of schema {schema.schema_id}")
        pos = int(parent)
        children = schema.components[pos]
        names.extend(f"{schema.fields[pos]}.{children[i]}" for i in _set_bits(bits, len(children)))
    return list(dict.fromkeys(names))


def _top_level(schema: EventSchema, pos: int) -> list[str]:
    name = schema.fields[pos]
    children = schema.components.get(pos)
    return [f"{name}.{child}" for child in children] if children else [name]


def _set_bits(bitmap: str, width: int) -> list[int]:
    if not bitmap.lower().startswith("0x"):
        raise AvroDecodeError(f"bitmap {bitmap!r} is not a 0x-prefixed hex string")
    try:
        value = int(bitmap[2:], 16)
    except ValueError as exc:
        raise AvroDecodeError(f"bitmap {bitmap!r} is not hexadecimal") from exc
    if value >> width:
        raise AvroDecodeError(f"bitmap {bitmap!r} has bits beyond the schema's {width} fields")
    return [i for i in range(value.bit_length()) if value >> i & 1]


def decode_payload(payload: bytes, schema: EventSchema) -> dict[str, Any]:
    """Avro binary -> the event as plain data (bitmaps still encoded)."""
    try:
        record = fastavro.schemaless_reader(io.BytesIO(payload), schema.parsed, None)
    except Exception as exc:  # fastavro raises anything from EOFError to UnicodeDecodeError
        raise AvroDecodeError(f"payload does not match schema {schema.schema_id}: "
                              f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(record, dict):
        raise AvroDecodeError(f"payload of schema {schema.schema_id} is not a record")
    return record


def to_cometd_payload(record: dict[str, Any], schema: EventSchema) -> dict[str, Any]:
    """A decoded event with its header bitmaps expanded and its dates as Salesforce text."""
    payload = dict(record)
    header = payload.get(HEADER)
    if isinstance(header, dict):
        header = dict(header)
        for key in BITMAP_FIELDS:
            value = header.get(key)
            if isinstance(value, list):
                header[key] = decode_bitmap([str(v) for v in value], schema)
        payload[HEADER] = header
    for name in schema.datetimes:
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            payload[name] = format_datetime_ms(value)
    for name in schema.dates:
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            payload[name] = format_date(value)
    return payload


def format_datetime_ms(epoch_ms: int) -> str:
    """Epoch milliseconds -> `2024-05-01T10:00:00.000Z` (CometD's form)."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def format_date(value: int) -> str:
    """Epoch days (or epoch milliseconds) -> `2024-05-01`."""
    if abs(value) >= _DAYS_LIMIT:
        return datetime.fromtimestamp(value / 1000, tz=UTC).date().isoformat()
    return (_EPOCH + timedelta(days=value)).isoformat()


__all__ = ["BITMAP_FIELDS", "AvroDecodeError", "EventSchema", "decode_bitmap", "decode_payload",
           "format_date", "format_datetime_ms", "to_cometd_payload"]
