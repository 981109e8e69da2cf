"""Conditional updates: sObject Rows PATCH with `If-Unmodified-Since`, and the Composite resource
(`/composite`) carrying such PATCHes as subrequests, each with its own headers and status, in one
API call (REST API Developer Guide: "Conditional Request Headers", "Composite")."""

from __future__ import annotations

from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import Any

from tests.emulator.conftest import API, Api
from tests.support.emulator import RunningEmulator

ECHO = {"Sforce-Call-Options": "client=salesforce-sync"}


async def lead_modified_at(api: Api, at: datetime, **fields: Any) -> str:
    """A Lead whose LastModifiedDate is `at` (set through the control API, as a UI edit could)."""
    _, created, _ = await api.call("POST", f"{API}/sobjects/Lead", json={"LastName": "Ng", "Company": "Acme",
                                                                      **fields})
    await api.control("PATCH", f"records/Lead/{created['id']}",
                      json={"LastModifiedDate": at.strftime("%Y-%m-%dT%H:%M:%S.000+0000")})
    return str(created["id"])


async def modified(api: Api, lead_id: str) -> datetime:
    _, row, _ = await api.call("GET", f"{API}/sobjects/Lead/{lead_id}", params={"fields": "LastModifiedDate"})
    return datetime.strptime(row["LastModifiedDate"], "%Y-%m-%dT%H:%M:%S.%f%z")


async def title(api: Api, lead_id: str) -> str | None:
    _, row, _ = await api.call("GET", f"{API}/sobjects/Lead/{lead_id}", params={"fields": "Title"})
    return row["Title"]  # type: ignore[no-any-return]


def api_usage(response: Any) -> int:
    return int(response.headers["Sforce-Limit-Info"].split("=")[1].split("/")[0])


def http_date(at: datetime) -> str:
    return format_datetime(at, usegmt=True)


def patch(ref: str, lead_id: str, since: datetime | None = None, **fields: Any) -> dict[str, Any]:
    sub: dict[str, Any] = {"method": "PATCH", "url": f"{API}/sobjects/Lead/{lead_id}", "referenceId": ref,
                           "body": fields}
    if since is not None:
        sub["httpHeaders"] = {"If-Unmodified-Since": http_date(since)}
    return sub


class TestIfUnmodifiedSinceOnARow:
    async def test_a_record_modified_after_the_date_answers_412_and_is_not_written(self, api: Api) -> None:
        at = datetime.now().astimezone() - timedelta(minutes=5)
        lead_id = await lead_modified_at(api, at, Title="Old")

        earlier = http_date(at - timedelta(seconds=1))
        status, body, _ = await api.call("PATCH", f"{API}/sobjects/Lead/{lead_id}", json={"Title": "New"},
                                         headers={"If-Unmodified-Since": earlier})

        assert (status, body[0]["errorCode"]) == (412, "PRECONDITION_FAILED")
        assert await title(api, lead_id) == "Old"

    async def test_a_change_in_the_same_second_as_the_date_is_not_since_it(self, api: Api) -> None:
        """LastModifiedDate and the HTTP date both have whole-second precision: equal is unmodified."""
        at = datetime.now().astimezone().replace(microsecond=0) - timedelta(minutes=5)
        lead_id = await lead_modified_at(api, at, Title="Old")

        status, _, _ = await api.call("PATCH", f"{API}/sobjects/Lead/{lead_id}", json={"Title": "New"},
                                      headers={"If-Unmodified-Since": http_date(at)})

        assert status == 204 and await title(api, lead_id) == "New"

    async def test_an_invalid_date_is_400(self, api: Api) -> None:
        lead_id = await lead_modified_at(api, datetime.now().astimezone(), Title="Old")

        status, _, _ = await api.call("PATCH", f"{API}/sobjects/Lead/{lead_id}", json={"Title": "New"},
                                      headers={"If-Unmodified-Since": "yesterday"})

        assert status == 400 and await title(api, lead_id) == "Old"


