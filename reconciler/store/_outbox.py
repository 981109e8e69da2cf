"""The durable outbox (collection `outbox`): pending writes to Salesforce, coalesced per record.

One pending document per record (`key`, unique among `pending` documents): a burst of edits to
one record merges into one write, the latest value of each field winning. A flusher claims a
batch by moving documents to `inflight` under a lease (an id only it knows, and an expiry), so
several replicas never send the same write; documents a crashed process left `inflight` return
to `pending` once their lease expires. A claim made for a leader term (`fence`) first checks the
term still holds the lease and carries its number (`term`): a newer term returns an older term's
update claims to `pending` at once (`recover_expired(now, term=...)`), without waiting out their
lease (its creates wait for it: a stalled create call may still land), and the older term,
fenced, claims nothing more.

Returning a document to `pending` when a newer pending document for the same record exists
merges the two (the newer values win) instead of breaking the unique key.

Every counted attempt (a whole-call failure the flusher releases, or an expired claim) adds
one to `attempt` and to `failures` and records `last_error`; the flusher parks a document whose
`failures` reached its cap as `failed` (`give_up`). A retry re-queues the record (`add` with
attempt > 0) and folds the parked document in, keeping its `first_sent_at`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError

from reconciler.errors import RetriableError
from reconciler.ports import OutboundWrite
from reconciler.store._client import DURABLE, translate_errors
from reconciler.store._lease import Fence, check_fence
from reconciler.store._outbox_entry import (
    CREATE,
    FAILED,
    HELD,
    INFLIGHT,
    LEASE_EXPIRED,
    OUTBOX,
    PENDING,
    UPDATE,
    OutboxEntry,
    coalescing_key,
    record_key,
)
from reconciler.store._outbox_views import OutboxViews

_DUPLICATE_KEY = 11000

class OutboxCollection(OutboxViews):
    """The `outbox` collection. Takes a motor database."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self._coll = db[OUTBOX].with_options(write_concern=DURABLE)

    async def ensure_indexes(self) -> None:
        with translate_errors("outbox.ensure_indexes"):
            await self._coll.create_index(
                [("key", ASCENDING)], unique=True, name="pending_key",
                partialFilterExpression={"status": PENDING},
            )
            await self._coll.create_index(
                [("status", ASCENDING), ("sobject", ASCENDING), ("kind", ASCENDING),
                 ("next_attempt_at", ASCENDING)], name="due",
            )
            await self._coll.create_index([("lease", ASCENDING)], name="lease", sparse=True)
            # a record's writes in any status (`sent_values`, given-up writes a retry absorbs):
            # 67 ms for 200 records among 5,000 queued writes, 2.4 s scanning them (SecantusDB)
            await self._coll.create_index([("key", ASCENDING), ("status", ASCENDING)], name="key_status")

    async def add(self, writes: Sequence[OutboundWrite], now: datetime) -> None:
        """Upsert each write into its record's pending document (journaled majority)."""
        ops = [_upsert(write, now) for write in writes]
        start, races = 0, 0
        while start < len(ops):
            if races > len(ops) + 2:
                raise RetriableError("outbox.add: upserts keep racing on the pending key")
            races += 1
            with translate_errors("outbox.add"):
                try:
                    await self._coll.bulk_write(ops[start:], ordered=True)
                    break
                except BulkWriteError as exc:
                    failed_at = _duplicate_index(exc)
                    if failed_at is None:
                        raise
            # Two upserts raced for one record: the other's insert is in, so from the failed
            # operation on, every upsert finds the pending document.
            start += failed_at
        retried = [coalescing_key(w) for w in writes if w.attempt > 0]
        if retried:
            await self._absorb_given_up(retried)

    async def _absorb_given_up(self, keys: Sequence[str]) -> None:
        """A retry re-queued these records: the writes given up for them fold into the new
        pending ones (their first send is kept: a lost create is still looked for from it)."""
        with translate_errors("outbox.absorb"):
            parked = await self._coll.find({"key": {"$in": list(keys)}, "status": FAILED}).to_list(None)
        for doc in parked:
            await self._merge_into_pending(doc, doc["key"])

    async def give_up(self, entries: Sequence[OutboxEntry], *, held_at: datetime | None = None) -> None:
        """Park claimed writes, never claimed again: `FAILED` until a retry re-queues them; with
        `held_at`, `HELD` until their record is undeleted (`release_held`)."""
        if not entries:
            return
        parked = {"status": FAILED} if held_at is None else {"status": HELD, "held_at": held_at}
        with translate_errors("outbox.give_up"):
            await self._coll.update_many(
                {"_id": {"$in": [e.id for e in entries]}, "lease": entries[0].lease},
                {"$set": parked, "$unset": {"lease": "", "lease_until": "", "term": ""}})
        if held_at is not None:
            await _fold_held(self._coll, {e.key for e in entries})

    async def held_since(self, before: datetime) -> list[OutboxEntry]:
        """Held writes last held before `before` (those held before `held_at` was stamped: last
        queued before it)."""
        stale = {"status": HELD, "$or": [{"held_at": {"$lt": before}},
                                         {"held_at": {"$exists": False}, "updated_at": {"$lt": before}}]}
        with translate_errors("outbox.held_since"):
            docs = await self._coll.find(stale).to_list(None)
        return [OutboxEntry.from_document(d) for d in docs]

    async def drop_held(self, entries: Sequence[OutboxEntry]) -> None:
        """Remove these held writes, unless an undelete released them meanwhile."""
        with translate_errors("outbox.drop_held"):
            await self._coll.delete_many({"_id": {"$in": [e.id for e in entries]}, "status": HELD})

    async def release_held(self, records: Collection[tuple[str, str]], now: datetime) -> None:
        """The held writes of these (object, id) records are due again (folded into a pending one)."""
        keys = [record_key(sobject, sf_id) for sobject, sf_id in records]
        with translate_errors("outbox.release_held"):
            # newest first: each older one folds into the pending write under its values (a
            # document is queued only after the one before it was claimed: `enqueued_at` orders them)
            held = await self._coll.find({"key": {"$in": keys}, "status": HELD}, {"_id": 1}).sort(
                [("enqueued_at", DESCENDING), ("_id", DESCENDING)]).to_list(None)
        for doc in held:
            await self._to_pending(doc["_id"], None, now, 0)

    async def claim(self, sobject: str, kind: str, *, now: datetime, lease: timedelta, limit: int,
                    fence: Fence | None = None, sf_offset: timedelta = timedelta(0)) -> list[OutboxEntry]:
        """Move up to `limit` due pending writes to `inflight` under a fresh lease, oldest first.
        The first claim stamps `first_sent_at` and `first_sent_sf_at` (+ `sf_offset`, Salesforce's
        clock as known now): a lost create's record cannot be older. With `fence`: `FencedError`
        once the term is over; the claim carries the term's number."""
        if fence is not None:
            await check_fence(self._db, fence)
        token = str(ObjectId())
        claimed: dict[str, Any] = {"status": INFLIGHT, "lease": token, "lease_until": now + lease,
                                   **({"term": fence.term} if fence is not None else {})}
        due = {"status": PENDING, "sobject": sobject, "kind": kind, "next_attempt_at": {"$lte": now}}
        with translate_errors("outbox.claim"):
            found = await self._coll.find(due, {"_id": 1, "key": 1}).sort(
                [("enqueued_at", ASCENDING), ("_id", ASCENDING)]).limit(limit).to_list(None)
            if kind == CREATE:
                found = await _no_create_in_flight(self._coll, found)
            ids = [d["_id"] for d in found]
            if not ids:
                return []
            # The status filter makes each claim atomic (a replica that lost the race claims fewer).
            # `claims`: what each claim sent (an answer lost, any may be read back later as this
            # write's own; `claims_before`: the earlier ones, for this claim's reader). Not the
            # latest per field: a recovered create's claim carries a coalesced edit (seed 11376 Q4)
            await self._coll.update_many({"_id": {"$in": ids}, "status": PENDING}, [{"$set": {
                **{name: {"$literal": value} for name, value in claimed.items()},
                "first_sent_at": {"$min": ["$first_sent_at", {"$literal": now}]},
                "first_sent_sf_at": {"$min": ["$first_sent_sf_at", {"$literal": now + sf_offset}]},
                "claims_before": {"$ifNull": ["$claims", []]},
                "claims": {"$concatArrays": [{"$ifNull": ["$claims", []]}, ["$fields"]]}}}])
            docs = await self._coll.find({"lease": token}).to_list(None)
        order = {doc_id: i for i, doc_id in enumerate(ids)}
        docs.sort(key=lambda d: order[d["_id"]])
        return [OutboxEntry.from_document(d) for d in docs]

    async def remove(self, entries: Sequence[OutboxEntry]) -> None:
        """Drop writes that are done (sent, or logged as failed), if still under our lease."""
        if not entries:
            return
        with translate_errors("outbox.remove"):
            await self._coll.delete_many(
                {"_id": {"$in": [e.id for e in entries]}, "lease": entries[0].lease})

    async def release(self, entries: Sequence[OutboxEntry], *, next_attempt_at: datetime,
                      count_attempt: bool, error: str | None = None) -> None:
        """Return claimed writes to `pending`, due at `next_attempt_at`; a counted attempt is
        also a failure (`failures`, `last_error`: what the give-up cap counts)."""
        for entry in entries:
            await self._to_pending(entry.id, entry.lease, next_attempt_at, 1 if count_attempt else 0,
                                   error if count_attempt else None)

    async def recover_expired(self, now: datetime, *, term: int | None = None) -> int:
        """Return writes whose lease expired (their process died) to `pending`, and with `term`
        the updates claimed by an older term (its leader is fenced: dead or stalled); how many.
        An older term's creates wait for their lease: its leader may have checked its term and
        stalled before the call left, which can land any time (chaos seed 35107, P3: taken back
        at once, the create was looked for 5 ms before the stalled one landed, and sent again).
        An update sent twice writes the same values; a create sent twice is two records."""
        dead: list[dict[str, Any]] = [{"lease_until": {"$lt": now}}]
        if term is not None:
            dead.append({"term": {"$lt": term}, "kind": {"$ne": CREATE}})
        with translate_errors("outbox.recover_expired"):
            expired = await self._coll.find(
                {"status": INFLIGHT, "$or": dead}, {"_id": 1, "lease": 1}).to_list(None)
        for doc in expired:
            # Counted as an attempt: the dead process may have sent it, so a create is checked
            # against Salesforce before it is sent again (see reconciler/outbound.py).
            await self._to_pending(doc["_id"], doc["lease"], now, 1, LEASE_EXPIRED)
        return len(expired)

    async def rekey_created(self, collection: str, local_id: Any, sobject: str, sf_id: str) -> None:
        """A create succeeded: edits queued meanwhile under the local key become updates."""
        with translate_errors("outbox.rekey_created"):
            doc = await self._coll.find_one(
                {"key": f"local:{collection}:{local_id}", "status": PENDING})
        if doc is None:
            return
        sf_key = record_key(sobject, sf_id)
        change = {"key": sf_key, "sf_id": sf_id, "sobject": sobject, "kind": UPDATE}
        with translate_errors("outbox.rekey_created"):
            try:
                await self._coll.update_one({"_id": doc["_id"], "status": PENDING}, {"$set": change})
                return
            except DuplicateKeyError:
                pass
        await self._merge_into_pending(doc, sf_key)

    async def _to_pending(self, entry_id: ObjectId, lease: str | None, due: datetime,
                          add_attempt: int, error: str | None = None) -> None:
        fields: dict[str, Any] = {"status": PENDING, "next_attempt_at": due}
        if error is not None:
            fields["last_error"] = error
        update = {"$set": fields, "$unset": {"lease": "", "lease_until": "", "term": "", "held_at": ""},
                  "$inc": {"attempt": add_attempt, "failures": add_attempt}}
        with translate_errors("outbox.release"):
            try:
                await self._coll.update_one({"_id": entry_id, "lease": lease}, update)
                return
            except DuplicateKeyError:
                doc = await self._coll.find_one({"_id": entry_id, "lease": lease})
        if doc is not None:
            # the failed send counts in the merged write: a create whose answer was lost is
            # looked for before it is sent again (chaos seed 16180, P12: created twice)
            counted = int(doc.get("attempt", 0)) + add_attempt, int(doc.get("failures", 0)) + add_attempt
            await self._merge_into_pending({**doc, "attempt": counted[0], "failures": counted[1]}, doc["key"])

    async def _merge_into_pending(self, older: dict[str, Any], key: str) -> None:
        await _merge_into(self._coll, older, {"key": key, "status": PENDING})


