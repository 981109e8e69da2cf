"""The data that crosses module boundaries, and the small interfaces the reconciler needs.

The reconciler never imports `listener`: the process wires concrete implementations
(the REST client, the budget governor) into these protocols.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from settings import Mappings


class ChangeKind(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    UNDELETE = "undelete"
    UPSERT = "upsert"  # a polled or re-fetched full record: create-or-update


class ChangeSource(StrEnum):
    STREAM = "stream"
    POLL = "poll"
    GAP = "gap"        # re-fetched by id after a GAP_* event
    IMPORT = "import"  # backfill or a manual re-import
    RETRY = "retry"


@dataclass(frozen=True)
class SalesforceChange:
    """One inbound change to one Salesforce record, already flattened to API field names.

    `fields` holds flat Salesforce API names (`FirstName`, `City`, `MailingCity`), never the
    compound `Name`/`Address` structures of CDC events. For CDC updates it holds only the
    changed fields; for polled/imported records it holds every selected field.
    """

    sobject: str                      # "Lead" | "Contact" | "Account"
    sf_id: str                        # 18-character id
    kind: ChangeKind
    fields: dict[str, Any]
    changed_at: datetime              # LastModifiedDate, else commitTimestamp / SystemModstamp (UTC)
    source: ChangeSource
    nulled_fields: frozenset[str] = frozenset()
    is_echo: bool = False             # changeOrigin carried our own client= name
    transaction_key: str | None = None
    replay_id: int | None = None
    raw: dict[str, Any] | None = None  # the raw event, kept for failed logs and retry


@dataclass(frozen=True)
class RejectedEvent:
    """An inbound message that could not be turned into a change (malformed, unknown entity...)."""

    reason: str
    raw: dict[str, Any]
    channel: str | None = None
    replay_id: int | str | None = None  # CometD's integer, or a Pub/Sub replay id (hex)


class ChangeSink(Protocol):
    """Where inbound changes go. `apply` returns once every change is durably applied or
    durably logged as failed; it raises `RetriableError` only when nothing can be written
    (MongoDB unreachable), in which case the caller must not advance its offset."""

    async def apply(self, changes: Sequence[SalesforceChange]) -> None: ...

    async def reject(self, events: Sequence[RejectedEvent]) -> None: ...


@dataclass(frozen=True)
class RecordError:
    status_code: str
    message: str
    fields: list[str] = field(default_factory=list)


# A conditional update's record changed after the date it was decided on (HTTP 412): not written.
PRECONDITION_FAILED = "PRECONDITION_FAILED"


@dataclass(frozen=True)
class RecordResult:
    """One record's outcome in a `composite/sobjects` (or `/composite`) call, matched by position."""

    success: bool
    id: str | None = None
    errors: list[RecordError] = field(default_factory=list)

    @property
    def precondition_failed(self) -> bool:
        return not self.success and any(e.status_code == PRECONDITION_FAILED for e in self.errors)


# Runs before a write is sent again (a retry after a whole-call refusal, a re-authentication, the
# next chunk): raising stops it. The flusher's checks that its leader term still holds the lease.
ResendGuard = Callable[[], Awaitable[None]]


class SalesforceApi(Protocol):
    """The Salesforce REST surface the reconciler uses (implemented by listener.salesforce)."""

    @property
    def instance_url(self) -> str: ...

    def query(self, soql: str, *, include_deleted: bool = False) -> AsyncIterator[list[dict[str, Any]]]:
        """Yield pages of records (attributes removed), following `nextRecordsUrl`."""
        ...

    async def describe(self, sobject: str) -> dict[str, Any]: ...

    async def create(self, sobject: str, records: Sequence[dict[str, Any]], *,
                     before_resend: ResendGuard | None = None) -> list[RecordResult]: ...

    async def update(self, sobject: str, records: Sequence[dict[str, Any]], *,
                     before_resend: ResendGuard | None = None) -> list[RecordResult]: ...


class RecordFetcher(Protocol):
    """Reads Salesforce records by id (implemented by `listener.reader.RecordReader`).

    `fetch` returns the current state of each record found (deleted ones included: a DELETE
    change), one query per 200 ids; ids Salesforce no longer has are simply absent. `mappings`
    narrows or widens the fields selected (remerge passes a view restricted to the fields a
    mappings edit changed); by default the reader's own mappings are used.
    """

    async def fetch(self, sobject: str, ids: Iterable[str], *, source: ChangeSource,
                    mappings: Mappings | None = None) -> list[SalesforceChange]: ...


class StateStore(Protocol):
    """`sync_state` documents by key (keys built in `reconciler.store.state_keys`)."""

    async def load_state(self, key: str) -> dict[str, Any] | None: ...

    async def save_state(self, key: str, value: dict[str, Any], *, fence: Any = None) -> None:
        """`fence`: a `reconciler.store.Fence` (typed loosely here: the store imports this
        module); with one, the write is refused (`FencedError`) once another term leads."""
        ...


class Budget(Protocol):
    """What the reconciler asks of the API-budget governor."""

    @property
    def mode(self) -> str:
        """`starting` | `streaming` | `polling` | `paused`."""
        ...

    def allows_optional_calls(self) -> bool:
        """False below the reserve: outbound writes and retries wait."""
        ...


@dataclass(frozen=True)
class OutboundWrite:
    """One record's pending write to Salesforce, kept in the durable outbox until applied.

    `sf_id` None means create (the object comes from the rules: Lead or Contact, or Account);
    `fields` holds Salesforce API names and never blank values.
    """

    sobject: str
    sf_id: str | None
    collection: str                   # "people" | "companies"
    local_id: Any
    fields: dict[str, Any]
    reason: str                       # "local_edit" | "merge" | "create" | "retry" | "remerge"
    attempt: int = 0
    # who queued it (the watcher's stream or poll, an inbound apply and its source, a retry):
    # named in the outbox's log line only, not stored
    origin: str = ""


# (Salesforce object, record id) -> Salesforce field -> every value a queued write's claims sent
SentValues = dict[tuple[str, str], dict[str, list[Any]]]


class OutboundQueue(Protocol):
    """Where writes to Salesforce are enqueued (the durable outbox)."""

    async def enqueue(self, writes: Sequence[OutboundWrite]) -> None: ...

    async def release_held(self, records: Collection[tuple[str, str]]) -> None:
        """The writes held for these (object, id) records, deleted in Salesforce when the flusher
        came to them, are due again: the records are undeleted."""
        ...

    async def sent_values(self, records: Collection[tuple[str, str]]) -> SentValues:
        """Per (object, Salesforce id): every value a queued write's claims sent, per field,
        whose answer was lost or is not in yet (it may be in Salesforce: the write's own)."""
        ...
