"""Re-running failed sync jobs and re-importing records: what the admin API and the scheduler call.

Every retry is a merge: an inbound job re-fetches the record from Salesforce (one SOQL query per
200 records) and applies it with source RETRY; an outbound job re-reads the local document and
hands a fresh `OutboundWrite` (reason "retry") to the outbox, whose flusher logs the outcome. A
retry writes new sync logs with `attempt + 1` and marks the old log `retried_by` (the new log's
id). An `event` job (a malformed CDC message) is retried by re-importing the records its
header names, when it names any.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import structlog

from reconciler.inbound import Reconciler
from reconciler.objects import object_for_id
from reconciler.ports import Budget, ChangeSource, OutboundQueue, OutboundWrite, RecordFetcher
from reconciler.records import local_to_sf
from reconciler.store import parse_local_id
from reconciler.sync_logs import SyncLog, failed_inbound
from settings import Direction, Mappings

log = structlog.get_logger(__name__)

Status = Literal["retried", "queued", "not_found", "not_failed", "already_retried", "paused", "unsupported"]
_POLL_S = 0.2  # how often a retry looks for the flusher's outcome


class JobStore(Protocol):
    async def get_sync_log(self, log_id: str) -> dict[str, Any] | None: ...
    async def mark_sync_log(self, log_id: str, *, retried_by: str) -> None: ...
    async def mark_retry_queued(self, log_ids: Sequence[str], *, at: datetime) -> None: ...
    async def insert_sync_logs(self, logs: Sequence[SyncLog]) -> list[str]: ...
    async def find_failed_logs(self, *, retriable_only: bool = False, max_attempt: int | None = None,
                               before: datetime | None = None, limit: int = 500) -> list[dict[str, Any]]: ...
    async def find_records(self, collection: str, ids: Any) -> list[dict[str, Any]]: ...
    async def find_outcomes(self, source: str, local_ids: Sequence[str],
                            since: datetime) -> dict[str, dict[str, Any]]: ...


@dataclass
class JobOutcome:
    status: Status
    log_id: str | None = None                   # the log retried (None for an import)
    new_log_ids: list[str] = field(default_factory=list)


def sobject_for_id(sf_id: str) -> str | None:
    """Lead / Contact / Account from the id's key prefix (`reconciler.objects`)."""
    known = object_for_id(sf_id)
    return known.name if known else None


@dataclass
class _Target:
    """One failed log to re-run, or one record to import."""

    sobject: str
    sf_id: str
    attempt: int
    log_id: str | None = None


