"""The process around the service: the admin surface, signals, and restarts.

The admin HTTP surface starts first and outlives restarts of the `Service`, so `/healthz`
answers and `/readyz` says why while MongoDB or Salesforce is unreachable. A transient failure
that ends the service restarts it after a backoff instead of exiting the container; a fatal one
(bad credentials, a mapping Salesforce refuses) is a configuration error: one line, exit 2.

The restart backoff is `reconciler.pacing.Backoff` with *full jitter*: restart n waits
uniform(1 s, min(60 s, 2 s * 2**n)) -- the same ceilings as before (2, 4, 8 ... 60 s), never
sooner than a second, and replicas that failed together spread out.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from reconciler.errors import FatalError, RetriableError
from reconciler.pacing import Backoff, sleep_unless_stopped
from reconciler.store import Store
from service.admin import AdminServer, JobRunner, create_admin_app, start_admin
from service.alerts import alert_watch
from service.supervisor import SHUTDOWN_SECONDS, Service
from settings import ConfigError, Mappings, Settings
from settings.redaction import redact_text

log = structlog.get_logger(__name__)

RESTART_BASE_SECONDS = 2.0
RESTART_CAP_SECONDS = 60.0
RESTART_FLOOR_SECONDS = 1.0


class Unreachable(Exception):
    """MongoDB or Salesforce stayed unreachable for `SFSYNC_SYNC__GIVE_UP_SECONDS`: exit 3."""


async def run_service(settings: Settings, mappings: Mappings, stop: asyncio.Event | None = None, *,
                      handle_signals: bool = True) -> int:
    """Run until SIGTERM/SIGINT (or `stop`); 0 on a clean stop.

    The admin surface starts first and outlives restarts, so `/healthz` answers and `/readyz`
    says why while MongoDB or Salesforce is unreachable. A transient failure that ends the
    service restarts it after a backoff with jitter instead of exiting the container. Raises
    `ConfigError` (one line: a port in use, a URI the driver refuses, credentials or mappings
    Salesforce refuses) and `Unreachable` (nothing answered within `give_up_seconds`, if set).
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    slot = ServiceSlot()
    admin = await start_admin_surface(settings, slot)
    alerts_stop = asyncio.Event()
    watch = alert_watch(settings, slot)  # None unless SFSYNC_ALERTS__WEBHOOK_URL is set
    alerts = asyncio.create_task(watch.run(alerts_stop), name="alerts") if watch else None
    try:
        return await _restart_loop(settings, mappings, slot, stop)
    finally:
        alerts_stop.set()
        if alerts is not None:
            await asyncio.wait({alerts}, timeout=2)
            alerts.cancel()
        await admin.stop()
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _restart_loop(settings: Settings, mappings: Mappings, slot: ServiceSlot,
                        stop: asyncio.Event) -> int:
    loop = asyncio.get_running_loop()
    give_up = settings.sync.give_up_seconds
    backoff = Backoff(base=RESTART_BASE_SECONDS, cap=RESTART_CAP_SECONDS, floor=RESTART_FLOOR_SECONDS)
    failing_since = loop.time()
    while True:
        service = Service(settings, mappings)
        slot.current = service
        outcome = await _run_once(service, stop)
        if not isinstance(outcome, Restart):
            return outcome
        if service.connected:  # this life got through start-up: a new streak of failures begins
            failing_since = loop.time()
        reason = redact_text(outcome.reason or "a transient failure")
        if service.failed_while:
            reason = f"{service.failed_while} failed: {reason}"
        delay = backoff.next_delay()
        if give_up:
            left = give_up - (loop.time() - failing_since)
            if left <= 0:
                raise Unreachable(f"sfsync: gave up after {give_up:g} s (SFSYNC_SYNC__GIVE_UP_SECONDS): "
                                  f"{reason}")
            delay = min(delay, left)
        slot.waiting = f"restarting in {delay:.0f} s after: {reason}"
        log.warning("service_restarting", attempt=backoff.attempt, delay_seconds=round(delay, 1))
        if await sleep_unless_stopped(stop, delay):
            return 0


