"""Fakes for the CDC stream's seams: a scripted CometD session, a catch-up that never polls, a
CometD Lead change message, and a `CdcStream` wired to a scripted session (`scripted_stream`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from listener.sources._sfstream_compat import CommittedReplayIds
from listener.sources.cometd import CdcStream, StreamOptions
from reconciler.ports import RejectedEvent, SalesforceChange
from reconciler.watermark import Watermark

CHANNEL = "/data/LeadChangeEvent"
OWNER = "005000000000001AAA"  # mapped to u-1 in LEAD_NAME_MAPPINGS
COMMIT_MS = 1_714_557_600_000  # 2024-05-01T10:00:00Z


def lead_id(n: int) -> str:
    return f"00Q{n:012d}AAA"


def event(replay_id: int, *, header: dict[str, Any] | None = None, fields: dict[str, Any] | None = None,
          drop_header: bool = False) -> dict[str, Any]:
    """A CometD message on CHANNEL: a Lead CREATE (id `lead_id(replay_id)`) owned by OWNER;
    `header` and `fields` edit its ChangeEventHeader and payload, `drop_header` leaves the header out."""
    head: dict[str, Any] = {
        "entityName": "Lead", "recordIds": [lead_id(replay_id)], "changeType": "CREATE",
        "changeOrigin": "com/salesforce/api/rest/62.0", "transactionKey": f"tx-{replay_id}",
        "commitTimestamp": COMMIT_MS, "changedFields": [], "nulledFields": [],
    }
    head.update(header or {})
    payload: dict[str, Any] = {"LastName": f"Valid{replay_id}", "Company": "Acme", "OwnerId": OWNER,
                               **(fields or {})}
    if not drop_header:
        payload["ChangeEventHeader"] = head
    return {"channel": CHANNEL, "data": {"payload": payload, "event": {"replayId": replay_id}}}


class ScriptedSession:
    """A CometD session that delivers `messages`, then waits (a quiet channel)."""

    def __init__(self, messages: Sequence[dict[str, Any]]) -> None:
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for m in messages:
            self._queue.put_nowait(m)

    def deliver(self, message: dict[str, Any]) -> None:
        self._queue.put_nowait(message)

    async def open(self, channels: Sequence[str]) -> None:
        return None

    async def receive(self) -> dict[str, Any] | RejectedEvent:
        return await self._queue.get()

    async def close(self) -> None:
        return None


class NoCatchUp:
    """Every channel has a stored replay id: the stream never polls."""

    async def run_once(self, objects: Sequence[str] | None = None, *, through_now: bool = False) -> Any:
        raise AssertionError("no poll expected")

    async def poll_since(self, sobject: str, since: Any) -> int:
        raise AssertionError("no poll expected")

    async def fetch_by_ids(self, sobject: str, ids: Any) -> list[SalesforceChange]:
        raise AssertionError("no fetch expected")

    async def watermark(self, sobject: str) -> Watermark:
        return Watermark()


def scripted_stream(store: Any, sink: Any, session: ScriptedSession, *, batch_size: int = 10,
                    stop_deadline: float = 5.0, **kwargs: Any) -> CdcStream:
    """A `CdcStream` on Lead whose CometD session is `session` (no Salesforce, no catch-up poll);
    `kwargs` go to `CdcStream` (a fence, say)."""
    def factory(replay: CommittedReplayIds) -> ScriptedSession:
        return session

    options = StreamOptions("salesforce-sync", "62.0", batch_size=batch_size, stop_deadline=stop_deadline)
    return CdcStream(sf=object(), store=store, sink=sink, catch_up=NoCatchUp(),  # type: ignore[arg-type]
                     objects=["Lead"], options=options, session_factory=factory, **kwargs)