class Jobs:
    """Re-runs failed jobs through the live reconciler (its Salesforce client, outbox, budget)."""

    def __init__(
        self, store: JobStore, reconciler: Reconciler, *,
        retry_interval: timedelta = timedelta(minutes=20), max_attempts: int = 10,
        outcome_wait: timedelta = timedelta(seconds=10),
    ) -> None:
        self.store = store
        self.reconciler = reconciler
        self.retry_interval = retry_interval
        self.max_attempts = max_attempts
        self.outcome_wait = outcome_wait  # how long an outbound retry waits for the flusher's answer

    @property
    def mappings(self) -> Mappings:
        return self.reconciler.mappings

    @property
    def fetcher(self) -> RecordFetcher | None:
        return self.reconciler.fetcher

    @property
    def outbox(self) -> OutboundQueue | None:
        return self.reconciler.outbox

    @property
    def budget(self) -> Budget | None:
        return self.reconciler.budget

    def _paused(self) -> bool:
        return self.budget is not None and not self.budget.allows_optional_calls()

    async def retry_log(self, log_id: str) -> JobOutcome:
        entry = await self.store.get_sync_log(log_id)
        if entry is None:
            return JobOutcome("not_found", log_id)
        if entry.get("status") != "failed":
            return JobOutcome("not_failed", log_id)
        if entry.get("retried_by"):
            return JobOutcome("already_retried", log_id)
        if entry.get("retry_queued"):
            return JobOutcome("queued", log_id)  # its outcome is linked when Salesforce answers
        if self._paused():
            return JobOutcome("paused", log_id)
        outcomes = await self._retry([entry])
        return outcomes[0]

    async def retry_all_failed(self, *, limit: int = 500) -> list[JobOutcome]:
        if self._paused():
            return []
        return await self._retry(await self.store.find_failed_logs(limit=limit))

    async def auto_retry_due(self, now: datetime) -> int:
        """Transient failures older than the retry interval, under the attempt limit; never
        below the budget reserve. Returns how many logs were retried."""
        if self._paused():
            return 0
        due = await self.store.find_failed_logs(retriable_only=True, max_attempt=self.max_attempts,
                                                before=now - self.retry_interval)
        outcomes = await self._retry(due)
        return sum(1 for o in outcomes if o.status == "retried")

    async def import_record(self, sf_id: str) -> JobOutcome:
        sobject = sobject_for_id(sf_id)
        if sobject is None:
            return JobOutcome("unsupported")
        if self._paused():
            return JobOutcome("paused")
        [outcome] = await self._run_inbound([_Target(sobject, sf_id, 1)], ChangeSource.IMPORT)
        return outcome

    async def _retry(self, entries: list[dict[str, Any]]) -> list[JobOutcome]:
        inbound: list[_Target] = []
        outbound: list[dict[str, Any]] = []
        outcomes: list[JobOutcome] = []
        for entry in entries:
            job = entry.get("job") or {}
            attempt = int(entry.get("attempt", 1)) + 1
            targets = _inbound_targets(job, attempt, entry["id"])
            if job.get("kind") == "outbound" and self.outbox is not None:
                outbound.append(entry)
            elif targets:
                inbound += targets
            else:
                outcomes.append(JobOutcome("unsupported", entry["id"]))
        outcomes += await self._run_inbound(inbound, ChangeSource.RETRY)
        outcomes += await self._run_outbound(outbound)
        for outcome in outcomes:
            if outcome.status == "retried" and outcome.log_id and outcome.new_log_ids:
                await self.store.mark_sync_log(outcome.log_id, retried_by=outcome.new_log_ids[0])
        log.info("jobs_retried", retried=sum(1 for o in outcomes if o.status == "retried"),
                 total=len(outcomes))
        return outcomes

    async def _run_inbound(self, targets: list[_Target], source: ChangeSource) -> list[JobOutcome]:
        if not targets:
            return []
        fetcher = self.fetcher
        if fetcher is None:
            return [JobOutcome("unsupported", t.log_id) for t in targets]
        groups: dict[tuple[str, int], list[_Target]] = defaultdict(list)
        for target in targets:
            groups[(target.sobject, target.attempt)].append(target)
        outcomes: list[JobOutcome] = []
        for (sobject, attempt), group in groups.items():
            ids = list(dict.fromkeys(t.sf_id for t in group))
            changes = await fetcher.fetch(sobject, ids, source=source, mappings=self.mappings)
            result = await self.reconciler.apply_batch(changes, attempt=attempt)
            new_ids = {entry.sf_id: log_id for entry, log_id in zip(result.logs, result.log_ids, strict=True)
                       if entry.sf_id}
            fetched = {c.sf_id for c in changes}
            await self._fill_missing(sobject, attempt, ids, fetched, new_ids)
            # an import of an id Salesforce does not have is not done (its failed log is kept)
            outcomes += [JobOutcome("retried" if t.sf_id in fetched or source is not ChangeSource.IMPORT
                                    else "not_found", t.log_id, [new_ids[t.sf_id]]) for t in group]
        return outcomes

    async def _fill_missing(
        self, sobject: str, attempt: int, ids: list[str], fetched: set[str], new_ids: dict[str, str]
    ) -> None:
        """A record Salesforce no longer returns fails; one that needed no change still gets a log."""
        missing = [i for i in ids if i not in new_ids]
        logs = [
            SyncLog(source="salesforce", type="merge", status="success", object=sobject, sf_id=i,
                    attempt=attempt)
            if i in fetched else
            failed_inbound(sobject, i, "NOT_FOUND: Salesforce returned no such record", type="merge",
                           attempt=attempt)
            for i in missing
        ]
        new_ids.update(zip(missing, await self.store.insert_sync_logs(logs), strict=True))

    async def _run_outbound(self, entries: list[dict[str, Any]]) -> list[JobOutcome]:
        """Re-queue each job's record as it is now; no row is written for that: the flusher's log
        is the outcome, waited for up to `outcome_wait` (else the retry is `queued`)."""
        if not entries or self.outbox is None:
            return []
        writes: dict[str, OutboundWrite] = {}   # old log id -> the write re-queued
        for entry in entries:
            job = entry["job"]
            docs = await self.store.find_records(job["collection"], [parse_local_id(str(job["local_id"]))])
            if not docs:
                continue
            # to the record the document is linked to now (a Lead converted since: its Contact)
            crm = docs[0].get("crm") or {}
            sobject, sf_id = ((str(crm["object"]), str(crm["id"])) if crm.get("object") and crm.get("id")
                              else (job["sobject"], job.get("sf_id")))
            # the fields a local edit sends: never a `from_salesforce` one
            sends = [m for m in self.mappings.for_object(sobject)
                     if m.direction is not Direction.FROM_SALESFORCE]
            fields = local_to_sf(sends, docs[0])
            writes[entry["id"]] = OutboundWrite(
                sobject=sobject, sf_id=sf_id, collection=job["collection"],
                local_id=docs[0]["_id"], fields=fields, reason="retry", attempt=int(entry.get("attempt", 1)),
                origin="admin_retry")
        since = datetime.now(UTC) - timedelta(milliseconds=1)  # BSON dates keep milliseconds
        if writes:
            # Marked before the flusher can answer: the store links the first outcome logged
            # since to it, whether this job is still waiting then or not (`retried_by`).
            await self.store.mark_retry_queued(list(writes), at=since)
            await self.outbox.enqueue(list(writes.values()))
        found = await self._await_outcomes([str(w.local_id) for w in writes.values()], since)
        outcomes: list[JobOutcome] = []
        for entry in entries:
            write = writes.get(entry["id"])
            outcome = found.get(str(write.local_id)) if write is not None else None
            outcomes.append(JobOutcome("not_found", entry["id"]) if write is None
                            else JobOutcome("queued", entry["id"]) if outcome is None
                            else JobOutcome("retried", entry["id"], [outcome["id"]]))
        return outcomes

    async def _await_outcomes(self, local_ids: list[str], since: datetime) -> dict[str, dict[str, Any]]:
        """The flusher's first log for each record since `since` (local id -> log), polled."""
        deadline = asyncio.get_running_loop().time() + self.outcome_wait.total_seconds()
        found: dict[str, dict[str, Any]] = {}
        while local_ids:
            found.update(await self.store.find_outcomes("local", local_ids, since))
            local_ids = [i for i in local_ids if i not in found]
            if not local_ids or asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(_POLL_S)
        return found


