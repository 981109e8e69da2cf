"""The source switch: run the `Source` the governor's mode asks for, switch on every mode change.

Which source a mode runs is `listener.sources.create_sources`'s choice (`streaming` the CDC
stream, `polling` the poller every SFSYNC_SYNC__FREQUENCY_MINUTES); a mode without a source
(`paused`, `starting`) runs none. A switch stops the running source (it finishes its batch and
commits) before the next one starts, and the next one starts from the marks the last one left
(`handover_marks()` -> `resume_from()`), so this module knows no source by name:

- stream -> poller: the stream leaves a watermark just before its last applied commit, so the
  poller continues from there (not from an older watermark);
- poller -> stream: the stream resumes from its stored replay id and skips the events the
  poller already covered; without a usable replay id it subscribes with -1 and polls around
  the subscription.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog

from listener.budget import Mode
from listener.sources import Source
from reconciler.errors import FatalError, FencedError, SyncError
from reconciler.pacing import sleep_unless_stopped

log = structlog.get_logger(__name__)

# A source that ends by itself while its mode holds is restarted after this pause (no spinning).
RESTART_PAUSE_SECONDS = 1.0
# A cancelled source gets this long to end (its `finally` blocks) before the switch gives up on it.
CANCEL_GRACE_SECONDS = 2.0


class ModeSignal(Protocol):
    """The budget governor as the switch sees it."""

    @property
    def current(self) -> Mode: ...

    async def wait_for_change(self, seen: Mode) -> Mode: ...


class SourceSwitch:
    """Runs one source at a time; `running` is the source started last, until it has stopped."""

    def __init__(self, governor: ModeSignal, sources: Mapping[Mode, Source], *,
                 drain_seconds: Callable[[], float],
                 on_fenced: Callable[[Exception], None] | None = None) -> None:
        self._governor = governor
        self._sources = sources
        self._drain_seconds = drain_seconds  # the term's current stop budget
        self._on_fenced = on_fenced  # a source's write was refused: end the term (`LeaderTerm.fenced`)
        self.running: Source | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Run the source the mode asks for; switch on every mode change; return on `stop`."""
        previous: Source | None = None
        while not stop.is_set():
            mode = self._governor.current
            source = self._sources.get(mode)
            log.info("source_starting", mode=mode.value, previous=previous.name if previous else None)
            source_stop = asyncio.Event()
            task = None
            if source is not None:
                self.running = source
                task = asyncio.create_task(_run_after(source, previous, source_stop), name=source.name)
                previous = source
            await self._until_switch(stop, mode, task)
            source_stop.set()
            if task is not None:
                await self._finish(task)
                if self._governor.current is mode:  # the source ended by itself
                    await sleep_unless_stopped(stop, RESTART_PAUSE_SECONDS)
            self.running = None

    async def _until_switch(self, stop: asyncio.Event, mode: Mode, task: asyncio.Task[None] | None) -> None:
        """Wait for `stop`, a mode change, or the source ending, whichever comes first."""
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait()),
                                            asyncio.ensure_future(self._governor.wait_for_change(mode))]
        try:
            await asyncio.wait([*waits, *([task] if task else [])], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _finish(self, task: asyncio.Task[None]) -> None:
        """Let the stopping source finish its batch within its share of the drain time, then
        cancel it. Nothing outlives the switch: if the switch is cancelled meanwhile, so is the
        source, and the cancellation returns once it has ended (no `asyncio.shield` here)."""
        name = self.running.name if self.running else None
        try:
            done, _ = await asyncio.wait({task}, timeout=self._drain_seconds() * 0.6)
        except asyncio.CancelledError:
            await cancel_and_wait(task, name)
            raise
        if not done:
            log.warning("source_stop_timeout", source=name)
            await cancel_and_wait(task, name)
            return
        try:
            task.result()
        except FatalError:
            raise
        except FencedError as exc:
            log.warning("source_fenced", source=name, error=str(exc))
            if self._on_fenced is not None:
                self._on_fenced(exc)
        except SyncError as exc:
            log.warning("source_failed", source=name, error=str(exc), error_type=type(exc).__name__)


async def cancel_and_wait(task: asyncio.Task[None], name: str | None,
                          grace: float = CANCEL_GRACE_SECONDS) -> None:
    """Cancel `task` and wait (at most `grace`) until it has ended; log what it raised."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        log.error("source_did_not_stop", source=name, grace_seconds=grace)
    elif not task.cancelled() and task.exception() is not None:
        error = task.exception()
        log.warning("source_failed", source=name, error=str(error), error_type=type(error).__name__,
                    exc_info=error)


async def _run_after(source: Source, previous: Source | None, stop: asyncio.Event) -> None:
    """Run `source`, first taking over the marks `previous` left (a switch, not a restart)."""
    if previous is not None and previous is not source:
        source.resume_from(await previous.handover_marks())
    await source.run(stop)


__all__ = ["CANCEL_GRACE_SECONDS", "RESTART_PAUSE_SECONDS", "ModeSignal", "SourceSwitch", "cancel_and_wait"]
