"""The Sync Logs page's HTML and the filter parsing behind it (pure functions, no server)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from service.admin.filters import BadParameter, LogFilters, parse_filters
from service.admin.page import (
    PageView,
    format_time,
    render_login_page,
    render_logs_page,
    salesforce_url,
)

INSTANCE = "https://acme.my.salesforce.com"
STATUS = {
    "mode": "polling",
    "budget": {"used": 12_345, "max": 100_000, "remaining_pct": 87.655},
    "queue_depth": {"inbound": 1, "outbox": 2},
    "last_event_at": "2024-05-01T10:00:05+00:00",
}


def log(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "665f0000000000000000abcd", "ts": "2024-05-01T09:01:02+00:00", "source": "salesforce",
        "type": "update", "status": "success", "object": "Lead", "sf_id": "00Q000000000001AAA",
        "local_id": "665f00000000000000000001", "fields": {}, "error": None, "retried_by": None,
        "retriable": True, "attempt": 1,
    }
    return {**base, **over}


def page(items: list[dict[str, Any]], filters: LogFilters | None = None, **kw: Any) -> str:
    return render_logs_page(PageView(items=items, status=STATUS, filters=filters or LogFilters(),
                                     next_cursor=kw.pop("next_cursor", None), instance_url=INSTANCE, **kw))


class TestEscaping:
    def test_record_text_is_escaped(self) -> None:
        """Error text and field values from Salesforce or users can never inject markup."""
        html = page([log(status="failed", error="<script>alert(1)</script>",
                         fields={"name": {"old": None, "new": '"><img src=x onerror=1>'}})])
        assert "<script>" not in html and "<img" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html

    def test_filter_values_are_escaped(self) -> None:
        """The record filter is echoed into the form escaped."""
        html = page([], LogFilters(record='x"onfocus=alert(1)'))
        assert 'value="x&quot;onfocus=alert(1)"' in html


class TestRecordLinks:
    def test_salesforce_id_links_to_lightning(self) -> None:
        """Each Salesforce id opens the record in Lightning."""
        html = page([log(object="Contact", sf_id="003000000000002AAA")])
        assert f'href="{INSTANCE}/lightning/r/Contact/003000000000002AAA/view"' in html

    def test_filter_icon_shows_all_actions_of_the_record(self) -> None:
        """A funnel link next to the id filters the page to that record."""
        assert 'href="/logs?record=00Q000000000001AAA"' in page([log()])

    def test_local_id_is_shown_and_filterable_without_a_salesforce_id(self) -> None:
        """A record not yet in Salesforce is shown, and filtered, by its local id."""
        html = page([log(sf_id=None, local_id="665f00000000000000000009")])
        assert '<span class="tag">local</span><span class="value">665f00000000000000000009</span>' in html
        assert 'href="/logs?record=665f00000000000000000009"' in html

    @pytest.mark.parametrize(("sobject", "expected"), [
        ("Lead", f"{INSTANCE}/lightning/r/Lead/00Q000000000001AAA/view"),
        (None, f"{INSTANCE}/00Q000000000001AAA"),
    ])
    def test_url_without_an_object_uses_the_id_redirect(self, sobject: str | None, expected: str) -> None:
        """Without an object name, Salesforce's /<id> redirect still opens the record."""
        assert salesforce_url(INSTANCE + "/", sobject, "00Q000000000001AAA") == expected


