"""describe, sObject rows and sObject Collections: Salesforce's flags, validation and per-record
errors, and the CDC event each write publishes."""

from __future__ import annotations

import re
from typing import Any

import pytest

from emulator.describe import id18
from tests.emulator.conftest import API, Api
from tests.support.emulator import RunningEmulator

ECHO = {"Sforce-Call-Options": "client=salesforce-sync"}


def _events(org: RunningEmulator) -> list[dict[str, Any]]:
    return [e.data["payload"] for e in org.state.bus.retained()]


class TestDescribe:
    @pytest.mark.parametrize(
        ("sobject", "field", "flags"),
        [
            (
                "Lead",
                "LastName",
                {"type": "string", "nillable": False, "createable": True, "updateable": True},
            ),
            ("Lead", "Company", {"nillable": False, "createable": True}),
            ("Lead", "Name", {"createable": False, "updateable": False}),
            ("Lead", "FirstName", {"compoundFieldName": "Name", "length": 40}),
            ("Lead", "City", {"compoundFieldName": "Address"}),
            ("Lead", "Score__c", {"calculated": True, "updateable": False, "type": "double"}),
            ("Lead", "IsConverted", {"updateable": False, "type": "boolean"}),
            ("Lead", "Status", {"defaultedOnCreate": True, "type": "picklist"}),
            ("Lead", "SystemModstamp", {"type": "datetime", "createable": False, "updateable": False}),
            ("Contact", "AccountId", {"type": "reference", "referenceTo": ["Account"], "updateable": True}),
            ("Contact", "MailingCity", {"compoundFieldName": "MailingAddress"}),
            ("Account", "Name", {"nillable": False, "updateable": True}),
            ("Account", "BillingCountry", {"compoundFieldName": "BillingAddress"}),
            ("Account", "OwnerId", {"type": "reference", "defaultedOnCreate": True}),
        ],
    )
    async def test_fields_carry_salesforce_flags(
        self, api: Api, sobject: str, field: str, flags: dict[str, Any]
    ) -> None:
        """describe lists each field with name, type, label, length, nillable, createable, updateable..."""
        status, body, _ = await api.call("GET", f"{API}/sobjects/{sobject}/describe")
        assert status == 200
        described = {f["name"]: f for f in body["fields"]}[field]
        assert {k: described[k] for k in flags} == flags
        assert {"label", "length", "calculated", "defaultedOnCreate"} <= set(described)

    async def test_unknown_object_is_404_not_found(self, api: Api) -> None:
        """describe of an unknown object answers 404 NOT_FOUND."""
        status, body, _ = await api.call("GET", f"{API}/sobjects/Widget__c/describe")
        assert (status, body[0]["errorCode"]) == (404, "NOT_FOUND")


class TestRows:
    async def test_create_read_update_delete(self, api: Api) -> None:
        """POST 201 {id, success, errors}; GET ?fields=; PATCH 204; DELETE 204; then 404 ENTITY_IS_DELETED."""
        status, created, _ = await api.call(
            "POST", f"{API}/sobjects/Lead", json={"LastName": "Hopper", "Company": "Navy"}
        )
        assert status == 201 and created["success"] and created["errors"] == []
        lead_id = created["id"]
        assert re.fullmatch(r"00Q[A-Za-z0-9]{12}[A-Z0-5]{3}", lead_id) and id18(lead_id[:15]) == lead_id
        assert (await api.call("PATCH", f"{API}/sobjects/Lead/{lead_id}", json={"FirstName": "Grace"}))[
            0
        ] == 204
        status, row, _ = await api.call(
            "GET", f"{API}/sobjects/Lead/{lead_id}", params={"fields": "Name,Status"}
        )
        assert status == 200
        assert {k: v for k, v in row.items() if k != "attributes"} == {
            "Name": "Grace Hopper",
            "Status": "Open - Not Contacted",
        }
        assert (await api.call("DELETE", f"{API}/sobjects/Lead/{lead_id}"))[0] == 204
        status, error, _ = await api.call("GET", f"{API}/sobjects/Lead/{lead_id}")
        assert (status, error[0]["errorCode"]) == (404, "ENTITY_IS_DELETED")

    async def test_unknown_id_is_404_not_found(self, api: Api) -> None:
        """A well-formed id that does not exist answers 404 NOT_FOUND."""
        status, error, _ = await api.call("PATCH", f"{API}/sobjects/Lead/00QDn0000009999AAA", json={})
        assert (status, error[0]["errorCode"]) == (404, "NOT_FOUND")

    async def test_create_missing_required_fields_is_400(self, api: Api) -> None:
        """A Lead without Company: REQUIRED_FIELD_MISSING naming the field."""
        status, errors, _ = await api.call("POST", f"{API}/sobjects/Lead", json={"LastName": "Solo"})
        assert status == 400
        assert errors == [
            {
                "message": "Required fields are missing: [Company]",
                "errorCode": "REQUIRED_FIELD_MISSING",
                "fields": ["Company"],
            }
        ]

    async def test_unchanged_update_still_bumps_system_modstamp(self, api: Api, org: RunningEmulator) -> None:
        """An update that changes nothing moves SystemModstamp (as Salesforce does)."""
        _, created, _ = await api.call(
            "POST", f"{API}/sobjects/Lead", json={"LastName": "Same", "Company": "C"}
        )
        record = org.state.org.tables["Lead"][created["id"]]
        before = record["SystemModstamp"]
        record["SystemModstamp"] = before.replace(year=2020)
        await api.call("PATCH", f"{API}/sobjects/Lead/{created['id']}", json={"LastName": "Same"})
        assert record["SystemModstamp"] >= before and record["SystemModstamp"].microsecond == 0


