"""query / queryAll over HTTP: pages of 2000 with nextRecordsUrl, deleted records, errors."""

from __future__ import annotations

import re

from tests.emulator.conftest import API, Api


async def _seed_leads(api: Api, count: int) -> list[str]:
    records = [{"LastName": f"Lead {n:05d}", "Company": "Paging Inc"} for n in range(count)]
    body = await api.control("POST", "seed", json={"records": {"Lead": records}, "emit_events": False})
    ids: list[str] = body["ids"]["Lead"]
    return ids


class TestPaging:
    async def test_4500_records_come_in_three_pages(self, api: Api) -> None:
        """2000 + 2000 + 500, linked by nextRecordsUrl, with totalSize on every page and done on the last."""
        await _seed_leads(api, 4500)
        status, page, _ = await api.call(
            "GET", f"{API}/query", params={"q": "SELECT Id, LastName FROM Lead ORDER BY LastName"}
        )
        assert status == 200
        sizes, names = [], []
        while True:
            sizes.append(len(page["records"]))
            names += [r["LastName"] for r in page["records"]]
            assert page["totalSize"] == 4500
            if page["done"]:
                assert "nextRecordsUrl" not in page
                break
            assert re.fullmatch(r"/services/data/v62\.0/query/01g[A-Za-z0-9]{15}-\d+", page["nextRecordsUrl"])
            status, page, _ = await api.call("GET", page["nextRecordsUrl"])
            assert status == 200
        assert sizes == [2000, 2000, 500]
        assert names == sorted(names) and len(set(names)) == 4500

    async def test_a_finished_locator_is_invalid(self, api: Api) -> None:
        """After the last page the locator is closed: INVALID_QUERY_LOCATOR."""
        await _seed_leads(api, 2001)
        _, first, _ = await api.call("GET", f"{API}/query", params={"q": "SELECT Id FROM Lead"})
        _, last, _ = await api.call("GET", first["nextRecordsUrl"])
        assert last["done"]
        status, error, _ = await api.call("GET", first["nextRecordsUrl"])
        assert status == 400 and error[0]["errorCode"] == "INVALID_QUERY_LOCATOR"

    async def test_records_carry_attributes_and_salesforce_datetimes(self, api: Api) -> None:
        """Each record has attributes {type, url}; datetimes read `2024-05-01T12:00:00.000+0000`."""
        [lead_id] = await _seed_leads(api, 1)
        _, page, _ = await api.call(
            "GET", f"{API}/query", params={"q": "SELECT Id, SystemModstamp, Score__c FROM Lead"}
        )
        record = page["records"][0]
        assert record["attributes"] == {"type": "Lead", "url": f"{API}/sobjects/Lead/{lead_id}"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000\+0000", record["SystemModstamp"])
        assert record["Score__c"] == 20.0


class TestDeletedRecords:
    async def test_query_hides_deleted_and_query_all_shows_them(self, api: Api) -> None:
        """A deleted record vanishes from query and appears in queryAll with IsDeleted=true."""
        first, second = await _seed_leads(api, 2)
        assert (await api.call("DELETE", f"{API}/sobjects/Lead/{first}"))[0] == 204
        soql = {"q": "SELECT Id, IsDeleted FROM Lead ORDER BY Id"}
        _, live, _ = await api.call("GET", f"{API}/query", params=soql)
        _, everything, _ = await api.call("GET", f"{API}/queryAll", params=soql)
        assert [r["Id"] for r in live["records"]] == [second]
        assert [(r["Id"], r["IsDeleted"]) for r in everything["records"]] == [(first, True), (second, False)]


class TestQueryErrors:
    async def test_malformed_query_is_400_malformed_query(self, api: Api) -> None:
        """A syntax error answers 400 [{message, errorCode: MALFORMED_QUERY}]."""
        status, error, _ = await api.call("GET", f"{API}/query", params={"q": "SELECT Id FROM Lead WHERE"})
        assert status == 400 and error[0]["errorCode"] == "MALFORMED_QUERY"

    async def test_unknown_field_is_400_invalid_field(self, api: Api) -> None:
        """An unknown column answers INVALID_FIELD naming the column and entity."""
        status, error, _ = await api.call("GET", f"{API}/query", params={"q": "SELECT Foo FROM Lead"})
        assert status == 400 and error[0]["errorCode"] == "INVALID_FIELD"
        assert "No such column 'Foo' on entity 'Lead'" in error[0]["message"]

    async def test_count_query(self, api: Api) -> None:
        """SELECT COUNT() answers totalSize and no records."""
        await _seed_leads(api, 3)
        _, body, _ = await api.call("GET", f"{API}/query", params={"q": "SELECT COUNT() FROM Lead"})
        assert body == {"totalSize": 3, "done": True, "records": []}
