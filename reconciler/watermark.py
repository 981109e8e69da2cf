"""The polling watermark: a constant-size keyset position in `ORDER BY SystemModstamp, Id`.

`sync_state` `watermark:<Object>` (`state_keys.watermark_key`) =
`{"ts": "2024-05-01T10:00:00Z", "last_id": "00Q..."}` means
"every record ordered before or at (ts, last_id) is applied"; `last_id` None means "every
record with `SystemModstamp < ts`, none at ts yet". The backfill and the poller share it.

The design's rule (SystemModstamp has one-second precision: read `>= watermark`, skip the
(`Id`, `SystemModstamp`) pairs already applied) in keyset form: the pairs already applied at
the watermark second are exactly those with `Id <= last_id`, because records are read in that
order, so the next read asks only for what follows:

    WHERE (SystemModstamp > :ts OR (SystemModstamp = :ts AND Id > :last_id))
      AND SystemModstamp < :signpost
    ORDER BY SystemModstamp, Id

That is only safe because of the signpost (the start of the second a pass began): the
watermark only moves into a second that is over, so no record can still appear in it behind
`last_id` (the poller does not even read past the signpost; the backfill does, and leaves what
it read there to be read again). The document
stays one id long whatever the number of records sharing one second (a bulk load puts
100,000 in one).

Upgrade: the previous shape `{"ts", "ids": [every id applied at ts]}` is still read. It becomes
`ts` with no `last_id` (read the whole second again) plus `legacy_ids` to skip once; they are
kept only while the position is still inside that second and not yet past them, so nothing
applied is re-applied and nothing unapplied is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from reconciler.soql import format_sf_datetime, parse_sf_datetime, soql_string

# `soql_string` is re-exported for `reconciler.outbound` until it imports `reconciler.soql`.
__all__ = ["Watermark", "record_position", "soql_string"]


@dataclass(frozen=True)
class Watermark:
    """Everything up to (ts, last_id) in `ORDER BY SystemModstamp, Id` is applied (pure)."""

    ts: datetime | None = None
    last_id: str | None = None
    legacy_ids: frozenset[str] = frozenset()  # only from an old `{"ts", "ids"}` document

    @classmethod
    def from_state(cls, value: dict[str, Any] | None) -> Watermark:
        if not value:
            return cls()
        ts = parse_sf_datetime(value.get("ts"))
        if ts is None:
            return cls()
        last_id = value.get("last_id")
        legacy = frozenset(str(i) for i in value.get("ids") or [])
        return cls(ts, str(last_id) if last_id else None, legacy)

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"ts": format_sf_datetime(self.ts) if self.ts else None,
                                 "last_id": self.last_id}
        if self.legacy_ids:
            state["ids"] = sorted(self.legacy_ids)
        return state

    def covers(self, sf_id: str, modstamp: datetime) -> bool:
        """Whether this (Id, SystemModstamp) pair has already been applied."""
        if self.ts is None or modstamp > self.ts:
            return False
        if modstamp < self.ts:
            return True
        return (self.last_id is not None and sf_id <= self.last_id) or sf_id in self.legacy_ids

    def advance(self, read: Iterable[tuple[str, datetime]], signpost: datetime | None = None) -> Watermark:
        """The position after `read` (pairs in query order, applied or covered), below the signpost."""
        current = self
        for sf_id, modstamp in read:
            if signpost is not None and modstamp >= signpost:
                continue
            if current.ts is not None and modstamp < current.ts:
                continue  # not expected in query order; never move back
            legacy = current.legacy_ids if modstamp == current.ts else frozenset()
            current = Watermark(modstamp, sf_id, frozenset(i for i in legacy if i > sf_id))
        return current

    def rewound(self, window: timedelta) -> Watermark:
        """The position `window` before this one's second (the poller's overlap re-read)."""
        if self.ts is None or window <= timedelta(0):
            return self
        return Watermark(self.ts - window)

    def at_least(self, other: Watermark) -> Watermark:
        """The later of the two positions (a re-read from a rewound position never moves back)."""
        if other.ts is None:
            return self
        if self.ts is None or _position(other) > _position(self):
            return other
        return self

    def soql_filter(self, signpost: datetime | None = None) -> str | None:
        """The WHERE condition for what follows this position (and precedes the signpost)."""
        parts: list[str] = []
        if self.ts is not None:
            ts = format_sf_datetime(self.ts)
            if self.last_id is None:
                parts.append(f"SystemModstamp >= {ts}")
            else:
                parts.append(f"(SystemModstamp > {ts} OR (SystemModstamp = {ts} "
                             f"AND Id > {soql_string(self.last_id)}))")
        if signpost is not None:
            parts.append(f"SystemModstamp < {format_sf_datetime(signpost)}")
        return " AND ".join(parts) or None


def _position(mark: Watermark) -> tuple[datetime, str]:
    # last_id None means "before every id of that second"
    assert mark.ts is not None
    return mark.ts, mark.last_id or ""


def record_position(record: dict[str, Any]) -> tuple[str, datetime] | None:
    """A queried record's (Id, SystemModstamp), or None when it lacks either."""
    sf_id = record.get("Id")
    stamp = parse_sf_datetime(record.get("SystemModstamp"))
    if not isinstance(sf_id, str) or stamp is None:
        return None
    return sf_id, stamp.replace(microsecond=0)  # the stored `ts` has Salesforce's one-second precision