async def _merge_into(coll: Any, older: dict[str, Any], target: dict[str, Any]) -> None:
    """Fold an older document into the one `target` finds (its values win), then drop it.
    A given-up document's failures are not carried: the retry that re-queued it starts over."""
    failures = 0 if older.get("status") == FAILED else int(older.get("failures", 0))
    claims = {"$concatArrays": [{"$ifNull": ["$claims", []]}, {"$literal": older.get("claims") or []}]}
    merged = [{"$set": {
        "failures": {"$max": [{"$literal": failures}, {"$ifNull": ["$failures", 0]}]},
        "fields": {"$mergeObjects": [{"$literal": older.get("fields") or {}}, "$fields"]},
        "enqueued_at": {"$min": [{"$literal": older["enqueued_at"]}, "$enqueued_at"]},
        "attempt": {"$max": [{"$literal": int(older.get("attempt", 0))}, "$attempt"]},
        "first_sent_at": _earliest("first_sent_at", older.get("first_sent_at")),
        "first_sent_sf_at": _earliest("first_sent_sf_at", older.get("first_sent_sf_at")),
        "claims": claims,
    }}]
    with translate_errors("outbox.merge"):
        result = await coll.update_one(target, merged)
        if result.matched_count:
            await coll.delete_one({"_id": older["_id"]})