class TestRetryButton:
    def test_failed_row_shows_error_and_retry_form(self) -> None:
        """A failed row shows its error and a Retry form that posts back to the same filters."""
        html = page([log(status="failed", error="INVALID_EMAIL_ADDRESS: bad")],
                    LogFilters(status="failed"))
        assert "INVALID_EMAIL_ADDRESS: bad" in html
        assert 'action="/logs/retry/665f0000000000000000abcd"' in html
        assert re.search(r'class="retry".*name="back" value="status=failed"', html)

    @pytest.mark.parametrize(("over", "shown"), [
        ({"retried_by": "665f00000000000000000fff"}, "retried"),
        ({"retry_queued": "2024-05-01T09:02:00+00:00"}, "retry queued"),
        ({"job": None}, "nothing to retry"),
    ])
    def test_no_retry_button_when_it_cannot_help(self, over: dict[str, Any], shown: str) -> None:
        """Already-retried or non-retriable failures show why instead of a button."""
        html = page([log(status="failed", error="x", **over)])
        assert 'class="retry"' not in html and shown in html

    def test_permanent_failures_can_still_be_retried_by_hand(self) -> None:
        """Not auto-retriable (e.g. a validation error) still offers Retry, for after a fix."""
        html = page([log(status="failed", error="INVALID_EMAIL_ADDRESS: x", retriable=False,
                         job={"kind": "outbound"})])
        assert 'class="retry"' in html

    def test_import_summaries_show_their_count(self) -> None:
        """A backfill page's summary log says how many records it covers."""
        assert "1,200 records" in page([log(type="import", sf_id=None, local_id=None, count=1200)])

    def test_success_rows_have_no_retry(self) -> None:
        """Successful rows show the fields that changed, not a Retry button."""
        html = page([log(fields={"title": {"old": "CTO", "new": "CEO"}})])
        assert 'class="retry"' not in html and "title: CTO → CEO" in html


class TestRetryRows:
    """Issue 10 item 6: retry rows tell the truth and read well."""

    def test_attempt_and_retried_are_separate_words(self) -> None:
        """A retried second attempt reads "attempt 2 · retried", not "attempt 2retried"."""
        html = page([log(status="failed", error="x", attempt=2, retried_by="665f00000000000000000fff")])
        text = re.sub(r"<[^>]+>", "", html)
        assert "attempt 2retried" not in text and "attempt 2 · retried" in text

    def test_more_fields_expand(self) -> None:
        """Past the first four fields, "+N more" is a <details> holding the rest."""
        fields = {f"f{i}": {"old": i, "new": i + 1} for i in range(6)}
        html = page([log(fields=fields)])
        assert re.search(r"<details[^>]*><summary>\+2 more</summary>.*f4: 4 → 5.*f5: 5 → 6.*</details>", html)

    def test_a_resolved_failure_offers_no_retry(self) -> None:
        """A failure a later sync of the same record and fields fixed says so, without a button."""
        html = page([log(status="failed", error="x", resolved={"by": "665f00000000000000000fff"})])
        assert 'class="retry"' not in html and "resolved" in re.sub(r"<[^>]+>", "", html)

    def test_a_retried_row_links_to_its_outcome(self) -> None:
        """"retried → failed at …", a link to the outcome's row on the record's page."""
        outcome = log(id="665f00000000000000000fff", status="failed", ts="2024-05-01T09:05:00+00:00")
        html = page([log(status="failed", error="x", retried_by=outcome["id"])],
                    linked={outcome["id"]: outcome})
        assert re.search(r'<a class="meta outcome" href="/logs\?record=00Q000000000001AAA'
                         r'#log-665f00000000000000000fff">retried → failed at 2024-05-01 09:05:00 UTC</a>',
                         html), html

    def test_a_resolved_row_links_to_what_resolved_it(self) -> None:
        """"resolved by update at …", a link to the successful row that fixed it."""
        fix = log(id="665f00000000000000000eee", source="local", ts="2024-05-01T09:06:00+00:00")
        html = page([log(status="failed", error="x", resolved={"by": fix["id"]})], linked={fix["id"]: fix})
        assert 'href="/logs?record=00Q000000000001AAA#log-665f00000000000000000eee"' in html
        assert "resolved by update at 2024-05-01 09:06:00 UTC" in html

    def test_the_banner_points_at_the_outcome_row(self) -> None:
        """After a retry the banner links to the outcome's row, on the record's page."""
        html = page([], notice="retried", notice_row="665f00000000000000000fff",
                    notice_record="00Q000000000001AAA")
        assert 'href="/logs?record=00Q000000000001AAA#log-665f00000000000000000fff"' in html


class TestStatusStrip:
    def test_mode_budget_last_event_and_queue(self) -> None:
        """The strip shows mode, API budget used/max and % left, last event, queue depth."""
        html = page([])
        assert "mode-polling" in html and ">polling<" in html
        assert "12,345 / 100,000" in html and "87.7% left" in html
        assert "2024-05-01 10:00:05 UTC" in html
        assert "3 (inbound 1, outbox 2)" in html

    def test_unknown_status_shapes_do_not_break_the_page(self) -> None:
        """A starting service with no budget yet still renders."""
        html = render_logs_page(PageView(items=[], status={}, filters=LogFilters(), next_cursor=None,
                                         instance_url=INSTANCE))
        assert "unknown" in html and "No sync logs match" in html


