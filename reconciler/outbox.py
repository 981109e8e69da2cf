"""The durable outbox: where writes to Salesforce wait until the flusher sends them.

`Outbox.enqueue` is `reconciler.ports.OutboundQueue`: every producer (the local-change watcher,
merges, retries) puts its writes here, and returns only once they are durable (journaled
majority), so a caller may then advance its own offset. Writes to one record coalesce into one
pending write (latest value per field wins). Blank values never enter the outbox.

With `fence` (the leader term's fence provider, `service.term.LeaderTerm.fence`), claims are
the term's: refused once it is over, and a new term takes an older term's update claims over at
its first `recover_expired` instead of waiting out their lease; creates wait for it, a stalled
create call may still land (`reconciler.store`'s outbox).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import structlog

from reconciler.errors import FencedError
from reconciler.ports import OutboundWrite, SentValues
from reconciler.records import is_blank
from reconciler.store import Fence, OutboxCollection, OutboxEntry, OutboxGroup

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]

# Salesforce keeps a deleted record in its recycle bin 15 days at most, then deletes it for good
RECYCLE_BIN = timedelta(days=15)


def utcnow() -> datetime:
    return datetime.now(UTC)


def without_blanks(write: OutboundWrite) -> OutboundWrite:
    """The write minus blank values: data always wins over a blank, so blanks are never sent."""
    fields = {name: value for name, value in write.fields.items() if not is_blank(value)}
    return write if len(fields) == len(write.fields) else replace(write, fields=fields)


class Outbox:
    """`OutboundQueue` over the `outbox` collection, plus what the flusher needs to drain it."""

    def __init__(self, collection: OutboxCollection, *, clock: Clock = utcnow,
                 lease: timedelta = timedelta(minutes=2),
                 fence: Callable[[], Fence | None] | None = None) -> None:
        self._collection = collection
        self._fence = fence
        self._clock = clock
        self.lease = lease
        self._indexed = False

    async def ensure_indexes(self) -> None:
        """Coalescing rests on the unique pending-key index: made once, before the first write."""
        if not self._indexed:
            await self._collection.ensure_indexes()
            self._indexed = True

    async def enqueue(self, writes: Sequence[OutboundWrite]) -> None:
        cleaned = [without_blanks(w) for w in writes]
        # An update with nothing left to send is no write; a create still links the record.
        kept = [w for w in cleaned if w.fields or w.sf_id is None]
        if kept:
            await self.ensure_indexes()
            await self._collection.add(kept, self._clock())
            for write in kept:  # what queued each write, and what it carries (names, not values)
                log.info("outbox_write_queued", sobject=write.sobject, sf_id=write.sf_id,
                         local_id=str(write.local_id), reason=write.reason, origin=write.origin,
                         fields=sorted(write.fields), attempt=write.attempt)

    async def hold(self, entries: Sequence[OutboxEntry]) -> None:
        """Their documents' records are deleted in Salesforce: no call until an undelete is read
        (`release_held`), as the watcher holds an edit made while a record is deleted."""
        await self._collection.give_up(entries, held_at=self._clock())

    async def held_past_recycle_bin(self) -> list[OutboxEntry]:
        """Held writes whose record has left Salesforce's recycle bin: it was deleted before it
        was held, and stays there 15 days at most, so no undelete can release them now."""
        return await self._collection.held_since(self._clock() - RECYCLE_BIN)

    async def drop_held(self, entries: Sequence[OutboxEntry]) -> None:
        await self._collection.drop_held(entries)

    async def release_held(self, records: Collection[tuple[str, str]]) -> None:
        await self._collection.release_held(records, self._clock())

    async def sent_values(self, records: Collection[tuple[str, str]]) -> SentValues:
        return await self._collection.sent_values(records)

    async def due_groups(self) -> list[OutboxGroup]:
        return await self._collection.due_groups(self._clock())

    async def claim(self, sobject: str, kind: str, limit: int, *,
                    sf_offset: timedelta = timedelta(0)) -> list[OutboxEntry]:
        return await self._collection.claim(sobject, kind, now=self._clock(), lease=self.lease,
                                            limit=limit, fence=self._term(), sf_offset=sf_offset)

    async def done(self, entries: Sequence[OutboxEntry]) -> None:
        """Sent (or logged as failed, which is what gets retried): drop them."""
        await self._collection.remove(entries)

    async def retry_later(self, entries: Sequence[OutboxEntry], delay: timedelta, *,
                          count_attempt: bool = True, error: str | None = None) -> None:
        await self._collection.release(entries, next_attempt_at=self._clock() + delay,
                                       count_attempt=count_attempt, error=error)

    async def give_up(self, entries: Sequence[OutboxEntry]) -> None:
        """Failed too often (their failed logs are written): no more calls until a retry."""
        await self._collection.give_up(entries)

    async def recover_expired(self) -> int:
        term = self._term()
        recovered = await self._collection.recover_expired(
            self._clock(), term=term.term if term is not None else None)
        if recovered:
            log.warning("outbox_leases_expired", writes=recovered)
        return recovered

    def fence(self) -> Fence | None:
        """The running term's fence (None without terms); `FencedError` between terms."""
        return self._term()

    def _term(self) -> Fence | None:
        """The running term's fence; `FencedError` when fenced and between terms."""
        if self._fence is None:
            return None
        term = self._fence()
        if term is None:
            raise FencedError("outbox: no leader term to claim for")
        return term

    async def created(self, collection: str, local_id: object, sobject: str, sf_id: str) -> None:
        """Edits queued while the create was in flight become updates of the new record."""
        await self._collection.rekey_created(collection, local_id, sobject, sf_id)

    async def depth(self) -> int:
        return await self._collection.depth()

    async def pending(self) -> list[OutboxEntry]:
        return await self._collection.pending()
