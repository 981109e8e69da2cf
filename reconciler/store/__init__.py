"""The MongoDB store: the only package that imports motor/pymongo.

`Store` is assembled from one mixin per concern; its `db` attribute is for the store's own
modules (`_records`, `_logs`, `_state`, and the outbox/watch modules), not for callers.
Callers import from here only (the `_private` modules are the store's own); the keys of
`sync_state` are built and parsed in `reconciler.store.state_keys`.

Durability: every write (records, sync logs, outbox, offsets, leases) is acknowledged by a majority
and journaled (`_client.DURABLE`, set once on the database handle, so a `w=1` URI cannot weaken
it), with one exception that loses nothing:

    await store.bulk_apply(collection, writes, journaled=False)   # {w: majority}, no j
    ...                                                           # more of the same batch
    await store.insert_sync_logs(logs)     # {w: majority, j: true}: closes the batch
    await store.journal_barrier()          # ... or this, when the batch has no log to write

A batch's record writes may go without `j` when the batch ends with a journaled majority write
before anything is reported done or any offset moves. In MongoDB a `j: true` acknowledgement
means the node's journal holds every earlier write of that node (the journal is one sequential
log, flushed up to the acknowledged write), and a majority acknowledgement at optime T means
every earlier optime is majority-committed; so once the closing write is acknowledged the whole
batch is exactly as durable as if each write had asked for `j`. (mongod's default
`writeConcernMajorityJournalDefault: true` already journals majority writes on the majority;
SecantusDB, like WiredTiger, flushes its one log up to the synced commit.) What it saves: a
journaled bulk write costs one journal sync per statement on SecantusDB (mongod waits once per
command). The one caller is `Reconciler.apply_batch` (inbound events, backfill pages, retries,
remerges): its last write is always the sync-log insert or `journal_barrier`. Everything else
writes records journaled (`journaled=True`, the default). If the process dies between the two,
nothing was acknowledged: the batch is delivered again and applied idempotently.

Fencing (a leader term's writes; issue 11 item 4):

    lease = store.lease("sync", ttl=...)
    await lease.acquire()                     # a new term: lease document `term` + 1
    fence = lease.fence()                     # Fence(lease, owner, term), None when not held
    await store.save_state(key, value, fence=fence)          # FencedError when the term is over
    await store.bulk_apply(collection, writes, fence=fence)  # idem; write_in_order too
    await store.check_fence(fence)            # the bare check (one read)

- Offsets: refused without a window for every key that existed when the new term started
  (acquisition stamps them; the offset document itself refuses an older term), and checked
  against the lease document first (covers keys created later). Replay ids also never go
  backwards (`$max`), fenced or not.
- Records: the lease is checked right before and right after the bulk write. Lost before:
  `FencedError`, nothing written. Lost meanwhile: `FencedError(applied=True)` after the write
  landed: do not log success or move an offset past it; the new leader re-applies it. The
  remaining window is a writer stalling between the before-check and the server applying the
  write; compare-and-set (below) refuses it for documents the new term rewrote meanwhile.
- `FencedError` is not retriable: the caller logs it and ends its term.

Compare-and-set (issue 11 item 6):

    seen = RecordVersion.of(doc)              # when reading the document to merge
    RecordWrite({"_id": doc["_id"]}, set=..., expected=seen)   # by _id, no upsert
    outcome = await store.bulk_apply(collection, writes)
    outcome.conflicts                         # indexes that changed since read: re-read, re-merge

Every store write to a record increments `_sync.version`; a platform write changes `updated_at`
(the platform must set it on every write, as it does: that is the contract that keeps its edits
from being overwritten). Encoding errors are per-record `errors` ("INVALID_DOCUMENT: ...").
"""

from __future__ import annotations

from bson import ObjectId
from bson.errors import InvalidId

from reconciler.store._bulk import BulkOutcome, RecordVersion, RecordWrite
from reconciler.store._client import Connection, translate_errors
from reconciler.store._lease import Fence, Lease, LeaseHolder, LeaseMixin
from reconciler.store._logs import LogsMixin, decode_cursor, encode_cursor
from reconciler.store._outbox import OutboxCollection
from reconciler.store._outbox_entry import CREATE, UPDATE, OutboxEntry, OutboxGroup
from reconciler.store._records import RecordsMixin
from reconciler.store._state import StateMixin
from reconciler.store._watch import (
    LocalChange,
    LocalChangeBatch,
    OutboundMixin,
    StreamHistoryLostError,
    WatchedCollection,
)

__all__ = [
    "CREATE",
    "UPDATE",
    "BulkOutcome",
    "Fence",
    "Lease",
    "LeaseHolder",
    "LocalChange",
    "LocalChangeBatch",
    "OutboxCollection",
    "OutboxEntry",
    "OutboxGroup",
    "RecordVersion",
    "RecordWrite",
    "Store",
    "StreamHistoryLostError",
    "WatchedCollection",
    "decode_cursor",
    "encode_cursor",
    "new_object_id",
    "parse_local_id",
    "translate_errors",
]


class Store(Connection, RecordsMixin, LogsMixin, StateMixin, OutboundMixin, LeaseMixin):
    """People/Companies, sync logs and sync state in one MongoDB database; the outbox and
    the local-change watch come from `OutboundMixin` (reconciler-outbound's modules); the
    leader lease from `LeaseMixin` (`store.lease("sync", ttl=...)`)."""

    @classmethod
    async def connect(
        cls, uri: str, database: str, *, sync_log_retention_days: int = 30,
        server_selection_timeout_ms: int = 10_000,
    ) -> Store:
        store = await super().connect(
            uri, database, sync_log_retention_days=sync_log_retention_days,
            server_selection_timeout_ms=server_selection_timeout_ms,
        )
        assert isinstance(store, Store)
        return store


def new_object_id() -> object:
    return ObjectId()


def parse_local_id(text: str) -> object:
    """A local id as the APIs show it (string) back to the stored `_id` (ObjectId when it is one)."""
    try:
        return ObjectId(text)
    except (InvalidId, TypeError):
        return text