class TestComposite:
    async def test_each_subrequest_answers_its_own_status_in_one_api_call(self, api: Api) -> None:
        at = datetime.now().astimezone().replace(microsecond=0) - timedelta(minutes=5)
        fresh = await lead_modified_at(api, at, Title="Old")
        stale = await lead_modified_at(api, at, Title="Old")
        _, _, probe = await api.call("GET", f"{API}/limits")

        status, body, response = await api.call("POST", f"{API}/composite", headers=ECHO, json={
            "allOrNone": False,
            "compositeRequest": [patch("r0", fresh, at, Title="New"),
                                 patch("r1", stale, at - timedelta(seconds=1), Title="New")]})

        assert status == 200
        answers = {a["referenceId"]: a for a in body["compositeResponse"]}
        assert (answers["r0"]["httpStatusCode"], answers["r0"]["body"]) == (204, None)
        assert answers["r1"]["httpStatusCode"] == 412
        assert answers["r1"]["body"][0]["errorCode"] == "PRECONDITION_FAILED"
        assert (await title(api, fresh), await title(api, stale)) == ("New", "Old")
        assert api_usage(response) == api_usage(probe) + 1  # two subrequests, ONE API call

    async def test_a_written_subrequest_moves_last_modified_date_on(self, api: Api) -> None:
        at = datetime.now().astimezone() - timedelta(minutes=5)
        lead_id = await lead_modified_at(api, at, Title="Old")

        await api.call("POST", f"{API}/composite",
                       json={"compositeRequest": [patch("r0", lead_id, Title="New")]})

        assert await modified(api, lead_id) > at

    async def test_all_or_none_writes_nothing_when_one_subrequest_fails(self, api: Api) -> None:
        at = datetime.now().astimezone().replace(microsecond=0) - timedelta(minutes=5)
        fresh = await lead_modified_at(api, at, Title="Old")
        stale = await lead_modified_at(api, at, Title="Old")

        _, body, _ = await api.call("POST", f"{API}/composite", json={
            "allOrNone": True,
            "compositeRequest": [patch("r0", fresh, at, Title="New"),
                                 patch("r1", stale, at - timedelta(seconds=1), Title="New")]})

        codes = [(a["httpStatusCode"], a["body"][0]["errorCode"]) for a in body["compositeResponse"]]
        assert codes == [(400, "PROCESSING_HALTED"), (412, "PRECONDITION_FAILED")]
        assert (await title(api, fresh), await title(api, stale)) == ("Old", "Old")

    async def test_a_subrequest_error_is_its_record_error(self, api: Api) -> None:
        lead_id = await lead_modified_at(api, datetime.now().astimezone(), Title="Old")

        _, body, _ = await api.call("POST", f"{API}/composite", json={"compositeRequest": [
            patch("r0", lead_id, LastName=None), patch("r1", "00Q000000000000AAA", Title="X")]})

        first, second = body["compositeResponse"]
        assert (first["httpStatusCode"], first["body"][0]["errorCode"]) == (400, "REQUIRED_FIELD_MISSING")
        assert (second["httpStatusCode"], second["body"][0]["errorCode"]) == (404, "NOT_FOUND")

    async def test_requests_refused_as_a_whole(self, api: Api) -> None:
        lead_id = await lead_modified_at(api, datetime.now().astimezone(), Title="Old")
        too_many = [patch(f"r{i}", lead_id, Title=str(i)) for i in range(26)]
        same_reference = [patch("r", lead_id, Title="A"), patch("r", lead_id, Title="B")]
        own_header = [{**patch("r", lead_id, Title="A"), "httpHeaders": {"Authorization": "Bearer x"}}]
        bad_reference = [patch("r-1", lead_id, Title="A")]

        for subs in (too_many, same_reference, own_header, bad_reference):
            status, _, _ = await api.call("POST", f"{API}/composite", json={"compositeRequest": subs})
            assert status == 400

        assert await title(api, lead_id) == "Old"

    async def test_a_subrequest_the_emulator_does_not_serve_says_so(self, api: Api) -> None:
        _, body, _ = await api.call("POST", f"{API}/composite", json={"compositeRequest": [
            {"method": "GET", "url": f"{API}/limits", "referenceId": "r0"}]})

        [answer] = body["compositeResponse"]
        assert answer["httpStatusCode"] == 400
        assert answer["body"][0]["errorCode"] == "NOT_SUPPORTED_BY_EMULATOR"

    async def test_the_chaos_write_log_records_the_call_and_its_answers(self, api: Api,
                                                                      org: RunningEmulator) -> None:
        lead_id = await lead_modified_at(api, datetime.now().astimezone(), Title="Old")

        await api.call("POST", f"{API}/composite", headers=ECHO,
                       json={"compositeRequest": [patch("r0", lead_id, Title="New")]})

        writes = (await api.control("GET", "chaos/writes"))["writes"]
        [logged] = [w for w in writes if w["path"] == f"{API}/composite"]
        assert logged["client"] == "client=salesforce-sync" and logged["status"] == 200
        assert logged["body"]["compositeRequest"][0]["body"] == {"Title": "New"}
        assert logged["response"]["compositeResponse"][0]["httpStatusCode"] == 204
