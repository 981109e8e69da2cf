"""Backfill: every record imported page by page, resumable from a watermark; re-merge after a
mapping edit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from listener.backfill import backfill
from listener.reader import RecordReader, prefetched
from reconciler.inbound import Reconciler
from reconciler.ports import ChangeKind
from reconciler.remerge import changed_fields, remerge_if_mappings_changed, restricted
from reconciler.store import Store
from settings import parse_mappings
from tests.support.salesforce_changes import (
    MAPPINGS,
    OWNER_1,
    T0,
    FakeOutbox,
    FakeSalesforce,
    change,
    mappings_toml,
)


def stamp(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


def org(leads: int = 5, contacts: int = 3) -> dict[str, list[dict[str, Any]]]:
    return {
        "Account": [{"Id": "001A", "Name": "Acme", "Website": "acme.com", "SystemModstamp": stamp(0)}],
        "Lead": [{"Id": f"00Q{i:03d}", "LastName": f"L{i}", "OwnerId": OWNER_1, "Email": f"l{i}@x.com",
                  "SystemModstamp": stamp(i // 2)} for i in range(leads)],
        "Contact": [{"Id": f"003{i:03d}", "LastName": f"C{i}", "OwnerId": OWNER_1, "AccountId": "001A",
                     "SystemModstamp": stamp(i)} for i in range(contacts)],
    }


class TestBackfill:
    async def test_imports_every_object_page_by_page(self, store: Store) -> None:
        """Accounts first, then Leads and Contacts (linked to their Company); one summary log per page."""
        sf = FakeSalesforce(org(), page_size=2)
        objects = ["Contact", "Lead", "Account"]
        result = await backfill(RecordReader(sf, MAPPINGS), store, Reconciler(store, MAPPINGS), objects)
        assert (result.records, result.pages, result.calls) == (9, 6, 6)
        assert [q.split(" FROM ")[1].split()[0] for q in sf.queries] == ["Account", "Lead", "Contact"]
        company = await store.db.companies.find_one({"crm.id": "001A"})
        contact = await store.db.people.find_one({"crm.id": "003002"})
        assert contact["company_id"] == company["_id"] and contact["owner_id"] == "u-1"
        assert await store.db.people.count_documents({}) == 8
        logs, _ = await store.find_sync_logs()
        assert {x["type"] for x in logs} == {"import"} and sum(x["count"] for x in logs) == 9
        watermark = await store.load_state("watermark:Contact")
        assert watermark == {"ts": "2024-05-01T10:00:02Z", "last_id": "003002"}

    async def test_resumes_from_the_watermark(self, store: Store) -> None:
        """A re-run asks only for what follows the watermark: keyset on (SystemModstamp, Id)."""
        sf = FakeSalesforce(org(), page_size=2)
        reconciler = Reconciler(store, MAPPINGS)

        async def stop_after_first_lead_page(sobject: str, page: int, records: int) -> None:
            if sobject == "Lead":
                raise RuntimeError("crash")

        with pytest.raises(RuntimeError):
            await backfill(RecordReader(sf, MAPPINGS), store, reconciler, ["Account", "Lead"],
                           page_hook=stop_after_first_lead_page)
        watermark = await store.load_state("watermark:Lead")
        assert watermark == {"ts": "2024-05-01T10:00:00Z", "last_id": "00Q001"}
        sf.queries.clear()
        result = await backfill(RecordReader(sf, MAPPINGS), store, reconciler, ["Lead"])
        assert ("WHERE (SystemModstamp > 2024-05-01T10:00:00Z OR (SystemModstamp = 2024-05-01T10:00:00Z"
                " AND Id > '00Q001')) ORDER BY") in sf.queries[0]
        assert result.records == 3
        assert await store.db.people.count_documents({}) == 5

    async def test_a_bulk_load_in_one_second_resumes_inside_the_second(self, store: Store) -> None:
        """Records sharing one SystemModstamp resume after the last id applied, none twice or lost."""
        records = org(leads=0, contacts=0)
        records["Lead"] = [{"Id": f"00Q{i:03d}", "LastName": f"L{i}", "OwnerId": OWNER_1,
                            "SystemModstamp": stamp(0)} for i in range(7)]
        sf = FakeSalesforce(records, page_size=3)
        reconciler = Reconciler(store, MAPPINGS)

        async def crash_after_first_page(sobject: str, page: int, records: int) -> None:
            raise RuntimeError("crash")

        with pytest.raises(RuntimeError):
            await backfill(RecordReader(sf, MAPPINGS), store, reconciler, ["Lead"],
                           page_hook=crash_after_first_page)
        assert await store.load_state("watermark:Lead") == {"ts": "2024-05-01T10:00:00Z", "last_id": "00Q002"}
        result = await backfill(RecordReader(sf, MAPPINGS), store, reconciler, ["Lead"])
        assert result.records == 4
        assert await store.db.people.count_documents({}) == 7
        assert await store.load_state("watermark:Lead") == {"ts": "2024-05-01T10:00:00Z", "last_id": "00Q006"}

    async def test_an_old_ids_watermark_resumes_without_loss(self, store: Store) -> None:
        """A stored `{"ts", "ids"}` watermark re-reads its second, skips its ids, then saves the new shape."""
        await store.save_state("watermark:Lead", {"ts": "2024-05-01T10:00:00Z", "ids": ["00Q000"]})
        sf = FakeSalesforce(org(leads=4, contacts=0))  # 00Q000, 00Q001 at second 0; 00Q002, 00Q003 at 1
        result = await backfill(RecordReader(sf, MAPPINGS), store, Reconciler(store, MAPPINGS), ["Lead"])
        assert "WHERE SystemModstamp >= 2024-05-01T10:00:00Z ORDER BY" in sf.queries[0]
        assert result.records == 3
        assert await store.db.people.count_documents({"crm.id": "00Q000"}) == 0
        assert await store.load_state("watermark:Lead") == {"ts": "2024-05-01T10:00:01Z", "last_id": "00Q003"}

    async def test_the_watermark_stays_below_the_current_second(self, store: Store) -> None:
        """Records of the second the pass began are imported, but the watermark stays before them."""
        sf = FakeSalesforce(org(leads=6, contacts=0))  # seconds 0, 0, 1, 1, 2, 2
        signpost = T0 + timedelta(seconds=2, milliseconds=400)
        result = await backfill(RecordReader(sf, MAPPINGS), store, Reconciler(store, MAPPINGS), ["Lead"],
                                clock=lambda: signpost)
        assert result.records == 6
        assert await store.load_state("watermark:Lead") == {"ts": "2024-05-01T10:00:01Z", "last_id": "00Q003"}

    async def test_failed_records_are_logged_and_the_rest_lands(self, store: Store) -> None:
        """A bad record in a page is a failed log; the page's other records are imported."""
        records = org(leads=3, contacts=0)
        records["Lead"][1]["Title"] = {"not": "a scalar"}
        sf = FakeSalesforce(records)
        result = await backfill(RecordReader(sf, MAPPINGS), store, Reconciler(store, MAPPINGS), ["Lead"])
        assert result.failed == 1
        assert await store.db.people.count_documents({}) == 2
        [failed] = (await store.find_sync_logs(status="failed"))[0]
        assert failed["sf_id"] == "00Q001" and failed["job"]["kind"] == "inbound"


