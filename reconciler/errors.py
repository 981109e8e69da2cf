"""The project's exceptions: one root, subclasses named for what the caller should do.

    SyncError
    ├── RetriableError            back off and try again (network, 5xx, lock, MongoDB unavailable)
    │   ├── SessionExpiredError   re-authenticate once, then retry
    │   └── OutcomeUnknownError   a create's response was lost: find what it made before re-sending
    ├── FatalError                stop and report (bad credentials, misconfiguration)
    ├── SkippableError            record a `failed` sync log for this record and go on
    │   ├── RecordRejectedError   Salesforce refused one record (status code + message)
    │   └── UnencodableError      MongoDB's driver cannot encode a record (bad type, too large)
    ├── BudgetExhaustedError      the org's API allocation is spent (REQUEST_LIMIT_EXCEEDED)
    └── FencedError               this replica's leader term is over: a write made for it was
                                  refused; stop the term's work, log it, never retry it

Library exceptions (aiohttp, pymongo/motor, aiocometd) are translated into these at one
boundary each (`listener/salesforce/_transport.py`, `reconciler/store/_client.py`,
`listener/sources/_sfstream_compat.py`); nothing above those boundaries catches a library's exception.
"""

from __future__ import annotations


class SyncError(Exception):
    """Root of every error this project raises on purpose."""


class RetriableError(SyncError):
    """A transient failure: back off (with jitter) and retry."""


class SessionExpiredError(RetriableError):
    """The Salesforce session is no longer valid (`INVALID_SESSION_ID`): re-authenticate."""


class OutcomeUnknownError(RetriableError):
    """A non-idempotent call (a create) may or may not have been applied: its response was lost
    (timeout, connection dropped after sending, 5xx that proves nothing). Never retried blindly:
    the caller looks for the records it may have created before sending the rest again."""


class FatalError(SyncError):
    """A failure retrying cannot fix: stop and report."""


class SkippableError(SyncError):
    """One record cannot be synced: log it as failed, keep it retryable, go on with the rest."""


class RecordRejectedError(SkippableError):
    """Salesforce rejected one record."""

    def __init__(self, status_code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.fields = fields or []


class UnencodableError(SkippableError):
    """The MongoDB driver cannot encode a document (an unsupported type, an integer beyond 64
    bits, a document over 16 MB): that record fails, the rest of its batch is written."""


class FencedError(SyncError):
    """A write made on behalf of a leader term was refused because another term holds the lease
    (see `reconciler.store`'s fencing). `applied` is True when the write had already landed when
    the loss was noticed (a record bulk write's after-check): the caller must not count it done
    (no offset past it, no success log), the new leader re-applies it idempotently."""

    def __init__(self, message: str, *, applied: bool = False) -> None:
        super().__init__(message)
        self.applied = applied


class BudgetExhaustedError(SyncError):
    """The daily API allocation is spent (`REQUEST_LIMIT_EXCEEDED`); wait for the budget."""