async def _fold_held(coll: Any, keys: Collection[str]) -> None:
    """One held document per record: an edit held while its record stays deleted folds into
    the newest (its values win), so a record never undeleted leaves one, not one per edit."""
    with translate_errors("outbox.give_up"):
        held = await coll.find({"key": {"$in": list(keys)}, "status": HELD}).sort(
            [("enqueued_at", DESCENDING), ("_id", DESCENDING)]).to_list(None)
    newest: dict[str, Any] = {}
    for doc in held:
        if doc["key"] in newest:
            await _merge_into(coll, doc, {"_id": newest[doc["key"]]})
        else:
            newest[doc["key"]] = doc["_id"]


def _earliest(name: str, first_sent: datetime | None) -> Any:
    """Pipeline expression: the earlier of the document's `name` and `first_sent`."""
    if first_sent is None:
        return f"${name}"
    return {"$ifNull": [{"$min": [{"$literal": first_sent}, f"${name}"]}, {"$literal": first_sent}]}


async def _no_create_in_flight(coll: Any, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Creates whose document has no create in flight: one claimed by an older term may still
    land (`recover_expired`), so the next waits for it to be settled or taken back, merged with
    it, and looked for (chaos seed 35107, P3: a second create sent beside a stalled one)."""
    with translate_errors("outbox.claim"):
        busy = {d["key"] for d in await coll.find(
            {"key": {"$in": [d["key"] for d in found]}, "status": INFLIGHT}, {"key": 1}).to_list(None)}
    return [d for d in found if d["key"] not in busy]


def _upsert(write: OutboundWrite, now: datetime) -> UpdateOne:
    kind = UPDATE if write.sf_id else CREATE
    fields = {f"fields.{name}": value for name, value in write.fields.items()}
    on_insert = {"kind": kind, "sobject": write.sobject, "sf_id": write.sf_id,
                 "collection": write.collection, "local_id": write.local_id, "enqueued_at": now}
    update: dict[str, Any] = {"$set": {**fields, "reason": write.reason, "updated_at": now},
                              "$setOnInsert": on_insert, "$max": {"attempt": write.attempt}}
    if write.attempt > 0:
        # a retry (admin or auto) asked for a send now: it cuts short the backoff of the
        # record's pending write it lands on (an edit does not)
        update["$min"] = {"next_attempt_at": now}
    else:
        on_insert["next_attempt_at"] = now
    return UpdateOne({"key": coalescing_key(write), "status": PENDING}, update, upsert=True)


def _duplicate_index(exc: BulkWriteError) -> int | None:
    """The index of the first failed operation, when it failed on the pending-key index."""
    errors = exc.details.get("writeErrors") or []
    if errors and errors[0].get("code") == _DUPLICATE_KEY:
        return int(errors[0]["index"])
    return None
