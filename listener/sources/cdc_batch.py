"""One micro-batch of CometD messages, sorted into what the stream does with each.

    messages --parse_message--> changes (to apply)      rejected (failed sync logs)
                                gaps (fetch by id)      overflows (poll the object)
                                offsets (replay id per channel)   committed_at (per object)

`sort_batch` only reads: it asks `already_applied` whether a replay id was applied before a
reconnect (then the message is dropped) and `covered` whether a poll already applied a change
(then the change is dropped, but its offset still advances). It changes no stream state.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from listener.events import GapRequest, OverflowRequest, Parsed, parse_message
from listener.metrics import METRICS
from reconciler.ports import RejectedEvent, SalesforceChange

log = structlog.get_logger(__name__)

Message = dict[str, Any] | RejectedEvent


@dataclass
class SortedBatch:
    """What one micro-batch turned into."""

    changes: list[SalesforceChange] = field(default_factory=list)
    rejected: list[RejectedEvent] = field(default_factory=list)
    gaps: dict[str, set[str]] = field(default_factory=dict)
    overflows: list[OverflowRequest] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)        # newest replay id, per channel
    committed_at: dict[str, datetime] = field(default_factory=dict)  # newest commit, per object

    def saw_commit(self, sobject: str, at: datetime) -> None:
        previous = self.committed_at.get(sobject)
        if previous is None or at > previous:
            self.committed_at[sobject] = at


def sort_batch(
    messages: Sequence[Message],
    *,
    client_name: str,
    objects: Collection[str],
    already_applied: Callable[[str, int], bool],
    covered: Callable[[SalesforceChange], bool],
    latest: datetime | None = None,
) -> SortedBatch:
    """Parse and sort `messages`; every message with a replay id moves its channel's offset,
    a rejected one included (it is logged, never retried by replay). Dates after `latest` are
    out of range (`parse_message`)."""
    batch = SortedBatch()
    for message in messages:
        if isinstance(message, RejectedEvent):
            batch.rejected.append(message)
            continue
        channel = str(message.get("channel", ""))
        parsed = parse_message(message, client_name=client_name, objects=objects, latest=latest)
        replay_id = parsed.replay_id if not isinstance(parsed, list) else _first_replay(parsed)
        if replay_id is not None:
            if already_applied(channel, replay_id):
                continue  # redelivered after a reconnect: already applied
            batch.offsets[channel] = max(replay_id, batch.offsets.get(channel, -1))
        _dispatch(parsed, batch, covered)
    return batch


def _dispatch(parsed: Parsed, batch: SortedBatch, covered: Callable[[SalesforceChange], bool]) -> None:
    if isinstance(parsed, RejectedEvent):
        log.warning("stream_event_rejected", reason=parsed.reason, channel=parsed.channel,
                    replay_id=parsed.replay_id)
        batch.rejected.append(parsed)
    elif isinstance(parsed, GapRequest):
        METRICS.inc("sfsync_events_received_total", object=parsed.sobject)
        batch.gaps.setdefault(parsed.sobject, set()).update(parsed.record_ids)
        batch.saw_commit(parsed.sobject, parsed.committed_at)
    elif isinstance(parsed, OverflowRequest):
        METRICS.inc("sfsync_events_received_total", object=parsed.sobject)
        batch.overflows.append(parsed)
        batch.saw_commit(parsed.sobject, parsed.since)
    else:
        for change in parsed:
            METRICS.inc("sfsync_events_received_total", object=change.sobject)
            batch.saw_commit(change.sobject, change.changed_at)
            if not covered(change):
                batch.changes.append(change)


def _first_replay(changes: list[SalesforceChange]) -> int | None:
    return changes[0].replay_id if changes else None


__all__ = ["Message", "SortedBatch", "sort_batch"]
