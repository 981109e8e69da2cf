"""Retrying failed jobs and re-importing records (what the admin API and the scheduler call)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from listener.reader import RecordReader
from reconciler.inbound import Reconciler
from reconciler.jobs import AdminJobs, Jobs, sobject_for_id
from reconciler.ports import ChangeKind
from reconciler.store import Store
from reconciler.sync_logs import SyncLog, failed_inbound
from tests.support.salesforce_changes import MAPPINGS, OWNER_1, FakeOutbox, FakeSalesforce, change

LEAD = "00Q000000000001AAA"


def lead_record(**fields: Any) -> dict[str, Any]:
    return {"Id": LEAD, "LastName": "Lee", "OwnerId": OWNER_1, "Title": "CTO",
            "SystemModstamp": "2024-05-01T10:00:00.000+0000", **fields}


class Paused:
    mode = "paused"

    def allows_optional_calls(self) -> bool:
        return False


def jobs_for(store: Store, sf: FakeSalesforce, **kw: Any) -> Jobs:
    kw.setdefault("outcome_wait", timedelta(milliseconds=300))
    reconciler = Reconciler(store, MAPPINGS, fetcher=RecordReader(sf, MAPPINGS),
                            outbox=kw.pop("outbox", None), budget=kw.pop("budget", None))
    return Jobs(store, reconciler, **kw)


async def failed_log_id(store: Store, **kw: Any) -> str:
    [log_id] = await store.insert_sync_logs([failed_inbound("Lead", LEAD, "INVALID_TYPE: Title", **kw)])
    return log_id


async def person(store: Store) -> Any:
    return (await store.db.people.insert_one({"last_name": "Lee", "title": "CEO",
                                              "crm": {"object": "Lead", "id": LEAD}})).inserted_id


def failed_outbound(pid: Any, fields: list[str] | None = None) -> SyncLog:
    job = {"kind": "outbound", "sobject": "Lead", "sf_id": LEAD, "collection": "people", "local_id": str(pid)}
    return SyncLog(source="local", type="update", status="failed", job=job, object="Lead", sf_id=LEAD,
                   local_id=str(pid), fields={f: {"old": None, "new": "x"} for f in fields or []},
                   error="FIELD_CUSTOM_VALIDATION_EXCEPTION: no")


class FlushingOutbox(FakeOutbox):
    """An outbox whose flusher answers at once: it logs each write's outcome (attempt + 1)."""

    def __init__(self, store: Store, *, status: str) -> None:
        super().__init__()
        self._store, self._status = store, status

    async def enqueue(self, writes: Any) -> None:
        await super().enqueue(writes)
        await self._store.insert_sync_logs([
            SyncLog(source="local", type="update", status=self._status, object=w.sobject, sf_id=w.sf_id,
                    local_id=str(w.local_id), attempt=w.attempt + 1,
                    error="FIELD_CUSTOM_VALIDATION_EXCEPTION: no" if self._status == "failed" else None)
            for w in writes])


