"""Inbound sources: the CDC stream (CometD or the Pub/Sub API) and SOQL polling, behind one `Source` protocol.

`create_sources` builds every source this service can run, keyed by the budget mode that runs
it; the shell switches between them knowing only the `Source` protocol. A new source is one
module here and one entry in `create_sources`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from listener.budget import BudgetGovernor, Mode
from listener.salesforce import SalesforceClient
from listener.sources.base import HandoverMarks, Source
from listener.sources.cometd import CatchUp, CdcStream, StreamOptions
from listener.sources.polling import Poller, SalesforceTime
from reconciler.ports import ChangeSink
from reconciler.store import Fence, Store
from settings import Mappings, Settings

if TYPE_CHECKING:
    from listener.sources.pubsub import PubSubOptions, PubSubStream

_PUBSUB_NAMES = ("PubSubOptions", "PubSubStream")


def __getattr__(name: str) -> Any:
    # The Pub/Sub source (gRPC, protobuf, Avro: 13 MiB of RSS) is imported only when used.
    if name in _PUBSUB_NAMES:
        from listener.sources import pubsub
        return getattr(pubsub, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_sources(*, settings: Settings, mappings: Mappings, sf: SalesforceClient, store: Store,
                   sink: ChangeSink, governor: BudgetGovernor,
                   sf_clock: SalesforceTime | None = None,
                   fence: Callable[[], Fence | None] | None = None) -> dict[Mode, Source]:
    """The source each mode runs: `streaming` the CDC stream (CometD, or the Pub/Sub API when
    `SFSYNC_SYNC__STREAM_API=pubsub`), `polling` the poller.

    `sf_clock` (a `listener.salesforce_time.SalesforceClock` fed by the client's transport)
    puts polling signposts on Salesforce's clock; without it they are on this host's. `fence`
    returns the current leader term's `Fence` (read once per stream run / poll pass): offset
    and watermark writes are then refused once another term holds the lease."""
    sync = settings.sync
    every_minutes = sync.poll_seconds / 60 or sync.frequency_minutes
    poller = Poller(sf, store, sink, mappings, sync.objects, every_minutes=every_minutes,
                    sf_clock=sf_clock, overlap=timedelta(seconds=sync.poll_overlap_seconds), fence=fence)
    stream: Source
    if sync.stream_api == "pubsub":
        from listener.sources.pubsub import PubSubOptions, PubSubStream
        stream = PubSubStream(sf=sf, store=store, sink=sink, catch_up=poller, objects=sync.objects,
                              options=PubSubOptions.from_settings(settings), governor=governor, fence=fence)
    else:
        stream = CdcStream(sf=sf, store=store, sink=sink, catch_up=poller, objects=sync.objects,
                           options=StreamOptions.from_settings(settings), governor=governor, fence=fence)
    return {Mode.STREAMING: stream, Mode.POLLING: poller}


__all__ = ["CatchUp", "CdcStream", "HandoverMarks", "Poller", "PubSubOptions", "PubSubStream", "Source",
           "StreamOptions", "create_sources"]
