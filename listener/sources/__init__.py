"""Inbound sources: the CometD CDC stream and SOQL polling, behind one `Source` protocol.

`create_sources` builds every source this service can run, keyed by the budget mode that runs
it; the shell switches between them knowing only the `Source` protocol. A new source (say
Salesforce's Pub/Sub API) is one module here and one entry in `create_sources`.
"""

from __future__ import annotations

from listener.budget import BudgetGovernor, Mode
from listener.salesforce import SalesforceClient
from listener.sources.base import HandoverMarks, Source
from listener.sources.cometd import CatchUp, CdcStream, StreamOptions
from listener.sources.polling import Poller
from listener.sources.pubsub import PubSubOptions, PubSubStream
from reconciler.ports import ChangeSink
from reconciler.store import Store
from settings import Mappings, Settings


def create_sources(*, settings: Settings, mappings: Mappings, sf: SalesforceClient, store: Store,
                   sink: ChangeSink, governor: BudgetGovernor) -> dict[Mode, Source]:
    """The source each mode runs: `streaming` the CDC stream (CometD, or the Pub/Sub API when
    `SFSYNC_SYNC__STREAM_API=pubsub`), `polling` the poller."""
    sync = settings.sync
    poller = Poller(sf, store, sink, mappings, sync.objects, every_minutes=sync.frequency_minutes)
    stream: Source
    if sync.stream_api == "pubsub":
        stream = PubSubStream(sf=sf, store=store, sink=sink, catch_up=poller, objects=sync.objects,
                              options=PubSubOptions.from_settings(settings), governor=governor)
    else:
        stream = CdcStream(sf=sf, store=store, sink=sink, catch_up=poller, objects=sync.objects,
                           options=StreamOptions.from_settings(settings), governor=governor)
    return {Mode.STREAMING: stream, Mode.POLLING: poller}


__all__ = ["CatchUp", "CdcStream", "HandoverMarks", "Poller", "PubSubOptions", "PubSubStream", "Source",
           "StreamOptions", "create_sources"]
