"""Change Data Capture event bus of the emulated org.

Every record write becomes one change event shaped the way Salesforce delivers
it over CometD (``data.schema``, ``data.payload.ChangeEventHeader`` plus the
record fields, ``data.event.replayId``). Events are kept in one retained log,
ordered by a single monotonic replay id, for ``retention_seconds`` (72 hours by
default, like Salesforce). Subscribers never get copies: each one keeps a
cursor (the last replay id it has seen) and reads the log from there.

Each event is serialised to JSON once, at publish time, so a retained event
costs one small object plus its JSON text, and delivery to many clients does not
re-encode it.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)

ALL_CHANGE_EVENTS = "/data/ChangeEvents"
GAP_CHANGE_TYPES = frozenset({"GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"})
GAP_OVERFLOW = "GAP_OVERFLOW"
# Salesforce's overflow events carry the "empty" record id rather than real ones.
EMPTY_RECORD_ID = "000000000000000AAA"
DEFAULT_COMMIT_USER = "005000000000001AAA"

_CHANGE_EVENT_CHANNEL = re.compile(r"^/data/\w+ChangeEvent$")
_NAME_PARTS = ("Salutation", "FirstName", "LastName", "MiddleName", "Suffix")
_ADDRESS_PARTS = (
    "Street",
    "City",
    "State",
    "PostalCode",
    "Country",
    "StateCode",
    "CountryCode",
    "Latitude",
    "Longitude",
    "GeocodeAccuracy",
)


def _name() -> dict[str, tuple[str, str]]:
    return {part: ("Name", part) for part in _NAME_PARTS}


def _address(compound: str, prefix: str) -> dict[str, tuple[str, str]]:
    return {f"{prefix}{part}": (compound, part) for part in _ADDRESS_PARTS}


# API field -> (compound field, component name in the event), per object.
COMPOUND_FIELDS: Mapping[str, Mapping[str, tuple[str, str]]] = {
    "Lead": {**_name(), **_address("Address", "")},
    "Contact": {**_name(), **_address("MailingAddress", "Mailing"), **_address("OtherAddress", "Other")},
    "Account": {**_address("BillingAddress", "Billing"), **_address("ShippingAddress", "Shipping")},
}


def channel_for(entity: str) -> str:
    """The per-object CDC channel, e.g. ``/data/LeadChangeEvent``."""
    return f"/data/{entity}ChangeEvent"


@functools.cache
def schema_id(entity: str) -> str:
    """A stable 22-character schema id per object, like Salesforce's Avro schema ids."""
    digest = hashlib.sha256(f"{entity}ChangeEvent".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:22]


def dotted_field(entity: str, field: str) -> str:
    """How ``changedFields`` names a field: compound components as ``Name.FirstName``."""
    target = COMPOUND_FIELDS.get(entity, {}).get(field)
    return field if target is None else f"{target[0]}.{target[1]}"


