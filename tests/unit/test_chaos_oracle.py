"""The chaos run's reference model (bench/chaos/oracle.py): what each side may hold after a
history of acknowledged writes. Pure: acks in, allowed value sets out."""

from __future__ import annotations

from typing import Any

import pytest

from bench.chaos.operations import Ack, Entity
from bench.chaos.oracle import Model, Observed, check

T0 = 1_000_000.0  # acknowledgement times, epoch seconds
LEAD = "00Q000000000001AAA"


def lead_entity() -> Entity:
    return Entity("L1", "Lead", "people", "salesforce", sf_id=LEAD, local_id="p1", bound_at=T0)


def account_entity() -> Entity:
    return Entity("A1", "Account", "companies", "platform", sf_id="001000000000001AAA", local_id="c1",
                  bound_at=T0)


def sf(at: float, **fields: Any) -> Ack:
    return Ack(f"s{at}", "sf_update", "salesforce", "L1", T0 + at, "ok", "Lead", fields)


def pf(at: float, slot: str = "L1", sobject: str = "Lead", **fields: Any) -> Ack:
    return Ack(f"p{at}", "pf_edit", "platform", slot, T0 + at, "ok", sobject, fields)


def feed(acks: list[Ack], faults: list[dict[str, Any]] | None = None) -> Model:
    model = Model()
    entities = {"L1": lead_entity(), "A1": account_entity()}
    model.feed(acks, entities, faults or [])
    return model


def allowed_sf(model: Model, slot: str, name: str) -> set[Any]:
    return model.entities[slot].fields[name].sf


def fault(kind: str, at: float) -> dict[str, Any]:
    return {"kind": kind, "at": T0 + at, "status": "injected"}


# (history, field, what Salesforce may hold at the end, why)
IN_FLIGHT = [
    # salesforce_unless_blank on a blank Salesforce field: two quick platform edits may reach
    # Salesforce as one (the outbox sends the platform's current value), so either may stand
    ([pf(0, "A1", "Account", industry="Consulting"), pf(0.2, "A1", "Account", industry="Retail")],
     ("A1", "industry"), {"Consulting", "Retail"}, "coalesced into the later value"),
    # ... but one sent long before the next edit is Salesforce's data, which the rule keeps
    ([pf(0, "A1", "Account", industry="Consulting"), pf(30, "A1", "Account", industry="Retail")],
     ("A1", "industry"), {"Consulting"}, "sent before the next edit"),
    # a platform value blanked before it was sent: blanks are never written, so Salesforce
    # keeps what it had before the superseded value, or the value if it went out in time
    ([sf(0, Phone=None), pf(10, phone="+1 1"), pf(11, phone="")],
     ("L1", "phone"), {None, "+1 1"}, "superseded by a blank"),
    ([sf(0, City="Old"), pf(10, city="new"), pf(40, city=None)],
     ("L1", "city"), {"new"}, "sent long before it was blanked"),
]


class TestPlatformWritesInFlight:
    @pytest.mark.parametrize(("acks", "where", "expected", "why"), IN_FLIGHT, ids=[r[3] for r in IN_FLIGHT])
    def test_what_salesforce_may_hold(self, acks: list[Ack], where: tuple[str, str], expected: set[Any],
                                      why: str) -> None:
        assert allowed_sf(feed(acks), *where) == expected, why

    def test_a_blank_over_an_edit_of_a_field_the_model_never_saw_in_salesforce(self) -> None:
        """Salesforce's value before the unsent edit is unknown (a Person created on the platform
        without it): after the blank the model cannot say what Salesforce holds (seed 25147, P7)."""
        model = feed([pf(0, phone="+1 1"), pf(1.5, phone="")])
        assert not model.entities["L1"].fields["phone"].sf_known

    def test_a_fault_that_holds_outbound_back_widens_the_window(self) -> None:
        """A leader killed just before the edit: the edit may still be queued 3 s later, when it is
        blanked (chaos seed 25147, L24.city)."""
        acks = [sf(0, City="Old"), pf(10, city="new"), pf(13.2, city=None)]
        assert allowed_sf(feed(acks), "L1", "city") == {"new"}
        assert allowed_sf(feed(acks, [fault("kill_leader", 9)]), "L1", "city") == {"new", "Old"}


