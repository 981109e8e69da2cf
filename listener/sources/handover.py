"""Where the stream and the poller meet: catch-up and closing polls, and the watermarks left behind.

- Into the stream: a channel with no usable replay id is subscribed with -1 (new events) and
  closed over by a poll (catch-up poll, subscribe, closing poll, then consume); events the poll
  already covered are skipped (`covers`, by the poll's `Watermark`s).
- Out of the stream: when it stops, each object's watermark is moved up to just before the
  newest commit the stream applied (`HANDOVER_MARGIN`), never back, so the poller does not
  re-read what the stream did.

Nothing is committed during the handover: the closing poll runs before events are consumed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from reconciler.errors import RetriableError
from reconciler.ports import SalesforceChange, StateStore
from reconciler.soql import floor_second
from reconciler.store import Fence
from reconciler.store.state_keys import watermark_key
from reconciler.watermark import Watermark

log = structlog.get_logger(__name__)

# When the stream hands over to the poller, the poller re-reads this much before the last
# applied commit: SystemModstamp and commitTimestamp are close but not guaranteed equal.
HANDOVER_MARGIN = timedelta(seconds=2)


class CatchUp(Protocol):
    """What the stream needs of a poller: catch-up and closing polls, gap and overflow reads,
    and the watermark it hands over to (implemented by `listener.sources.polling.Poller`)."""

    async def run_once(self, objects: Sequence[str] | None = None, *, through_now: bool = False) -> Any: ...

    async def poll_since(self, sobject: str, since: datetime) -> int: ...

    async def fetch_by_ids(self, sobject: str, ids: Iterable[str]) -> list[SalesforceChange]: ...

    async def watermark(self, sobject: str) -> Watermark: ...

    async def wait_until_covered(self) -> None: ...


class PollHandover:
    """The poll marks the stream skips by, the closing polls it owes, the commits it saw."""

    def __init__(self, catch_up: CatchUp, store: StateStore) -> None:
        self._catch_up = catch_up
        self._store = store
        self._poll_marks: dict[str, Watermark] = {}  # what a poll covered, per object
        self._last_commit: dict[str, datetime] = {}  # newest applied commit time, per object
        self._closing_poll: set[str] = set()
        self.fence: Fence | None = None  # the leader term the stream writes for

    def resume_after_poll(self, marks: dict[str, Watermark]) -> None:
        """Skip replayed events the poller already applied (handover poll -> stream)."""
        self._poll_marks.update(marks)

    def covers(self, change: SalesforceChange) -> bool:
        mark = self._poll_marks.get(change.sobject)
        return mark is not None and mark.covers(change.sf_id, floor_second(change.changed_at))

    @property
    def closing_poll_owed(self) -> bool:
        return bool(self._closing_poll)

    def owe_closing_poll(self, objects: Iterable[str]) -> None:
        """These objects are (about to be) subscribed with -1: poll once the subscription holds."""
        self._closing_poll.update(objects)

    async def close_over_with_poll(self) -> None:
        """After subscribing with -1: poll what changed before the subscription took effect.

        The poller's signpost is Salesforce's time less a safety lag and excludes its current
        second, so the poll first waits until a pass would cover every change made before the
        subscription (`wait_until_covered`, on Salesforce's clock). It reads past its signpost
        (`through_now`; the watermark still stops below it): a record changed before the
        subscription and again since sits past the signpost, and the later change's event
        carries only its own fields.
        """
        if self._closing_poll:
            objects = sorted(self._closing_poll)
            await self._catch_up.wait_until_covered()
            await self.poll(objects, through_now=True)
            self._closing_poll.clear()

    async def poll(self, objects: Sequence[str], *, through_now: bool = False) -> None:
        await self._catch_up.run_once(objects, through_now=through_now)
        for sobject in objects:
            self._poll_marks[sobject] = await self._catch_up.watermark(sobject)

    def saw_commits(self, committed_at: dict[str, datetime]) -> None:
        """The newest Salesforce commit applied, per object (from one applied batch)."""
        for sobject, at in committed_at.items():
            self._last_commit[sobject] = max(at, self._last_commit.get(sobject, at))

    async def checkpoint_watermarks(self) -> None:
        """Hand over to the poller: its watermark need not reach back before the stream's work."""
        for sobject, committed in self._last_commit.items():
            ts = floor_second(committed - HANDOVER_MARGIN)
            try:
                current = await self._catch_up.watermark(sobject)
                if current.ts is None or ts > current.ts:
                    await self._store.save_state(watermark_key(sobject), Watermark(ts).to_state(),
                                                 fence=self.fence)
            except RetriableError as exc:
                log.warning("stream_watermark_checkpoint_failed", object=sobject, error=str(exc))


__all__ = ["HANDOVER_MARGIN", "CatchUp", "PollHandover"]
