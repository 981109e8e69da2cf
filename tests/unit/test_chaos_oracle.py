"""The chaos run's reference model (bench/chaos/oracle.py): what each side may hold after a
history of acknowledged writes. Pure: acks in, allowed value sets out."""

from __future__ import annotations

from typing import Any

import pytest

from bench.chaos.env import chaos_mappings
from bench.chaos.operations import Ack, Entity
from bench.chaos.oracle import Model, Observed, _service_writes, check, merge_decision
from settings import Direction, MergeBehaviour

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


class TestASalesforceEditWhilePlatformsIsInFlight:
    """`most_recent` is decided at flush time on the shadow ("Deciding this for a platform edit
    needs Salesforce's side without an API call: keep the last value seen from Salesforce per mapped
    field", design.md): a platform edit waits up to OUTBOUND_LATENCY before it is sent, and a
    Salesforce edit made meanwhile that the service has not read yet is not known to it, so the
    platform's older value may go out over it and both sides keep it (chaos seed 2025, L4.last_name:
    Salesforce's edit 2.23 s after the platform's, our write 13 ms after Salesforce's, the Lead
    converted with ours)."""

    def test_salesforce_may_end_with_the_platforms_value(self) -> None:
        model = feed([sf(0, LastName="Old"), pf(10, last_name="pf"), sf(12.23, LastName="Sf")])
        assert allowed_sf(model, "L1", "last_name") == {"Sf", "pf"}
        assert model.entities["L1"].fields["last_name"].local == {"Sf", "pf"}

    def test_not_once_the_platforms_edit_was_sent(self) -> None:
        model = feed([sf(0, LastName="Old"), pf(10, last_name="pf"), sf(13.5, LastName="Sf")])
        assert allowed_sf(model, "L1", "last_name") == {"Sf"}


class TestASalesforceBlankJustBeforeAPlatformEdit:
    """A platform value older than a Salesforce user's blank is not sent over it (the blank
    stands there as the platform's data stands here), and the two sides' stamps are on two
    clocks: within WINDOW the blank may be dated the later one (chaos seed 9157, A1.industry: a
    blank 0.1 s before the platform's edit, the org clock just back from 2 s ahead)."""

    def test_the_blank_may_stand_within_the_window(self) -> None:
        model = feed([sf(0, Title="Old"), sf(10, Title=None), pf(10.1, title="pf")])
        assert allowed_sf(model, "L1", "title") >= {None, "pf"}

    def test_not_outside_it(self) -> None:
        model = feed([sf(0, Title="Old"), sf(10, Title=None), pf(15, title="pf")])
        assert allowed_sf(model, "L1", "title") == {"pf"}


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

    def test_the_conversions_merge_may_go_out_over_a_salesforce_blank_made_while_it_waits(self) -> None:
        """`local_unless_blank`: the conversion's merge queues the platform's phone for the
        Contact; a Salesforce user blanks the Contact's phone 0.9 s later, before that write went
        out, and the write, decided when sent, puts the platform's data over the blank (data
        wins over a blank; chaos seed 40961, L6.phone). Long after the merge, the blank stands."""
        def blank(at: float) -> Ack:
            return Ack(f"s{at}", "sf_update", "salesforce", "L1", T0 + at, "ok", "Contact", {"Phone": None})
        history = [sf(0, Phone="+1 0"), sf(3, Phone="+1 3"), self.convert(30, Phone="+1 3")]
        assert allowed_sf(feed([*history, blank(30.9)]), "L1", "phone") >= {None, "+1 0"}
        assert allowed_sf(feed([*history, blank(60)]), "L1", "phone") == {None}


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


class TestAValueTheConversionCarried:
    """Chaos seed 77777, P2.first_name: the platform's value (sent to the Lead) was on the Lead
    when a Salesforce user converted it; the platform's next edit was still in the outbox. The
    conversion made the Contact from the Lead's values, so that value is the Contact's, written
    by a Salesforce operation, and the conversion is a merge ("A merge happens when ... (4) when
    you convert a Lead to a Contact", help text, Advanced Configuration): a Salesforce-side log
    applying it afterwards is that merge's outcome, not an echo of the service's own write."""

    def convert(self, at: float, **lead: Any) -> Ack:
        return Ack(f"c{at}", "sf_convert", "salesforce", "L1", T0 + at, "ok", "Lead",
                   {"lead_before": lead, "ConvertedContactId": "003000000000001AAA",
                    "ConvertedAccountId": "001000000000009AAA"})

    def logs(self, model: Model, new: str, old: str) -> list[str]:
        log = {"_id": 1, "source": "salesforce", "status": "success", "type": "update", "sf_id": LEAD,
               "fields": {"first_name": {"old": old, "new": new}}}
        observed = Observed(acks=[], entities={"L1": lead_entity()}, sf_records={}, people=[],
                            companies=[], sync_logs=[log], writes=[], state_writes=[], faults=[],
                            barrier_ok=True, barrier_detail="", idle_writes=0, idle_local_changes=0)
        return [v.message for v in check(observed, model) if v.check == "logs"]

    def test_the_leads_value_the_contact_was_made_from_is_salesforces(self) -> None:
        model = feed([pf(0, first_name="Sent"), pf(10, first_name="Queued"),
                      self.convert(11, FirstName="Sent")])
        assert self.logs(model, "Sent", old="Queued") == []

    def test_a_value_the_lead_no_longer_held_is_still_an_echo(self) -> None:
        model = feed([pf(0, first_name="Older"), pf(10, first_name="Sent"),
                      self.convert(20, FirstName="Sent"), pf(30, first_name="Later")])
        assert self.logs(model, "Older", old="Later") == [
            "L1: a Salesforce-side log applied first_name='Older', a value only the platform wrote (an echo)"]


