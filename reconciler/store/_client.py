"""The MongoDB connection and the one boundary where driver errors become ours.

Every `motor`/`pymongo` import of the project lives in this package, so the driver can move to
PyMongo's async API by changing these files only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from bson.errors import InvalidDocument, InvalidStringData
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import ASCENDING, DESCENDING, IndexModel, WriteConcern
from pymongo.collation import Collation
from pymongo.errors import (
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WTimeoutError,
)

from reconciler.errors import FatalError, RetriableError, UnencodableError
from reconciler.objects import COMPANIES, PEOPLE

log = structlog.get_logger(__name__)

# Case-insensitive comparison for email / domain matching (index and query must agree).
CASE_INSENSITIVE = Collation(locale="en", strength=2)
# The one write concern of every write the store makes (records, sync logs, outbox, offsets,
# leases): journaled majority, so data survives a failover at least as well as the offsets that
# point past it. Set on the database handle, so a `w=1` URI cannot weaken it.
DURABLE = WriteConcern(w="majority", j=True)
# Record writes of a batch that ends with a DURABLE write (`bulk_apply(journaled=False)`): a
# journaled acknowledgement covers every earlier write of the node, so the batch is as durable
# as DURABLE once its closing write is acknowledged; the records skip a journal sync per statement.
MAJORITY = WriteConcern(w="majority")

# Server error codes that mean "try again" (NotWritablePrimary, ShutdownInProgress, ...).
_RETRIABLE_CODES = {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}


@contextmanager
def translate_errors(operation: str) -> Iterator[None]:
    """Turn driver errors into `RetriableError` / `FatalError` / `UnencodableError` (a value BSON
    cannot hold: skippable); nothing above this sees pymongo or bson."""
    try:
        yield
    except (InvalidDocument, InvalidStringData, OverflowError) as exc:
        # the driver cannot encode what it was given (DocumentTooLarge is an InvalidDocument)
        raise UnencodableError(f"MongoDB {operation}: cannot encode: {type(exc).__name__}: {exc}") from exc
    except (ConnectionFailure, ExecutionTimeout, WTimeoutError) as exc:
        # ConnectionFailure covers AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError
        raise RetriableError(f"MongoDB unavailable during {operation}: {type(exc).__name__}") from exc
    except OperationFailure as exc:
        if exc.code in _RETRIABLE_CODES or exc.has_error_label("RetryableWriteError"):
            raise RetriableError(f"MongoDB {operation} failed (code {exc.code}), retrying") from exc
        raise FatalError(f"MongoDB {operation} failed (code {exc.code}): {exc}") from exc
    except PyMongoError as exc:
        if exc.has_error_label("RetryableWriteError") or exc.has_error_label("TransientTransactionError"):
            raise RetriableError(f"MongoDB {operation} failed, retrying") from exc
        raise FatalError(f"MongoDB {operation} failed: {type(exc).__name__}") from exc


class Connection:
    """Owns the client and the database handle (`db` is for the store's own modules only).
    Every collection taken from `db` writes with `DURABLE`."""

    def __init__(self, client: Any, db: Any, *, sync_log_retention_days: int = 30) -> None:
        self.client = client
        self.db = db.with_options(write_concern=DURABLE)
        self.sync_log_retention_days = sync_log_retention_days

    @classmethod
    async def connect(
        cls, uri: str, database: str, *, sync_log_retention_days: int = 30,
        server_selection_timeout_ms: int = 10_000,
    ) -> Any:
        # tz_aware: every datetime read back is UTC-aware, comparable with the ones we write
        client: Any = AsyncIOMotorClient(
            uri, tz_aware=True, serverSelectionTimeoutMS=server_selection_timeout_ms,
            appname="salesforce-sync",
        )
        return cls(client, client[database], sync_log_retention_days=sync_log_retention_days)

    async def ping(self) -> None:
        with translate_errors("ping"):
            await self.db.command("ping")

    async def close(self) -> None:
        self.client.close()

    async def ensure_indexes(self) -> None:
        ttl = self.sync_log_retention_days * 86_400
        with translate_errors("ensure_indexes"):
            for name, match_field in ((PEOPLE, "email"), (COMPANIES, "domain")):
                await self.db[name].create_indexes([
                    # sparse rather than partial ({crm.id: {$exists: true}}): the same rule for
                    # a single field, and usable by SecantusDB's planner for `$in` lookups
                    IndexModel([("crm.id", ASCENDING)], name="crm_id", unique=True, sparse=True),
                    IndexModel([("crm.converted_from", ASCENDING)], name="crm_converted_from",
                               sparse=True),
                    IndexModel([(match_field, ASCENDING)], name=f"{match_field}_ci",
                               collation=CASE_INSENSITIVE),
                    # No `updated_at` index here: every write changes `updated_at`, so the index
                    # costs each write; the watcher creates (updated_at, _id) only when it falls
                    # back to polling (no change streams).
                ])
            await self._ensure_ttl(ttl)
            await self.db.sync_logs.create_indexes([
                IndexModel([("ts", DESCENDING), ("_id", DESCENDING)], name="ts_id"),
                IndexModel([("status", ASCENDING), ("ts", DESCENDING)], name="status_ts"),
                IndexModel([("sf_id", ASCENDING)], name="sf_id"),
                IndexModel([("local_id", ASCENDING)], name="local_id"),
            ])
        log.info("indexes_ensured", database=self.db.name)

    async def _ensure_ttl(self, seconds: int) -> None:
        """The sync-log TTL index; a changed retention is applied with collMod, not a rebuild."""
        try:
            await self.db.sync_logs.create_index("ts", name="ts_ttl", expireAfterSeconds=seconds)
        except OperationFailure as exc:
            if exc.code not in (85, 86):  # IndexOptionsConflict / IndexKeySpecsConflict
                raise
            await self.db.command({
                "collMod": "sync_logs", "index": {"name": "ts_ttl", "expireAfterSeconds": seconds},
            })
