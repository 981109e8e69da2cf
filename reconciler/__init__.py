"""The sync logic: merge rules, linking, rules, outbound batching, local change watching, the
MongoDB store and sync logs. It never imports `listener` (tests/unit/test_exported_members.py).

The exceptions and port types load at once; the components load on first use (PEP 562), so
importing `reconciler.errors` does not pull in the MongoDB driver.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from reconciler.errors import (
    BudgetExhaustedError,
    FatalError,
    RecordRejectedError,
    RetriableError,
    SessionExpiredError,
    SkippableError,
    SyncError,
)
from reconciler.ports import (
    ChangeKind,
    ChangeSink,
    ChangeSource,
    OutboundWrite,
    RecordError,
    RecordResult,
    RejectedEvent,
    SalesforceApi,
    SalesforceChange,
)

if TYPE_CHECKING:
    from reconciler.inbound import Reconciler
    from reconciler.jobs import Jobs
    from reconciler.local_changes import LocalChangeWatcher
    from reconciler.outbound import OutboundFlusher
    from reconciler.outbox import Outbox
    from reconciler.sync_logs import SyncLog

__all__ = [
    "BudgetExhaustedError",
    "ChangeKind",
    "ChangeSink",
    "ChangeSource",
    "FatalError",
    "Jobs",
    "LocalChangeWatcher",
    "OutboundFlusher",
    "OutboundWrite",
    "Outbox",
    "Reconciler",
    "RecordError",
    "RecordRejectedError",
    "RecordResult",
    "RejectedEvent",
    "RetriableError",
    "SalesforceApi",
    "SalesforceChange",
    "SessionExpiredError",
    "SkippableError",
    "SyncError",
    "SyncLog",
]

_HOME = {
    "Jobs": "reconciler.jobs",
    "LocalChangeWatcher": "reconciler.local_changes",
    "OutboundFlusher": "reconciler.outbound",
    "Outbox": "reconciler.outbox",
    "Reconciler": "reconciler.inbound",
    "SyncLog": "reconciler.sync_logs",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'reconciler' has no attribute {name!r}")
    return getattr(import_module(_HOME[name]), name)