class TestPrefetch:
    async def test_the_next_page_is_fetched_while_this_one_is_worked_on(self) -> None:
        """One page ahead: page n+1 is requested before the work on page n ends, never n+2."""
        events: list[str] = []

        async def pages() -> AsyncIterator[int]:
            for n in range(3):
                events.append(f"fetch {n}")
                await asyncio.sleep(0)
                yield n

        async with contextlib.aclosing(prefetched(pages())) as ahead:
            async for n in ahead:
                events.append(f"work {n} starts")
                await asyncio.sleep(0.01)
                events.append(f"work {n} ends")
        assert events == ["fetch 0", "work 0 starts", "fetch 1", "work 0 ends",
                          "work 1 starts", "fetch 2", "work 1 ends", "work 2 starts", "work 2 ends"]

    async def test_an_abandoned_read_cancels_the_pending_fetch(self) -> None:
        """Closing the reader mid-way stops the fetch in flight and closes the source."""
        closed: list[str] = []

        async def pages() -> AsyncIterator[int]:
            try:
                yield 0
                await asyncio.sleep(3600)
                yield 1
            finally:
                closed.append("source")

        started = datetime.now()
        with pytest.raises(RuntimeError):
            async with contextlib.aclosing(prefetched(pages())) as ahead:
                async for _ in ahead:
                    await asyncio.sleep(0)
                    raise RuntimeError("apply failed")
        assert closed == ["source"] and datetime.now() - started < timedelta(seconds=5)