def _collection(sobject: str, *records: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"attributes": {"type": sobject}, **r} for r in records]


class TestCollections:
    async def test_per_record_errors_match_by_position(self, api: Api) -> None:
        """Failed records carry no id and their own errors; successes keep their place."""
        records = _collection(
            "Lead",
            {"LastName": "Fine", "Company": "Ok Inc"},
            {"LastName": "NoCompany"},
            {"LastName": "ReadOnly", "Company": "X", "IsConverted": True},
            {"LastName": "Unknown", "Company": "X", "Foo__c": 1},
            {"LastName": "BadType", "Company": "X", "NumberOfEmployees": "many"},
            {"LastName": "BadEmail", "Company": "X", "Email": "not-an-email"},
            {"LastName": "Also fine", "Company": "Ok Inc"},
        )
        status, results, _ = await api.call("POST", f"{API}/composite/sobjects", json={"records": records})
        assert status == 200
        assert [r["success"] for r in results] == [True, False, False, False, False, False, True]
        assert [r["errors"][0]["statusCode"] for r in results if not r["success"]] == [
            "REQUIRED_FIELD_MISSING",
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            "INVALID_FIELD",
            "INVALID_TYPE_ON_FIELD_IN_RECORD",
            "INVALID_EMAIL_ADDRESS",
        ]
        assert all("id" not in r for r in results if not r["success"])
        assert results[1]["errors"] == [
            {
                "statusCode": "REQUIRED_FIELD_MISSING",
                "message": "Required fields are missing: [Company]",
                "fields": ["Company"],
            }
        ]
        assert results[2]["errors"][0]["fields"] == ["IsConverted"]

    async def test_update_collection(self, api: Api, org: RunningEmulator) -> None:
        """PATCH updates by id; a missing id or blanking a required field fails that record only."""
        _, created, _ = await api.call(
            "POST",
            f"{API}/composite/sobjects",
            json={"records": _collection("Contact", {"LastName": "One"}, {"LastName": "Two"})},
        )
        one, two = (r["id"] for r in created)
        status, results, _ = await api.call(
            "PATCH",
            f"{API}/composite/sobjects",
            json={
                "records": _collection(
                    "Contact", {"id": one, "Title": "CTO"}, {"Title": "no id"}, {"id": two, "LastName": None}
                )
            },
        )
        assert status == 200
        assert results[0] == {"id": one, "success": True, "errors": []}
        assert results[1]["errors"][0]["statusCode"] == "MISSING_ARGUMENT"
        assert results[2]["errors"][0]["statusCode"] == "REQUIRED_FIELD_MISSING"
        assert org.state.org.tables["Contact"][one]["Title"] == "CTO"

    async def test_all_or_none_rolls_everything_back(self, api: Api, org: RunningEmulator) -> None:
        """With allOrNone one failure fails all: the others say ALL_OR_NONE_OPERATION_ROLLED_BACK."""
        records = _collection("Account", {"Name": "Kept?"}, {"Website": "https://no-name.example.com"})
        _, results, _ = await api.call(
            "POST", f"{API}/composite/sobjects", json={"allOrNone": True, "records": records}
        )
        assert [r["errors"][0]["statusCode"] for r in results] == [
            "ALL_OR_NONE_OPERATION_ROLLED_BACK",
            "REQUIRED_FIELD_MISSING",
        ]
        assert org.state.org.tables["Account"] == {}
        assert _events(org) == []

    async def test_more_than_200_records_is_rejected(self, api: Api) -> None:
        """201 records in one call: 400 EXCEEDED_ID_LIMIT, nothing written."""
        records = _collection("Lead", *({"LastName": str(n), "Company": "C"} for n in range(201)))
        status, error, _ = await api.call("POST", f"{API}/composite/sobjects", json={"records": records})
        assert (status, error[0]["errorCode"]) == (400, "EXCEEDED_ID_LIMIT")

    async def test_records_need_attributes_type(self, api: Api) -> None:
        """A record without attributes.type is refused."""
        status, error, _ = await api.call(
            "POST", f"{API}/composite/sobjects", json={"records": [{"LastName": "x"}]}
        )
        assert status == 400 and error[0]["errorCode"] == "INVALID_TYPE"


