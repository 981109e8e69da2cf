"""The stream's intake: CometD session -> bounded queue -> micro-batches -> `process`, with a bounded stop.

    session.receive --reader task--> bounded queue (reader waits when full: back-pressure)
                                          |
                          MicroBatcher (size- and time-bounded) --> process(batch)

- `stop` while waiting for a batch: items already taken are dropped (uncommitted, they are
  redelivered), `commit` stores what was applied, `run` returns.
- `stop` while a batch is in flight (issue 11 item 4): the batch gets `stop_deadline` seconds
  to finish, then it is cancelled and `run` returns without committing it (it is redelivered).
- `run` itself cancelled (the leader term ended): the batch is cancelled too, and `run` waits
  until it has unwound. Nothing started here outlives `run`.
- The reader's error (a lost session) ends `run` with that error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import structlog

from listener.metrics import METRICS
from listener.sources.batching import MicroBatcher
from listener.sources.cdc_batch import Message

log = structlog.get_logger(__name__)


class Receiver(Protocol):
    async def receive(self) -> Message: ...


class BatchIntake:
    """Feeds one session's messages to `process` in micro-batches until `stop` or an error."""

    def __init__(self, session: Receiver, process: Callable[[list[Message]], Coroutine[Any, Any, None]],
                 commit: Callable[[], Awaitable[None]], *, batch_size: int, batch_wait: float,
                 stop_deadline: float) -> None:
        self._session = session
        self._process = process
        self._commit = commit
        self._queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=batch_size * 2)
        self._batcher = MicroBatcher(self._queue, max_items=batch_size, max_wait=batch_wait)
        self.stop_deadline = stop_deadline

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def run(self, stop: asyncio.Event) -> None:
        reader = asyncio.create_task(self._read())
        stopping = asyncio.create_task(stop.wait())
        try:
            while True:
                taking = asyncio.create_task(self._batcher.next_batch())
                done, _ = await asyncio.wait({taking, reader, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if taking not in done:
                    # Items already taken are dropped: uncommitted, they are redelivered later.
                    taking.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await taking
                    await self._commit()  # what was applied stays applied
                    if reader in done:
                        reader.result()  # raises the reader's error
                    return
                if not await self._run_batch(taking.result(), stopping):
                    return  # stopped mid-batch: that batch is redelivered after the restart
                METRICS.set("sfsync_queue_depth", self._queue.qsize(), queue="inbound")
        finally:
            for task in (reader, stopping):
                task.cancel()
            await asyncio.gather(reader, stopping, return_exceptions=True)

    async def _run_batch(self, messages: list[Message], stopping: asyncio.Task[Any]) -> bool:
        """Process one batch; False when it was abandoned at stop (see the module docstring)."""
        work = asyncio.create_task(self._process(messages))
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                await asyncio.wait({work}, timeout=self.stop_deadline)
            if not work.done():
                log.warning("stream_batch_cancelled_at_stop", events=len(messages),
                            deadline_seconds=self.stop_deadline)
        finally:
            if not work.done():
                work.cancel()
                await asyncio.wait({work})  # until it has unwound: no write of it runs after this
        if work.cancelled():
            return False
        work.result()  # the batch's error, if any
        return True

    async def _read(self) -> None:
        while True:
            await self._queue.put(await self._session.receive())  # waits when full: back-pressure


__all__ = ["BatchIntake", "Receiver"]
