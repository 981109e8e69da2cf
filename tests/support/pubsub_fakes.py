"""Fakes for the Pub/Sub source's seam (`connect`): a scripted connection, and Avro-encoded events.

`ScriptedPubSub.connect` is the `PubSubStream(connect=...)` factory; every connection serves one
subscription per topic that delivers what `deliver` was given (one `FetchResponse` per call) and
raises what `respond` was given as an exception; the FetchRequests each subscription was sent are
kept (`subscriptions[i].requests`).
`lead_event` builds a `ConsumerEvent` for the emulator's Lead schema; `fields` may override the
Avro record's values directly (a date-time as epoch ms, say), `payload` replaces the bytes.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import fastavro

from emulator.pubsub_avro import _record, object_schema
from listener.sources.pubsub._proto import pubsub_api_pb2 as pb

LEAD = object_schema("Lead")
COMMIT_MS = 1_714_557_600_000  # 2024-05-01T10:00:00Z


def lead_id(n: int) -> str:
    return f"00Q{n:012d}AAA"


def replay(n: int) -> bytes:
    return n.to_bytes(8, "big")


def lead_event(n: int, *, header: dict[str, Any] | None = None, fields: dict[str, Any] | None = None,
               payload: bytes | None = None, owner: str = "005000000000001AAA") -> Any:
    """Lead `n` created by another client, replay id `n` (8 bytes)."""
    if payload is None:
        head: dict[str, Any] = {
            "entityName": "Lead", "recordIds": [lead_id(n)], "changeType": "CREATE",
            "changeOrigin": "com/salesforce/api/rest/62.0", "transactionKey": f"tx-{n}", "sequenceNumber": 1,
            "commitTimestamp": COMMIT_MS, "commitNumber": n, "commitUser": owner,
            "changedFields": [], "nulledFields": [], "diffFields": [], **(header or {})}
        body = {"ChangeEventHeader": head, "Name": {"LastName": f"Valid{n}"}, "Company": "Acme",
                "OwnerId": owner}
        record = {**_record(body, LEAD), **(fields or {})}
        out = io.BytesIO()
        fastavro.schemaless_writer(out, LEAD.parsed, record)
        payload = out.getvalue()
    return pb.ConsumerEvent(event=pb.ProducerEvent(id=f"e{n}", schema_id=LEAD.schema_id, payload=payload),
                            replay_id=replay(n))


class ScriptedSubscription:
    """One Subscribe call: the FetchRequests it was sent, the responses of the connection's queue."""

    def __init__(self, topic: str, first: Any, responses: asyncio.Queue[Any]) -> None:
        self.topic = topic
        self.requests = [first]
        self.cancelled = False
        self._responses = responses

    async def request(self, fetch: Any) -> None:
        self.requests.append(fetch)

    async def read(self) -> Any:
        item = await self._responses.get()
        if isinstance(item, Exception):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled = True


class ScriptedPubSub:
    """Serves the Lead topic; what `deliver` (or `respond`) gets arrives on the current
    subscription. Every `connect` returns this one org, counted in `connections`; every
    Subscribe call is kept in `subscriptions`, `GetSchema` calls in `schema_calls`."""

    def __init__(self, *batches: list[Any]) -> None:
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        self.connections = 0
        self.subscriptions: list[ScriptedSubscription] = []
        self.schema_calls = 0
        for events in batches:
            self.deliver(*events)

    def deliver(self, *events: Any) -> None:
        self.respond(pb.FetchResponse(events=list(events)))

    def respond(self, response: Any) -> None:
        """A FetchResponse (events, or a keepalive), or an exception the subscription raises."""
        self._responses.put_nowait(response)

    def connect(self) -> ScriptedPubSub:
        self.connections += 1
        return self

    async def get_topic(self, topic: str) -> Any:
        return pb.TopicInfo(topic_name=topic, can_subscribe=True, schema_id=LEAD.schema_id)

    async def get_schema(self, schema_id: str) -> Any:
        self.schema_calls += 1
        return pb.SchemaInfo(schema_id=schema_id, schema_json=LEAD.schema_json)

    async def subscribe(self, topic: str, first: Any) -> ScriptedSubscription:
        subscription = ScriptedSubscription(topic, first, self._responses)
        self.subscriptions.append(subscription)
        return subscription

    async def close(self) -> None:
        return None