class TestRetryOne:
    async def test_retry_merges_the_record_again_and_marks_the_old_log(self, store: Store) -> None:
        """A failed inbound job re-fetches the record: new log with attempt 2, old log `retried_by` it."""
        bad = change(LEAD, {"LastName": "Lee", "OwnerId": OWNER_1, "Title": {"bad": 1}},
                     kind=ChangeKind.CREATE)
        await Reconciler(store, MAPPINGS).apply([bad])
        [old] = (await store.find_sync_logs(status="failed"))[0]
        sf = FakeSalesforce({"Lead": [lead_record()]})
        outcome = await jobs_for(store, sf).retry_log(old["id"])
        assert outcome.status == "retried"
        assert (await store.db.people.find_one({"crm.id": LEAD}))["title"] == "CTO"
        new = await store.get_sync_log(outcome.new_log_ids[0])
        assert new is not None and (new["status"], new["attempt"], new["type"]) == ("success", 2, "create")
        assert (await store.get_sync_log(old["id"]) or {})["retried_by"] == new["id"]

    async def test_retry_of_an_unchanged_record_still_logs(self, store: Store) -> None:
        """A retry that finds nothing to change leaves a success `merge` log."""
        sf = FakeSalesforce({"Lead": [lead_record()]})
        await jobs_for(store, sf).import_record(LEAD)
        log_id = await failed_log_id(store)
        outcome = await jobs_for(store, sf).retry_log(log_id)
        new = await store.get_sync_log(outcome.new_log_ids[0])
        assert new is not None and (new["type"], new["status"], new["attempt"]) == ("merge", "success", 2)

    @pytest.mark.parametrize(("setup", "expected"), [("missing", "not_found"), ("success", "not_failed"),
                                                     ("retried", "already_retried"), ("paused", "paused")])
    async def test_refusals(self, store: Store, setup: str, expected: str) -> None:
        """Only an existing, failed, not yet retried log is retried, and never below the reserve."""
        log_id = "0" * 24
        if setup == "success":
            ok = SyncLog(source="salesforce", type="update", status="success")
            [log_id] = await store.insert_sync_logs([ok])
        elif setup in ("retried", "paused"):
            log_id = await failed_log_id(store)
            if setup == "retried":
                await store.mark_sync_log(log_id, retried_by="x")
        jobs = jobs_for(store, FakeSalesforce(), budget=Paused() if setup == "paused" else None)
        assert (await jobs.retry_log(log_id)).status == expected

    async def test_outbound_job_goes_back_to_the_outbox(self, store: Store) -> None:
        """A failed outbound job re-reads the local document and re-queues its mapped fields;
        no placeholder row is written (no flusher answers here: the retry is queued)."""
        pid = await person(store)
        [log_id] = await store.insert_sync_logs([failed_outbound(pid)])
        outbox = FakeOutbox()
        outcome = await jobs_for(store, FakeSalesforce(), outbox=outbox).retry_log(log_id)
        [write] = outbox.writes
        assert (write.sf_id, write.reason, write.fields, write.local_id) == (
            LEAD, "retry", {"LastName": "Lee", "Title": "CEO"}, pid)
        assert (outcome.status, outcome.new_log_ids) == ("queued", [])
        assert await store.db.sync_logs.count_documents({}) == 1

    async def test_an_outbound_retry_goes_to_the_record_the_document_is_linked_to_now(
        self, store: Store
    ) -> None:
        """The Lead converted after its write failed: the Person is the Contact's now, so the
        retry writes the Contact (a write to the converted Lead could only fail again,
        `CANNOT_UPDATE_CONVERTED_LEAD`: chaos seed 64927, adm-011)."""
        contact = "003000000000001AAA"
        pid = (await store.db.people.insert_one({"last_name": "Lee", "title": "CEO", "crm": {
            "object": "Contact", "id": contact, "converted_from": LEAD}})).inserted_id
        [log_id] = await store.insert_sync_logs([failed_outbound(pid)])
        outbox = FakeOutbox()
        await jobs_for(store, FakeSalesforce(), outbox=outbox).retry_log(log_id)
        [write] = outbox.writes
        assert (write.sobject, write.sf_id) == ("Contact", contact)
        assert write.fields == {"LastName": "Lee", "Title": "CEO"}

    async def test_an_outbound_retry_never_sends_a_from_salesforce_field(self, store: Store) -> None:
        """`city` is `from_salesforce` ("we will never send SalesLoft data back to Salesforce"):
        the platform's value stays out of the re-queued write (chaos seed 9001: LeadSource sent
        by admin retries of a failed update)."""
        pid = (await store.db.people.insert_one({"last_name": "Lee", "city": "Paris",
                                                 "crm": {"object": "Lead", "id": LEAD}})).inserted_id
        [log_id] = await store.insert_sync_logs([failed_outbound(pid)])
        outbox = FakeOutbox()
        await jobs_for(store, FakeSalesforce(), outbox=outbox).retry_log(log_id)
        [write] = outbox.writes
        assert write.fields == {"LastName": "Lee"}

    async def test_a_queued_retry_says_so_and_is_linked_to_its_outcome_when_it_comes(
        self, store: Store
    ) -> None:
        """Salesforce has not answered within the wait: the old row is marked `retry_queued`
        (not open: neither retried again nor taken by "Retry all failed"), and the flusher's
        later outcome row becomes its `retried_by`, as an answered retry's would."""
        pid = await person(store)
        [log_id] = await store.insert_sync_logs([failed_outbound(pid)])
        outbox = FakeOutbox()
        jobs = jobs_for(store, FakeSalesforce(), outbox=outbox)
        assert (await jobs.retry_log(log_id)).status == "queued"
        assert (await store.get_sync_log(log_id) or {}).get("retry_queued")
        assert (await jobs.retry_log(log_id)).status == "queued"  # not queued a second time
        assert len(outbox.writes) == 1
        assert await store.find_failed_logs() == []

        [write] = outbox.writes
        again = failed_outbound(pid)  # what the flusher logs once it is sent: failed again
        again.attempt = write.attempt + 1
        [outcome_id] = await store.insert_sync_logs([again])
        assert (await store.get_sync_log(log_id) or {})["retried_by"] == outcome_id
        assert [x["id"] for x in await store.find_failed_logs()] == [outcome_id]

    async def test_outbound_retry_waits_for_the_flushers_outcome(self, store: Store) -> None:
        """The retry answers with the row the flusher logs (the real outcome), marked on the old log."""
        pid = await person(store)
        [log_id] = await store.insert_sync_logs([failed_outbound(pid)])
        outbox = FlushingOutbox(store, status="failed")
        outcome = await jobs_for(store, FakeSalesforce(), outbox=outbox).retry_log(log_id)
        assert outcome.status == "retried"
        new = await store.get_sync_log(outcome.new_log_ids[0])
        assert new is not None and (new["status"], new["attempt"]) == ("failed", 2)
        assert (await store.get_sync_log(log_id) or {})["retried_by"] == new["id"]
        assert await store.db.sync_logs.count_documents({}) == 2

    async def test_a_queued_retry_is_linked_to_its_outcome_once_logged(self, store: Store) -> None:
        """No answer within the wait: the retried row says the retry is queued (`retry_queued`);
        the flusher's later row for that record (attempt N+1) becomes its `retried_by`."""
        pid = await person(store)
        [log_id] = await store.insert_sync_logs([failed_outbound(pid)])
        outcome = await jobs_for(store, FakeSalesforce(), outbox=FakeOutbox()).retry_log(log_id)
        assert outcome.status == "queued"
        old = await store.get_sync_log(log_id) or {}
        assert old.get("retry_queued") and not old.get("retried_by")
        [later] = await store.insert_sync_logs([SyncLog(
            source="local", type="update", status="failed", object="Lead", sf_id=LEAD, local_id=str(pid),
            attempt=2, error="FIELD_CUSTOM_VALIDATION_EXCEPTION: still no")])
        assert (await store.get_sync_log(log_id) or {})["retried_by"] == later

    async def test_event_job_re_imports_the_records_it_names(self, store: Store) -> None:
        """A rejected event naming record ids is retried by importing those records."""
        header = {"entityName": "Lead", "recordIds": [LEAD]}
        raw = {"event": {"data": {"payload": {"ChangeEventHeader": header}}}}
        failed = SyncLog(source="salesforce", type="event", status="failed",
                         job={"kind": "event", "raw": raw})
        [log_id] = await store.insert_sync_logs([failed])
        outcome = await jobs_for(store, FakeSalesforce({"Lead": [lead_record()]})).retry_log(log_id)
        assert outcome.status == "retried"
        assert await store.db.people.count_documents({"crm.id": LEAD}) == 1


