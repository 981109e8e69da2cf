"""A leader lease in `sync_state`: several replicas on one MongoDB, exactly one syncing.

The lease is one document, `_id: "lease:<name>"`, `owner`, `expires_at`, `renewed_at`. Acquire and
renew are the same single `find_one_and_update` whose filter is "expired or mine" (upsert): when
another owner holds an unexpired lease the filter matches nothing, the upsert tries to insert the
same `_id`, and the DuplicateKeyError says "someone else has it". Writes are journaled majority,
so a lease survives a failover of the MongoDB primary.

Clocks: `expires_at` is the writer's UTC clock + TTL, and a standby compares it with its own UTC
clock. That assumes the replicas' clocks differ by less than TTL/3 (NTP keeps them within
milliseconds). The holder itself judges "do I still hold it" on its monotonic clock, from the
moment it *sent* its last successful renewal (`still_held`): it stops syncing once TTL/2 has
passed without one, which leaves TTL/3 for skew and TTL/6 to stop before a standby can see the
lease expired.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from reconciler.store._client import DURABLE, translate_errors
from reconciler.store.state_keys import lease_key
from reconciler.sync_logs import utcnow

log = structlog.get_logger(__name__)

# The holder gives up after this share of the TTL without a successful renewal (see docstring).
HOLD_FRACTION = 0.5
# ... and renews this often, so two renewals can fail before it gives up.
RENEW_FRACTION = 1 / 3


def still_held(renewed_at: float | None, now: float, ttl: float) -> bool:
    """Whether a holder whose last successful renewal was *sent* at `renewed_at` (monotonic
    seconds; None = never) may still act as leader at `now`: strictly less than TTL/2 ago."""
    if renewed_at is None or now < renewed_at:
        return False
    return now - renewed_at < ttl * HOLD_FRACTION


def new_owner_id() -> str:
    """hostname-pid-random: unique per process life, readable in logs and `/api/status`."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class LeaseHolder:
    owner: str
    expires_at: datetime
    renewed_at: datetime | None


class Lease:
    """One named lease as seen by one owner. `acquire()` both takes and renews it."""

    def __init__(self, db: Any, name: str, *, owner: str | None = None, ttl: float = 30.0,
                 clock: Callable[[], datetime] = utcnow,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._coll = db.get_collection("sync_state", write_concern=DURABLE)
        self.key = lease_key(name)
        self.owner = owner or new_owner_id()
        self.ttl = ttl
        self._clock = clock
        self._monotonic = monotonic
        self._renewed_at: float | None = None  # monotonic, when the last successful renewal was sent

    @property
    def renew_every(self) -> float:
        return self.ttl * RENEW_FRACTION

    def held(self) -> bool:
        """Whether this owner may act as leader now (its own clock only, no MongoDB call)."""
        return still_held(self._renewed_at, self._monotonic(), self.ttl)

    def seconds_left(self) -> float:
        """How long this owner may still act as leader without another successful renewal."""
        if self._renewed_at is None:
            return 0.0
        return max(0.0, self._renewed_at + self.ttl * HOLD_FRACTION - self._monotonic())

    async def acquire(self) -> bool:
        """Take the lease if it is free or expired, renew it if it is ours; True when we hold it.
        A MongoDB failure raises RetriableError and leaves `held()` to run out on its own."""
        sent = self._monotonic()
        now = self._clock()
        query = {"_id": self.key, "$or": [{"expires_at": {"$lte": now}}, {"owner": self.owner}]}
        update = {"$set": {"owner": self.owner, "expires_at": now + timedelta(seconds=self.ttl),
                           "renewed_at": now}}
        with translate_errors("lease.acquire"):
            try:
                doc = await self._coll.find_one_and_update(
                    query, update, upsert=True, return_document=ReturnDocument.AFTER)
            except DuplicateKeyError:
                doc = None  # the upsert lost the race: another owner holds an unexpired lease
        if doc is None or doc.get("owner") != self.owner:
            self._renewed_at = None
            return False
        self._renewed_at = sent
        return True

    async def release(self) -> bool:
        """Hand the lease back (clean shutdown): expire it now, only if it is still ours."""
        self._renewed_at = None
        with translate_errors("lease.release"):
            result = await self._coll.update_one(
                {"_id": self.key, "owner": self.owner}, {"$set": {"expires_at": self._clock()}})
        return bool(result.modified_count)

    async def holder(self) -> LeaseHolder | None:
        """Who holds the lease now (None when nobody does or it has expired)."""
        with translate_errors("lease.holder"):
            doc = await self._coll.find_one({"_id": self.key})
        if doc is None or doc["expires_at"] <= self._clock():
            return None
        return LeaseHolder(str(doc["owner"]), doc["expires_at"], doc.get("renewed_at"))


class LeaseMixin:
    db: Any

    def lease(self, name: str, *, owner: str | None = None, ttl: float = 30.0,
              clock: Callable[[], datetime] = utcnow) -> Lease:
        """The lease `name` for `owner` (a fresh hostname-pid-random id when None)."""
        return Lease(self.db, name, owner=owner, ttl=ttl, clock=clock)
