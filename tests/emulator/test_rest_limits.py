"""The daily API allocation: every REST call counts, every response says so, exhaustion is a 403."""

from __future__ import annotations

import pytest

from tests.emulator.conftest import API, Api


class TestApiUsage:
    @pytest.mark.parametrize(
        ("method", "path", "status"),
        [
            ("GET", f"{API}/limits", 200),
            ("GET", f"{API}/sobjects/Lead/describe", 200),
            ("GET", f"{API}/query?q=SELECT+Id+FROM+Lead", 200),
            ("GET", f"{API}/query?q=SELECT", 400),
            ("GET", f"{API}/sobjects/Nope/describe", 404),
            ("GET", f"{API}/sobjects/Lead/00QDn0000009999AAA", 404),
        ],
    )
    async def test_every_response_carries_sforce_limit_info(
        self, api: Api, method: str, path: str, status: int
    ) -> None:
        """Successes and errors alike carry Sforce-Limit-Info, counting this call."""
        got, _, response = await api.call(method, path)
        assert got == status
        assert response.headers["Sforce-Limit-Info"] == "api-usage=1/100000"

    async def test_limits_resource_reports_remaining(self, api: Api) -> None:
        """`limits` shows DailyApiRequests and DailyDeliveredPlatformEvents {Max, Remaining}."""
        await api.control("POST", "budget", json={"used": 90, "max": 100, "events_used": 5, "events_max": 10})
        _, body, _ = await api.call("GET", f"{API}/limits")
        assert body["DailyApiRequests"] == {"Max": 100, "Remaining": 9}
        assert body["DailyDeliveredPlatformEvents"] == {"Max": 10, "Remaining": 5}

    async def test_exhausted_allocation_answers_403(self, api: Api) -> None:
        """When used reaches max every REST call is refused with REQUEST_LIMIT_EXCEEDED."""
        await api.control("POST", "budget", json={"used": 99, "max": 100})
        assert (await api.call("GET", f"{API}/limits"))[0] == 200
        status, error, response = await api.call("GET", f"{API}/limits")
        assert (status, error) == (
            403,
            [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}],
        )
        assert response.headers["Sforce-Limit-Info"] == "api-usage=100/100"

    async def test_oauth_and_control_calls_do_not_count(self, api: Api) -> None:
        """Token grants and /_emulator calls are free; the versions list is too."""
        await api.control("GET", "requests")
        async with api.http.get(f"{api.base_url}/services/data/") as response:
            versions = await response.json()
        assert {"version": "62.0", "url": "/services/data/v62.0", "label": "Winter '25"} in versions
        _, _, response = await api.call("GET", f"{API}/limits")
        assert response.headers["Sforce-Limit-Info"] == "api-usage=1/100000"
