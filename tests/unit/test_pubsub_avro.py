"""Pub/Sub change events: bitmap headers, dates and Avro payloads decoded to CometD's shape."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest

from emulator.pubsub_avro import bitmaps, encode_event, object_schema
from listener.events import parse_message
from listener.sources.pubsub.avro import (
    AvroDecodeError,
    EventSchema,
    decode_bitmap,
    decode_payload,
    format_date,
    format_datetime_ms,
    to_cometd_payload,
)
from reconciler.ports import ChangeKind

# A small schema in Salesforce's shape: header, a compound Name at 1, plain fields, an Address at 5.
_NAME = {"type": "record", "name": "Switchable_PersonName", "fields": [
    {"name": p, "type": ["null", "string"], "default": None}
    for p in ("Salutation", "FirstName", "LastName", "MiddleName", "InformalName", "Suffix")]}
_ADDRESS = {"type": "record", "name": "Address", "fields": [
    {"name": p, "type": ["null", "double" if p in ("Latitude", "Longitude") else "string"], "default": None}
    for p in ("Street", "City", "State", "PostalCode", "Country", "Latitude", "Longitude")]}
_HEADER = {"type": "record", "name": "ChangeEventHeader", "fields": [
    {"name": "entityName", "type": "string"},
    {"name": "recordIds", "type": {"type": "array", "items": "string"}},
    {"name": "changeType", "type": {"type": "enum", "name": "ChangeType",
                                    "symbols": ["CREATE", "UPDATE", "DELETE", "UNDELETE", "GAP_CREATE",
                                                "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE", "GAP_OVERFLOW"]}},
    {"name": "changeOrigin", "type": "string"},
    {"name": "transactionKey", "type": "string"},
    {"name": "sequenceNumber", "type": "int"},
    {"name": "commitTimestamp", "type": "long"},
    {"name": "commitNumber", "type": "long"},
    {"name": "commitUser", "type": "string"},
    {"name": "nulledFields", "type": {"type": "array", "items": "string"}},
    {"name": "diffFields", "type": {"type": "array", "items": "string"}},
    {"name": "changedFields", "type": {"type": "array", "items": "string"}},
]}
LEAD_SCHEMA = {"type": "record", "name": "LeadChangeEvent", "namespace": "com.sforce.eventbus", "fields": [
    {"name": "ChangeEventHeader", "type": _HEADER},                                      # 0
    {"name": "Name", "type": ["null", _NAME], "default": None},                          # 1
    {"name": "Company", "type": ["null", "string"], "default": None},                    # 2
    {"name": "Title", "type": ["null", "string"], "default": None},                      # 3
    {"name": "NumberOfEmployees", "type": ["null", "int"], "default": None},             # 4
    {"name": "Address", "type": ["null", _ADDRESS], "default": None},                    # 5
    {"name": "ConvertedDate", "type": ["null", "int"], "default": None, "doc": "Data:Date"},      # 6
    {"name": "LastModifiedDate", "type": ["null", "long"], "default": None,
     "doc": "LastModifiedDate:DateTime"},                                                 # 7
]}
SCHEMA = EventSchema.parse("lead-schema", json.dumps(LEAD_SCHEMA))


class TestBitmapDecoding:
    @pytest.mark.parametrize(("bitmaps", "expected"), [
        ([], []),
        (["0x0"], []),
        (["0x4"], ["Company"]),                                   # bit 2
        (["0xC"], ["Company", "Title"]),                          # bits 2, 3
        (["0x8C"], ["Company", "Title", "LastModifiedDate"]),     # bits 2, 3, 7
        (["0x8c"], ["Company", "Title", "LastModifiedDate"]),     # lower-case hex
        (["0x0000000C"], ["Company", "Title"]),                   # zero padding
        (["0x80", "1-0x06"], ["LastModifiedDate", "Name.FirstName", "Name.LastName"]),
        (["1-0x04"], ["Name.LastName"]),                          # nested only, no top-level element
        (["0x4", "1-0x01", "5-0x02"], ["Company", "Name.Salutation", "Address.City"]),
        (["5-0x60"], ["Address.Latitude", "Address.Longitude"]),
        # A compound field's own bit stands for all its components (all nulled at once).
        (["0x20"], ["Address.Street", "Address.City", "Address.State", "Address.PostalCode",
                    "Address.Country", "Address.Latitude", "Address.Longitude"]),
        (["0x4", "0x4"], ["Company"]),                            # repeats collapse
    ])
    def test_bitmaps_name_fields_in_schema_order(self, bitmaps: list[str], expected: list[str]) -> None:
        """Bit i names top-level field i; `pos-0x..` names components of the compound at pos."""
        assert decode_bitmap(bitmaps, SCHEMA) == expected

    @pytest.mark.parametrize("bitmaps", [
        ["C"],              # no 0x prefix
        ["0xZZ"],           # not hex
        ["0x100"],          # bit 8: beyond the 8 top-level fields
        ["2-0x1"],          # position 2 (Company) is not a compound field
        ["9-0x1"],          # no field 9
        ["x-0x1"],          # position not a number
        ["1-0x40"],         # Name has 6 components: bit 6 is beyond
    ])
    def test_malformed_bitmaps_are_refused(self, bitmaps: list[str]) -> None:
        """A bitmap that does not fit the schema raises (the event is rejected, not guessed)."""
        with pytest.raises(AvroDecodeError):
            decode_bitmap(bitmaps, SCHEMA)

    def test_the_emulator_encodes_what_the_source_decodes(self) -> None:
        """Round trip over the emulator's Lead schema: names -> bitmaps -> the same names."""
        lead = object_schema("Lead")
        decoded = EventSchema.parse(lead.schema_id, lead.schema_json)
        names = ["Company", "Title", "Name.FirstName", "Name.LastName", "Address.City", "LastModifiedDate"]
        assert sorted(decode_bitmap(bitmaps(names, lead), decoded)) == sorted(names)


