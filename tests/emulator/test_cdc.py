"""The emulator's CDC event bus: Salesforce-shaped change events, replay ids and retention."""

from __future__ import annotations

from typing import Any

import pytest

from emulator.cdc import (
    ALL_CHANGE_EVENTS,
    EMPTY_RECORD_ID,
    ChangeEventBus,
    channel_for,
    dotted_field,
    schema_id,
)

HEADER_FIELDS = {
    "entityName",
    "recordIds",
    "changeType",
    "changeOrigin",
    "transactionKey",
    "sequenceNumber",
    "commitTimestamp",
    "commitNumber",
    "commitUser",
    "nulledFields",
    "diffFields",
    "changedFields",
}


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def publish(bus: ChangeEventBus, entity: str = "Lead", change_type: str = "CREATE", **overrides: Any) -> int:
    arguments: dict[str, Any] = {
        "entity": entity,
        "change_type": change_type,
        "record_ids": ["00Q000000000001AAA"],
        "record": {"LastName": "Lovelace", "Company": "Analytical Engines"},
        "changed_fields": [],
        "nulled_fields": [],
        "diff_fields": [],
        "change_origin": "com/salesforce/api/rest/62.0;client=salesforce-sync",
        "transaction_key": "0001a2b3-0000-0000-0000-000000000001",
        "sequence_number": 1,
        "commit_user": "005000000000001AAA",
        "commit_timestamp_ms": 1_700_000_000_000,
        "commit_number": 42,
    }
    arguments.update(overrides)
    return bus.publish_change(**arguments)


def last_payload(bus: ChangeEventBus) -> dict[str, Any]:
    payload: dict[str, Any] = bus.retained()[-1].data["payload"]
    return payload


class TestChangeEventShape:
    def test_event_has_salesforce_message_structure(self) -> None:
        """An event carries schema, payload (with ChangeEventHeader) and event.replayId."""
        bus = ChangeEventBus()
        replay_id = publish(bus)
        event = bus.retained()[-1]
        assert event.channel == "/data/LeadChangeEvent"
        assert set(event.data) == {"schema", "payload", "event"}
        assert event.data["event"] == {"replayId": replay_id}
        assert len(event.data["schema"]) == 22
        assert event.data["schema"] == schema_id("Lead") != schema_id("Contact")

    def test_header_carries_every_documented_field(self) -> None:
        """The header has all ChangeEventHeader fields with the values of the write."""
        bus = ChangeEventBus()
        publish(bus)
        header = last_payload(bus)["ChangeEventHeader"]
        assert set(header) == HEADER_FIELDS
        assert header["entityName"] == "Lead"
        assert header["recordIds"] == ["00Q000000000001AAA"]
        assert header["changeOrigin"] == "com/salesforce/api/rest/62.0;client=salesforce-sync"
        assert header["commitTimestamp"] == 1_700_000_000_000
        assert header["commitNumber"] == 42
        assert header["sequenceNumber"] == 1

    def test_create_lists_no_changed_fields(self) -> None:
        """Like Salesforce, changedFields is empty for a CREATE."""
        bus = ChangeEventBus()
        publish(bus, changed_fields=["LastName", "Company"])
        assert last_payload(bus)["ChangeEventHeader"]["changedFields"] == []

    def test_delete_carries_the_header_only(self) -> None:
        """A DELETE event has no field values."""
        bus = ChangeEventBus()
        publish(bus, change_type="DELETE")
        assert set(last_payload(bus)) == {"ChangeEventHeader"}

    def test_update_shows_nulled_fields_as_null(self) -> None:
        """Fields set to null in an update are listed in nulledFields and carried as null."""
        bus = ChangeEventBus()
        publish(
            bus,
            change_type="UPDATE",
            record={"Title": "CTO"},
            changed_fields=["Title", "Phone", "LastModifiedDate"],
            nulled_fields=["Phone"],
        )
        payload = last_payload(bus)
        assert payload["Title"] == "CTO"
        assert payload["Phone"] is None
        assert payload["ChangeEventHeader"]["nulledFields"] == ["Phone"]
        assert payload["ChangeEventHeader"]["changedFields"] == ["Title", "Phone", "LastModifiedDate"]


