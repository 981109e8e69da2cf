"""One micro-batch of CDC messages, sorted into what the stream does with each, and done.

    messages --parse_message--> changes (to apply)      rejected (failed sync logs)
                                gaps (fetch by id)      overflows (poll the object)
                                offsets (replay id per channel)   committed_at (per object)

`sort_batch` only reads: it asks `already_applied` whether a replay id was applied before a
reconnect (then the message is dropped) and `covered` whether a poll already applied a change
(then the change is dropped, but its offset still advances). It changes no stream state.
Messages are in CometD's JSON shape (the Pub/Sub source decodes its Avro events into it).

`apply_batch` does what a sorted batch asks for: gaps fetched by id and applied with its changes
(one `Id IN (...)` query per object), rejected events logged as failed, overflowed objects polled
from the event's commit time; then `sfsync_replay_lag_seconds`. Offsets are the caller's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from listener.events import GapRequest, OverflowRequest, Parsed, parse_message
from listener.metrics import METRICS
from listener.sources.handover import CatchUp
from reconciler.ports import ChangeSink, RejectedEvent, SalesforceChange

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
        if isinstance(replay_id, int):  # CometD's; the Pub/Sub source keeps its own offsets
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


async def apply_batch(batch: SortedBatch, *, sink: ChangeSink, catch_up: CatchUp) -> None:
    """Apply the batch's changes and the gaps' records, log its rejected events, poll its
    overflowed objects; a `RetriableError` leaves the offsets to the caller (not advanced)."""
    changes = batch.changes
    for sobject, ids in batch.gaps.items():
        log.info("stream_gap_fetch", object=sobject, records=len(ids))
        changes = changes + await catch_up.fetch_by_ids(sobject, sorted(ids))
    if changes:
        await sink.apply(changes)
    if batch.rejected:
        await sink.reject(batch.rejected)
        METRICS.inc("sfsync_events_failed_total", len(batch.rejected), object="unknown")
    for overflow in batch.overflows:
        log.info("stream_overflow_poll", object=overflow.sobject, since=overflow.since.isoformat())
        await catch_up.poll_since(overflow.sobject, overflow.since)
    _note_lag(batch)


def _note_lag(batch: SortedBatch) -> None:
    """`sfsync_replay_lag_seconds` (this is its only writer): seconds from the newest
    Salesforce commit in the batch just applied (`commitTimestamp`, or the record's
    `LastModifiedDate`) to the moment its apply finished -- how far the stream runs behind
    Salesforce. Not updated while no events arrive, nor while polling."""
    if batch.committed_at:
        newest = max(batch.committed_at.values())
        METRICS.set("sfsync_replay_lag_seconds", max(time.time() - newest.timestamp(), 0.0))


def _first_replay(changes: list[SalesforceChange]) -> int | None:
    return changes[0].replay_id if changes else None


__all__ = ["Message", "SortedBatch", "apply_batch", "sort_batch"]