async def start_admin_surface(settings: Settings, slot: ServiceSlot) -> AdminServer:
    """The admin HTTP surface over whichever service `slot` holds; a port already taken is a
    `ConfigError` naming `SFSYNC_ADMIN__PORT`."""
    admin = settings.admin
    app = create_admin_app(status=slot, store=slot, jobs=slot,
                           token=admin.token.get_secret_value() if admin.token else None,
                           instance_url=settings.salesforce.login_url, settings=admin)
    try:
        return await start_admin(app, admin.host, admin.port)
    except OSError as exc:
        raise ConfigError(f"SFSYNC_ADMIN__PORT: cannot listen on {admin.host}:{admin.port}: "
                          f"{exc.strerror or exc} (is another service using it? choose another port)"
                          ) from None


class ServiceSlot:
    """The admin surface's view of whichever `Service` currently runs (restarts replace it)."""

    def __init__(self) -> None:
        self.current: Service | None = None
        self.waiting: str | None = None

    def status(self) -> dict[str, Any]:
        if self.current is None:
            return {"mode": "starting"}
        return self.current.status()

    def ready(self) -> tuple[bool, str]:
        if self.current is None:
            return False, "starting"
        ready, reason = self.current.ready()
        if ready:
            self.waiting = None
        elif self.waiting:
            reason = f"not running: {self.waiting}" if reason == "stopping" else f"{reason} ({self.waiting})"
        return ready, redact_text(reason)  # a probe is unauthenticated: no secret in a reason

    def _store(self) -> Store:
        if self.current is None:
            raise RetriableError("the service is starting: MongoDB is not connected yet")
        return self.current.sync_log_store()

    def _jobs(self) -> JobRunner:
        """The current service's jobs: only a leader's (a standby raises `NotLeaderError`, 409)."""
        if self.current is None:
            raise RetriableError("the service is starting: retry and import are not available yet")
        return self.current.job_runner()

    async def find_sync_logs(self, **filters: Any) -> tuple[list[dict[str, Any]], str | None]:
        return await self._store().find_sync_logs(**filters)

    async def get_sync_log(self, log_id: str) -> dict[str, Any] | None:
        return await self._store().get_sync_log(log_id)

    async def get_sync_logs(self, log_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return await self._store().get_sync_logs(log_ids)

    async def retry(self, log_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._jobs().retry(log_id)
        return result

    async def retry_failed(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._jobs().retry_failed()
        return result

    async def import_record(self, sf_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._jobs().import_record(sf_id)
        return result


@dataclass(frozen=True)
class Restart:
    """A transient failure ended the service: restart it after a backoff."""

    reason: str


async def _run_once(service: Service, stop: asyncio.Event) -> int | Restart:
    """One life of the service: an exit code, or `Restart` after a transient failure."""
    task = asyncio.create_task(service.run(stop))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            log.info("service_stopping", timeout_seconds=SHUTDOWN_SECONDS)
            try:
                await asyncio.wait_for(task, SHUTDOWN_SECONDS)
            except TimeoutError:
                log.error("service_stop_timeout")
                return 1
        task.result()
        return 0
    except FatalError as exc:
        # Refused credentials, a mapping Salesforce rejects: configuration, one line, exit 2.
        log.error("service_failed", error=str(exc), error_type=type(exc).__name__)
        raise ConfigError(redact_text(f"sfsync: {exc}")) from None
    except RetriableError as exc:
        if stop.is_set():
            return 0
        log.warning("service_interrupted", error=str(exc), error_type=type(exc).__name__)
        return Restart(str(exc))
    finally:
        stopper.cancel()


__all__ = ["ServiceSlot", "Unreachable", "run_service", "start_admin_surface"]
