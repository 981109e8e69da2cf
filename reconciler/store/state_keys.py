"""The keys of `sync_state`, built and parsed here and nowhere else.

    replay:<channel>      {"replay_id": N}                      CDC offset per channel (CometD)
    pubsub_replay:<topic> {"replay_id": b"..."}                 CDC offset per topic (Pub/Sub API: opaque
                                                                bytes, stored as BSON binary)
    watermark:<Object>    {"ts": ..., "last_id": ...}           polling/backfill keyset position
    resume:<collection>   {"token": ...}                        change-stream resume token
    local_watermark:<collection>  {"updated_at": ..., "id": ...}   local polling keyset position
    lease:<name>          {"owner": ..., "expires_at": ...}     leader lease
    mappings              {"hash": ..., "mappings": {...}}      mappings the last remerge applied
    journal               {"at": ...} (no `value`)             a batch's closing journaled write when it
                                                                had no sync log to write (`journal_barrier`)
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class StateKind(StrEnum):
    REPLAY = "replay"
    PUBSUB_REPLAY = "pubsub_replay"
    WATERMARK = "watermark"
    RESUME = "resume"
    LEASE = "lease"
    LOCAL_WATERMARK = "local_watermark"


MAPPINGS_KEY = "mappings"
JOURNAL_KEY = "journal"


def state_key(kind: StateKind, subject: str) -> str:
    return f"{kind.value}:{subject}"


def replay_key(channel: str) -> str:
    return state_key(StateKind.REPLAY, channel)


def pubsub_replay_key(topic: str) -> str:
    return state_key(StateKind.PUBSUB_REPLAY, topic)


def watermark_key(sobject: str) -> str:
    return state_key(StateKind.WATERMARK, sobject)


def resume_key(collection: str) -> str:
    return state_key(StateKind.RESUME, collection)


def lease_key(name: str) -> str:
    return state_key(StateKind.LEASE, name)


def local_watermark_key(collection: str) -> str:
    return state_key(StateKind.LOCAL_WATERMARK, collection)


def parse_key(key: str) -> tuple[StateKind, str] | None:
    """`replay:/data/LeadChangeEvent` -> (REPLAY, "/data/LeadChangeEvent"); None for other keys."""
    kind, sep, subject = key.partition(":")
    if not sep:
        return None
    try:
        return StateKind(kind), subject
    except ValueError:
        return None


def of_kind(state: Mapping[str, dict[str, Any]], kind: StateKind) -> dict[str, dict[str, Any]]:
    """The documents of one kind from a whole-`sync_state` read, keyed by subject."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        parsed = parse_key(key)
        if parsed is not None and parsed[0] is kind:
            out[parsed[1]] = value
    return out


__all__ = ["JOURNAL_KEY", "MAPPINGS_KEY", "StateKind", "lease_key", "local_watermark_key", "of_kind",
           "parse_key", "pubsub_replay_key", "replay_key", "resume_key", "state_key", "watermark_key"]