class TestFormulaLogs:
    """A formula field (Score__c -> score, read-only: "any formula fields ... can only be synced
    from Salesforce", help text) changes whenever anyone writes one of its inputs, the service's
    own writes included, with no Salesforce operation of its own (seed 1097: P95, P102, P103)."""

    def observed(self, logs: list[dict[str, Any]], service_writes: int = 0) -> Observed:
        rows = [{"_id": i, "source": "salesforce", "status": "success", "type": "update", "sf_id": LEAD,
                 "fields": fields} for i, fields in enumerate(logs)]
        writes = [{"seq": i, "client": "client=salesforce-sync", "method": "PATCH", "at": T0 + i,
                   "status": 204, "path": f"/services/data/v62.0/sobjects/Lead/{LEAD}",
                   "body": {"Title": f"t{i}"}}
                  for i in range(service_writes)]
        return Observed(acks=[], entities={"L1": lead_entity()}, sf_records={}, people=[], companies=[],
                        sync_logs=rows, writes=writes, state_writes=[], faults=[], barrier_ok=True,
                        barrier_detail="", idle_writes=0, idle_local_changes=0)

    @staticmethod
    def score(new: float) -> dict[str, Any]:
        return {"score": {"old": None, "new": new}}

    def count_violations(self, logs: list[dict[str, Any]], service_writes: int = 0) -> list[str]:
        model = feed([sf(0, LastName="Sf"), pf(10, title="Pf")])
        return [v.message for v in check(self.observed(logs, service_writes), model)
                if v.check == "logs" and "logs for" in v.message]

    def test_a_formula_change_after_each_write_is_no_extra_log(self) -> None:
        last_name = {"last_name": {"old": None, "new": "Sf"}}
        assert self.count_violations([last_name, self.score(40), self.score(60)], service_writes=1) == []

    def test_more_formula_changes_than_writes_are_reported(self) -> None:
        found = self.count_violations([self.score(n) for n in (20, 40, 60, 80)], service_writes=1)
        assert found == ["L1: 4 formula-field logs for 2 writes of the record"]

    def test_an_update_log_of_a_writable_field_still_counts_against_salesforce_operations(self) -> None:
        logs = [{"last_name": {"old": None, "new": v}} for v in ("Sf", "a", "b")]
        assert self.count_violations(logs, service_writes=5) == [
            "L1: 3 Salesforce update logs for 1 Salesforce operations (bound 2)"]

    def test_the_writes_of_a_record_the_run_never_learned_the_id_of_count(self) -> None:
        """A Person made on the platform that no later operation addressed in Salesforce: the run
        never learned its Lead's id, which its link names. The service's create and update of
        the Lead are writes of the record (seed 20719, P19: two Score changes after them)."""
        person = Entity("P1", "Lead", "people", "platform", local_id="p1")
        acks = [pf(0, "P1", "Lead", last_name="Pf"), pf(10, "P1", "Lead", last_name="Pf2")]
        model = Model()
        model.feed(acks, {"P1": person}, [])
        obs = self.observed([self.score(80), self.score(100)], service_writes=2)
        obs.entities = {"P1": person}
        obs.people = [{"_id": "p1", "crm": {"id": LEAD, "object": "Lead"}}]
        for row in obs.sync_logs:
            row["local_id"] = "p1"
        assert [v.message for v in check(obs, model) if "logs for" in v.message] == []

class TestAWriteOfTheHeldValueListsNoField:
    """An update event lists only the fields that changed (Salesforce's ChangeEventHeader,
    `changedFields`): a Salesforce user saving a field with the value it already holds changes
    nothing the service can see. Seed 50321, Q1.industry (`salesforce_unless_blank`): the
    platform's edit was held back (Salesforce held data); a later Salesforce update "set" the
    same Industry among other fields; the platform keeps its edit."""

    def sf_account(self, at: float, **fields: Any) -> Ack:
        return Ack(f"s{at}", "sf_update", "salesforce", "A1", T0 + at, "ok", "Account", fields)

    def test_it_does_not_reach_the_platform(self) -> None:
        model = feed([pf(0, "A1", "Account", industry="Energy"), pf(30, "A1", "Account", industry="Tech"),
                      self.sf_account(60, Industry="Energy")])
        assert model.entities["A1"].fields["industry"].local == {"Tech"}

    def test_one_it_may_hold_may_reach_it_or_not(self) -> None:
        """The platform's edit 3 s after its create may have gone out in the create (coalesced):
        Salesforce holds either value, so the write may or may not be a change."""
        model = feed([pf(0, "A1", "Account", industry="Energy"), pf(3, "A1", "Account", industry="Tech"),
                      self.sf_account(60, Industry="Energy")])
        assert model.entities["A1"].fields["industry"].local == {"Tech", "Energy"}

    def test_a_changed_value_still_does(self) -> None:
        model = feed([pf(0, "A1", "Account", industry="Energy"), pf(30, "A1", "Account", industry="Tech"),
                      self.sf_account(60, Industry="Retail")])
        assert model.entities["A1"].fields["industry"].local == {"Retail"}


