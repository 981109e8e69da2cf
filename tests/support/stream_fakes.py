"""Fakes for the CDC stream's seams: a scripted CometD session and a catch-up that never polls."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from reconciler.ports import RejectedEvent, SalesforceChange
from reconciler.watermark import Watermark


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

    async def run_once(self, objects: Sequence[str] | None = None) -> Any:
        raise AssertionError("no poll expected")

    async def poll_since(self, sobject: str, since: Any) -> int:
        raise AssertionError("no poll expected")

    async def fetch_by_ids(self, sobject: str, ids: Any) -> list[SalesforceChange]:
        raise AssertionError("no fetch expected")

    async def watermark(self, sobject: str) -> Watermark:
        return Watermark()
