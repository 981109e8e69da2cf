"""The platform side, as the platform acts: top-level fields plus `updated_at` written straight
to MongoDB, retried while it is down. Acks carry local field names."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from pymongo.errors import PyMongoError

from bench.chaos.env import Environment
from bench.chaos.operations.binding import Bindings, collection_of
from bench.chaos.operations.records import Ack, Entity, skip
from bench.chaos.schedule import Step


class PlatformSide:
    def __init__(self, env: Environment, bindings: Bindings) -> None:
        self.env = env
        self.bindings = bindings

    def write(self, collection: str, op: str, doc_id: Any, fields: dict[str, Any]) -> float | None:
        """Insert or `$set` (+ `updated_at`), retried while MongoDB is down; the ack time, or
        None when the document to update is gone."""
        deadline = time.monotonic() + 60
        while True:
            now = datetime.now(UTC)
            try:
                coll = self.env.db[collection]
                if op == "insert":
                    coll.insert_one({"_id": doc_id, **fields, "created_at": now, "updated_at": now})
                elif not coll.update_one({"_id": doc_id},
                                         {"$set": {**fields, "updated_at": now}}).matched_count:
                    return None
                return time.time()
            except PyMongoError as exc:
                if "duplicate key" in str(exc).lower() and op == "insert":
                    return time.time()  # the retried insert had landed
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def _create(self, step: Step, sobject: str) -> list[Ack]:
        collection = collection_of(sobject)
        fields = dict(step.args["fields"])
        entity = Entity(str(step.target), sobject, collection, "platform", local_id=ObjectId())
        if fields.get("email"):
            entity.emails.append(str(fields["email"]))
        self.bindings.entities[entity.slot] = entity
        at = self.write(collection, "insert", entity.local_id, fields)
        assert at is not None
        return [Ack(step.id, step.kind, "platform", entity.slot, at, "ok", sobject, fields)]

    def create_person(self, step: Step) -> list[Ack]:
        return self._create(step, "Lead")

    def create_company(self, step: Step) -> list[Ack]:
        return self._create(step, "Account")

    def edit(self, step: Step) -> list[Ack]:
        entity = self.bindings.bound(step.target, local=True)
        if entity is None:
            return skip(step, "platform", "no local record yet")
        return [self.update(step, entity, dict(step.args["fields"]))]

    def update(self, step: Step, entity: Entity, fields: dict[str, Any]) -> Ack:
        """`$set` the entity's local record; skipped when it is gone for good."""
        at = self.write(entity.collection, "update", entity.local_id, fields)
        if at is None and self._rebind(entity):
            at = self.write(entity.collection, "update", entity.local_id, fields)
        if at is None:
            return skip(step, "platform", "the local record is gone")[0]
        return Ack(step.id, step.kind, "platform", entity.slot, at, "ok", entity.sobject, fields)

    def _rebind(self, entity: Entity) -> bool:
        """The Person a conversion folded this one into (deleting it), found as a user would: by
        the Salesforce record it is linked to (seed 1485 x 2000, L12: edits acked on a document
        the fold had removed)."""
        doc = self.env.db[entity.collection].find_one(
            {"crm.id": {"$in": [i for i in (entity.sf_id, entity.lead_id) if i]}}, {"_id": 1}) \
            if entity.sf_id or entity.lead_id else None
        if doc is None or doc["_id"] == entity.local_id:
            return False
        entity.local_id = doc["_id"]
        return True


__all__ = ["PlatformSide"]