class TestResolved:
    async def test_a_later_success_of_the_same_record_and_fields_resolves(self, store: Store) -> None:
        """design.md: a failed log gains `resolved` once a later sync of the same record and
        fields succeeds; a success of other fields, or of the other direction, does not."""
        pid = await person(store)
        [failed_id] = await store.insert_sync_logs([failed_outbound(pid, fields=["Title"])])
        other = SyncLog(source="local", type="update", status="success", object="Lead", sf_id=LEAD,
                        local_id=str(pid), fields={"LastName": {"old": None, "new": "Lee"}})
        inbound = SyncLog(source="salesforce", type="update", status="success", object="Lead", sf_id=LEAD,
                          local_id=str(pid), fields={"title": {"old": None, "new": "CEO"}})
        await store.insert_sync_logs([other, inbound])
        assert "resolved" not in (await store.get_sync_log(failed_id) or {})
        fixed = SyncLog(source="local", type="update", status="success", object="Lead", sf_id=LEAD,
                        local_id=str(pid), fields={"Title": {"old": "CTO", "new": "CEO"},
                                                   "LastName": {"old": None, "new": "Lee"}})
        [fixed_id] = await store.insert_sync_logs([fixed])
        assert (await store.get_sync_log(failed_id) or {})["resolved"]["by"] == fixed_id

    async def test_retry_all_failed_skips_resolved_failures(self, store: Store) -> None:
        """"Retry all failed" (and the automatic retry) leave resolved failures alone."""
        await store.insert_sync_logs([failed_inbound("Lead", LEAD, "X: y")])
        await store.insert_sync_logs([SyncLog(source="salesforce", type="update", status="success",
                                              object="Lead", sf_id=LEAD)])
        sf = FakeSalesforce({"Lead": [lead_record()]})
        assert await jobs_for(store, sf).retry_all_failed() == []
        assert sf.queries == []


    async def test_auto_retry_skips_resolved_failures(self, store: Store) -> None:
        """A due, retriable failure that a later success of its record and fields resolved is not
        retried automatically; the one beside it, not resolved, is."""
        now = datetime.now(UTC)
        logs = [failed_inbound(
            "Lead", sf_id, "UNABLE_TO_LOCK_ROW: busy", retriable=True,
            fields={"title": {"old": "CEO", "new": "CTO"}}) for sf_id in ("00Q0", "00Q1")]
        for entry in logs:
            entry.ts = now - timedelta(minutes=30)
        await store.insert_sync_logs(logs)
        await store.insert_sync_logs([SyncLog(source="salesforce", type="update", status="success",
                                              object="Lead", sf_id="00Q0",
                                              fields={"title": {"old": "CEO", "new": "CTO"}})])
        sf = FakeSalesforce({"Lead": [lead_record(Id=f"00Q{i}") for i in range(2)]})
        assert await jobs_for(store, sf).auto_retry_due(now) == 1
        assert len(sf.queries) == 1 and "'00Q0'" not in sf.queries[0]


