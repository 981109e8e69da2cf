"""The admin tests' sample sync logs must outlive the test that reads them.

`sync_logs` carries a TTL index on `ts` (the retention, 30 days by default), and SecantusDB's TTL
monitor runs about once a minute: a sample log dated outside the retention is deleted at some
arbitrary point of the test that inserted it. That was the cause of the rare CI failures where the
Sync Logs page or `sfsync logs --follow` showed nothing of what the fixture had just inserted.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from settings import MongoSettings
from tests.e2e.test_sync_logs_page import truthful_rows
from tests.support.admin import sample_logs

RETENTION = timedelta(days=MongoSettings.model_fields["sync_log_retention_days"].default)


def test_sample_logs_are_inside_the_default_retention() -> None:
    oldest = datetime.now(UTC) - RETENTION + timedelta(days=1)
    assert all(row.ts > oldest for row in sample_logs())


def test_the_pages_rows_are_inside_the_default_retention() -> None:
    oldest = datetime.now(UTC) - RETENTION + timedelta(days=1)
    assert all(row.ts > oldest for row in truthful_rows())


def test_sample_logs_stay_in_order_and_in_the_past() -> None:
    """Newest last, none in the future (the page and the cursor tests rely on both)."""
    stamps = [row.ts for row in sample_logs()]
    assert stamps == sorted(stamps) and stamps[-1] <= datetime.now(UTC)