class TestDates:
    @pytest.mark.parametrize(("millis", "text"), [
        (0, "1970-01-01T00:00:00.000Z"),
        (1_714_557_600_000, "2024-05-01T10:00:00.000Z"),
        (1_714_557_600_123, "2024-05-01T10:00:00.123Z"),
    ])
    def test_datetimes_are_epoch_milliseconds(self, millis: int, text: str) -> None:
        assert format_datetime_ms(millis) == text

    @pytest.mark.parametrize(("value", "text"), [
        (0, "1970-01-01"),
        (19_844, "2024-05-01"),                 # epoch days
        (1_714_521_600_000, "2024-05-01"),      # epoch milliseconds
    ])
    def test_dates_are_epoch_days_or_milliseconds(self, value: int, text: str) -> None:
        assert format_date(value) == text

    def test_schema_doc_tells_dates_from_datetimes(self) -> None:
        assert SCHEMA.datetimes == {"LastModifiedDate"} and SCHEMA.dates == {"ConvertedDate"}


def _encode(record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(LEAD_SCHEMA), record)
    return out.getvalue()


def _update(**fields: Any) -> dict[str, Any]:
    header = {"entityName": "Lead", "recordIds": ["00Q000000000001AAA"], "changeType": "UPDATE",
              "changeOrigin": "com/salesforce/api/rest/62.0;client=salesforce-sync", "transactionKey": "t1",
              "sequenceNumber": 1, "commitTimestamp": 1_714_557_600_000, "commitNumber": 7,
              "commitUser": "005000000000001AAA", "nulledFields": ["0x8"], "diffFields": [],
              "changedFields": ["0x8C", "1-0x04"]}
    return {"ChangeEventHeader": header, "Name": None, "Company": None, "Title": None,
            "NumberOfEmployees": None, "Address": None, "ConvertedDate": None, "LastModifiedDate": None,
            **fields}


class TestPayloads:
    def test_an_update_decodes_to_cometd_shape_and_parses(self) -> None:
        """Avro update -> CometD payload -> one change with flat field names, nulls and echo flag."""
        record = _update(Name={"Salutation": None, "FirstName": None, "LastName": "Byron", "MiddleName": None,
                               "InformalName": None, "Suffix": None},
                         Company="Acme", LastModifiedDate=1_714_557_600_000)
        payload = to_cometd_payload(decode_payload(_encode(record), SCHEMA), SCHEMA)
        header = payload["ChangeEventHeader"]
        assert header["changedFields"] == ["Company", "Title", "LastModifiedDate", "Name.LastName"]
        assert header["nulledFields"] == ["Title"]
        assert payload["LastModifiedDate"] == "2024-05-01T10:00:00.000Z"
        [change] = parse_message({"channel": "/data/LeadChangeEvent", "data": {"payload": payload}},
                                 client_name="salesforce-sync", objects={"Lead"})
        assert change.kind is ChangeKind.UPDATE and change.is_echo
        assert change.fields == {"Company": "Acme", "LastName": "Byron",
                                 "LastModifiedDate": "2024-05-01T10:00:00.000Z"}
        assert change.nulled_fields == {"Title"}
        assert change.changed_at == datetime(2024, 5, 1, 10, tzinfo=UTC)

    @pytest.mark.parametrize("payload", [b"", b"\x01\xff\xff{}", b"\x02"])
    def test_undecodable_payloads_raise(self, payload: bytes) -> None:
        with pytest.raises(AvroDecodeError):
            decode_payload(payload, SCHEMA)

    @pytest.mark.parametrize("schema_json", ["not json", "[]", '{"type": "record"}', '"string"'])
    def test_unusable_schemas_raise(self, schema_json: str) -> None:
        with pytest.raises(AvroDecodeError):
            EventSchema.parse("bad", schema_json)

    def test_the_emulators_events_decode_with_its_schema(self) -> None:
        """An emulator event (CometD JSON on the bus) -> Avro -> decoded back to the same fields."""
        data = {"schema": "x", "payload": {
            "ChangeEventHeader": {**_update()["ChangeEventHeader"], "changeType": "CREATE",
                                  "nulledFields": [], "changedFields": []},
            "Name": {"FirstName": "Ada", "LastName": "Lovelace"}, "Company": "Analytical",
            "Address": {"City": "London", "Latitude": 51.5}, "NumberOfEmployees": 3,
            "CreatedDate": "2024-05-01T10:00:00.000Z", "LastModifiedDate": "2024-05-01T10:00:00.000Z",
            "ConvertedDate": "2024-05-02"}}
        lead = object_schema("Lead")
        schema_id, payload = encode_event("Lead", data)
        schema = EventSchema.parse(schema_id, lead.schema_json)
        decoded = to_cometd_payload(decode_payload(payload, schema), schema)
        assert decoded["Name"]["LastName"] == "Lovelace" and decoded["Address"]["Latitude"] == 51.5
        assert decoded["ConvertedDate"] == "2024-05-02"
        assert decoded["CreatedDate"] == "2024-05-01T10:00:00.000Z"
        [change] = parse_message({"channel": "/data/LeadChangeEvent", "data": {"payload": decoded}},
                                 client_name="other", objects={"Lead"})
        assert change.kind is ChangeKind.CREATE and not change.is_echo
        assert {k: change.fields[k] for k in ("FirstName", "LastName", "City", "Company")} == {
            "FirstName": "Ada", "LastName": "Lovelace", "City": "London", "Company": "Analytical"}