def _inbound_targets(job: dict[str, Any], attempt: int, log_id: str) -> list[_Target]:
    """The records an inbound or event job re-imports."""
    if job.get("kind") == "inbound" and job.get("sobject") and job.get("sf_id"):
        return [_Target(str(job["sobject"]), str(job["sf_id"]), attempt, log_id)]
    if job.get("kind") != "event":
        return []
    raw = job.get("raw") or {}
    event = raw.get("event", raw)
    if not isinstance(event, dict):
        return []
    payload = event.get("data", {}).get("payload", event.get("payload", {}))
    header = payload.get("ChangeEventHeader", {}) if isinstance(payload, dict) else {}
    entity = header.get("entityName")
    ids = [i for i in header.get("recordIds", []) if isinstance(i, str)]
    if entity not in ("Lead", "Contact", "Account") or not ids:
        return []
    # only the first target carries the log id: one retried_by per old log
    return [_Target(entity, sf_id, attempt, log_id if n == 0 else None) for n, sf_id in enumerate(ids)]


def _summary(outcomes: list[JobOutcome]) -> dict[str, Any]:
    return {
        "retried": sum(1 for o in outcomes if o.status == "retried"),
        "queued": sum(1 for o in outcomes if o.status == "queued"),
        "items": [{"log_id": o.log_id, "status": o.status, "new_log_ids": o.new_log_ids} for o in outcomes],
    }


class AdminJobs:
    """`service.admin.ports.JobRunner`: the admin API's view of `Jobs`, JSON-ready answers."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    async def retry(self, log_id: str) -> dict[str, Any]:
        return _summary([await self.jobs.retry_log(log_id)])

    async def retry_failed(self) -> dict[str, Any]:
        return _summary(await self.jobs.retry_all_failed())

    async def import_record(self, sf_id: str) -> dict[str, Any]:
        return _summary([await self.jobs.import_record(sf_id)])


def runner_for(service: Any, store: Any) -> AdminJobs:
    """Supervisor hook: the service sets `service.jobs = Jobs(...)` once Salesforce is connected."""
    return AdminJobs(service.jobs)


def retry_transient_for(service: Any) -> Any:
    """Supervisor hook for `reconciler.retry.AutoRetryScheduler` (`(*, max_attempts) -> int`)."""
    jobs: Jobs = service.jobs

    async def retry_transient(*, max_attempts: int) -> int:
        jobs.max_attempts = max_attempts
        return await jobs.auto_retry_due(datetime.now(UTC))

    return retry_transient
