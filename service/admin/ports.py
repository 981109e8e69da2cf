"""What the admin surface needs from the rest of the process, as small protocols.

The supervisor (status), the store (sync logs) and the job runner (retry, import) are wired
in by whoever builds the app, so the admin code and its tests depend on shapes, not modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from reconciler.errors import SyncError


class NotLeaderError(SyncError):
    """This replica stands by: retries and imports (merges, API calls) run on the lease holder
    only. The admin API answers 409 `{"error": "not_leader", "leader": <holder>}`."""

    def __init__(self, leader: str | None) -> None:
        super().__init__(f"this replica stands by; admin jobs run on the leader ({leader or 'unknown'})")
        self.leader = leader


class StatusProvider(Protocol):
    """The running service as the admin surface sees it (implemented by `service.supervisor.Service`)."""

    def status(self) -> dict[str, Any]:
        """`mode`, `budget` {used, max, remaining_pct}, replay ids, watermarks, queue depth..."""
        ...

    def ready(self) -> tuple[bool, str]:
        """(True, "") when MongoDB and Salesforce are reachable and a source runs; else the reason."""
        ...


class SyncLogReader(Protocol):
    """The part of `reconciler.store.Store` the admin surface reads."""

    async def find_sync_logs(
        self,
        *,
        status: str | None = None,
        source: str | None = None,
        type: str | None = None,
        object: str | None = None,
        record: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        error_code: str | None = None,
        open_only: bool = False,
    ) -> tuple[list[dict[str, Any]], str | None]: ...

    async def get_sync_log(self, log_id: str) -> dict[str, Any] | None: ...

    async def get_sync_logs(self, log_ids: Sequence[str]) -> dict[str, dict[str, Any]]: ...


class JobRunner(Protocol):
    """Re-runs failed jobs and re-imports records; each is a merge (see `reconciler.jobs`).

    Each call returns a JSON-ready summary. A record that fails again is not an exception:
    it is a new `failed` sync log, reported in the summary. On a replica that does not hold the
    sync lease every call raises `NotLeaderError`.
    """

    async def retry(self, log_id: str) -> dict[str, Any]: ...

    async def retry_failed(self) -> dict[str, Any]: ...

    async def import_record(self, sf_id: str) -> dict[str, Any]: ...
