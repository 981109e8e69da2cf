"""The CDC stream over Salesforce's Pub/Sub API (gRPC + Avro), beside the CometD one.

`PubSubStream` is a `Source` (`listener.sources.base`); `create_sources` picks it for the
streaming mode when `SFSYNC_SYNC__STREAM_API=pubsub`. The `.proto` and its generated stubs live
in `_proto/` (committed; regenerate with `python -m listener.sources.pubsub._proto.generate`).
"""

from __future__ import annotations

from listener.sources.pubsub.source import DEFAULT_ENDPOINT, PubSubOptions, PubSubStream

__all__ = ["DEFAULT_ENDPOINT", "PubSubOptions", "PubSubStream"]
