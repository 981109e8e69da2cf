"""Every source takes the leader term the same way (`listener.sources.base.term_fence`): given a
`fence`, it reads the term once when a run (stream) or pass (poller) starts, and with no term to
write for it refuses to run before it reads or writes anything."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from listener.sources import Source
from listener.sources.polling import Poller
from listener.sources.pubsub import PubSubOptions, PubSubStream
from reconciler.errors import FencedError
from tests.support.mappings import LEAD_NAME_MAPPINGS
from tests.support.pubsub_fakes import ScriptedPubSub
from tests.support.stream_fakes import NoCatchUp, ScriptedSession, scripted_stream


class Untouched:
    """A store, sink and Salesforce that fail the test if the source uses any of them."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} used before the term was known")


def no_term() -> None:
    return None


def cometd(fence: Callable[[], Any]) -> Source:
    return scripted_stream(Untouched(), Untouched(), ScriptedSession([]), fence=fence)


def pubsub(fence: Callable[[], Any]) -> Source:
    org = ScriptedPubSub()
    options = PubSubOptions("salesforce-sync", batch_size=10)
    return PubSubStream(sf=Untouched(), store=Untouched(), sink=Untouched(),  # type: ignore[arg-type]
                        catch_up=NoCatchUp(), objects=["Lead"], options=options, connect=org.connect,
                        fence=fence)


def poller(fence: Callable[[], Any]) -> Source:
    return Poller(Untouched(), Untouched(), Untouched(), LEAD_NAME_MAPPINGS, ["Lead"],  # type: ignore[arg-type]
                  fence=fence)


class TestNoTermNoRun:
    @pytest.mark.parametrize(("build", "who"), [(cometd, "stream"), (pubsub, "stream"), (poller, "poller")])
    async def test_without_a_leader_term_a_source_refuses_to_run(
            self, build: Callable[[Callable[[], Any]], Source], who: str) -> None:
        """`run` raises `FencedError` naming the source, having touched nothing."""
        source = build(no_term)
        with pytest.raises(FencedError, match=f"^{who}: no leader term to write for$"):
            await asyncio.wait_for(source.run(asyncio.Event()), 5)
