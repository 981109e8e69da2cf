"""The stream's replay ids, per channel: applied (in memory), pending, committed (stored).

    load() -> CommittedReplayIds (what the CometD session resumes from)
    applied({channel: id})   after the sink applied a batch: the ids move, in memory only
    commit()                 writes the pending ids to `sync_state` `replay:<channel>` =
                             `{"replay_id": N}` (journaled majority, in the store), then tells
                             the session, so a library-driven re-subscribe never skips events

An id is only ever committed after the changes it covers were applied; ids never move back
(the store writes them with `$max`). With a `fence` (the leader term the stream runs for),
a commit after another term took the lease is refused with `FencedError`.
"""

from __future__ import annotations

from collections.abc import Sequence

from listener.sources._sfstream_compat import CommittedReplayIds
from reconciler.ports import StateStore
from reconciler.store import Fence
from reconciler.store.state_keys import replay_key


class ReplayOffsets:
    """Replay id bookkeeping for the channels of one stream."""

    def __init__(self, store: StateStore, channels: Sequence[str]) -> None:
        self._store = store
        self._channels = list(channels)
        self._applied: dict[str, int] = {}   # highest replay id applied, per channel
        self._pending: dict[str, int] = {}   # applied, not yet committed, per channel
        self._session: CommittedReplayIds | None = None
        self.fence: Fence | None = None

    @property
    def applied_ids(self) -> dict[str, int]:
        return dict(self._applied)

    async def load(self) -> CommittedReplayIds:
        """The stored replay ids (channels without a usable one are left out: subscribe -1)."""
        ids: dict[str, int] = {}
        for channel in self._channels:
            state = await self._store.load_state(replay_key(channel))
            value = state.get("replay_id") if state else None
            if isinstance(value, int) and value >= 0:
                ids[channel] = value
                self._applied[channel] = value
        self._session = CommittedReplayIds(ids)
        return self._session

    def is_applied(self, channel: str, replay_id: int) -> bool:
        return replay_id <= self._applied.get(channel, -1)

    def applied(self, offsets: dict[str, int]) -> None:
        for channel, replay_id in offsets.items():
            self._pending[channel] = max(replay_id, self._pending.get(channel, -1))
            self._applied[channel] = max(replay_id, self._applied.get(channel, -1))

    async def commit(self) -> None:
        """Durably store the replay ids of applied events (journaled majority, in the store)."""
        for channel, replay_id in sorted(self._pending.items()):
            await self._store.save_state(replay_key(channel), {"replay_id": replay_id}, fence=self.fence)
            if self._session is not None:
                self._session.commit(channel, replay_id)
            del self._pending[channel]


__all__ = ["ReplayOffsets"]