class TestFormulaFieldLogs:
    """Product documentation, "Syncing Specifics": read-only fields, formula fields among them,
    sync from Salesforce to the platform only. The org recomputes a formula whenever its inputs
    change, by either side's writes, and the service sees the new value only by reading the
    record: each is a Salesforce-side log with no Salesforce operation (seed 11376, P7: Score__c
    80 after the service's create, 100 after its update, both read by polls)."""

    def observed(self, *changes: dict[str, Any]) -> Observed:
        logs = [{"_id": i, "source": "salesforce", "status": "success", "type": "update", "sf_id": LEAD,
                 "fields": fields} for i, fields in enumerate(changes)]
        # the service's create and update of the Lead, which the org recomputed the score after
        writes = [{"seq": i, "client": "client=salesforce-sync", "method": "PATCH", "at": T0 + i,
                   "status": 204, "path": f"/services/data/v62.0/sobjects/Lead/{LEAD}",
                   "body": {"City": "Here"}} for i in range(2)]
        return Observed(acks=[], entities={"L1": lead_entity()}, sf_records={}, people=[], companies=[],
                        sync_logs=logs, writes=writes, state_writes=[], faults=[], barrier_ok=True,
                        barrier_detail="", idle_writes=0, idle_local_changes=0)

    def test_recomputed_formula_values_are_not_counted_as_salesforce_operations(self) -> None:
        model = feed([pf(0, city="Here")])
        score = [{"score": {"old": None, "new": 80.0}}, {"score": {"old": 80.0, "new": 100.0}}]
        assert [v for v in check(self.observed(*score), model) if v.check == "logs"] == []

    def test_updates_of_other_fields_with_no_salesforce_operation_still_are(self) -> None:
        model = feed([pf(0, city="Here")])
        edits = [{"title": {"old": None, "new": "A"}}, {"title": {"old": "A", "new": "B"}}]
        assert [v.check for v in check(self.observed(*edits), model) if v.check == "logs"] == ["logs"]


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


class TestPlatformDataTheModelIsNotSureOf:
    def test_a_salesforce_edit_does_not_drop_data_the_platform_may_hold(self) -> None:
        """`local_unless_blank` ("If SalesLoft already has data, leave it untouched"): a silent
        Salesforce write (a CDC overflow) filled the platform's blank phone, or not yet (it reaches
        the service only by a read): the platform may hold it. A later Salesforce edit is held
        back where it does, so the model keeps that value beside the edit, not the edit alone
        (chaos seed 65537, C1.phone: the platform kept the overflow's value and a re-import sent
        it to Salesforce)."""
        overflow = Ack("f10", "cdc_overflow", "salesforce", "L1", T0 + 10, "ok", "Lead", {"Phone": "+1 of"})
        model = feed([overflow, sf(20, Phone="+1 sf")])
        assert model_local(model, "phone") == {"+1 of", "+1 sf"}


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


class TestAToSalesforceChangeSeenOnlyByARead:
    """The same limit for a `to_salesforce` field (README, "Reliability"): a platform value older
    than Salesforce's last change of such a field is not sent over it (only platform *changes*
    go out, `merge.decide_outgoing`), and a change that reached the service only by a read is
    dated by the record's `LastModifiedDate`. Modified again after the platform's edit, while
    that edit waited (a paused budget), the read dates Salesforce's earlier value after it: it
    stays in Salesforce; the platform keeps its own ("we will never send Salesforce data back
    to SalesLoft"). Seed 88001, P1.state: a silent update with an overflow event, the platform's
    edit held 40 s by a paused budget, a Salesforce user's edit of Title before it went out."""

    LOST = [fault("replay_retention", 1)]
    HISTORY = [sf(0, State="Sf"), pf(10, state="Pf")]

    def test_salesforces_earlier_value_may_stay_there(self) -> None:
        model = fed_with_writes(self.HISTORY, self.LOST, service_writes=[11])
        assert allowed_sf(model, "L1", "state") == {"Pf", "Sf"}
        assert model_local(model, "state") == {"Pf"}

    def test_not_when_its_event_was_delivered(self) -> None:
        model = fed_with_writes(self.HISTORY, [], service_writes=[11])
        assert allowed_sf(model, "L1", "state") == {"Pf"}

    def test_not_when_the_platform_edit_was_sent_before_the_record_was_modified_again(self) -> None:
        model = fed_with_writes(self.HISTORY, self.LOST, service_writes=[30])
        assert allowed_sf(model, "L1", "state") == {"Pf"}


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

    def test_a_platform_blank_before_the_service_read_salesforces_edit_may_be_filled(self) -> None:
        """The platform blanked the phone while Salesforce's edit of it was still unread (a
        retention fault, then polling): read afterwards, Salesforce's data fills the blank ("if
        there is data in a field, that value will always win over a blank field"; chaos seed
        2718, L14.phone)."""
        acks = [sf(0, Phone="+1 a"), pf(22, phone=None)]
        assert model_local(feed(acks), "phone") == {None}
        assert model_local(feed(acks, [fault("replay_retention", 0.4)]), "phone") == {None, "+1 a"}


