"""Binding slots to real records: the entities a run made, and learning the other side's id
once a record has crossed over (read from MongoDB)."""

from __future__ import annotations

import time

from pymongo.errors import PyMongoError

from bench.chaos.env import Environment
from bench.chaos.operations.records import Entity

BIND_WAIT = 1.5  # how long a step waits for its target to cross over before it is skipped


def collection_of(sobject: str) -> str:
    return "companies" if sobject == "Account" else "people"


class Bindings:
    def __init__(self, env: Environment) -> None:
        self.env = env
        self.entities: dict[str, Entity] = {}

    def refresh(self, entity: Entity) -> None:
        """Learn the other side's id of `entity` from MongoDB, if it has crossed over."""
        try:
            coll = self.env.db[entity.collection]
            if entity.local_id is None and entity.sf_id is not None:
                doc = coll.find_one({"crm.id": entity.sf_id}, {"_id": 1})
                if doc is None and entity.lead_id:
                    doc = coll.find_one({"crm.id": entity.lead_id}, {"_id": 1})
                if doc is not None:
                    entity.local_id = doc["_id"]
                    entity.bound_at = time.time()
            elif entity.sf_id is None and entity.local_id is not None:
                doc = coll.find_one({"_id": entity.local_id}, {"crm": 1})
                crm = (doc or {}).get("crm") or {}
                if crm.get("id"):
                    entity.sf_id = str(crm["id"])
                    entity.bound_at = time.time()
        except PyMongoError:
            pass

    def bound(self, slot: str | None, *, sf: bool = False, local: bool = False,
              wait: float = BIND_WAIT) -> Entity | None:
        """The entity of `slot` once it has the ids asked for; None if it does not within `wait`."""
        entity = self.entities.get(slot or "")
        if entity is None:
            return None
        deadline = time.monotonic() + wait
        while True:
            if (not sf or entity.sf_id) and (not local or entity.local_id is not None):
                return entity
            self.refresh(entity)
            if (not sf or entity.sf_id) and (not local or entity.local_id is not None):
                return entity
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)


__all__ = ["BIND_WAIT", "Bindings", "collection_of"]