class TestConversionSnapshot:
    def convert(self, at: float, **lead: Any) -> Ack:
        return Ack(f"c{at}", "sf_convert", "salesforce", "L1", T0 + at, "ok", "Lead",
                   {"lead_before": lead, "ConvertedContactId": "003000000000001AAA",
                    "ConvertedAccountId": "001000000000009AAA"})

    def test_a_platform_edit_not_yet_sent_when_the_lead_converts_is_no_violation(self) -> None:
        """The platform edited the phone 60 ms before the conversion: the Lead may still hold the
        old value (the edit reaches the Contact through the conversion's merge)."""
        model = feed([sf(0, Phone="+1 0"), pf(5, phone="+1 5"), self.convert(5.06, Phone="+1 0")])
        assert model.early == []
        assert allowed_sf(model, "L1", "phone") >= {"+1 5"}

    def test_a_platform_edit_lost_before_the_conversion_is_a_violation(self) -> None:
        """Sent long before the conversion, the Lead must hold it."""
        model = feed([sf(0, Phone="+1 0"), pf(5, phone="+1 5"), self.convert(40, Phone="+1 0")])
        assert [v.check for v in model.early] == ["lost_change"]


class TestEchoLogs:
    def observed(self, model: Model, new: str, old: str = "x") -> Observed:
        log = {"_id": 1, "source": "salesforce", "status": "success", "type": "update", "sf_id": LEAD,
               "fields": {"last_name": {"old": old, "new": new}}}
        return Observed(acks=[], entities={"L1": lead_entity()}, sf_records={}, people=[], companies=[],
                        sync_logs=[log], writes=[], state_writes=[], faults=[], barrier_ok=True,
                        barrier_detail="", idle_writes=0, idle_local_changes=0)

    def test_a_salesforce_side_log_of_a_value_only_the_platform_wrote_is_an_echo(self) -> None:
        model = feed([sf(0, LastName="Sf"), pf(10, last_name="Pf")])
        assert [v.check for v in check(self.observed(model, "Pf"), model) if v.check == "logs"] == ["logs"]

    def test_a_same_field_conflict_may_converge_on_the_platforms_value_through_salesforce(self) -> None:
        """Both sides wrote the field within WINDOW: the platform's value may win in Salesforce after
        the platform took Salesforce's, and then come back as Salesforce's current value (seed 25147,
        L1.last_name): a real change on the platform, not an echo."""
        model = feed([pf(0, last_name="Pf"), sf(1.1, LastName="Sf")])
        assert [v for v in check(self.observed(model, "Pf", old="Sf"), model) if v.check == "logs"] == []

    def test_an_echo_over_the_platforms_later_edit_is_still_an_echo(self) -> None:
        """The planted echo_filter bug: the echo of an earlier platform value comes back over the
        platform's later edit; a Salesforce write nearby does not excuse it."""
        model = feed([pf(0, last_name="Pf"), sf(1.1, LastName="Sf"), pf(1.5, last_name="Pf2")])
        found = [v.check for v in check(self.observed(model, "Pf", old="Pf2"), model) if v.check == "logs"]
        assert found == ["logs"]


def merge_log(sf_id: str) -> dict[str, Any]:
    """What the inbound side logs for a Salesforce create that links or merges into a Person."""
    return {"_id": 2, "source": "salesforce", "status": "success", "type": "merge", "sf_id": sf_id,
            "fields": {}}


# (history of the platform-created Company A1, faults, the violations its one Salesforce-side
# merge log is)
UNTOUCHED = [
    ([pf(0, "A1", "Account", name="Co")], [], ["logs"],
     "only the platform and the service wrote it: the log is our create's echo"),
    ([pf(0, "A1", "Account", name="Co"), Ack("s5", "sf_update", "salesforce", "A1", T0 + 5, "ok", "Account",
                                             {"Name": "Acct"})], [], [],
     "a Salesforce user edited it: the log may be that edit's"),
    ([pf(0, "A1", "Account", name="Co")], [fault("kill_leader", 3)], [],
     "after a fault that may resync, a backfill may merge into any record"),
]


def test_a_log_is_found_by_the_id_the_platform_record_is_linked_to() -> None:
    """No operation needed the Account's id, so the run never learned it: the Company's link
    names it (an echo that came before the link may have been logged without the Company)."""
    entity = Entity("A1", "Account", "companies", "platform", local_id="c1")
    model = Model()
    acks = [pf(0, "A1", "Account", name="Co")]
    model.feed(acks, {"A1": entity}, [])
    log = {**merge_log("001000000000001AAA"), "local_id": "c9"}
    obs = Observed(acks=acks, entities={"A1": entity}, sf_records={}, people=[],
                   companies=[{"_id": "c1", "crm": {"id": "001000000000001AAA"}}], sync_logs=[log],
                   writes=[], state_writes=[], faults=[], barrier_ok=True, barrier_detail="",
                   idle_writes=0, idle_local_changes=0)
    assert [v.check for v in check(obs, model) if v.check == "logs"] == ["logs"]