class TestSalesforceDataNotSeenYet:
    def test_a_platform_edit_may_overwrite_salesforce_data_the_service_had_not_read(self) -> None:
        """`salesforce_unless_blank` ("if there is data in that field in Salesforce, SalesLoft
        will not write in a new value") is decided on the shadow: Salesforce's edit of a blank
        field 10 ms before the platform's is not known yet, so the platform's value may go out
        over it (chaos seed 5150, L15.title, a conflict)."""
        unless_blank = mapping_edit(0, title_merge="salesforce_unless_blank")
        model = feed([unless_blank, sf(10, Title=None), sf(20, Title="Sf"), pf(20.01, title="pf")])
        assert allowed_sf(model, "L1", "title") == {"Sf", "pf"}

    def test_not_once_the_service_has_read_it(self) -> None:
        unless_blank = mapping_edit(0, title_merge="salesforce_unless_blank")
        model = feed([unless_blank, sf(10, Title=None), sf(20, Title="Sf"), pf(30, title="pf")])
        assert allowed_sf(model, "L1", "title") == {"Sf"}


# --- admin operations: each is a merge (product: "A merge happens when: (1) The records are first
# linked, (2) when you retry a failed sync job, (3) when you re-import a Person, (4) when you
# convert a Lead to a Contact, or (5) when you edit field mappings") ------------------------------

def reimport(at: float, slot: str = "L1", sobject: str = "Lead") -> Ack:
    return Ack(f"i{at}", "admin_import", "admin", slot, T0 + at, "ok", sobject, {})


def retry(at: float, job: str, slot: str = "L1") -> Ack:
    return Ack(f"r{at}", "admin_retry", "admin", slot, T0 + at, "ok", None, {"job": job})


def mapping_edit(at: float, status: str = "ok", **variant: Any) -> Ack:
    """The remerge seen to finish at `at`, the rolling restart begun 5 s before."""
    return Ack(f"m{at}", "mapping_edit", "admin", None, T0 + at, status, None,
               {"mappings": chaos_mappings(**variant), "started": T0 + at - 5})


B, M, F, T = Direction.BOTH, Direction.FROM_SALESFORCE, Direction.TO_SALESFORCE, MergeBehaviour
# (direction, merge, writable, local, salesforce, what the merge writes, the product's rule)
MERGES = [
    (B, T.MOST_RECENT, True, None, "sf", ("local", "sf"), "data always wins over a blank field"),
    (B, T.MOST_RECENT, True, "pf", None, ("salesforce", "pf"), "data always wins over a blank field"),
    (B, T.MOST_RECENT, True, None, None, None, "we will not write null values or blanks"),
    (B, T.MOST_RECENT, True, "x", "x", None, "equal: nothing to merge"),
    (B, T.MOST_RECENT, True, "pf", "sf", ("either", None), "most recent value: the field times decide"),
    (B, T.SALESFORCE_UNLESS_BLANK, True, "pf", "sf", ("local", "sf"), "Salesforce value unless blank"),
    (B, T.SALESFORCE_UNLESS_BLANK, True, "pf", None, ("salesforce", "pf"), "... unless blank"),
    (B, T.LOCAL_UNLESS_BLANK, True, "pf", "sf", ("salesforce", "pf"), "SalesLoft value unless blank"),
    (B, T.LOCAL_UNLESS_BLANK, True, None, "sf", ("local", "sf"), "... unless blank"),
    (M, T.MOST_RECENT, True, "pf", "sf", ("local", "sf"), "SalesLoft <- Salesforce: only bring data in"),
    (M, T.MOST_RECENT, True, "pf", None, None, "never send SalesLoft data back; no blank written"),
    (F, T.MOST_RECENT, True, "pf", "sf", ("salesforce", "pf"), "SalesLoft -> Salesforce: never back"),
    (F, T.MOST_RECENT, True, None, "sf", None, "never send Salesforce data back; no blank written"),
    (B, T.MOST_RECENT, False, "pf", "sf", ("local", "sf"), "read-only fields only sync from Salesforce"),
]


class TestMergeDecision:
    @pytest.mark.parametrize(("direction", "merge", "writable", "local", "sf_value", "expected", "rule"),
                             MERGES, ids=[f"{r[0].value}-{r[1].value}-{r[3]}-{r[4]}" for r in MERGES])
    def test_what_a_merge_writes(self, direction: Direction, merge: MergeBehaviour, writable: bool,
                                 local: Any, sf_value: Any, expected: Any, rule: str) -> None:
        assert merge_decision(direction, merge, writable, local, sf_value) == expected, rule


