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

    def write(self, collection: str, op: str, doc_id: Any, fields: dict[str, Any]) -> float:
        """Insert or `$set` (+ `updated_at`), retried while MongoDB is down; the ack time."""
        deadline = time.monotonic() + 60
        while True:
            now = datetime.now(UTC)
            try:
                coll = self.env.db[collection]
                if op == "insert":
                    coll.insert_one({"_id": doc_id, **fields, "created_at": now, "updated_at": now})
                else:
                    coll.update_one({"_id": doc_id}, {"$set": {**fields, "updated_at": now}})
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
        return [Ack(step.id, step.kind, "platform", entity.slot, at, "ok", sobject, fields)]

    def create_person(self, step: Step) -> list[Ack]:
        return self._create(step, "Lead")

    def create_company(self, step: Step) -> list[Ack]:
        return self._create(step, "Account")

    def edit(self, step: Step) -> list[Ack]:
        entity = self.bindings.bound(step.target, local=True)
        if entity is None:
            return skip(step, "platform", "no local record yet")
        fields = dict(step.args["fields"])
        at = self.write(entity.collection, "update", entity.local_id, fields)
        return [Ack(step.id, step.kind, "platform", entity.slot, at, "ok", entity.sobject, fields)]


__all__ = ["PlatformSide"]