class TestLogsOfARecordNoSalesforceOperationTouched:
    @pytest.mark.parametrize(("acks", "faults", "expected", "why"), UNTOUCHED, ids=[r[3] for r in UNTOUCHED])
    def test_a_salesforce_side_log(self, acks: list[Ack], faults: list[dict[str, Any]], expected: list[str],
                                   why: str) -> None:
        model = feed(acks, faults)
        obs = Observed(acks=acks, entities={"A1": account_entity()}, sf_records={}, people=[], companies=[],
                       sync_logs=[merge_log("001000000000001AAA")], writes=[], state_writes=[],
                       faults=faults, barrier_ok=True, barrier_detail="", idle_writes=0,
                       idle_local_changes=0)
        assert [v.check for v in check(obs, model) if v.check == "logs"] == expected, why


class TestPlatformSide:
    def test_a_person_created_after_a_salesforce_blank_may_be_blank(self) -> None:
        """The Lead's FirstName was blanked before the Person existed: the Person is created from the
        Lead as it is then, blank included (seed 777, L3.first_name)."""
        late = Entity("L1", "Lead", "people", "salesforce", sf_id=LEAD, local_id="p1", bound_at=T0 + 20)
        model = Model()
        model.feed([Ack("c", "sf_create_lead", "salesforce", "L1", T0, "ok", "Lead", {"FirstName": "Ann"}),
                    sf(8, FirstName="")], {"L1": late})
        assert model.entities["L1"].fields["first_name"].local == {"Ann", None}

    def test_a_blank_in_salesforce_never_blanks_a_person_that_exists(self) -> None:
        model = feed([sf(0, FirstName="Ann"), sf(8, FirstName="")])
        assert model.entities["L1"].fields["first_name"].local == {"Ann"}

    def test_a_from_salesforce_field_may_take_salesforces_value_over_a_later_platform_edit(self) -> None:
        """`from_salesforce`: the data comes from Salesforce ("we will never send SalesLoft data
        back"); a Salesforce change delivered after a platform edit replaces it (seed 777,
        P4.lead_source)."""
        model = feed([sf(0, LeadSource="Web"), pf(2.1, lead_source="ls1")])
        assert model.entities["L1"].fields["lead_source"].local == {"ls1", "Web"}


class TestPlatformPreferred:
    def test_a_queued_platform_value_goes_out_over_a_later_salesforce_edit(self) -> None:
        """`local_unless_blank`: the platform's data is preferred, so a platform edit still in the
        outbox (flush wait 2 s plus the watcher's 1 s settle) when Salesforce is edited goes out
        over it at the flush (CI seed 8, P6.phone: 2.17 s apart)."""
        model = feed([sf(0, Phone="+1 0"), pf(10, phone="+1 pf"), sf(12.17, Phone="+1 sf")])
        assert allowed_sf(model, "L1", "phone") == {"+1 sf", "+1 pf"}

    def test_one_sent_long_before_does_not(self) -> None:
        model = feed([sf(0, Phone="+1 0"), pf(10, phone="+1 pf"), sf(30, Phone="+1 sf")])
        assert allowed_sf(model, "L1", "phone") == {"+1 sf"}


class TestResyncMerge:
    def test_a_merge_after_a_resync_fault_may_give_salesforce_unless_blank_to_salesforce(self) -> None:
        """A merge (the backfill of a term that finds no watermark) applies the preference: where
        Salesforce has data, `salesforce_unless_blank` takes it on the platform too ("SalesLoft
        selects the preferred data"; seed 9001, L23.company_name, A6.industry)."""
        acks = [sf(0, Company="Sf Co"), pf(10, company_name="pf co")]
        assert model_local(feed(acks), "company_name") == {"pf co"}
        assert model_local(feed(acks, [fault("kill_leader", 12)]), "company_name") == {"pf co", "Sf Co"}


def model_local(model: Model, name: str) -> set[Any]:
    return model.entities["L1"].fields[name].local


