"""`sync_state`: offsets and small state documents, `_id` = key, written durably."""

from __future__ import annotations

from typing import Any

from reconciler.store._client import translate_errors
from reconciler.sync_logs import utcnow


class StateMixin:
    db: Any

    async def load_state(self, key: str) -> dict[str, Any] | None:
        with translate_errors("load_state"):
            doc = await self.db.sync_state.find_one({"_id": key})
        return dict(doc["value"]) if doc and isinstance(doc.get("value"), dict) else None

    async def save_state(self, key: str, value: dict[str, Any]) -> None:
        """Journaled majority write: an offset saved here survives a failover."""
        collection = self.db.sync_state
        with translate_errors("save_state"):
            await collection.replace_one(
                {"_id": key}, {"_id": key, "value": value, "updated_at": utcnow()}, upsert=True
            )

    async def all_state(self) -> dict[str, dict[str, Any]]:
        with translate_errors("all_state"):
            docs = await self.db.sync_state.find({"value": {"$type": "object"}}).to_list(None)
        return {str(d["_id"]): dict(d["value"]) for d in docs}