class TestCompoundFields:
    @pytest.mark.parametrize(
        ("entity", "record", "compound", "nested"),
        [
            (
                "Lead",
                {"FirstName": "Ada", "LastName": "Lovelace", "Salutation": "Ms."},
                "Name",
                {"FirstName": "Ada", "LastName": "Lovelace", "Salutation": "Ms."},
            ),
            (
                "Lead",
                {"City": "London", "Street": "1 Main St"},
                "Address",
                {"City": "London", "Street": "1 Main St"},
            ),
            (
                "Contact",
                {"FirstName": "Grace", "LastName": "Hopper"},
                "Name",
                {"FirstName": "Grace", "LastName": "Hopper"},
            ),
            ("Contact", {"MailingCity": "Arlington"}, "MailingAddress", {"City": "Arlington"}),
            (
                "Account",
                {"BillingCity": "Paris", "BillingCountry": "FR"},
                "BillingAddress",
                {"City": "Paris", "Country": "FR"},
            ),
        ],
    )
    def test_components_are_nested(
        self, entity: str, record: dict[str, Any], compound: str, nested: dict[str, Any]
    ) -> None:
        """Compound fields arrive nested, components named as in the event schema."""
        bus = ChangeEventBus()
        publish(bus, entity=entity, record=record)
        payload = last_payload(bus)
        assert payload[compound] == nested
        assert not set(record) & set(payload) - {compound}

    @pytest.mark.parametrize(
        ("entity", "field", "dotted"),
        [
            ("Lead", "FirstName", "Name.FirstName"),
            ("Lead", "City", "Address.City"),
            ("Contact", "MailingPostalCode", "MailingAddress.PostalCode"),
            ("Account", "BillingStreet", "BillingAddress.Street"),
            ("Account", "Name", "Name"),
            ("Lead", "Email", "Email"),
        ],
    )
    def test_changed_fields_use_dotted_form(self, entity: str, field: str, dotted: str) -> None:
        """changedFields names compound components as Compound.Component."""
        assert dotted_field(entity, field) == dotted
        bus = ChangeEventBus()
        publish(bus, entity=entity, change_type="UPDATE", record={field: "x"}, changed_fields=[field])
        assert last_payload(bus)["ChangeEventHeader"]["changedFields"] == [dotted]

    def test_read_only_full_name_is_not_carried(self) -> None:
        """A flat Lead Name (the read-only full name) gives way to the compound Name."""
        bus = ChangeEventBus()
        publish(bus, record={"Name": "Ada Lovelace", "FirstName": "Ada", "LastName": "Lovelace"})
        assert last_payload(bus)["Name"] == {"FirstName": "Ada", "LastName": "Lovelace"}

    def test_account_name_stays_flat(self) -> None:
        """Account Name is a plain field."""
        bus = ChangeEventBus()
        publish(bus, entity="Account", record={"Name": "Acme"})
        assert last_payload(bus)["Name"] == "Acme"


class TestReplayIds:
    def test_replay_ids_are_monotonic(self) -> None:
        """Each publish returns a larger replay id than the last."""
        bus = ChangeEventBus()
        ids = [publish(bus, entity=entity) for entity in ("Lead", "Contact", "Account", "Lead")]
        assert ids == sorted(ids) and len(set(ids)) == 4
        assert bus.last_replay_id == ids[-1]

    def test_object_channel_sees_only_its_object(self) -> None:
        """/data/LeadChangeEvent delivers Lead events only; /data/ChangeEvents delivers all."""
        bus = ChangeEventBus()
        lead = publish(bus, entity="Lead")
        publish(bus, entity="Contact")
        lead2 = publish(bus, entity="Lead")
        leads, _ = bus.events_after(0, channel_for("Lead"), 100)
        everything, _ = bus.events_after(0, ALL_CHANGE_EVENTS, 100)
        assert [e.replay_id for e in leads] == [lead, lead2]
        assert len(everything) == 3

    def test_scan_position_skips_other_channels(self) -> None:
        """The returned cursor moves past events of other objects so they are not scanned again."""
        bus = ChangeEventBus()
        publish(bus, entity="Lead")
        last = publish(bus, entity="Contact")
        found, scanned = bus.events_after(0, channel_for("Account"), 100)
        assert found == [] and scanned == last

    def test_limit_bounds_one_read(self) -> None:
        """A read returns at most `limit` events and a cursor at the last one returned."""
        bus = ChangeEventBus()
        ids = [publish(bus) for _ in range(5)]
        found, scanned = bus.events_after(0, channel_for("Lead"), 2)
        assert [e.replay_id for e in found] == ids[:2] and scanned == ids[1]
        rest, _ = bus.events_after(scanned, channel_for("Lead"), 100)
        assert [e.replay_id for e in rest] == ids[2:]

    def test_never_issued_id_is_invalid(self) -> None:
        """A replay id the bus never issued is not valid."""
        bus = ChangeEventBus()
        issued = publish(bus)
        assert bus.is_valid_replay_id(issued)
        assert not bus.is_valid_replay_id(issued + 1)
        assert not bus.is_valid_replay_id(0)