class TestPaging:
    def test_older_link_keeps_filters_and_carries_the_cursor(self) -> None:
        """"Older →" keeps the filters and adds the next cursor."""
        html = page([log()], LogFilters(status="failed", record="00Q000000000001AAA"), next_cursor="abc=")
        assert 'href="/logs?status=failed&amp;record=00Q000000000001AAA&amp;cursor=abc%3D"' in html

    def test_newest_link_on_later_pages(self) -> None:
        """A later page links back to the newest one."""
        html = page([log()], LogFilters(status="failed", cursor="abc"))
        assert 'href="/logs?status=failed">← Newest' in html and "Older" not in html


class TestLogin:
    def test_login_form_posts_a_password_field(self) -> None:
        """The login form posts the token as a password field to /logs/login."""
        html = render_login_page(error="That token is not right.")
        assert 'action="/logs/login"' in html and 'type="password"' in html and "not right" in html


class TestFilterParsing:
    @pytest.mark.parametrize(("query", "expected"), [
        ({}, LogFilters()),
        ({"status": "Failed", "object": "lead"}, LogFilters(status="failed", object="Lead")),
        ({"status": "all"}, LogFilters()),
        ({"record": " 00Q000000000001AAA ", "limit": "500"},
         LogFilters(record="00Q000000000001AAA", limit=500)),
        ({"status": "failed", "open": "true"}, LogFilters(status="failed", open=True)),
        ({"open": "true"}, LogFilters(status="failed", open=True)),  # open implies failed
        ({"open": "false"}, LogFilters()),
        ({"status": "success", "open": "true"}, pytest.raises(BadParameter, match="open")),
        ({"open": "maybe"}, pytest.raises(BadParameter, match="open")),
        ({"status": "nope"}, pytest.raises(BadParameter, match="status")),
        ({"limit": "-1"}, pytest.raises(BadParameter, match="limit")),
    ])
    def test_page_filters(self, query: dict[str, str], expected: Any) -> None:
        """The page accepts status=all; everything else is validated as for the API."""
        if isinstance(expected, LogFilters):
            assert parse_filters(query, allow_all=True) == expected
        else:
            with expected:
                parse_filters(query, allow_all=True)

    def test_open_goes_back_into_the_query(self) -> None:
        """The page's links and forms keep the open sub-filter."""
        assert LogFilters(status="failed", open=True).query() == {"status": "failed", "open": "true"}

    def test_the_form_offers_open_failures_only(self) -> None:
        html = page([], LogFilters(status="failed", open=True))
        assert '<input type="checkbox" name="open" value="1" checked>' in html
        assert 'name="open" value="1" checked' not in page([])

    def test_the_form_filters_by_source_type_and_object(self) -> None:
        """Issue 10: the page filters by source, type and object as the API does (plain selects,
        no JavaScript), each keeping its current choice."""
        html = page([], LogFilters(source="local", type="skipped", object="Contact"))
        assert '<select name="source">' in html and '<option value="local" selected>' in html
        assert '<select name="type">' in html and '<option value="skipped" selected>' in html
        assert '<select name="object">' in html and '<option value="Contact" selected>' in html
        assert 'type="hidden" name="source"' not in html  # the select carries it, not a hidden copy

    def test_skipped_is_a_type_to_filter_by(self) -> None:
        """A rule's `skipped` logs can be listed on their own."""
        assert parse_filters({"type": "skipped"}) == LogFilters(type="skipped")

    def test_api_refuses_status_all(self) -> None:
        """The API has no "all" status: leave the filter out instead."""
        with pytest.raises(BadParameter):
            parse_filters({"status": "all"})


@pytest.mark.parametrize(("value", "expected"), [
    ("2024-05-01T09:01:02Z", ("2024-05-01T09:01:02Z", "2024-05-01 09:01:02 UTC")),
    (None, ("", "—")),
    ("garbage", ("garbage", "garbage")),
])
def test_format_time(value: Any, expected: tuple[str, str]) -> None:
    """Timestamps show in UTC, whatever form they arrive in."""
    assert format_time(value) == expected
