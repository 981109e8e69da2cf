"""Which later success resolves a failed sync log (design.md: "a later sync of the same record and
fields succeeds"): a pure decision over two log documents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reconciler.sync_logs import resolves

T = datetime(2026, 3, 1, tzinfo=UTC)
LEAD = "00Q000000000001AAA"


def log(status: str, *fields: str, source: str = "salesforce", type: str = "update", ts: datetime = T,
        **ids: str) -> dict[str, Any]:
    return {"status": status, "source": source, "type": type, "ts": ts, "sf_id": ids.get("sf_id", LEAD),
            "local_id": ids.get("local_id", "p-1"), "fields": {f: {"old": None, "new": 1} for f in fields}}


@pytest.mark.parametrize(("success", "failed", "expected"), [
    # fields: every field the failure names must be in the success
    (log("success", "title"), log("failed", "title"), True),
    (log("success", "title", "city"), log("failed", "title"), True),
    (log("success", "city"), log("failed", "title"), False),
    (log("success", "title"), log("failed", "title", "email"), False),
    (log("success"), log("failed", "title"), False),
    # a failure naming no field failed for the whole record: any success of the record
    (log("success", "city"), log("failed"), True),
    # same record: by Salesforce id or local id, in the same direction
    (log("success", "title", sf_id="00Q2", local_id="p-2"), log("failed", "title"), False),
    (log("success", "title", sf_id="00Q2"), log("failed", "title"), True),
    (log("success", "Title", source="local"), log("failed", "title"), False),
    # later, and a success that says a record synced
    (log("success", "title", ts=T - timedelta(seconds=1)), log("failed", "title"), False),
    (log("success", "title", type="skipped"), log("failed", "title"), False),
    (log("failed", "title"), log("failed", "title"), False),
    (log("success", "title"), {**log("failed", "title"), "resolved": {"by": "x"}}, False),
])
def test_resolves(success: dict[str, Any], failed: dict[str, Any], expected: bool) -> None:
    assert resolves(success, failed) is expected