class TestReimportAndRetry:
    def test_a_reimport_fills_the_platforms_blank_with_salesforces_data(self) -> None:
        """The platform blanked the title (a blank is never sent: Salesforce keeps its data); a
        re-import merges, and data wins over the blank."""
        history = [sf(0, Title="Sf"), pf(10, title="")]
        assert model_local(feed(history), "title") == {None}
        assert model_local(feed([*history, reimport(30)]), "title") == {"Sf"}

    def test_a_reimport_gives_a_salesforce_unless_blank_field_salesforces_value(self) -> None:
        """The platform's edit was held back ("SalesLoft will not write in a new value"); at the
        merge the platform takes Salesforce's value."""
        history = [sf(0, Company="Sf Co"), pf(10, company_name="pf co")]
        assert model_local(feed([*history, reimport(30)]), "company_name") == {"Sf Co"}

    def test_a_value_the_merge_sends_is_in_flight_like_a_platform_edit(self) -> None:
        """Salesforce blanked `city`; the merge sends the platform's value through the outbox, so
        a Salesforce edit half a second later may end either way."""
        history = [pf(0, city="Pf"), sf(10, City=None), reimport(30)]
        assert allowed_sf(feed(history), "L1", "city") == {"Pf"}
        assert allowed_sf(feed([*history, sf(30.5, City="Sf")]), "L1", "city") == {"Pf", "Sf"}
        assert allowed_sf(feed([*history, sf(60, City="Sf")]), "L1", "city") == {"Sf"}

    def test_an_edit_in_flight_at_the_merge_leaves_both_values_possible(self) -> None:
        """The platform edit 0.5 s before the re-import may not have been sent: the merge may
        see either Salesforce value, so the model only widens."""
        model = feed([sf(0, Company="Sf Co"), pf(29.5, company_name="pf co"), reimport(30)])
        assert model_local(model, "company_name") == {"pf co", "Sf Co"}

    def test_a_record_not_linked_yet_is_merged_when_it_links(self) -> None:
        late = Entity("L1", "Lead", "people", "salesforce", sf_id=LEAD, local_id="p1", bound_at=T0 + 60)
        model = Model()
        model.feed([sf(0, Company="Sf Co"), pf(70, company_name="pf co"), reimport(30)], {"L1": late})
        assert "Sf Co" in model_local(model, "company_name")

    def test_an_inbound_retry_is_a_merge_like_a_reimport(self) -> None:
        history = [sf(0, Title="Sf"), pf(10, title="")]
        assert model_local(feed([*history, retry(30, "inbound")]), "title") == {"Sf"}

    def test_an_outbound_retry_resends_the_record_data_filling_salesforces_blanks(self) -> None:
        """An outbound job re-queues the platform's record as it is now."""
        model = feed([sf(0, Title=None), pf(10, title="pf"), sf(11, Title=None), retry(30, "outbound")])
        assert "pf" in allowed_sf(model, "L1", "title")

    def test_a_merge_counts_towards_the_records_bounds(self) -> None:
        model = feed([sf(0, Title="Sf"), reimport(10), retry(20, "event")])
        assert model.entities["L1"].merges == 2


class TestMappingEdits:
    def test_a_field_mapped_by_the_edit_takes_salesforces_data_at_the_remerge(self) -> None:
        """Added mapping `people.mobile_phone`: the platform has no data there, Salesforce's
        value written while it was unmapped fills it; later edits flow as for any field."""
        history = [sf(0, MobilePhone="+1 m"), mapping_edit(30, mobile_phone=True)]
        model = feed(history)
        assert model_local(model, "mobile_phone") == {"+1 m"}
        assert model_local(feed([*history, sf(60, MobilePhone="+1 n")]), "mobile_phone") == {"+1 n"}

    def test_a_field_unmapped_keeps_its_platform_value_for_when_it_is_mapped_again(self) -> None:
        """Unmapped, nothing syncs it: Salesforce's later blank is not the platform's, and the
        platform keeps what it had (a blank never wins at the next remerge)."""
        model = feed([sf(0, MobilePhone="+1 m"), mapping_edit(30, mobile_phone=True),
                      mapping_edit(60), sf(70, MobilePhone=None), mapping_edit(100, mobile_phone=True)])
        assert model_local(model, "mobile_phone") == {"+1 m"}
        assert allowed_sf(model, "L1", "mobile_phone") == {"+1 m"}

    def test_an_unmapped_field_is_not_checked(self) -> None:
        model = feed([sf(0, MobilePhone="+1 m"), mapping_edit(30, mobile_phone=True), mapping_edit(60)])
        assert "mobile_phone" not in model.entities["L1"].fields
        assert "mobile_phone" not in {m.local_field for m in model.mappings.for_object("Lead")}

    def test_a_merge_behaviour_changed_is_remerged_and_rules_live_edits_after(self) -> None:
        """`title` to `salesforce_unless_blank`: the remerge fills the platform's blank with
        Salesforce's data; a later platform edit does not replace Salesforce's data."""
        history = [sf(0, Title="Sf"), pf(10, title=""),
                   mapping_edit(40, title_merge="salesforce_unless_blank")]
        model = feed(history)
        assert model_local(model, "title") == {"Sf"}
        assert model.entities["L1"].fields["title"].merge is MergeBehaviour.SALESFORCE_UNLESS_BLANK
        assert allowed_sf(feed([*history, pf(90, title="pf")]), "L1", "title") == {"Sf"}

    def test_a_remerge_not_seen_to_finish_only_widens(self) -> None:
        history = [sf(0, Title="Sf"), pf(10, title="")]
        model = feed([*history, mapping_edit(40, "rejected", title_merge="salesforce_unless_blank")])
        assert model_local(model, "title") == {None, "Sf"}

    def test_an_edit_just_before_the_restart_leaves_both_values_possible(self) -> None:
        """A platform edit 2 s before the rolling restart began may still wait in the outbox
        when the new leader remerges: the model only widens."""
        model = feed([sf(0, Title="Sf"), pf(33, title=""),
                      mapping_edit(40, title_merge="salesforce_unless_blank")])
        assert model_local(model, "title") == {None, "Sf"}


    def test_an_edit_still_queued_is_decided_by_the_new_rule(self) -> None:
        """Seed 1873 x 2000, P2.title: a platform edit held in the outbox by a killed leader when
        `title` became `salesforce_unless_blank`; the flusher decides the queued write by the rule
        in force ("if Salesforce already has data, leave it untouched"): Salesforce may keep its
        value, and the remerge may bring it to the platform."""
        history = [sf(0, Title="Sf"), pf(10, title="Pf"),
                   mapping_edit(17, title_merge="salesforce_unless_blank")]
        model = feed(history, [fault("kill_leader", 10.5)])
        assert allowed_sf(model, "L1", "title") == {"Pf", "Sf"}
        assert model_local(model, "title") == {"Pf", "Sf"}


    def test_a_remerge_of_sides_the_model_cannot_place_may_end_as_any_of_their_merges(self) -> None:
        """`title` under `salesforce_unless_blank`: a platform edit 1.25 s after Salesforce's (so
        either may stand on the platform: WINDOW) is held back from Salesforce. Edited back to
        `most_recent`, the remerge sends the platform's later value ("the side whose field changed
        last wins"; chaos seed 16180, C4.title)."""
        model = feed([mapping_edit(0, title_merge="salesforce_unless_blank"), sf(5, Title="Sf"),
                      pf(6.25, title="pf"), mapping_edit(30)])
        assert allowed_sf(model, "L1", "title") == {"Sf", "pf"}
        assert model_local(model, "title") == {"Sf", "pf"}


