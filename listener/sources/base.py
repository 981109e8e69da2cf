"""The contract every inbound source keeps, so the shell can run, switch and report any of them.

A source reads Salesforce changes and hands them to a `ChangeSink`; it stores its own offsets
(replay ids, watermarks) in `sync_state` only after the sink applied what they cover.

Handover between sources is data, not calls into each other: before a source starts, the shell
passes it the marks the previous one left (`resume_from`), and a source that stops leaves its
marks behind (`handover_marks`), so a new source type never needs the shell edited:

- the poller's marks are its watermarks; the stream resumes from its replay ids and skips what
  the poller already covered;
- the stream leaves watermarks just before its last applied commit, which the poller reads.

Fencing is one path for every source (`term_fence`): a source given `fence` reads the leader
term once when a run (stream) or pass (poller) starts and writes its offsets and watermarks
under it; with no term to write for, it writes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from reconciler.errors import BudgetExhaustedError, FencedError, RetriableError
from reconciler.store import Fence
from reconciler.watermark import Watermark

HandoverMarks = dict[str, Watermark]  # per Salesforce object


class ReplayIdInvalidError(RetriableError):
    """A stored replay id of `channel` cannot be resumed from (outside the retention window, or
    otherwise invalid): poll, then subscribe for new events only. The same for either stream API."""

    def __init__(self, message: str, channel: str | None) -> None:
        super().__init__(message)
        self.channel = channel


class DeliveryLimitError(BudgetExhaustedError):
    """The org's daily event delivery allocation is spent: switch to polling."""


class TokenSource(Protocol):
    """The part of `SalesforceClient` a stream needs."""

    @property
    def instance_url(self) -> str: ...

    async def access_token(self) -> str: ...

    async def reauthenticate(self) -> str: ...


@runtime_checkable
class Source(Protocol):
    """One inbound source. `run` returns when `stop` is set (after committing what it applied)
    or when it cannot go on (e.g. the CDC allocation is spent); it raises `FatalError` only
    for what a restart will not cure."""

    name: str  # "stream", "poller", ... (shown in /api/status `source`)

    @property
    def ready(self) -> bool:
        """Changes flow: connected (stream) or a pass loop running (poller)."""
        ...

    def status(self) -> dict[str, Any]:
        """Source-specific status for /api/status (`replay_ids`, `queue_depth`, ...)."""
        ...

    async def handover_marks(self) -> HandoverMarks:
        """Where the next source should continue from, per object."""
        ...

    def resume_from(self, marks: HandoverMarks) -> None:
        """Marks left by the previous source, taken before `run`."""
        ...

    async def run(self, stop: asyncio.Event) -> None: ...


def term_fence(fence: Callable[[], Fence | None] | None, who: str) -> Fence | None:
    """The leader term a run or pass writes for (read once when it starts); none to write for: refused."""
    if fence is None:
        return None
    term = fence()
    if term is None:
        raise FencedError(f"{who}: no leader term to write for")
    return term


__all__ = ["HandoverMarks", "Source", "term_fence"]