class TestChangeEvents:
    async def test_create_event_carries_all_fields_and_echo_origin(
        self, api: Api, org: RunningEmulator
    ) -> None:
        """CREATE carries every non-null field; changeOrigin names our client, commitUser the token's user."""
        _, created, _ = await api.call(
            "POST",
            f"{API}/sobjects/Lead",
            headers=ECHO,
            json={"FirstName": "Ada", "LastName": "Lovelace", "Company": "AE", "City": "London"},
        )
        [event] = _events(org)
        header = event["ChangeEventHeader"]
        assert header["changeType"] == "CREATE" and header["recordIds"] == [created["id"]]
        assert header["changeOrigin"] == "com/salesforce/api/rest/62.0;client=salesforce-sync"
        assert header["commitUser"] == "005000000000003AAA"
        assert header["sequenceNumber"] == 1 and header["diffFields"] == []
        assert event["Name"]["FirstName"] == "Ada" and event["Address"]["City"] == "London"
        assert {"CreatedDate", "CreatedById", "LastModifiedDate", "OwnerId", "Company"} <= set(event)

    async def test_update_event_lists_changed_and_nulled_fields(self, api: Api, org: RunningEmulator) -> None:
        """UPDATE carries the changed fields plus LastModifiedDate; nulled fields in nulledFields."""
        _, created, _ = await api.call(
            "POST", f"{API}/sobjects/Lead", json={"LastName": "L", "Company": "C", "Title": "CEO"}
        )
        await api.call(
            "PATCH", f"{API}/sobjects/Lead/{created['id']}", json={"FirstName": "F", "Title": None}
        )
        header = _events(org)[-1]["ChangeEventHeader"]
        assert header["changeType"] == "UPDATE"
        assert header["changeOrigin"] == "com/salesforce/api/rest/62.0"
        assert set(header["changedFields"]) == {"Name.FirstName", "Title", "LastModifiedDate"}
        assert header["nulledFields"] == ["Title"]

    async def test_collection_writes_share_one_transaction(self, api: Api, org: RunningEmulator) -> None:
        """Records of one collection call share a transactionKey, sequence numbers 1..n."""
        await api.call(
            "POST",
            f"{API}/composite/sobjects",
            json={"records": _collection("Account", {"Name": "A"}, {"Name": "B"}, {"Name": "C"})},
        )
        headers = [e["ChangeEventHeader"] for e in _events(org)]
        assert len({h["transactionKey"] for h in headers}) == 1
        assert [h["sequenceNumber"] for h in headers] == [1, 2, 3]

    async def test_delete_event(self, api: Api, org: RunningEmulator) -> None:
        """DELETE publishes a DELETE event without fields."""
        _, created, _ = await api.call("POST", f"{API}/sobjects/Account", json={"Name": "Gone"})
        await api.call("DELETE", f"{API}/sobjects/Account/{created['id']}")
        event = _events(org)[-1]
        assert event["ChangeEventHeader"]["changeType"] == "DELETE"
        assert set(event) == {"ChangeEventHeader"}