class TestRetriedFailedLogs:
    def observed(self, logs: list[dict[str, Any]]) -> Observed:
        person = Entity("P1", "Lead", "people", "platform", local_id="p1")
        return Observed(acks=[], entities={"P1": person}, sf_records={}, people=[{"_id": "p1"}],
                        companies=[], sync_logs=logs, writes=[], state_writes=[], faults=[], barrier_ok=True,
                        barrier_detail="", idle_writes=0, idle_local_changes=0)

    def lost(self, logs: list[dict[str, Any]]) -> list[str]:
        person = Entity("P1", "Lead", "people", "platform", local_id="p1")
        model = Model()
        model.feed([Ack("c", "pf_create_person", "platform", "P1", T0, "ok", "Lead", {"last_name": "x"})],
                   {"P1": person})
        return [v.message for v in check(self.observed(logs), model) if v.check == "lost_change"]

    def failed(self, log_id: int, **extra: Any) -> dict[str, Any]:
        return {"_id": log_id, "source": "local", "type": "create", "status": "failed", "local_id": "p1",
                **extra}

    def test_a_failed_create_retried_and_failed_again_is_one_open_failure(self) -> None:
        """A retry "writes new sync logs with attempt + 1 and marks the old log `retried_by`"
        (design: the admin retries a failed job): the chain explains the record once."""
        assert self.lost([self.failed(1, retried_by="2"), self.failed(2, attempt=2)]) == []

    def test_two_open_failures_of_one_create_are_still_a_violation(self) -> None:
        assert len(self.lost([self.failed(1), self.failed(2)])) == 1


class TestBlankOverAnUnreadValue:
    """"Not read yet" (module doc): a Salesforce value the service may not have read when the next
    write of the field comes may never reach the platform, the next one being decided against
    what the platform held before it. When the next one is a blank, which never blanks an existing
    Person, the platform keeps that earlier value (seed 1097 x 2000, C2.title: a resync after
    pruned events read the record with the blank only)."""

    def test_the_platform_may_keep_its_value_when_salesforce_blanks_one_it_had_not_read(self) -> None:
        model = feed([pf(0, title="Pf"), sf(10, Title="Sf1"), sf(10.1, Title=None)])
        assert model_local(model, "title") == {"Sf1", "Pf"}

    def test_not_when_the_value_was_read_before_the_blank(self) -> None:
        model = feed([pf(0, title="Pf"), sf(10, Title="Sf1"), sf(20, Title=None)])
        assert model_local(model, "title") == {"Sf1"}

    def test_a_field_nobody_had_written_stays_blank_on_the_platform(self) -> None:
        """The unread value was the field's first write since the record was made: what the
        platform held before it is the blank the Person was made with, and a read after the
        Salesforce blank finds nothing to bring ("we will not write null values or blanks";
        seed 1194 x 2000, L18.phone: set and blanked 2.7 s apart while the budget had the
        service polling)."""
        model = feed([sf(10, Phone="+1 555 9276"), sf(12.7, Phone=None)])
        assert model_local(model, "phone") == {"+1 555 9276", None}

    def test_read_before_the_blank_it_stays_on_the_platform(self) -> None:
        model = feed([sf(10, Phone="+1 555 9276"), sf(20, Phone=None)])
        assert model_local(model, "phone") == {"+1 555 9276"}


