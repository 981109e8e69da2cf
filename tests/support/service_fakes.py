"""Fakes for the service's parts (seams, not patches): a Source, a governor's mode, a lease."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from listener.budget import Mode
from listener.sources import HandoverMarks
from reconciler.store import Fence


@dataclass
class FakeSource:
    """A `Source` that runs until stopped, leaves `marks`, and records what it was handed."""

    name: str
    marks: HandoverMarks = field(default_factory=dict)
    ready: bool = False
    runs: int = 0
    taken_over: list[HandoverMarks] = field(default_factory=list)
    replay_ids: dict[str, int] = field(default_factory=dict)
    queue_depth: int = 0

    def status(self) -> dict[str, Any]:
        return {"replay_ids": dict(self.replay_ids), "queue_depth": self.queue_depth}

    async def handover_marks(self) -> HandoverMarks:
        return dict(self.marks)

    def resume_from(self, marks: HandoverMarks) -> None:
        self.taken_over.append(marks)

    async def run(self, stop: asyncio.Event) -> None:
        self.runs += 1
        self.ready = True
        try:
            await stop.wait()
        finally:
            self.ready = False


class FakeModes:
    """The governor's mode, set by the test."""

    def __init__(self, mode: Mode) -> None:
        self.current = mode
        self._changed = asyncio.Event()

    def set(self, mode: Mode) -> None:
        self.current = mode
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for_change(self, seen: Mode) -> Mode:
        while self.current is seen:
            await self._changed.wait()
        return self.current


@dataclass(frozen=True)
class FakeHolder:
    owner: str


@dataclass
class FakeLease:
    """A lease whose availability the test decides: `free` means this owner may take it."""

    owner: str = "me"
    ttl: float = 0.3
    free: bool = True
    other: str = "other-replica"
    releases: int = 0
    term: int = 0  # goes up each time this owner takes the lease (not on renewals)
    _held: bool = False

    @property
    def renew_every(self) -> float:
        return self.ttl / 3

    def held(self) -> bool:
        return self._held

    def seconds_left(self) -> float:
        return self.ttl / 2 if self._held else 0.0

    def fence(self) -> Fence | None:
        return Fence("sync", self.owner, self.term) if self._held else None

    async def acquire(self) -> bool:
        if self.free and not self._held:
            self.term += 1
        self._held = self.free
        return self.free

    async def release(self) -> bool:
        self.releases += 1
        self._held = False
        return True

    async def holder(self) -> FakeHolder | None:
        return None if self.free else FakeHolder(self.other)
