"""Which records have open failed sync logs, as this process knows them.

Resolving failures (`LogsMixin._resolve_failures`) looks sync logs up only for the records of a
success that are in this set: SecantusDB answered the lookup by scanning every sync log (0.4 s per
inbound micro-batch at 20,000 logs), and most successes have no failure to resolve.

It is a superset of the truth, so no failure goes unresolved for want of a lookup:

- a record's key is added before its failed log is inserted and again once it is (a lookup or a
  load that began in between may not have seen the log);
- a key is dropped only when a lookup found no open failure left for it and no failure was
  added for it since that lookup began;
- the set is read from the database when first needed, again after `RELOAD_SECONDS`, and again
  when the store is told others may have logged failures (`forget`: a new leader term, since
  the previous leader's failures are not in this process's set);
- past `MAX_KEPT` open failures it is not kept at all: every record is looked up, as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

Key = tuple[str, str, str]  # (source, "sf_id" | "local_id", id): `reconciler.sync_logs.record_keys`

# A failure another writer logged outside our terms (a stalled ex-leader's last write) is
# picked up within this long.
RELOAD_SECONDS = 60.0
# Past this many open failures the set is not kept (memory): every success is looked up, as
# before the set existed, until a reload finds fewer.
MAX_KEPT = 50_000


class OpenFailures:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._keys: dict[Key, int] = {}  # key -> sequence number of the last failure added for it
        self._seq = 0
        self._loaded_at: float | None = None
        self._monotonic = monotonic
        self._everything = False  # too many to keep: every key is a candidate

    def stale(self) -> bool:
        """Must the set be read from the database before it is used?"""
        return self._loaded_at is None or self._monotonic() - self._loaded_at >= RELOAD_SECONDS

    def forget(self) -> None:
        self._loaded_at = None

    def mark(self) -> int:
        """Call when a lookup or load begins; pass the result to `loaded` / `settled`."""
        return self._seq

    def add(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self._seq += 1
            self._keys[key] = self._seq

    def loaded(self, keys: Iterable[Key], since: int, *, complete: bool = True) -> None:
        """The open failures' keys as a load begun at `since` read them; not `complete`: there
        were more than `MAX_KEPT` (every key counts as a candidate until the next load)."""
        self._keys = {key: seq for key, seq in self._keys.items() if seq > since}
        self._everything = not complete
        if complete:
            for key in keys:
                self._keys.setdefault(key, 0)
        self._loaded_at = self._monotonic()

    def candidates(self, keys: Iterable[Key]) -> set[Key]:
        """The keys that may have open failures (to look up)."""
        return set(keys) if self._everything else {key for key in keys if key in self._keys}

    def settled(self, looked_up: Iterable[Key], still_open: Iterable[Key], since: int) -> None:
        """A lookup begun at `since` of `looked_up` left failures naming `still_open` open."""
        remaining = set(still_open)
        for key in looked_up:
            if key not in remaining and self._keys.get(key, since + 1) <= since:
                del self._keys[key]