def sf_account(at: float, **fields: Any) -> Ack:
    return Ack(f"s{at}", "sf_update", "salesforce", "A1", T0 + at, "ok", "Account", fields)


class TestASalesforceWriteOfTheValueItHolds:
    """Setting a field to the value it holds changes nothing in Salesforce: the change event does
    not list it and a read shows no change, so there is nothing to sync (seed 1291 x 2000,
    Q14.industry: `salesforce_unless_blank` kept the platform's own later edit)."""

    def test_is_no_change_for_the_platform(self) -> None:
        model = feed([pf(0, "A1", "Account", industry="Edu"), sf_account(10, Industry="Cons"),
                      pf(20, "A1", "Account", industry="Retail"), sf_account(30, Industry="Cons")])
        assert model.entities["A1"].fields["industry"].local == {"Retail"}

    def test_a_new_value_still_is(self) -> None:
        model = feed([pf(0, "A1", "Account", industry="Edu"), sf_account(10, Industry="Cons"),
                      pf(20, "A1", "Account", industry="Retail"), sf_account(30, Industry="Bank")])
        assert model.entities["A1"].fields["industry"].local == {"Bank"}


class TestAPlatformWriteOfTheValueItHolds:
    """The mirror of the above: the watcher queues only the mapped fields that changed (the change
    stream's `updatedFields`, or the polled diff), so a platform save of the value a field already
    holds is no edit of it, and nothing goes out. Seed 39157, A1.industry
    (`salesforce_unless_blank`, "a live platform edit: sent only where Salesforce's value is
    blank"): the platform's Industry was held back (Salesforce held data); a Salesforce user then
    blanked it (a blank never reaches the platform); the platform's next save listed the same
    Industry among other fields: Salesforce stays blank."""

    def test_is_no_change_for_salesforce(self) -> None:
        model = feed([sf_account(0, Industry="Tech"), pf(10, "A1", "Account", industry="Edu"),
                      sf_account(40, Industry=None), pf(50, "A1", "Account", industry="Edu")])
        assert allowed_sf(model, "A1", "industry") == {None}

    def test_one_it_may_hold_may_be_sent_or_not(self) -> None:
        """A Salesforce edit 1 s after the platform's may have reached the platform before the
        platform's edit went out, or not: the platform holds either value, so its save of "Edu"
        may or may not be an edit."""
        model = feed([sf_account(0, Industry="Tech"), pf(10, "A1", "Account", industry="Edu"),
                      sf_account(11, Industry="Bank"), sf_account(40, Industry=None),
                      pf(50, "A1", "Account", industry="Edu")])
        assert allowed_sf(model, "A1", "industry") == {None, "Edu"}

    def test_a_new_value_still_is(self) -> None:
        model = feed([sf_account(0, Industry="Tech"), pf(10, "A1", "Account", industry="Edu"),
                      sf_account(40, Industry=None), pf(50, "A1", "Account", industry="Retail")])
        assert allowed_sf(model, "A1", "industry") == {"Retail"}


class TestAFailedLogNamingTheField:
    """A lost change is explained by exactly one open failed sync log: for a field, the one that
    names it, whatever other failures the record had (seed 1291 x 2000, L6.city: two sends refused
    with ENTITY_IS_DELETED, the second one naming City)."""

    def observed(self, failed_fields: list[list[str]]) -> Observed:
        logs = [{"_id": i, "source": "local", "status": "failed", "type": "update", "sf_id": LEAD,
                 "local_id": "p1", "error": "ENTITY_IS_DELETED: entity is deleted",
                 "fields": {name: {"old": None, "new": "x"} for name in names}}
                for i, names in enumerate(failed_fields)]
        person = {"_id": "p1", "last_name": "Pf", "crm": {"id": LEAD, "object": "Lead"}}
        record = {"Id": LEAD, "LastName": "Sf", "OwnerId": "005000000000001AAA"}
        return Observed(acks=[], entities={"L1": lead_entity()}, sf_records={LEAD[:15]: record},
                        people=[person], companies=[], sync_logs=logs, writes=[], state_writes=[], faults=[],
                        barrier_ok=True, barrier_detail="", idle_writes=0, idle_local_changes=0)

    def lost(self, failed_fields: list[list[str]]) -> list[str]:
        create = Ack("c", "sf_create_lead", "salesforce", "L1", T0, "ok", "Lead",
                     {"LastName": "Sf", "OwnerId": "005000000000001AAA"})
        model = feed([create, pf(10, last_name="Pf")])
        return [v.message for v in check(self.observed(failed_fields), model)
                if v.check == "lost_change" and "last_name" in v.message]

    def test_the_one_failed_log_naming_the_field_explains_it(self) -> None:
        assert self.lost([["Phone"], ["LastName", "Title"]]) == []

    def test_without_one_the_lost_change_is_reported(self) -> None:
        assert len(self.lost([["Phone"], ["Title"]])) == 1


