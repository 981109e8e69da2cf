"""What the outbox holds, read without changing it: the due groups the flusher drains, what
claims sent (an inbound read's own values), the depth and the pending writes."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from pymongo import ASCENDING

from reconciler.ports import SentValues
from reconciler.store._client import translate_errors
from reconciler.store._outbox_entry import (
    INFLIGHT,
    PENDING,
    OutboxEntry,
    OutboxGroup,
    aware,
    claimed_values,
    record_key,
)


class OutboxViews:
    """The read side of `OutboxCollection` (its `_coll`)."""

    _coll: Any

    async def due_groups(self, now: datetime) -> list[OutboxGroup]:
        pipeline = [
            {"$match": {"status": PENDING, "next_attempt_at": {"$lte": now}}},
            {"$group": {"_id": {"sobject": "$sobject", "kind": "$kind"},
                        "count": {"$sum": 1}, "oldest": {"$min": "$enqueued_at"}}},
        ]
        with translate_errors("outbox.due_groups"):
            rows = await self._coll.aggregate(pipeline).to_list(None)
        groups = [OutboxGroup(r["_id"]["sobject"], r["_id"]["kind"], int(r["count"]), aware(r["oldest"]))
                  for r in rows]
        return sorted(groups, key=lambda g: (g.oldest, g.sobject, g.kind))

    async def sent_values(self, records: Collection[tuple[str, str]]) -> SentValues:
        """Per (object, Salesforce id): every value any claim of the record's writes sent, per
        field, pending, in flight or given up (an answer lost or not in yet: any may be in
        Salesforce now)."""
        keys = {record_key(sobject, sf_id): (sobject, sf_id) for sobject, sf_id in records}
        if not keys:
            return {}
        with translate_errors("outbox.sent_values"):
            docs = await self._coll.find({"key": {"$in": sorted(keys)}, "claims.0": {"$exists": True}},
                                         {"key": 1, "claims": 1}).to_list(None)
        claims: dict[tuple[str, str], list[Any]] = {}  # a record's pending and in-flight writes
        for doc in docs:
            claims.setdefault(keys[doc["key"]], []).extend(doc["claims"])
        return {record: claimed_values(sent) for record, sent in claims.items()}

    async def depth(self) -> int:
        """Writes waiting or in flight (given-up writes are not queued: their logs show them)."""
        with translate_errors("outbox.depth"):
            return int(await self._coll.count_documents({"status": {"$in": [PENDING, INFLIGHT]}}))

    async def pending(self) -> list[OutboxEntry]:
        """Every pending write, oldest first (admin views and tests)."""
        with translate_errors("outbox.pending"):
            docs = await self._coll.find({"status": PENDING}).sort(
                [("enqueued_at", ASCENDING), ("_id", ASCENDING)]).to_list(None)
        return [OutboxEntry.from_document(d) for d in docs]
