"""The stream's intake: receivers -> bounded queue -> micro-batches -> `process`, with a bounded stop.

    receiver.receive --reader task each--> bounded queue (a reader waits when full: back-pressure)
                                                |
                                MicroBatcher (size- and time-bounded) --> process(batch)

Receivers: the CometD session (one), or one per Pub/Sub subscription (`pubsub.subscriptions`).

- `stop` while waiting for a batch: items already taken are dropped (uncommitted, they are
  redelivered), `commit` stores what was applied, `run` returns.
- `stop` while a batch is in flight (issue 11 item 4): the batch gets `stop_deadline` seconds
  to finish, then it is cancelled and `run` returns without committing it (it is redelivered).
- `run` itself cancelled (the leader term ended): the batch is cancelled too, and `run` waits
  until it has unwound. Nothing started here outlives `run`.
- A reader's error (a lost session or subscription) ends `run` with that error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, Protocol, TypeVar

import structlog

from listener.metrics import METRICS
from listener.sources.batching import MicroBatcher

log = structlog.get_logger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Receiver(Protocol[T_co]):
    async def receive(self) -> T_co: ...


class BatchIntake(Generic[T]):
    """Feeds the receivers' items to `process` in micro-batches until `stop` or an error."""

    def __init__(self, receivers: Sequence[Receiver[T]],
                 process: Callable[[list[T]], Coroutine[Any, Any, None]],
                 commit: Callable[[], Awaitable[None]], *, batch_size: int, batch_wait: float,
                 stop_deadline: float) -> None:
        self._receivers = list(receivers)
        self._process = process
        self._commit = commit
        self._queue: asyncio.Queue[T] = asyncio.Queue(maxsize=batch_size * 2)
        self._batcher = MicroBatcher(self._queue, max_items=batch_size, max_wait=batch_wait)
        self.stop_deadline = stop_deadline

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def run(self, stop: asyncio.Event) -> None:
        readers = {asyncio.create_task(self._read(r)) for r in self._receivers}
        stopping = asyncio.create_task(stop.wait())
        try:
            while True:
                taking = asyncio.create_task(self._batcher.next_batch())
                done, _ = await asyncio.wait({taking, stopping, *readers},
                                             return_when=asyncio.FIRST_COMPLETED)
                if taking not in done:
                    # Items already taken are dropped: uncommitted, they are redelivered later.
                    taking.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await taking
                    await self._commit()  # what was applied stays applied
                    for reader in readers & done:
                        reader.result()  # raises the reader's error
                    return
                if not await self._run_batch(taking.result(), stopping):
                    return  # stopped mid-batch: that batch is redelivered after the restart
                METRICS.set("sfsync_queue_depth", self._queue.qsize(), queue="inbound")
        finally:
            for task in (*readers, stopping):
                task.cancel()
            await asyncio.gather(*readers, stopping, return_exceptions=True)

    async def _run_batch(self, messages: list[T], stopping: asyncio.Task[Any]) -> bool:
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

    async def _read(self, receiver: Receiver[T]) -> None:
        while True:
            await self._queue.put(await receiver.receive())  # waits when full: back-pressure


__all__ = ["BatchIntake", "Receiver"]
