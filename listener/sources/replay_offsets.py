"""The stream's replay ids, per channel: applied (in memory), pending, committed (stored).

    load() -> the stored ids (what a session resumes from)
    applied({channel: id})   after the sink applied a batch: the ids move, in memory only
    commit()                 writes the pending ids to `sync_state` (`{"replay_id": ...}`,
                             journaled majority, in the store)

An id is only ever committed after the changes it covers were applied. With a `fence` (the
leader term the stream runs for), a commit after another term took the lease is refused with
`FencedError`. Two kinds of id:

- `ReplayOffsets` (CometD): integers under `replay:<channel>`, never moving back (`max` here,
  `$max` in the store); a commit also tells the session, so a library-driven re-subscribe
  never skips events; `is_applied` drops what a reconnect redelivered.
- `PubSubOffsets` (Pub/Sub API): Salesforce's opaque bytes under `pubsub_replay:<channel>`,
  stored as they came; the newest delivered wins (they are not ordered for clients);
  `forget` drops a channel whose id the server refused (it then subscribes LATEST).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from listener.sources._sfstream_compat import CommittedReplayIds
from reconciler.ports import StateStore
from reconciler.store import Fence
from reconciler.store.state_keys import pubsub_replay_key, replay_key

R = TypeVar("R", int, bytes)


class _Offsets(Generic[R]):
    """Applied / pending / committed ids of one kind, for the channels of one stream."""

    def __init__(self, store: StateStore, channels: Sequence[str]) -> None:
        self._store = store
        self._channels = list(channels)
        self._applied: dict[str, R] = {}   # newest id applied (or stored), per channel
        self._pending: dict[str, R] = {}   # applied, not yet committed, per channel
        self.fence: Fence | None = None

    @property
    def applied_ids(self) -> dict[str, R]:
        return dict(self._applied)

    async def _load_ids(self) -> dict[str, R]:
        """The stored ids (channels without a usable one are left out: subscribe for new events)."""
        ids: dict[str, R] = {}
        for channel in self._channels:
            state = await self._store.load_state(self._key(channel))
            value = self._usable(state.get("replay_id") if state else None)
            if value is not None:
                ids[channel] = self._applied[channel] = value
        return ids

    def applied(self, offsets: dict[str, R]) -> None:
        for channel, replay_id in offsets.items():
            newest = self._advance(self._applied.get(channel), replay_id)
            if newest != self._applied.get(channel):
                self._pending[channel] = self._applied[channel] = newest

    async def commit(self) -> None:
        """Durably store the ids of applied events (journaled majority, in the store)."""
        for channel, replay_id in sorted(self._pending.items()):
            await self._store.save_state(self._key(channel), {"replay_id": replay_id}, fence=self.fence)
            self._committed(channel, replay_id)
            del self._pending[channel]

    def _key(self, channel: str) -> str:
        raise NotImplementedError

    def _usable(self, value: object) -> R | None:
        raise NotImplementedError

    def _advance(self, current: R | None, replay_id: R) -> R:
        raise NotImplementedError

    def _committed(self, channel: str, replay_id: R) -> None:
        return None


class ReplayOffsets(_Offsets[int]):
    """CometD's integer replay ids."""

    def __init__(self, store: StateStore, channels: Sequence[str]) -> None:
        super().__init__(store, channels)
        self._session: CommittedReplayIds | None = None

    async def load(self) -> CommittedReplayIds:
        self._session = CommittedReplayIds(await self._load_ids())
        return self._session

    def is_applied(self, channel: str, replay_id: int) -> bool:
        return replay_id <= self._applied.get(channel, -1)

    def _key(self, channel: str) -> str:
        return replay_key(channel)

    def _usable(self, value: object) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    def _advance(self, current: int | None, replay_id: int) -> int:
        return replay_id if current is None else max(current, replay_id)

    def _committed(self, channel: str, replay_id: int) -> None:
        if self._session is not None:
            self._session.commit(channel, replay_id)


class PubSubOffsets(_Offsets[bytes]):
    """The Pub/Sub API's opaque replay ids (bytes)."""

    async def load(self) -> dict[str, bytes]:
        return await self._load_ids()

    def forget(self, channel: str) -> None:
        self._applied.pop(channel, None)
        self._pending.pop(channel, None)

    def _key(self, channel: str) -> str:
        return pubsub_replay_key(channel)

    def _usable(self, value: object) -> bytes | None:
        return bytes(value) if isinstance(value, bytes) and value else None

    def _advance(self, current: bytes | None, replay_id: bytes) -> bytes:
        return replay_id  # items of one channel arrive in order: the last one is the newest


__all__ = ["PubSubOffsets", "ReplayOffsets"]
