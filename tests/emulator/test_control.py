"""The control API: seeding, UI-style edits without events, lead conversion, faults, request log."""

from __future__ import annotations

import time
from typing import Any

from tests.emulator.conftest import API, Api
from tests.support.emulator import RunningEmulator, start_emulator_process


def _headers(org: RunningEmulator) -> list[dict[str, Any]]:
    return [e.data["payload"]["ChangeEventHeader"] for e in org.state.bus.retained()]


class TestSeed:
    async def test_sample_seed_is_deterministic_and_linked(self, api: Api, org: RunningEmulator) -> None:
        """The sample has Accounts with websites, Contacts linked to them and Leads of the mapped owner."""
        body = await api.control("POST", "seed", json={"sample": True, "emit_events": False})
        accounts = org.state.org.tables["Account"]
        contacts = list(org.state.org.tables["Contact"].values())
        leads = list(org.state.org.tables["Lead"].values())
        assert len(body["ids"]["Lead"]) >= 200 and len(contacts) >= 100
        assert all(accounts[c["AccountId"]]["Website"].startswith("https://") for c in contacts)
        assert {lead["OwnerId"] for lead in leads} == {"005000000000001AAA", "005000000000002AAA"}
        assert _headers(org) == []
        first = leads[0]["Email"]
        await api.control("POST", "reset")
        await api.control("POST", "seed", json={"sample": True})
        assert next(iter(org.state.org.tables["Lead"].values()))["Email"] == first
        assert len(_headers(org)) == len(accounts) + len(contacts) + len(leads)

    async def test_seeded_records_may_set_system_fields(self, api: Api, org: RunningEmulator) -> None:
        """Seeds can place records in the past (SystemModstamp, LastModifiedDate) for watermark tests."""
        body = await api.control(
            "POST",
            "seed",
            json={"records": {"Contact": [{"LastName": "Old", "SystemModstamp": "2023-01-01T00:00:00Z"}]}},
        )
        _, page, _ = await api.call(
            "GET",
            f"{API}/query",
            params={
                "q": "SELECT Id, SystemModstamp FROM Contact WHERE SystemModstamp < 2024-01-01T00:00:00Z"
            },
        )
        assert page["records"][0]["Id"] == body["ids"]["Contact"][0]
        assert page["records"][0]["SystemModstamp"] == "2023-01-01T00:00:00.000+0000"


class TestRecordEdits:
    async def test_patch_without_event_is_only_visible_to_polling(
        self, api: Api, org: RunningEmulator
    ) -> None:
        """`?emit_event=false` changes the record and its SystemModstamp but publishes nothing."""
        body = await api.control(
            "POST",
            "seed",
            json={"records": {"Lead": [{"LastName": "P", "Company": "C"}]}, "emit_events": False},
        )
        lead_id = body["ids"]["Lead"][0]
        await api.control("PATCH", f"records/Lead/{lead_id}?emit_event=false", json={"Title": "CFO"})
        assert _headers(org) == []
        _, row, _ = await api.call("GET", f"{API}/sobjects/Lead/{lead_id}", params={"fields": "Title"})
        assert row["Title"] == "CFO"

    async def test_patch_publishes_a_ui_change(self, api: Api, org: RunningEmulator) -> None:
        """By default a control edit publishes an UPDATE by the owner user with no API changeOrigin."""
        body = await api.control(
            "POST",
            "seed",
            json={"records": {"Lead": [{"LastName": "P", "Company": "C"}]}, "emit_events": False},
        )
        await api.control("PATCH", f"records/Lead/{body['ids']['Lead'][0]}", json={"City": "Oslo"})
        [header] = _headers(org)
        assert (header["changeType"], header["changeOrigin"], header["commitUser"]) == (
            "UPDATE",
            "",
            "005000000000001AAA",
        )
        assert "Address.City" in header["changedFields"]


