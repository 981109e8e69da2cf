"""`sync_state`: offsets and small state documents, `_id` = key, written durably.

Replay ids never go backwards: `replay:<channel>` is written with `$max` on `replay_id`. With a
`fence`, a write is refused (`FencedError`) when another leader term holds the lease: checked
against the lease document first, and again by the offset document itself (the new term
stamped it on acquisition, see `_lease.stamp_offsets`), so there is no window for keys that
existed when the new term started.
"""

from __future__ import annotations

from typing import Any

from pymongo.errors import DuplicateKeyError

from reconciler.errors import FencedError
from reconciler.store._client import translate_errors
from reconciler.store._lease import Fence, check_fence, not_newer_than, term_field
from reconciler.store.state_keys import JOURNAL_KEY, StateKind, parse_key
from reconciler.sync_logs import utcnow


def state_update(key: str, value: dict[str, Any]) -> dict[str, Any]:
    """The update that saves `value` under `key` (replay ids: never lower than the stored one).
    An update, not a replacement: the document's term stamps survive it."""
    parsed = parse_key(key)
    replay_id = value.get("replay_id")
    if parsed is not None and parsed[0] is StateKind.REPLAY and isinstance(replay_id, int) \
            and not isinstance(replay_id, bool):
        rest = {f"value.{name}": v for name, v in value.items() if name != "replay_id"}
        return {"$max": {"value.replay_id": replay_id}, "$set": {**rest, "updated_at": utcnow()}}
    return {"$set": {"value": value, "updated_at": utcnow()}}


class StateMixin:
    db: Any

    async def load_state(self, key: str) -> dict[str, Any] | None:
        with translate_errors("load_state"):
            doc = await self.db.sync_state.find_one({"_id": key})
        return dict(doc["value"]) if doc and isinstance(doc.get("value"), dict) else None

    async def save_state(self, key: str, value: dict[str, Any], *, fence: Fence | None = None) -> None:
        """Journaled majority write: an offset saved here survives a failover. With `fence`,
        raises `FencedError` (nothing written) when the fence's term no longer holds the lease."""
        query: dict[str, Any] = {"_id": key}
        update = state_update(key, value)
        if fence is not None:
            await check_fence(self.db, fence)
            query.update(not_newer_than(fence.lease, fence.term))
            update["$set"][term_field(fence.lease)] = fence.term
        with translate_errors("save_state"):
            try:
                await self.db.sync_state.update_one(query, update, upsert=True)
            except DuplicateKeyError:
                # The filter missed an existing document: a newer term has written or stamped it.
                assert fence is not None
                raise FencedError(f"save_state {key}: refused, a term newer than {fence.term} "
                                  f"of lease {fence.lease} holds it") from None

    async def journal_barrier(self) -> None:
        """One journaled majority write, for a batch whose record writes were not journaled
        (`bulk_apply(journaled=False)`) and that has no sync log to write last: once it is
        acknowledged, so are the batch's earlier writes (see the package docstring). A document
        without `value`: no offset, not listed by `all_state`, not stamped by a new term."""
        with translate_errors("journal_barrier"):
            await self.db.sync_state.update_one({"_id": JOURNAL_KEY}, {"$set": {"at": utcnow()}},
                                                upsert=True)

    async def check_fence(self, fence: Fence) -> None:
        """Raise `FencedError` unless `fence`'s term still holds its lease (one read)."""
        await check_fence(self.db, fence)

    async def all_state(self) -> dict[str, dict[str, Any]]:
        with translate_errors("all_state"):
            docs = await self.db.sync_state.find({"value": {"$type": "object"}}).to_list(None)
        return {str(d["_id"]): dict(d["value"]) for d in docs}