def fed_with_writes(acks: list[Ack], faults: list[dict[str, Any]], service_writes: list[float]) -> Model:
    """`service_writes`: when the service wrote the Lead (seconds after T0)."""
    model = Model()
    model.feed(acks, {"L1": lead_entity(), "A1": account_entity()}, faults,
               service_writes={LEAD[:15]: [T0 + at for at in service_writes]})
    return model


class TestChangeSeenOnlyByARead:
    """The documented limit (README, "Reliability"): a Salesforce change whose event was lost
    reaches the service only by reading the record, and a read has no per-field times: the
    change is dated by the record's `LastModifiedDate`. When the record was modified again after
    a platform edit of the same field (the service's own write of other fields, still queued
    edits going out) and before the read, `most_recent` takes Salesforce's earlier value over
    the platform's later one (seed 777, P4.first_name). Field history is not available, so the
    model accepts either value there (both sides must still agree)."""

    LOST = [fault("replay_retention", 1)]  # the change's event pruned before it was consumed
    HISTORY = [sf(0, FirstName="Sf"), pf(10, first_name="Pf")]

    def test_an_earlier_change_read_after_the_record_was_modified_again_may_win(self) -> None:
        model = fed_with_writes(self.HISTORY, self.LOST, service_writes=[11])
        assert model_local(model, "first_name") == {"Pf", "Sf"}
        assert allowed_sf(model, "L1", "first_name") == {"Pf", "Sf"}

    def test_not_when_its_event_was_delivered(self) -> None:
        """Streamed, the change carries its own commit time: the later platform edit wins."""
        model = fed_with_writes(self.HISTORY, [], service_writes=[11])
        assert model_local(model, "first_name") == {"Pf"}

    def test_not_when_the_record_was_last_modified_before_the_platform_edit(self) -> None:
        """Its `LastModifiedDate` is then earlier than the platform edit, which wins."""
        model = fed_with_writes(self.HISTORY, self.LOST, service_writes=[5])
        assert model_local(model, "first_name") == {"Pf"}

    def test_not_when_the_platform_edit_was_sent_before_the_record_was_modified_again(self) -> None:
        """Sent (the outbox's latency, no fault holding it), the edit replaced the change in
        Salesforce: a later read finds the platform's value there."""
        model = fed_with_writes(self.HISTORY, self.LOST, service_writes=[30])
        assert model_local(model, "first_name") == {"Pf"}


class TestSupersededBeforeTheRead:
    """A read sees a record as it is: a Salesforce value that reached the service only by a read
    and was replaced before that read never reaches the platform, so a later value may fill the
    blank it would have filled, whatever the merge behaviour (seed 2718, P10.phone:
    `local_unless_blank`, 1532 written and replaced by 4778 before the catch-up poll)."""

    LOST = [fault("replay_retention", 1)]
    HISTORY = [sf(0, Phone="+1 1532"), sf(15, Phone="+1 4778")]

    def test_the_later_value_may_fill_the_blank(self) -> None:
        model = feed(self.HISTORY, self.LOST)
        assert model_local(model, "phone") == {"+1 1532", "+1 4778"}

    def test_not_when_the_first_was_streamed(self) -> None:
        """Its event applied it: the platform holds data, which `local_unless_blank` keeps."""
        assert model_local(feed(self.HISTORY), "phone") == {"+1 1532"}

class TestSalesforceWritesNotReadYet:
    def test_a_salesforce_value_replaced_before_the_service_read_it_is_superseded(self) -> None:
        """`local_unless_blank` keeps platform data from Salesforce's edits ("If SalesLoft already
        has data, leave it untouched"), but a sync reads Salesforce's record as it is when it
        connects (the product's sync frequency): a value Salesforce replaced before the service
        read it never reached the platform, so the later one fills the blank (chaos seed 2718,
        P10.phone: the stream held back by a budget pause and a leader gap)."""
        acks = [sf(0, Phone="+1 first"), sf(20, Phone="+1 second")]
        assert model_local(feed(acks), "phone") == {"+1 first"}
        assert model_local(feed(acks, [fault("budget_swing", -5)]), "phone") == {"+1 first", "+1 second"}

    def test_one_read_before_it_was_replaced_stays(self) -> None:
        """The platform had the first value long before the fault: it keeps it."""
        acks = [sf(0, Phone="+1 first"), sf(100, Phone="+1 second")]
        assert model_local(feed(acks, [fault("replay_retention", 90)]), "phone") == {"+1 first"}
