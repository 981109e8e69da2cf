"""The org's clock offset and held-open transactions (`emulator.time_control`)."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

from reconciler.soql import parse_sf_datetime
from tests.emulator.conftest import API, Api
from tests.support.emulator import RunningEmulator
from tests.support.eventually import eventually

QUERY = f"{API}/query"


class TestClock:
    async def test_the_offset_dates_records_events_and_responses(
        self, api: Api, org: RunningEmulator
    ) -> None:
        """With the clock 120 s ahead: SystemModstamp, CreatedDate, commitTimestamp and `Date` are too."""
        body = await api.control("POST", "clock", json={"offset_seconds": 120})
        assert body["offset_seconds"] == 120
        lead = {"LastName": "A", "Company": "B"}
        ids = await api.control("POST", "seed", json={"records": {"Lead": [lead]}})
        record = await api.control("GET", f"records/Lead/{ids['ids']['Lead'][0]}")
        for name in ("SystemModstamp", "CreatedDate", "LastModifiedDate"):
            stamp = parse_sf_datetime(record[name])
            assert stamp is not None and abs(stamp.timestamp() - time.time() - 120) < 2
        [event] = org.state.bus.retained()
        committed = event.data["payload"]["ChangeEventHeader"]["commitTimestamp"] / 1000
        assert abs(committed - time.time() - 120) < 2
        _, _, response = await api.call("GET", f"{QUERY}?q=SELECT+Id+FROM+Lead")
        assert abs(parsedate_to_datetime(response.headers["Date"]).timestamp() - time.time() - 120) < 2

    async def test_a_bad_offset_is_refused(self, api: Api) -> None:
        """offset_seconds must be a number."""
        async with api.http.post(f"{api.base_url}/_emulator/clock", json={"offset_seconds": "soon"}) as r:
            assert r.status == 400


class TestClockNeverGoesBack:
    """Salesforce's clock never goes back nor stands still: a lowered offset is reached by a
    slew (the org's clock runs slower than the host's until it meets it), so no stamp, event or
    `Date` is earlier than one handed out before."""

    async def test_stamps_after_the_offset_is_lowered_are_not_earlier(
        self, api: Api, org: RunningEmulator
    ) -> None:
        """Created 30 s ahead, updated after the offset went back to 0: LastModifiedDate,
        SystemModstamp, the event's commitTimestamp and `Date` are no earlier than before."""
        await api.control("POST", "clock", json={"offset_seconds": 30})
        lead = {"LastName": "A", "Company": "B"}
        ids = await api.control("POST", "seed", json={"records": {"Lead": [lead]}})
        lead_id = ids["ids"]["Lead"][0]
        created = await api.control("GET", f"records/Lead/{lead_id}")
        _, _, before = await api.call("GET", f"{QUERY}?q=SELECT+Id+FROM+Lead")

        await api.control("POST", "clock", json={"offset_seconds": 0})
        await api.control("PATCH", f"records/Lead/{lead_id}", json={"LastName": "Later"})
        updated = await api.control("GET", f"records/Lead/{lead_id}")
        _, _, after = await api.call("GET", f"{QUERY}?q=SELECT+Id+FROM+Lead")

        for name in ("SystemModstamp", "LastModifiedDate"):
            assert parse_sf_datetime(updated[name]) >= parse_sf_datetime(created[name]), name  # type: ignore[operator]
        first, second = (e.data["payload"]["ChangeEventHeader"]["commitTimestamp"]
                         for e in org.state.bus.retained())
        assert second >= first
        assert parsedate_to_datetime(after.headers["Date"]) >= parsedate_to_datetime(before.headers["Date"])

    async def test_a_lower_offset_is_reached_by_a_clock_that_keeps_running(self, api: Api) -> None:
        """1 s behind: the org's time keeps advancing (slower than the host's) and then runs
        1 s behind the host."""
        await api.control("POST", "clock", json={"offset_seconds": -1})
        first = await self.org_now(api)

        async def advanced() -> bool:
            return await self.org_now(api) > first

        await eventually(advanced)

        async def behind() -> bool:
            return await self.org_now(api) < time.time() - 0.8

        await eventually(behind, timeout=30)

    @staticmethod
    async def org_now(api: Api) -> float:
        now = parse_sf_datetime((await api.control("GET", "clock"))["now"])
        assert now is not None
        return now.timestamp()


class TestHeldTransaction:
    async def test_a_held_record_is_invisible_until_committed(self, api: Api) -> None:
        """Stamped at hold time, absent from queries and reads, then visible with that stamp."""
        held = await api.control("POST", "transactions",
                                 json={"sobject": "Lead", "fields": {"LastName": "Slow", "Company": "Tx"}})
        _, page, _ = await api.call("GET", f"{QUERY}?q=SELECT+Id,SystemModstamp+FROM+Lead")
        assert page["records"] == []
        async with api.http.get(f"{api.base_url}/_emulator/records/Lead/{held['id']}") as r:
            assert r.status == 404
        await api.control("POST", f"transactions/{held['hold']}/commit")
        _, page, _ = await api.call("GET", f"{QUERY}?q=SELECT+Id,SystemModstamp+FROM+Lead")
        [record] = page["records"]
        assert record["Id"] == held["id"]
        assert parse_sf_datetime(record["SystemModstamp"]) == parse_sf_datetime(held["SystemModstamp"])
