"""ChangeSink and StateStore wrappers (seams, not patches): the real sink and store, with what
reached them kept, and failures injected on demand.

`Journal` is one ordered record shared by `FlakySink` (what the sink applied, what it failed)
and `JournalingStateStore` (every offset written), so a test can check their order -- the
debezium `FailureEmulatingOffsetBackingStore` idea, without touching the code under test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import RetriableError
from reconciler.ports import ChangeSink, RejectedEvent, SalesforceChange, StateStore


@dataclass
class RecordingSink:
    """Passes every change and reject on to `inner` and keeps them, in order, for assertions."""

    inner: ChangeSink
    applied: list[SalesforceChange] = field(default_factory=list)
    rejected: list[RejectedEvent] = field(default_factory=list)

    async def apply(self, changes: Sequence[SalesforceChange]) -> None:
        self.applied.extend(changes)
        await self.inner.apply(changes)

    async def reject(self, events: Sequence[RejectedEvent]) -> None:
        self.rejected.extend(events)
        await self.inner.reject(events)

    def applied_to(self, sf_id: str) -> list[SalesforceChange]:
        """The changes to one record that were not our own echoes."""
        return [c for c in self.applied if c.sf_id == sf_id and not c.is_echo]


@dataclass(frozen=True)
class Entry:
    """One journal line: a change the sink `applied` or `failed`, or an offset `commit`."""

    kind: str                          # "applied" | "failed" | "commit"
    change: SalesforceChange | None = None
    key: str | None = None             # commit: the sync_state key
    value: dict[str, Any] | None = None  # commit: what was written


@dataclass
class Journal:
    entries: list[Entry] = field(default_factory=list)

    def applied(self, sf_id: str | None = None) -> list[SalesforceChange]:
        return [e.change for e in self.entries if e.kind == "applied" and e.change is not None
                and (sf_id is None or e.change.sf_id == sf_id)]

    def failed(self) -> list[SalesforceChange]:
        return [e.change for e in self.entries if e.kind == "failed" and e.change is not None]

    def committed(self, key: str) -> list[int]:
        """The replay ids written under `key`, in order."""
        return [int(e.value["replay_id"]) for e in self.entries
                if e.kind == "commit" and e.key == key and e.value is not None]

    def commits_ahead_of_apply(self) -> list[str]:
        """Every offset write that covers a delivered event not applied before it -- the
        "offsets only after apply" rule broken (empty when it holds)."""
        delivered = {c.replay_id for c in self.applied() + self.failed() if c.replay_id is not None}
        applied: set[int] = set()
        broken: list[str] = []
        for entry in self.entries:
            if entry.kind == "applied" and entry.change is not None and entry.change.replay_id is not None:
                applied.add(entry.change.replay_id)
            elif entry.kind == "commit" and entry.value is not None:
                committed = entry.value.get("replay_id")
                if not isinstance(committed, int):
                    continue
                missing = sorted(r for r in delivered - applied if r <= committed)
                if missing:
                    broken.append(f"{entry.key} = {committed} written before {missing} were applied")
        return broken


@dataclass
class FlakySink:
    """The real sink, failing on demand: `fail_on(sf_id)` makes the next batch holding a change
    to `sf_id` apply the changes before it and then raise `error` (`RetriableError` by default:
    a transient MongoDB failure; any other exception: the sink dies mid-batch)."""

    inner: ChangeSink
    journal: Journal = field(default_factory=Journal)
    _armed: dict[str, BaseException] = field(default_factory=dict)

    def fail_on(self, sf_id: str, error: BaseException | None = None) -> None:
        self._armed[sf_id] = error or RetriableError(f"injected failure applying {sf_id}")

    async def apply(self, changes: Sequence[SalesforceChange]) -> None:
        for index, change in enumerate(changes):
            error = self._armed.pop(change.sf_id, None)
            if error is not None:
                head = list(changes[:index])
                if head:
                    await self.inner.apply(head)
                self.journal.entries.extend(Entry("applied", c) for c in head)
                self.journal.entries.extend(Entry("failed", c) for c in changes[index:])
                raise error
        await self.inner.apply(changes)
        self.journal.entries.extend(Entry("applied", c) for c in changes)

    async def reject(self, events: Sequence[RejectedEvent]) -> None:
        await self.inner.reject(events)


@dataclass
class JournalingStateStore:
    """The real `sync_state` store; every write is journaled once it is stored."""

    inner: StateStore
    journal: Journal

    async def load_state(self, key: str) -> dict[str, Any] | None:
        return await self.inner.load_state(key)

    async def save_state(self, key: str, value: dict[str, Any], *, fence: Any = None) -> None:
        await self.inner.save_state(key, value, fence=fence)
        self.journal.entries.append(Entry("commit", key=key, value=dict(value)))
