"""A ChangeSink wrapper (a seam, not a patch): the real sink, with what reached it kept."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from reconciler.ports import ChangeSink, RejectedEvent, SalesforceChange


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
