"""Planted bugs for showing that the chaos oracle catches them (issue 14). TEST-ONLY.

How a plant reaches the service, with no change to the service's code:

- `Environment(plant=NAME)` starts both replicas with `PYTHONPATH` led by `bench/chaos/plant_site/`
  and with `SFSYNC_TEST_PLANT=NAME` and `SFSYNC_TEST_PLANTS_ALLOWED=1` in their environment.
- Python imports `sitecustomize` from the path at start-up, before `-m listener` runs: the one in
  `plant_site/` calls `install()` below, which replaces one attribute of one service module (a
  function the service looks up through its module at call time), then the service starts as usual
  and logs nothing different except one `SFSYNC_TEST_PLANT active: NAME` line on stderr.
- Nothing in the service imports this module or reads these variables. A service started
  any other way (the CLI, Docker, the e2e tests) never has `plant_site/` on its path; with it on
  the path but `SFSYNC_TEST_PLANT` unset, `sitecustomize` does nothing. An unknown name, or a
  name without `SFSYNC_TEST_PLANTS_ALLOWED=1`, stops the process before it starts (exit 70).

The plants, one rule each (what the oracle should then report is in `EXPECTED`):

- `echo_filter`: `listener.events.is_echo` always False, so our own writes coming back over CDC
  are applied as Salesforce changes (and the stale-event check, which would refuse the echo of
  an earlier value, off);
- `offset_order`: the CometD stream commits a batch's replay ids *before* it fetches gaps and
  applies the batch (`CdcStream._process` with the two halves swapped), so a batch whose apply
  fails or is cut short is never redelivered. The apply then waits APPLY_DELAY seconds, so that
  a kill or stop of the leader right after a Salesforce edit falls in the window; its baseline
  is the control `slow_apply` (the same wait, the service's order), not a plain run;
- `blank_rule`: `is_blank` always False wherever the rule is applied (the merge core, conversion
  merges, `local_to_sf`, the outbox, the outbound request builder), so a blank is data: it wins
  by time and is written to the other side;
- `conversion_relink`: `reconciler.conversion.relink` does nothing, so a converted Lead's Person
  stays on the Lead and the Contact makes a Person of its own;
- `remerge`: a mappings edit's remerge merges no record (`reconciler.remerge._remerge_object`
  reports every page done) and still saves the new mappings' hash, so a field the edit mapped
  never takes the data Salesforce already holds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

PLANT_VAR = "SFSYNC_TEST_PLANT"
ALLOW_VAR = "SFSYNC_TEST_PLANTS_ALLOWED"
SITE_DIR = Path(__file__).with_name("plant_site")
REFUSED_EXIT = 70
APPLY_DELAY = 1.0  # seconds a batch waits before its apply, in `offset_order` and its control

# plant -> the violation classes (oracle checks) it should produce
EXPECTED: dict[str, frozenset[str]] = {
    "echo_filter": frozenset({"logs", "loop", "lost_change"}),
    "offset_order": frozenset({"lost_change"}),
    "blank_rule": frozenset({"lost_change", "loop"}),
    "conversion_relink": frozenset({"duplicate", "lost_change"}),
    "remerge": frozenset({"lost_change"}),
}
PLANTS = tuple(EXPECTED)
# not a bug: the same slow apply as `offset_order`, in the right order (that plant's baseline)
CONTROLS = ("slow_apply",)


def service_env(plant: str) -> dict[str, str]:
    """The extra environment of a replica started with `plant` (see the module docstring)."""
    if plant not in PLANTS + CONTROLS:
        raise ValueError(f"unknown plant {plant!r}; known: {', '.join(PLANTS + CONTROLS)}")
    root = str(Path(__file__).resolve().parents[2])
    path = [str(SITE_DIR), root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {PLANT_VAR: plant, ALLOW_VAR: "1", "PYTHONPATH": os.pathsep.join(path)}


def install() -> None:
    """Called from `plant_site/sitecustomize.py` in a replica's process, before the service runs."""
    plant = os.environ.get(PLANT_VAR, "")
    if not plant:
        return
    if os.environ.get(ALLOW_VAR) != "1" or plant not in PLANTS + CONTROLS:
        sys.stderr.write(f"{PLANT_VAR}={plant!r} refused (test-only; needs {ALLOW_VAR}=1 and one of "
                         f"{', '.join(PLANTS + CONTROLS)})\n")
        sys.stderr.flush()
        os._exit(REFUSED_EXIT)
    {"echo_filter": _echo_filter, "offset_order": _offset_order, "blank_rule": _blank_rule,
     "conversion_relink": _conversion_relink, "slow_apply": _slow_apply, "remerge": _remerge}[plant]()
    sys.stderr.write(f"{PLANT_VAR} active: {plant}\n")
    sys.stderr.flush()