class TestLeadConversion:
    async def test_conversion_is_one_transaction_of_three_events(
        self, api: Api, org: RunningEmulator
    ) -> None:
        """Account CREATE, Contact CREATE, Lead UPDATE: one transactionKey, sequence 1,2,3; the Lead
        event has the conversion fields and no LastModifiedDate in changedFields."""
        body = await api.control(
            "POST",
            "seed",
            json={
                "emit_events": False,
                "records": {
                    "Lead": [
                        {
                            "FirstName": "Ada",
                            "LastName": "Lovelace",
                            "Company": "Engines Ltd",
                            "Email": "ada@engines.example.com",
                            "Title": "Analyst",
                            "City": "London",
                            "Website": "https://engines.example.com",
                        }
                    ]
                },
            },
        )
        lead_id = body["ids"]["Lead"][0]
        result = await api.control("POST", "convert-lead", json={"leadId": lead_id})
        headers = _headers(org)
        assert [(h["entityName"], h["changeType"], h["sequenceNumber"]) for h in headers] == [
            ("Account", "CREATE", 1),
            ("Contact", "CREATE", 2),
            ("Lead", "UPDATE", 3),
        ]
        assert len({h["transactionKey"] for h in headers}) == 1
        assert set(headers[2]["changedFields"]) == {
            "IsConverted",
            "ConvertedContactId",
            "ConvertedAccountId",
            "ConvertedDate",
            "Status",
        }
        contact = org.state.org.tables["Contact"][result["contactId"]]
        assert (contact["Email"], contact["MailingCity"], contact["AccountId"]) == (
            "ada@engines.example.com",
            "London",
            result["accountId"],
        )
        assert org.state.org.tables["Account"][result["accountId"]]["Name"] == "Engines Ltd"

    async def test_converted_lead_cannot_be_updated(self, api: Api) -> None:
        """After conversion, a REST update of the Lead fails with CANNOT_UPDATE_CONVERTED_LEAD."""
        body = await api.control(
            "POST", "seed", json={"records": {"Lead": [{"LastName": "L", "Company": "C"}]}}
        )
        lead_id = body["ids"]["Lead"][0]
        await api.control("POST", "convert-lead", json={"leadId": lead_id})
        status, error, _ = await api.call("PATCH", f"{API}/sobjects/Lead/{lead_id}", json={"Title": "x"})
        assert (status, error[0]["errorCode"]) == (400, "CANNOT_UPDATE_CONVERTED_LEAD")

    async def test_conversion_into_an_existing_account(self, api: Api, org: RunningEmulator) -> None:
        """With accountId only the Contact is created, under that Account."""
        body = await api.control(
            "POST",
            "seed",
            json={
                "emit_events": False,
                "records": {"Lead": [{"LastName": "L", "Company": "C"}], "Account": [{"Name": "Existing"}]},
            },
        )
        result = await api.control(
            "POST",
            "convert-lead",
            json={"leadId": body["ids"]["Lead"][0], "accountId": body["ids"]["Account"][0]},
        )
        assert result["accountId"] == body["ids"]["Account"][0]
        assert [h["entityName"] for h in _headers(org)] == ["Contact", "Lead"]

    async def test_conversion_into_an_existing_contact_fills_only_its_blank_fields(
        self, api: Api, org: RunningEmulator
    ) -> None:
        """`convertLead` with contactId (and its accountId): no Contact CREATE; the Lead's values
        fill the Contact's empty fields only (Salesforce: "only empty fields in the target object
        are overwritten"), one Contact UPDATE in the conversion's transaction."""
        account = (await api.control("POST", "seed", json={
            "emit_events": False, "records": {"Account": [{"Name": "Navy"}]}}))["ids"]["Account"][0]
        seeded = await api.control("POST", "seed", json={"emit_events": False, "records": {
            "Contact": [{"LastName": "Hopper", "Email": "grace@navy.example", "AccountId": account}],
            "Lead": [{"LastName": "Hopper", "Company": "Navy", "Email": "g.hopper@example.com",
                      "Title": "Rear Admiral"}]}})
        contact, lead = seeded["ids"]["Contact"][0], seeded["ids"]["Lead"][0]
        result = await api.control("POST", "convert-lead", json={
            "leadId": lead, "accountId": account, "contactId": contact})
        assert (result["contactId"], result["accountId"]) == (contact, account)
        headers = _headers(org)
        assert [(h["entityName"], h["changeType"]) for h in headers] == [
            ("Contact", "UPDATE"), ("Lead", "UPDATE")]
        assert len({h["transactionKey"] for h in headers}) == 1
        assert "Title" in headers[0]["changedFields"] and "Email" not in headers[0]["changedFields"]
        record = org.state.org.tables["Contact"][contact]
        assert (record["Email"], record["Title"]) == ("grace@navy.example", "Rear Admiral")
        assert len(org.state.org.tables["Contact"]) == 1

    async def test_conversion_into_a_contact_needs_its_account(self, api: Api, org: RunningEmulator) -> None:
        """A contactId without the accountId of its Account is refused, and nothing changes."""
        seeded = await api.control("POST", "seed", json={"emit_events": False, "records": {
            "Contact": [{"LastName": "Hopper"}], "Lead": [{"LastName": "Hopper", "Company": "Navy"}]}})
        status, body, _ = await api.call("POST", f"{org.base_url}/_emulator/convert-lead", json={
            "leadId": seeded["ids"]["Lead"][0], "contactId": seeded["ids"]["Contact"][0]})
        assert (status, body["errors"][0]["statusCode"]) == (400, "INVALID_CROSS_REFERENCE_KEY")
        assert _headers(org) == []