class TestServiceCreatesPerPlatformRecord:
    """The duplicate check counts the service's creates per platform record by the key values it
    sent. Two Companies may draw the same random name (seed 1388 x 2000, Q70 and Q72 both
    "Company3457"): a name two records wrote tells neither apart; the domain does."""

    def duplicates(self, websites: tuple[str, str]) -> list[str]:
        entities = {slot: Entity(slot, "Account", "companies", "platform", local_id=f"c{slot}", bound_at=T0)
                    for slot in ("Q1", "Q2")}
        acks = [Ack(f"op{i}", "pf_create_company", "platform", slot, T0 + i, "ok", "Account",
                    {"name": "Same Name", "domain": f"{slot.lower()}.example.org"})
                for i, slot in enumerate(entities)]
        writes = [{"seq": i, "at": T0 + 5 + i, "client": "client=salesforce-sync", "method": "POST",
                   "path": "/services/data/v62.0/composite/sobjects", "status": 200,
                   "body": {"records": [{"attributes": {"type": "Account"}, "Name": "Same Name",
                                         "Website": site}]},
                   "response": [{"success": True, "id": f"001{i:015d}", "errors": []}]}
                  for i, site in enumerate(websites)]
        model = Model()
        model.feed(acks, entities, [])
        observed = Observed(acks=acks, entities=entities, sf_records={}, people=[], companies=[],
                            sync_logs=[], writes=writes, state_writes=[], faults=[], barrier_ok=True,
                            barrier_detail="", idle_writes=0, idle_local_changes=0)
        return [v.message for v in check(observed, model) if v.check == "duplicate"]

    def test_two_records_of_one_name_are_told_apart_by_their_domains(self) -> None:
        assert self.duplicates(("q1.example.org", "q2.example.org")) == []

    def test_one_record_created_twice_is_a_duplicate(self) -> None:
        assert self.duplicates(("q1.example.org", "q1.example.org")) == [
            "the service created 2 Salesforce records for Q1 (local cQ1)"]


class TestACreateReadAfterItsOwnerChanged:
    """A Contact created with a mapped owner whose events were pruned reaches the service only by
    a read, which shows the owner it has then: moved to an unmapped owner meanwhile, no Person is
    made (the create rule), and no log is due (seed 1679 x 2000, C3)."""

    def lost(self, faults: list[dict[str, Any]]) -> list[str]:
        contact = Entity("C1", "Contact", "people", "salesforce", sf_id="003000000000001AAA")
        acks = [Ack("c", "sf_create_contact", "salesforce", "C1", T0 + 1, "ok", "Contact",
                    {"LastName": "Ng", "OwnerId": "005000000000001AAA"}),
                Ack("o", "sf_owner_change", "salesforce", "C1", T0 + 10, "ok", "Contact",
                    {"OwnerId": "005000000000009AAA"})]
        model = Model()
        model.feed(acks, {"C1": contact}, faults)
        observed = Observed(acks=acks, entities={"C1": contact}, sf_records={}, people=[], companies=[],
                            sync_logs=[], writes=[], state_writes=[], faults=faults, barrier_ok=True,
                            barrier_detail="", idle_writes=0, idle_local_changes=0)
        return [v.message for v in check(observed, model) if v.check == "lost_change"]

    def test_no_person_is_due_when_the_create_may_have_been_read_after_the_owner_change(self) -> None:
        assert self.lost([fault("replay_retention", 5)]) == []

    def test_a_streamed_create_still_makes_one(self) -> None:
        assert len(self.lost([])) == 1


class TestTheServicesConditionalWrites:
    """Late writes go out as `/composite` PATCH subrequests with `If-Unmodified-Since` (issue 14):
    each subrequest is one write of the record its url names, written only if its own status is
    2xx (412: the record changed since the service read it, nothing written)."""

    def composite(self, answers: list[dict[str, Any]] | None, status: int = 200) -> dict[str, Any]:
        base = "/services/data/v62.0"
        subs = [{"method": "PATCH", "url": f"{base}/sobjects/Lead/{LEAD}", "referenceId": "r0",
                 "body": {"Title": "A"},
                 "httpHeaders": {"If-Unmodified-Since": "Mon, 30 Nov 2026 09:00:00 GMT"}},
                {"method": "PATCH", "url": f"{base}/sobjects/Account/001000000000001AAA", "referenceId": "r1",
                 "body": {"Website": "b.example"}}]
        write: dict[str, Any] = {"seq": 7, "at": T0, "method": "POST", "path": f"{base}/composite",
                                 "client": "client=salesforce-sync", "body": {"allOrNone": False,
                                                                             "compositeRequest": subs},
                                 "status": status}
        if answers is not None:
            write["response"] = {"compositeResponse": answers}
        return write

    def test_each_subrequest_is_a_write_ok_by_its_own_status(self) -> None:
        written = _service_writes([self.composite([
            {"referenceId": "r1", "httpStatusCode": 204, "body": None, "httpHeaders": {}},
            {"referenceId": "r0", "httpStatusCode": 412, "body": [{"errorCode": "PRECONDITION_FAILED"}],
             "httpHeaders": {}}])])

        assert [(w["sobject"], w["id"], w["fields"], w["ok"]) for w in written] == [
            ("Lead", LEAD, {"Title": "A"}, False),
            ("Account", "001000000000001AAA", {"Website": "b.example"}, True)]
        assert {w["method"] for w in written} == {"PATCH"} and {w["seq"] for w in written} == {7}

    def test_a_call_with_no_answer_recorded_is_judged_by_its_status(self) -> None:
        assert [w["ok"] for w in _service_writes([self.composite(None, status=503)])] == [False, False]