class TestRetryMany:
    async def test_retry_all_failed(self, store: Store) -> None:
        """Every failed, not yet retried log is re-run in one fetch per object."""
        sf = FakeSalesforce({"Lead": [lead_record(), lead_record(Id="00Q2")]})
        await store.insert_sync_logs([failed_inbound("Lead", LEAD, "X: y"),
                                      failed_inbound("Lead", "00Q2", "X: y")])
        outcomes = await jobs_for(store, sf).retry_all_failed()
        assert [o.status for o in outcomes] == ["retried", "retried"]
        assert len(sf.queries) == 1
        assert await store.find_failed_logs() == []

    async def test_auto_retry_takes_only_due_transient_failures(self, store: Store) -> None:
        """Auto retry: retriable, older than the interval, under 10 attempts."""
        now = datetime.now(UTC)
        old = now - timedelta(minutes=30)
        sf = FakeSalesforce({"Lead": [lead_record(Id=f"00Q{i}") for i in range(4)]})
        logs = [failed_inbound("Lead", "00Q0", "X: y", retriable=True),
                failed_inbound("Lead", "00Q1", "X: y", retriable=False),
                failed_inbound("Lead", "00Q2", "X: y", retriable=True, attempt=10),
                failed_inbound("Lead", "00Q3", "X: y", retriable=True)]
        for entry in logs[:3]:
            entry.ts = old
        await store.insert_sync_logs(logs)
        assert await jobs_for(store, sf, budget=Paused()).auto_retry_due(now) == 0
        assert await jobs_for(store, sf).auto_retry_due(now) == 1
        assert [x["sf_id"] for x in await store.find_failed_logs()] == ["00Q1", "00Q2", "00Q3"]


class TestImport:
    async def test_import_record_by_id(self, store: Store) -> None:
        """A re-import fetches the record by id (object from its prefix) and merges it."""
        sf = FakeSalesforce({"Lead": [lead_record()]})
        outcome = await jobs_for(store, sf).import_record(LEAD)
        assert outcome.status == "retried"
        assert (await store.db.people.find_one({"crm.id": LEAD}))["title"] == "CTO"

    async def test_import_of_a_missing_record_is_a_failed_log(self, store: Store) -> None:
        """Salesforce returning nothing is a failed NOT_FOUND log, and the outcome says not_found."""
        outcome = await jobs_for(store, FakeSalesforce()).import_record(LEAD)
        assert outcome.status == "not_found"
        new = await store.get_sync_log(outcome.new_log_ids[0])
        assert new is not None and new["status"] == "failed" and new["error"].startswith("NOT_FOUND")

    def test_object_from_prefix(self) -> None:
        """Key prefixes name the object."""
        prefixes = [sobject_for_id(i) for i in ("00Q1", "0031", "0011", "0061")]
        assert prefixes == ["Lead", "Contact", "Account", None]


class TestAdminRunner:
    async def test_answers_are_json_ready(self, store: Store) -> None:
        """The admin runner reports what was retried and the new log ids."""
        runner = AdminJobs(jobs_for(store, FakeSalesforce({"Lead": [lead_record()]})))
        answer = await runner.import_record(LEAD)
        assert answer["retried"] == 1 and answer["items"][0]["status"] == "retried"
        assert isinstance(answer["items"][0]["new_log_ids"][0], str)