class TestRetention:
    def test_events_expire_after_the_retention_window(self) -> None:
        """Events older than retention_seconds are dropped and their ids become invalid."""
        clock = FakeClock()
        bus = ChangeEventBus(retention_seconds=3600, clock=clock)
        old = publish(bus)
        clock.now += 1800
        recent = publish(bus)
        clock.now += 1801
        assert bus.retained_count == 1
        assert not bus.is_valid_replay_id(old)
        assert bus.is_valid_replay_id(recent)
        found, _ = bus.events_after(0, channel_for("Lead"), 100)
        assert [e.replay_id for e in found] == [recent]

    def test_default_retention_is_72_hours(self) -> None:
        """An event is still replayable just under 72 hours later."""
        clock = FakeClock()
        bus = ChangeEventBus(clock=clock)
        replay_id = publish(bus)
        clock.now += 72 * 3600 - 1
        assert bus.is_valid_replay_id(replay_id)
        clock.now += 2
        assert not bus.is_valid_replay_id(replay_id)

    def test_retained_log_is_bounded(self) -> None:
        """With max_events set, only the newest events are kept however many are published."""
        bus = ChangeEventBus(max_events=1000)
        ids = [publish(bus) for _ in range(5000)]
        assert bus.retained_count == 1000
        assert bus.retained()[0].replay_id == ids[-1000]
        assert not bus.is_valid_replay_id(ids[-1001])


class TestRawAndGapEvents:
    def test_raw_event_is_kept_as_is(self) -> None:
        """A malformed event (no ChangeEventHeader) is stored unchanged, with a replay id added."""
        bus = ChangeEventBus()
        replay_id = bus.publish_raw("/data/LeadChangeEvent", {"payload": {"LastName": "NoHeader"}})
        assert bus.retained()[-1].data == {
            "payload": {"LastName": "NoHeader"},
            "event": {"replayId": replay_id},
        }

    def test_raw_event_on_a_custom_channel_makes_it_exist(self) -> None:
        """Publishing raw to a new channel makes that channel subscribable."""
        bus = ChangeEventBus()
        assert not bus.channel_exists("/event/Custom__e")
        bus.publish_raw("/event/Custom__e", {"payload": {}})
        assert bus.channel_exists("/event/Custom__e")
        assert bus.channel_exists("/data/LeadChangeEvent") and bus.channel_exists(ALL_CHANGE_EVENTS)

    @pytest.mark.parametrize("change_type", ["GAP_CREATE", "GAP_UPDATE", "GAP_DELETE", "GAP_UNDELETE"])
    def test_gap_event_names_records_without_fields(self, change_type: str) -> None:
        """A gap event has a header with the record ids and no field values."""
        bus = ChangeEventBus()
        bus.publish_gap("Contact", change_type, ["003000000000001AAA", "003000000000002AAA"])
        event = bus.retained()[-1]
        header = event.data["payload"]["ChangeEventHeader"]
        assert event.channel == "/data/ContactChangeEvent"
        assert set(event.data["payload"]) == {"ChangeEventHeader"}
        assert set(header) == HEADER_FIELDS
        assert header["changeType"] == change_type
        assert header["recordIds"] == ["003000000000001AAA", "003000000000002AAA"]
        assert header["changeOrigin"] == "" and header["sequenceNumber"] == 1

    def test_gap_needs_a_gap_change_type(self) -> None:
        """Only GAP_* change types make gap events."""
        with pytest.raises(ValueError, match="GAP_"):
            ChangeEventBus().publish_gap("Lead", "UPDATE", ["00Q000000000001AAA"])

    def test_overflow_event_has_entity_and_commit_time_only(self) -> None:
        """An overflow event is GAP_OVERFLOW with the entity, commit time and the empty record id."""
        bus = ChangeEventBus()
        bus.publish_overflow("Account", commit_timestamp_ms=1_700_000_123_000)
        payload = last_payload(bus)
        header = payload["ChangeEventHeader"]
        assert set(payload) == {"ChangeEventHeader"}
        assert header["changeType"] == "GAP_OVERFLOW"
        assert header["entityName"] == "Account"
        assert header["commitTimestamp"] == 1_700_000_123_000
        assert header["recordIds"] == [EMPTY_RECORD_ID]


class TestDeliveryControl:
    def test_listeners_hear_publish_and_resume(self) -> None:
        """Listeners are told about each publish and about resumed delivery."""
        bus = ChangeEventBus()
        calls: list[str] = []
        bus.add_listener(lambda: calls.append("wake"))
        publish(bus)
        bus.pause_delivery()
        paused = bus.paused
        publish(bus)
        bus.resume_delivery()
        assert (paused, bus.paused) == (True, False)
        assert calls == ["wake", "wake", "wake"]

    def test_paused_bus_still_retains_events(self) -> None:
        """Pausing delivery does not stop events being recorded."""
        bus = ChangeEventBus()
        bus.pause_delivery()
        publish(bus)
        assert bus.retained_count == 1