class TestFaults:
    async def test_fault_answers_status_for_count_calls(self, api: Api) -> None:
        """A fault on a path prefix answers its status N times, then the path works again."""
        await api.control("POST", "faults", json={"path_prefix": f"{API}/query", "status": 503, "count": 2})
        statuses = [
            (await api.call("GET", f"{API}/query", params={"q": "SELECT Id FROM Lead"}))[0] for _ in range(3)
        ]
        assert statuses == [503, 503, 200]
        assert (await api.call("GET", f"{API}/limits"))[0] == 200

    async def test_latency_fault_delays_without_failing(self, api: Api) -> None:
        """latency_ms alone delays the call."""
        await api.control(
            "POST", "faults", json={"path_prefix": f"{API}/limits", "latency_ms": 300, "count": 1}
        )
        started = time.monotonic()
        assert (await api.call("GET", f"{API}/limits"))[0] == 200
        assert time.monotonic() - started >= 0.3

    async def test_delete_faults_clears_them(self, api: Api) -> None:
        """DELETE /_emulator/faults removes pending faults."""
        await api.control("POST", "faults", json={"path_prefix": "/services", "status": 500, "count": 5})
        await api.control("DELETE", "faults")
        assert (await api.call("GET", f"{API}/limits"))[0] == 200


class TestRequestLog:
    async def test_requests_are_logged_with_authorization_redacted(self, api: Api) -> None:
        """GET /_emulator/requests lists each request, Authorization redacted."""
        await api.control("DELETE", "requests")
        await api.call("POST", f"{API}/sobjects/Lead", json={"LastName": "Logged"})
        [entry] = (await api.control("GET", "requests"))["requests"]
        assert (entry["method"], entry["path"], entry["status"]) == ("POST", f"{API}/sobjects/Lead", 400)
        assert entry["headers"]["Authorization"] == "<redacted>"
        assert entry["body"] == {"LastName": "Logged"}


class TestProcess:
    def test_standalone_process_serves_and_restarts(self) -> None:
        """`python -m emulator --seed sample` answers on its port, also after restart()."""
        import urllib.request

        handle = start_emulator_process("--seed", "sample", "--records", "1000")
        try:
            for _ in range(2):
                with urllib.request.urlopen(f"{handle.base_url}/services/data/") as response:
                    assert response.status == 200
                handle.restart()
        finally:
            handle.stop()
