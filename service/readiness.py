"""`/readyz` and `/api/status`: pure functions of what the parts of the service report.

The parts write into `Health` as they go (start-up phase, MongoDB and Salesforce reachable);
the leader term reports its `LeaseStatus`; the source switch names the running `Source`.
`ready_reason` and `status_document` only read them.

A standby is *ready* (`/readyz` 200): it is healthy, it serves the admin API (which reads
MongoDB) and it is what makes a rolling update of several replicas possible -- were standbys
503, Kubernetes would never count them available. The reason then says
`standby: another replica holds the sync lease (<owner>)`, and `/api/status` shows
`lease: {owner, held, holder}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from listener.sources import Source
from reconciler.store.state_keys import StateKind, of_kind


class Role(StrEnum):
    """Where this replica stands once it has tried the lease."""

    STANDBY = "standby"
    LEADER = "leader"


@dataclass
class Health:
    """What the parts report as they go. `phase` says why the service is not ready yet
    (a start-up step, a backfill, stopping); empty once a term's source may run. `down` names
    the supervised tasks that exited unexpectedly and have not run again yet
    (`service.supervised`)."""

    phase: str = "starting"
    mongo_ok: bool = False
    salesforce_ok: bool = False
    down: dict[str, str] = field(default_factory=dict)  # supervised task -> why it is down


@dataclass(frozen=True)
class LeaseStatus:
    """The sync lease as `/api/status` shows it (`role` None until the lease has been tried)."""

    owner: str | None = None
    held: bool = False
    holder: str | None = None
    role: Role | None = None

    def document(self) -> dict[str, Any]:
        return {"owner": self.owner, "held": self.held, "holder": self.holder}


def ready_reason(health: Health, lease: LeaseStatus, running: Source | None, mode: str) -> tuple[bool, str]:
    """(ready, reason) for `/readyz`: the first thing that keeps the service from syncing."""
    if health.phase:
        return False, health.phase
    if not health.mongo_ok:
        return False, "mongodb unreachable"
    if not health.salesforce_ok:
        return False, "salesforce unreachable"
    if health.down:
        name = min(health.down)
        return False, f"task {name} down: {health.down[name]}"
    if lease.role is Role.STANDBY:
        return True, f"standby: another replica holds the sync lease ({lease.holder or 'unknown'})"
    if running is not None and running.ready:
        return True, ""
    return False, f"no inbound source running (mode {mode})"


@dataclass
class StoreSnapshot:
    """What the last status refresh read from MongoDB: all of `sync_state`, the outbox depth,
    the open failed sync logs per error code."""

    state: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    outbox_depth: int = 0
    failures_by_code: Mapping[str, int] = field(default_factory=dict)

    def replay_ids(self) -> dict[str, Any]:
        replays = of_kind(self.state, StateKind.REPLAY)
        return {channel: doc.get("replay_id") for channel, doc in replays.items()}

    def watermarks(self) -> dict[str, Any]:
        marks = of_kind(self.state, StateKind.WATERMARK)
        return {sobject: doc.get("ts") for sobject, doc in marks.items()}


@dataclass(frozen=True)
class StatusParts:
    """Everything `/api/status` shows, each from the part that knows it."""

    budget: Mapping[str, Any]           # `BudgetGovernor.status()`
    running: str | None                 # the running source's name
    sources: Sequence[Source]           # every source: live replay ids and inbound queue depth
    stored: StoreSnapshot
    lease: LeaseStatus
    instance_url: str | None = None
    last_event_at: datetime | None = None


def status_document(parts: StatusParts) -> dict[str, Any]:
    """The `/api/status` JSON: live source figures win over what MongoDB held at the last refresh."""
    budget = parts.budget
    replay_ids = parts.stored.replay_ids()
    inbound_depth = 0
    for source in parts.sources:
        status = source.status()
        replay_ids.update(status.get("replay_ids", {}))
        inbound_depth += int(status.get("queue_depth", 0))
    return {
        "mode": budget["mode"],
        "source": parts.running,
        "budget": {k: budget[k] for k in ("used", "max", "remaining_pct")},
        "events_exhausted": budget["events_exhausted"],
        "replay_ids": replay_ids,
        "watermarks": parts.stored.watermarks(),
        "queue_depth": {"inbound": inbound_depth, "outbox": parts.stored.outbox_depth},
        "instance_url": parts.instance_url,
        "last_event_at": parts.last_event_at.isoformat() if parts.last_event_at else None,
        "lease": parts.lease.document(),
        "failures_by_code": dict(parts.stored.failures_by_code),
    }


__all__ = ["Health", "LeaseStatus", "Role", "StatusParts", "StoreSnapshot", "ready_reason", "status_document"]