class TestRemerge:
    def test_a_restricted_view_neither_sees_nor_changes_the_full_mappings(self) -> None:
        """The view of the changed fields answers for those fields only, whichever is asked first,
        and the live mappings stay whole (a `model_copy` shared their `for_object` cache)."""
        full = parse_mappings(mappings_toml())
        before = full.for_object("Lead")
        assert len(before) > 1
        assert [m.local_field for m in restricted(full, {"people": ["first_name"]}).for_object("Lead")] == [
            "first_name"]
        fresh = parse_mappings(mappings_toml())
        restricted(fresh, {"people": ["first_name"]}).for_object("Lead")
        assert fresh.for_object("Lead") == before == full.for_object("Lead")

    async def test_changed_fields_are_re_merged_once(self, store: Store) -> None:
        """After a mapping edit the added field is merged for every linked record, then the hash is stored."""
        sf = FakeSalesforce(org(leads=3, contacts=0))
        for lead in sf.records["Lead"]:
            lead["Department"] = "Sales"
        await backfill(RecordReader(sf, MAPPINGS), store, Reconciler(store, MAPPINGS), ["Lead"])
        first = await remerge_if_mappings_changed(store, RecordReader(sf, MAPPINGS), MAPPINGS, ["Lead"])
        assert first.records == 0  # the first start only records the hash
        edited = parse_mappings(mappings_toml({"people.department": {"lead": "Department"}}))
        assert changed_fields((await store.load_state("mappings") or {}).get("mappings"), edited) == {
            "people": ["department"]}
        sf.queries.clear()
        result = await remerge_if_mappings_changed(store, RecordReader(sf, MAPPINGS), edited,
                                                   ["Lead", "Contact"], batch_size=2)
        assert (result.records, result.finished, len(sf.queries)) == (3, True, 2)
        assert await store.db.people.count_documents({"department": "Sales"}) == 3
        assert len((await store.find_sync_logs(type="merge"))[0]) == 3
        again = await remerge_if_mappings_changed(store, RecordReader(sf, MAPPINGS), edited, ["Lead"])
        assert again.records == 0

    async def test_a_record_in_the_recycle_bin_is_merged_too(self, store: Store) -> None:
        """A mapping edit merges the changed fields of every linked record, a Lead deleted in
        Salesforce (in its recycle bin) too: what the platform gains is written now, what
        Salesforce gains is queued, to be held for the undelete like any edit of a deleted record.
        Left out, the two sides stayed apart after the undelete (chaos seed 34871, L7.title: a
        value `salesforce_unless_blank` had held back, then mapped `most_recent` while deleted)."""
        sf = FakeSalesforce(org(leads=2, contacts=0))
        sf.records["Lead"][0]["Department"] = "Sales"
        await backfill(RecordReader(sf, MAPPINGS), store, Reconciler(store, MAPPINGS), ["Lead"])
        await remerge_if_mappings_changed(store, RecordReader(sf, MAPPINGS), MAPPINGS, ["Lead"])
        await store.db.people.update_one({"crm.id": "00Q001"}, {"$set": {"department": "Ops"}})
        for lead in sf.records["Lead"]:
            lead["IsDeleted"] = True
        await Reconciler(store, MAPPINGS).apply_batch(
            [change(lead["Id"], {}, kind=ChangeKind.DELETE) for lead in sf.records["Lead"]])
        edited = parse_mappings(mappings_toml({"people.department": {"lead": "Department"}}))
        outbox = FakeOutbox()
        result = await remerge_if_mappings_changed(store, RecordReader(sf, MAPPINGS), edited, ["Lead"],
                                                   outbox=outbox)
        assert result.finished
        assert (await store.db.people.find_one({"crm.id": "00Q000"}) or {}).get("department") == "Sales"
        assert [(w.sf_id, w.fields) for w in outbox.writes] == [("00Q001", {"Department": "Ops"})]
        assert await store.db.people.count_documents({"crm.deleted": True}) == 2

    async def test_stops_when_the_budget_says_so(self, store: Store) -> None:
        """Below the reserve no page is fetched and the new hash is not stored."""

        class Reserve:
            mode = "paused"

            def allows_optional_calls(self) -> bool:
                return False

        sf = FakeSalesforce(org(leads=2, contacts=0))
        await backfill(RecordReader(sf, MAPPINGS), store, Reconciler(store, MAPPINGS), ["Lead"])
        await remerge_if_mappings_changed(store, RecordReader(sf, MAPPINGS), MAPPINGS, ["Lead"])
        edited = parse_mappings(mappings_toml({"people.department": {"lead": "Department"}}))
        sf.queries.clear()
        result = await remerge_if_mappings_changed(store, RecordReader(sf, MAPPINGS), edited, ["Lead"],
                                                   budget=Reserve())
        assert not result.finished and sf.queries == []
        assert (await store.load_state("mappings") or {})["hash"] == MAPPINGS.content_hash()