def _echo_filter() -> None:
    import listener.events as events
    import reconciler.inbound_shadow as inbound_shadow

    def never_an_echo(change_origin: str | None, client_name: str) -> bool:
        return False

    def never_replaced(doc: Any, sobject: str, sf_field: str, at: Any) -> bool:
        return False

    events.is_echo = never_an_echo
    # the echo of an earlier value is also refused as older than our later write of the field
    # (`inbound_shadow._replaced_since`): off too, or the echo would be caught there
    inbound_shadow._replaced_since = never_replaced


def _blank_rule() -> None:
    import reconciler.conversion as conversion
    import reconciler.merge as merge
    import reconciler.outbound as outbound
    import reconciler.outbox as outbox
    import reconciler.records as records

    def never_blank(value: Any) -> bool:
        return False

    # every module that applies the rule looks `is_blank` up in its own globals at call time
    for module in (records, merge, conversion, outbox, outbound):
        setattr(module, "is_blank", never_blank)  # noqa: B010


def _conversion_relink() -> None:
    import reconciler.conversion as conversion

    async def no_relink(reconciler: Any, changes: Any, *, attempt: int = 1) -> conversion.Relinked:
        return conversion.Relinked()

    conversion.relink = no_relink


def _offset_order() -> None:
    """`CdcStream._process` as in listener/sources/cometd.py, the offsets committed first, and
    the apply APPLY_DELAY seconds later (as in `slow_apply`) so that a process fault can fall
    between the two."""
    import asyncio
    from datetime import UTC, datetime

    import listener.sources.cometd as cometd
    from listener.sources.cdc_batch import apply_batch, sort_batch

    async def process_offsets_first(self: Any, messages: Any, policy: Any) -> None:
        batch = sort_batch(messages, client_name=self.options.client_name, objects=set(self.objects),
                           already_applied=self._offsets.is_applied, covered=self._handover.covers,
                           latest=datetime.now(UTC) + cometd.LATEST_AHEAD)
        self._offsets.applied(batch.offsets)  # planted: committed before the apply below
        await self._offsets.commit()
        policy.committed()
        await asyncio.sleep(APPLY_DELAY)  # a slow apply: the window a process fault falls in
        await apply_batch(batch, sink=self._sink, catch_up=self._catch_up)
        self._handover.saw_commits(batch.committed_at)

    cometd.CdcStream._process = process_offsets_first  # type: ignore[method-assign]


def _slow_apply() -> None:
    """The control of `offset_order`: every batch waits APPLY_DELAY seconds, then is processed
    as the service does it (applied, then its offsets committed)."""
    import asyncio

    import listener.sources.cometd as cometd

    process = cometd.CdcStream._process

    async def slow_process(self: Any, messages: Any, policy: Any) -> None:
        await asyncio.sleep(APPLY_DELAY)
        await process(self, messages, policy)

    cometd.CdcStream._process = slow_process  # type: ignore[method-assign]


def _remerge() -> None:
    import reconciler.remerge as remerge

    async def merge_nothing(*args: Any, **kwargs: Any) -> bool:
        return True  # every page "done", none merged: the new hash is saved all the same

    setattr(remerge, "_remerge_object", merge_nothing)  # noqa: B010


__all__ = ["ALLOW_VAR", "APPLY_DELAY", "CONTROLS", "EXPECTED", "PLANTS", "PLANT_VAR", "SITE_DIR", "install",
           "service_env"]
