"""What executing a step records: the entity a slot is bound to, and the acks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from bench.chaos.schedule import Step


@dataclass
class Entity:
    """A slot bound to real records: its Salesforce object and id, its local document."""

    slot: str
    sobject: str
    collection: str
    origin: str
    sf_id: str | None = None
    local_id: Any = None
    lead_id: str | None = None     # the Lead it was before conversion
    bound_at: float | None = None  # when the run first saw the record on the other side
    emails: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"slot": self.slot, "sobject": self.sobject, "collection": self.collection,
                "origin": self.origin, "sf_id": self.sf_id, "local_id": _text(self.local_id),
                "lead_id": self.lead_id}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass
class Ack:
    step: str
    kind: str
    side: str            # salesforce | platform
    slot: str | None
    at: float            # when the side acknowledged it (epoch seconds)
    status: str          # ok | skipped | rejected
    sobject: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"step": self.step, "kind": self.kind, "side": self.side, "slot": self.slot,
                "at": round(self.at, 3), "status": self.status, "sobject": self.sobject,
                "fields": self.fields, "detail": self.detail}


def skip(step: Step, side: str, why: str) -> list[Ack]:
    """The ack of a step that could not run (its target has not crossed over yet)."""
    return [Ack(step.id, step.kind, side, step.target, time.time(), "skipped", detail=why)]


__all__ = ["Ack", "Entity", "skip"]
