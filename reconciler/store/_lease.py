"""A leader lease in `sync_state`: several replicas on one MongoDB, exactly one syncing.

The lease is one document, `_id: "lease:<name>"`, `owner`, `term`, `expires_at`, `renewed_at`. Acquire and
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

Terms and fencing: each acquisition (by a new owner, or by the same owner after its hold ran
out) increments `term`. `Lease.fence()` is the current term's `Fence`; the store's writes that
take `fence=` are refused with `FencedError` once another term holds the lease (see
`reconciler.store` for what each write guarantees). A stalled ex-leader therefore cannot move an
offset after the new leader started, however long it was stopped.
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

from reconciler.errors import FencedError
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
class Fence:
    """One leader term: the lease `name`, its `owner`, and the term number the lease document
    held when this owner acquired it. Writes made with it are refused once another term holds it."""

    lease: str
    owner: str
    term: int


@dataclass(frozen=True)
class LeaseHolder:
    owner: str
    expires_at: datetime
    renewed_at: datetime | None
    term: int = 0


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
        self.name = name
        self._renewed_at: float | None = None  # monotonic, when the last successful renewal was sent
        self._term: int | None = None          # the term this owner holds (None: not holding)

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

    def fence(self) -> Fence | None:
        """The current term's fence, None when not held. Pass it to every write made for the term."""
        if self._term is None or not self.held():
            return None
        return Fence(self.name, self.owner, self._term)

    async def acquire(self) -> bool:
        """Take the lease if it is free or expired, renew it if it is ours; True when we hold it.
        A MongoDB failure raises RetriableError and leaves `held()` to run out on its own.

        Taking it (not held a moment ago, whoever held it before) starts a new term: the term
        number goes up by one and every offset in `sync_state` is stamped with it before this
        returns, so a write of an older term is refused by the offset document itself."""
        sent = self._monotonic()
        now = self._clock()
        renewing = self._term is not None and self.held()
        expires_at = now + timedelta(seconds=self.ttl)
        if renewing:
            query: dict[str, Any] = {"_id": self.key, "owner": self.owner, "term": self._term}
            update: Any = {"$set": {"expires_at": expires_at, "renewed_at": now}}
        else:
            query = {"_id": self.key, "$or": [{"expires_at": {"$lte": now}}, {"owner": self.owner}]}
            update = [{"$set": {"owner": {"$literal": self.owner}, "expires_at": expires_at,
                                "renewed_at": now, "term": {"$add": [{"$ifNull": ["$term", 0]}, 1]}}}]
        with translate_errors("lease.acquire"):
            try:
                doc = await self._coll.find_one_and_update(
                    query, update, upsert=True, return_document=ReturnDocument.AFTER)
            except DuplicateKeyError:
                doc = None  # the upsert lost the race: another owner holds an unexpired lease
        if doc is None or doc.get("owner") != self.owner:
            self._renewed_at, self._term = None, None
            return False
        if not renewing:
            self._term = None
            await stamp_offsets(self._coll, self.name, int(doc["term"]))
            log.info("lease_term_started", lease=self.name, owner=self.owner, term=int(doc["term"]))
        self._term = int(doc["term"])
        self._renewed_at = sent
        return True

    async def release(self) -> bool:
        """Hand the lease back (clean shutdown): expire it now, only if it is still ours."""
        self._renewed_at, self._term = None, None
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
        return LeaseHolder(str(doc["owner"]), doc["expires_at"], doc.get("renewed_at"),
                           int(doc.get("term") or 0))


def term_field(lease: str) -> str:
    """Where an offset document keeps the newest term of `lease` that wrote (or stamped) it."""
    return f"terms.{lease}"


def not_newer_than(lease: str, term: int) -> dict[str, Any]:
    """Filter: the document was not written (or stamped) by a term of `lease` newer than `term`."""
    return {term_field(lease): {"$not": {"$gt": term}}}


async def stamp_offsets(coll: Any, lease: str, term: int) -> None:
    """Mark every offset document (everything in `sync_state` with a `value`) as belonging to
    `term` from now on: older terms' fenced writes to them no longer match."""
    with translate_errors("lease.stamp_offsets"):
        await coll.update_many({"value": {"$exists": True}, **not_newer_than(lease, term)},
                               {"$set": {term_field(lease): term}})


async def check_fence(db: Any, fence: Fence) -> None:
    """Raise `FencedError` unless the lease document still names this fence's owner and term.
    (Expiry alone does not end a term: until someone else takes the lease, no other term writes.)"""
    with translate_errors("lease.check_fence"):
        doc = await db.sync_state.find_one({"_id": lease_key(fence.lease)}, {"owner": 1, "term": 1})
    if doc is None or doc.get("owner") != fence.owner or doc.get("term") != fence.term:
        now = (doc.get("owner"), doc.get("term")) if doc else (None, None)
        raise FencedError(f"lease {fence.lease}: term {fence.term} of {fence.owner} is over "
                          f"(held by {now[0]}, term {now[1]})")


class LeaseMixin:
    db: Any

    def lease(self, name: str, *, owner: str | None = None, ttl: float = 30.0,
              clock: Callable[[], datetime] = utcnow) -> Lease:
        """The lease `name` for `owner` (a fresh hostname-pid-random id when None)."""
        return Lease(self.db, name, owner=owner, ttl=ttl, clock=clock)