def nest_fields(entity: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Nest flat API fields into compound fields the way CDC payloads carry them."""
    compound = COMPOUND_FIELDS.get(entity, {})
    parents = {parent for parent, _ in compound.values()}
    nested: dict[str, Any] = {}
    for field, value in record.items():
        target = compound.get(field)
        if target is not None:
            nested.setdefault(target[0], {})[target[1]] = value
        elif field in parents:
            # A flat compound value (Lead.Name is a read-only full name; REST
            # returns addresses as objects): only components travel in events.
            if isinstance(value, dict):
                nested.setdefault(field, {}).update(value)
        else:
            nested[field] = value
    return nested


def is_change_event_channel(channel: str) -> bool:
    return _CHANGE_EVENT_CHANNEL.match(channel) is not None


def delivered_on(subscription: str, event_channel: str) -> bool:
    """Whether an event published on ``event_channel`` reaches a ``subscription``."""
    if subscription == event_channel:
        return True
    return subscription == ALL_CHANGE_EVENTS and is_change_event_channel(event_channel)


@dataclass(slots=True, frozen=True)
class RetainedEvent:
    """One event in the retained log; ``data_json`` is the Bayeux ``data`` member, encoded."""

    replay_id: int
    channel: str
    published_at: float
    data_json: str

    @property
    def data(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.data_json)
        return decoded


class ChangeEventBus:
    """Retained, replayable CDC event log with pause/resume of delivery."""

    def __init__(
        self,
        *,
        retention_seconds: float = 72 * 3600,
        clock: Callable[[], float] = time.time,
        max_events: int = 1_000_000,
    ) -> None:
        self.retention_seconds = retention_seconds
        self._clock = clock
        self._max_events = max_events
        # A list with a moving head rather than a deque: a replay id maps to a
        # list index in O(1) (ids are contiguous), and the head is compacted
        # away in bulk, so memory stays bounded by the retention window.
        self._events: list[RetainedEvent] = []
        self._head = 0
        self._last_replay_id = 0
        self._paused = False
        self._listeners: list[Callable[[], None]] = []
        self._raw_channels: set[str] = set()

    # -- reading -------------------------------------------------------------

    @property
    def last_replay_id(self) -> int:
        """The newest replay id ever issued (0 before the first event)."""
        return self._last_replay_id

    @property
    def retained_count(self) -> int:
        self._prune()
        return len(self._events) - self._head

    @property
    def paused(self) -> bool:
        return self._paused

    def retained(self) -> list[RetainedEvent]:
        """A snapshot of the retained log, oldest first (for tests and diagnostics)."""
        self._prune()
        return self._events[self._head :]

    def is_valid_replay_id(self, replay_id: int) -> bool:
        """A stored replay id is valid while its event is still retained."""
        self._prune()
        if self._head >= len(self._events):
            return False
        return self._events[self._head].replay_id <= replay_id <= self._last_replay_id

    def channel_exists(self, channel: str) -> bool:
        if channel == ALL_CHANGE_EVENTS or is_change_event_channel(channel):
            return True
        return channel in self._raw_channels

    def events_after(self, replay_id: int, subscription: str, limit: int) -> tuple[list[RetainedEvent], int]:
        """Up to ``limit`` retained events after ``replay_id`` that reach ``subscription``.

        Also returns the replay id the scan got to, so the caller's cursor can
        skip events of other channels without scanning them again.
        """
        self._prune()
        if limit <= 0:
            return [], replay_id
        if self._head >= len(self._events):
            return [], max(replay_id, self._last_replay_id)
        first_id = self._events[self._head].replay_id
        start = self._head + max(0, replay_id + 1 - first_id)
        found: list[RetainedEvent] = []
        scanned = replay_id
        for index in range(start, len(self._events)):
            event = self._events[index]
            scanned = event.replay_id
            if delivered_on(subscription, event.channel):
                found.append(event)
                if len(found) >= limit:
                    break
        return found, scanned

    # -- delivery control ------------------------------------------------------

    def add_listener(self, listener: Callable[[], None]) -> None:
        """``listener`` is called (synchronously) after each publish and on resume."""
        self._listeners.append(listener)

    def pause_delivery(self) -> None:
        self._paused = True
        log.info("cdc_delivery_paused")

    def resume_delivery(self) -> None:
        self._paused = False
        log.info("cdc_delivery_resumed")
        self._notify()

    # -- publishing ----------------------------------------------------------

    def publish_change(
        self,
        *,
        entity: str,
        change_type: str,
        record_ids: list[str],
        record: dict[str, Any],
        changed_fields: list[str],
        nulled_fields: list[str],
        diff_fields: list[str],
        change_origin: str,
        transaction_key: str,
        sequence_number: int,
        commit_user: str,
        commit_timestamp_ms: int,
        commit_number: int,
    ) -> int:
        """Publish one change event for a record write; returns its replay id."""
        fields: dict[str, Any] = {} if change_type == "DELETE" else dict(record)
        if change_type == "UPDATE":
            for field in nulled_fields:
                fields.setdefault(field, None)
        header = {
            "entityName": entity,
            "recordIds": list(record_ids),
            "changeType": change_type,
            "changeOrigin": change_origin,
            "transactionKey": transaction_key,
            "sequenceNumber": sequence_number,
            "commitTimestamp": commit_timestamp_ms,
            "commitNumber": commit_number,
            "commitUser": commit_user,
            "nulledFields": _dotted(entity, nulled_fields),
            "diffFields": _dotted(entity, diff_fields),
            # Salesforce lists changed fields for updates only.
            "changedFields": _dotted(entity, changed_fields) if change_type == "UPDATE" else [],
        }
        payload = {"ChangeEventHeader": header, **nest_fields(entity, fields)}
        return self._append(channel_for(entity), {"schema": schema_id(entity), "payload": payload})

    def publish_raw(self, channel: str, data: dict[str, Any]) -> int:
        """Publish ``data`` as-is (malformed events included); ``event.replayId`` is filled in if absent."""
        if not is_change_event_channel(channel):
            self._raw_channels.add(channel)
        return self._append(channel, dict(data), keep_event=True)

    def publish_gap(
        self,
        entity: str,
        change_type: str,
        record_ids: list[str],
        *,
        commit_timestamp_ms: int | None = None,
        commit_user: str = DEFAULT_COMMIT_USER,
    ) -> int:
        """A gap event: a header naming the records, no field values."""
        if change_type not in GAP_CHANGE_TYPES:
            raise ValueError(f"change_type must be one of {sorted(GAP_CHANGE_TYPES)}")
        return self._publish_header_only(entity, change_type, record_ids, commit_timestamp_ms, commit_user)

    def publish_overflow(
        self,
        entity: str,
        *,
        commit_timestamp_ms: int | None = None,
        commit_user: str = DEFAULT_COMMIT_USER,
    ) -> int:
        """An overflow event: entity and commit time only, with the empty record id."""
        return self._publish_header_only(
            entity, GAP_OVERFLOW, [EMPTY_RECORD_ID], commit_timestamp_ms, commit_user
        )

    def _publish_header_only(
        self,
        entity: str,
        change_type: str,
        record_ids: list[str],
        commit_timestamp_ms: int | None,
        commit_user: str,
    ) -> int:
        timestamp = commit_timestamp_ms if commit_timestamp_ms is not None else int(self._clock() * 1000)
        header = {
            "entityName": entity,
            "recordIds": list(record_ids),
            "changeType": change_type,
            "changeOrigin": "",
            "transactionKey": secrets.token_hex(16),
            "sequenceNumber": 1,
            "commitTimestamp": timestamp,
            "commitNumber": timestamp,
            "commitUser": commit_user,
            "nulledFields": [],
            "diffFields": [],
            "changedFields": [],
        }
        data = {"schema": schema_id(entity), "payload": {"ChangeEventHeader": header}}
        return self._append(channel_for(entity), data)

    def _append(self, channel: str, data: dict[str, Any], *, keep_event: bool = False) -> int:
        self._last_replay_id += 1
        replay_id = self._last_replay_id
        if not (keep_event and "event" in data):
            data["event"] = {"replayId": replay_id}
        event = RetainedEvent(
            replay_id=replay_id,
            channel=sys.intern(channel),
            published_at=self._clock(),
            data_json=json.dumps(data, separators=(",", ":")),
        )
        self._events.append(event)
        self._prune()
        self._notify()
        return replay_id

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()

    def _prune(self) -> None:
        events = self._events
        horizon = self._clock() - self.retention_seconds
        head = self._head
        while head < len(events) and events[head].published_at < horizon:
            head += 1
        head = max(head, len(events) - self._max_events)
        if head > 1024 and head * 2 > len(events):
            del events[:head]
            head = 0
        self._head = head


def _dotted(entity: str, fields: Iterable[str]) -> list[str]:
    return [dotted_field(entity, field) for field in fields]
