"""The Salesforce shadow and the live-edit decisions it makes possible (issue 10): pure functions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reconciler.inbound_shadow import edits_only, known_times
from reconciler.merge import HELD_LOCAL, HELD_SALESFORCE, Winner, decide_outgoing, merge_record
from reconciler.ports import ChangeKind, ChangeSource, SalesforceChange
from reconciler.shadow import has_unstamped_edit, platform_time, shadow_sets, shadow_side
from settings import Direction, FieldMapping, MergeBehaviour

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
T1, T2, T3 = (T0 + timedelta(seconds=n) for n in (1, 2, 3))


def mapping(merge: str = "most_recent", direction: str = "both") -> FieldMapping:
    return FieldMapping(local_field="email", sobject="Lead", sf_field="Email",
                        direction=Direction(direction), merge=MergeBehaviour(merge))


def doc(local: Any, shadow: str, *, field_time: datetime | None = T1, shadow_at: datetime = T0,
        updated_at: datetime = T1, written_at: datetime | None = T1) -> dict[str, Any]:
    """A linked Person; `shadow` is "present" (Salesforce holds "sf@x"), "blank" or "missing"."""
    times = {"email": field_time} if field_time else {}
    sync: dict[str, Any] = {"written_at": written_at, "field_times": times}
    if shadow != "missing":
        sync["sf"] = {"Lead": {"Email": {"v": "sf@x" if shadow == "present" else None, "at": shadow_at}}}
    return {"_id": 1, "email": local, "updated_at": updated_at, "crm": {"object": "Lead", "id": "00Q1"},
            "_sync": sync}


SENT, HELD, NOT_SENT = "sent", "held", "not sent"
APPLIED = "applied"

# (shadow, behaviour, direction of the live edit, expected)
TABLE = [
    # a platform edit ("new@x" at T1): the flusher re-decides it against the shadow (Salesforce at T0)
    ("present", "most_recent", "platform", SENT),
    ("present", "salesforce_unless_blank", "platform", HELD),
    ("present", "local_unless_blank", "platform", SENT),
    ("blank", "most_recent", "platform", SENT),
    ("blank", "salesforce_unless_blank", "platform", SENT),
    ("blank", "local_unless_blank", "platform", SENT),
    ("missing", "most_recent", "platform", SENT),          # Salesforce's side unknown: as queued
    ("missing", "salesforce_unless_blank", "platform", SENT),  # (the flusher fills it first)
    ("missing", "local_unless_blank", "platform", SENT),
    # a Salesforce edit ("sfnew@x" at T2) to a Person whose platform value ("plat@x") was set at T1
    ("present", "most_recent", "salesforce", APPLIED),
    ("present", "salesforce_unless_blank", "salesforce", APPLIED),
    ("present", "local_unless_blank", "salesforce", HELD),
    ("blank", "most_recent", "salesforce", APPLIED),
    ("blank", "salesforce_unless_blank", "salesforce", APPLIED),
    ("blank", "local_unless_blank", "salesforce", HELD),
    ("missing", "most_recent", "salesforce", APPLIED),
    ("missing", "salesforce_unless_blank", "salesforce", APPLIED),
    ("missing", "local_unless_blank", "salesforce", HELD),
]


class TestLiveEditTable:
    @pytest.mark.parametrize(("shadow", "merge", "direction", "expected"), TABLE)
    def test_decision(self, shadow: str, merge: str, direction: str, expected: str) -> None:
        """Each merge behaviour decides a live edit in each direction from the shadow, no API call."""
        if direction == "platform":
            out = decide_outgoing(mapping(merge), doc("new@x", shadow), "new@x")
            got = SENT if out.decision.write_salesforce else HELD if out.held else NOT_SENT
            if got == SENT:
                assert out.decision.value == "new@x"
            if got == HELD:
                assert out.held == HELD_SALESFORCE
        else:
            result = merge_record([mapping(merge)], doc("plat@x", shadow), {"Email": "sfnew@x"}, T2)
            applied = result.local_updates == {"email": "sfnew@x"}
            got = APPLIED if applied else HELD if result.held else NOT_SENT
            if got == HELD:
                assert result.held == [("email", HELD_LOCAL)]
        assert got == expected

    def test_table_covers_every_combination(self) -> None:
        """One row per shadow state, behaviour and direction."""
        assert len({row[:3] for row in TABLE}) == len(TABLE) == 3 * 3 * 2

    @pytest.mark.parametrize("merge", ["most_recent", "salesforce_unless_blank", "local_unless_blank"])
    def test_a_blank_platform_value_takes_salesforce_data(self, merge: str) -> None:
        """Unless-blank means data wins over a blank: a Salesforce edit fills a blank platform field."""
        result = merge_record([mapping(merge)], doc(None, "present"), {"Email": "sfnew@x"}, T2)
        assert result.local_updates == {"email": "sfnew@x"} and not result.held


class TestQueuedValueSuperseded:
    def test_a_newer_salesforce_edit_supersedes_the_queued_value(self) -> None:
        """The platform edited at T1 and queued it; Salesforce's edit at T2 was applied (platform and
        shadow now hold it): the queued value is not sent."""
        current = doc("sf@x", "present", shadow_at=T2, updated_at=T3, written_at=T3)
        out = decide_outgoing(mapping(), current, "old-queued@x")
        assert not out.decision.write_salesforce

    def test_the_platforms_current_value_goes_out(self) -> None:
        """Two queued edits coalesced: the platform's current value (the newest) is what goes out."""
        out = decide_outgoing(mapping(), doc("newest@x", "present"), "older@x")
        assert out.decision.write_salesforce and out.decision.value == "newest@x" and out.at == T1

    def test_a_value_salesforce_already_has_is_not_resent(self) -> None:
        """Shadow equal to the platform value: nothing to send."""
        out = decide_outgoing(mapping(), doc("sf@x", "present"), "sf@x")
        assert out.decision.winner is Winner.NONE


class TestToSalesforceQueuedValue:
    """`to_salesforce`: the platform's edits flow out, Salesforce's never flow in; a platform
    value re-queued after it was sent (a new leader's watcher re-reads it) must not overwrite a
    later Salesforce edit (chaos seed 25147, L20.state)."""

    def test_an_older_platform_value_does_not_overwrite_a_newer_salesforce_edit(self) -> None:
        """Platform value set at T1, sent; Salesforce edited at T2 (shadow): the re-queued value stays."""
        current = doc("plat@x", "present", shadow_at=T2, field_time=T1, updated_at=T1, written_at=T1)
        out = decide_outgoing(mapping(direction="to_salesforce"), current, "plat@x")
        assert not out.decision.write_salesforce

    def test_a_newer_platform_edit_goes_out_over_salesforce_data(self) -> None:
        """Platform edit at T3, Salesforce's value from T2: the platform's value is sent."""
        current = doc("plat@x", "present", shadow_at=T2, field_time=T3, updated_at=T3, written_at=T3)
        out = decide_outgoing(mapping(direction="to_salesforce"), current, "plat@x")
        assert out.decision.write_salesforce and out.decision.value == "plat@x"

    def test_an_unstamped_platform_edit_goes_out(self) -> None:
        """A fresh edit the watcher has not stamped yet counts with its `updated_at` (T3 > T2)."""
        fresh = doc("plat@x", "present", shadow_at=T2, field_time=T1, updated_at=T3, written_at=T1)
        out = decide_outgoing(mapping(direction="to_salesforce"), fresh, "plat@x")
        assert out.decision.write_salesforce


class TestASalesforceBlankMadeAfterThePlatformsValue:
    """A Salesforce user blanked the field after the platform's value was set: the blank stands
    there as the platform's data stands here (the inbound side does not apply a blank either).
    A queued platform value older than the blank is not a change after it, so it is not sent
    over it, whatever the merge behaviour (chaos seeds 11376 P21.title, 50321 Q4.industry: a
    write that waited through a leader change or a paused budget went out after the blank)."""

    @pytest.mark.parametrize("merge", ["most_recent", "salesforce_unless_blank", "local_unless_blank"])
    def test_an_older_platform_value_is_not_sent_over_it(self, merge: str) -> None:
        current = doc("plat@x", "blank", shadow_at=T2, field_time=T1, updated_at=T1, written_at=T1)
        assert not decide_outgoing(mapping(merge), current, "plat@x").decision.write_salesforce

    @pytest.mark.parametrize("merge", ["most_recent", "salesforce_unless_blank", "local_unless_blank"])
    def test_a_platform_edit_made_after_it_fills_it(self, merge: str) -> None:
        current = doc("plat@x", "blank", shadow_at=T2, field_time=T3, updated_at=T3, written_at=T3)
        out = decide_outgoing(mapping(merge), current, "plat@x")
        assert out.decision.write_salesforce and out.decision.value == "plat@x"


class TestSameSecondEdits:
    """A fresh platform edit counts with its `updated_at` before the watcher stamps its field time."""

    def test_an_unstamped_platform_edit_beats_an_older_salesforce_edit(self) -> None:
        """Platform edit at T3 not yet stamped; a Salesforce edit at T2 arrives: not applied, and the
        platform time is stamped so the decision holds after this write."""
        fresh = doc("plat@x", "present", field_time=None, updated_at=T3, written_at=T0)
        result = merge_record([mapping()], fresh, {"Email": "sfnew@x"}, T2)
        assert result.local_updates == {} and result.sf_updates == {"Email": "plat@x"}
        assert result.field_times == {"email": T3}

    def test_a_newer_salesforce_edit_still_wins(self) -> None:
        """Platform edit at T1 not yet stamped; the Salesforce edit at T2 is newer: applied."""
        fresh = doc("plat@x", "present", field_time=None, updated_at=T1, written_at=T0)
        result = merge_record([mapping()], fresh, {"Email": "sfnew@x"}, T2)
        assert result.local_updates == {"email": "sfnew@x"}

    def test_an_unstamped_edit_sends_against_an_older_shadow(self) -> None:
        """The flusher may run before the watcher stamps the field: `updated_at` stands in."""
        fresh = doc("plat@x", "present", field_time=None, updated_at=T3, written_at=T0, shadow_at=T2)
        out = decide_outgoing(mapping(), fresh, "plat@x")
        assert out.decision.write_salesforce and out.at == T3

    def test_fields_equal_to_the_shadow_keep_their_stamped_time(self) -> None:
        """An unstamped edit to another field does not make this one look fresh."""
        fresh = doc("sf@x", "present", field_time=T0, updated_at=T3, written_at=T1)
        assert has_unstamped_edit(fresh)
        assert platform_time(fresh, "email", shadow_side(fresh, "Lead", "Email")) == T0

    def test_a_value_salesforce_held_before_a_re_read_keeps_its_stamped_time(self) -> None:
        """A re-read replaced the shadow's "plat@x" with a blank (`was` keeps "plat@x" for this
        flush); the platform still holds "plat@x" and its unstamped edit was of another field:
        the value is as old as its stamp, not the edit (chaos seed 24680, P17.title)."""
        fresh = doc("plat@x", "blank", field_time=T0, updated_at=T3, written_at=T1, shadow_at=T2)
        fresh["_sync"]["sf"]["Lead"]["Email"]["was"] = "plat@x"
        assert platform_time(fresh, "email", shadow_side(fresh, "Lead", "Email")) == T0
        assert not decide_outgoing(mapping(), fresh, "plat@x").decision.write_salesforce

    def test_a_value_unchanged_since_its_stamp_keeps_its_stamped_time(self) -> None:
        """The watcher stamped "plat@x" at T0 (`_sync.field_values` keeps what it stamped);
        Salesforce holds another value (a rule held the platform's back). An unstamped edit of
        another field at T3 does not make "plat@x" fresh: a live Salesforce edit at T2 is applied
        (chaos seed 1873 x 2000, P3.company_name: an unrelated first-name edit 0.1 s before a
        Salesforce edit dated the held-back company name as newer, and the sides stayed apart)."""
        fresh = doc("plat@x", "present", field_time=T0, updated_at=T3, written_at=T1)
        fresh["_sync"]["field_values"] = {"email": {"v": "plat@x", "at": T0}}
        assert platform_time(fresh, "email", shadow_side(fresh, "Lead", "Email")) == T0
        result = merge_record([mapping("salesforce_unless_blank")], fresh, {"Email": "sfnew@x"}, T2,
                              live=True)
        assert result.local_updates == {"email": "sfnew@x"}

    @pytest.mark.parametrize(("stamped_value", "stamped_at"),
                             [("older@x", T0), ("plat@x", T0 - timedelta(seconds=5))])
    def test_a_value_changed_since_its_stamp_counts_with_the_edit(self, stamped_value: str,
                                                                   stamped_at: datetime) -> None:
        """The value differs from what the watcher stamped, or that stamp is no longer the field's
        time (another write stamped it since): the unstamped edit may be this field's."""
        fresh = doc("plat@x", "present", field_time=T0, updated_at=T3, written_at=T1)
        fresh["_sync"]["field_values"] = {"email": {"v": stamped_value, "at": stamped_at}}
        assert platform_time(fresh, "email", shadow_side(fresh, "Lead", "Email")) == T3

    def test_a_service_write_is_not_an_unstamped_edit(self) -> None:
        assert not has_unstamped_edit(doc("x", "present", updated_at=T2, written_at=T2))
        assert has_unstamped_edit(doc("x", "present", updated_at=T2, written_at=None))


class TestShadowSets:
    M = [mapping(), FieldMapping(local_field="first_name", sobject="Lead", sf_field="FirstName",
                                    direction=Direction.BOTH, merge=MergeBehaviour.MOST_RECENT)]

    def test_an_inbound_change_fills_the_shadow(self) -> None:
        """Every mapped field the change carries is recorded with the change time."""
        sets = shadow_sets(self.M, doc("a", "missing"), "Lead", {"Email": "e@x", "Other": 1}, T2)
        assert sets == {"_sync.sf.Lead.Email": {"v": "e@x", "at": T2}}

    def test_a_complete_record_records_missing_fields_as_blank(self) -> None:
        """A blank the shadow never knew has no time (the record was created with it, as far as
        anyone told us); data read has the read's time."""
        sets = shadow_sets(self.M, None, "Lead", {"Email": "e@x"}, T2, complete=True)
        assert sets == {"_sync.sf.Lead.FirstName": {"v": None, "at": None},
                        "_sync.sf.Lead.Email": {"v": "e@x", "at": T2}}

    @pytest.mark.parametrize(("shadow", "record", "complete", "expected", "why"), [
        ("missing", {"Email": None}, True, None, "never known, read blank: the create's blank, no time"),
        ("missing", {}, True, None, "never known, missing from a whole record: the same"),
        ("missing", {"Email": None}, False, T2, "an event that carries a blank: a Salesforce user's edit"),
        ("missing", {"Email": "e@x"}, True, T2, "data read: dated by the read"),
        ("present", {"Email": None}, True, T2, "a blank over data the shadow knew: an edit"),
    ])
    def test_when_a_blank_has_a_time(self, shadow: str, record: dict[str, Any], complete: bool,
                                     expected: datetime | None, why: str) -> None:
        """Chaos seed 21977, P11.phone: a gap fetch dated a never-known blank by the Lead's
        `LastModifiedDate`, and the platform's first value was dropped as older."""
        sets = shadow_sets([mapping()], doc("a", shadow), "Lead", record, T2, complete=complete)
        assert sets["_sync.sf.Lead.Email"]["at"] == expected, why

    def test_a_redelivered_change_writes_nothing(self) -> None:
        """Same value: nothing (the time is when the value changed, not when it was last read)."""
        assert shadow_sets(self.M, doc("a", "present"), "Lead", {"Email": "sf@x"}, T3) == {}

    def test_never_backwards(self) -> None:
        """A change older than what the shadow holds does not overwrite it."""
        assert shadow_sets(self.M, doc("a", "present", shadow_at=T2), "Lead", {"Email": "old@x"}, T1) == {}

    @pytest.mark.parametrize(("stamp", "replaced", "why"), [
        (T3, True, "stamped in a later second than Salesforce took our write: Salesforce holds it"),
        (T2 + timedelta(milliseconds=600), False, "in the second of our write: not ordered against it"),
        (T1, False, "stamped before our write: the value our write replaced"),
        (None, False, "no stamp: host times only, never backwards"),
    ])
    def test_our_own_writes_entry_against_salesforces_clock(self, stamp: datetime | None, replaced: bool,
                                                            why: str) -> None:
        """Our write (the platform's value of T2) taken by Salesforce at T2 on its clock; a value
        dated T1 on this host's clock (its offset may be off: chaos seed 8191, L5.first_name)."""
        ours = doc("a", "present", shadow_at=T2)
        ours["_sync"]["sf"]["Lead"]["Email"]["sent"] = T2
        sets = shadow_sets(self.M, ours, "Lead", {"Email": "theirs@x"}, T1, stamp=stamp)
        assert (sets == {"_sync.sf.Lead.Email": {"v": "theirs@x", "at": T1}}) is replaced, why

    @pytest.mark.parametrize(("stamp", "replaced", "why"), [
        (T3, True, "stamped in a later second than Salesforce took our write"),
        (T2 + timedelta(milliseconds=600), True, "in the second of our write: read, so Salesforce holds it"),
        (T1, False, "stamped before our write: the value our write replaced (a read racing it)"),
        (None, False, "no stamp: host times only, never backwards"),
    ])
    def test_our_own_writes_entry_against_a_record_read(self, stamp: datetime | None, replaced: bool,
                                                        why: str) -> None:
        """A record read (a poll, a re-read) shows what Salesforce holds: a value other than ours
        stamped in our write's second was set after it (chaos seed 44444, P15.title)."""
        ours = doc("a", "present", shadow_at=T2)
        ours["_sync"]["sf"]["Lead"]["Email"]["sent"] = T2
        sets = shadow_sets(self.M, ours, "Lead", {"Email": "theirs@x"}, T1, stamp=stamp, read=True)
        assert (sets == {"_sync.sf.Lead.Email": {"v": "theirs@x", "at": T1}}) is replaced, why


    @pytest.mark.parametrize(("value", "own", "untimed", "why"), [
        ("ours@x", {"Email": ["ours@x"]}, True, "a lost answer's value read back: the write's own, no time"),
        ("ours@x", {"Email": ["older@x", "ours@x"]}, True, "any earlier attempt's value"),
        ("theirs@x", {"Email": ["ours@x"]}, False, "another value: Salesforce's, at the read's time"),
        ("ours@x", {"Phone": ["ours@x"]}, False, "sent for another field"),
        ("ours@x", None, False, "nothing sent"),
    ])
    def test_a_value_a_queued_write_sent(self, value: str, own: dict[str, list[Any]] | None,
                                         untimed: bool, why: str) -> None:
        """Chaos seeds 314 (the flusher's re-read) and 40427 (a poll): a value a claim of the
        record's queued write sent, its answer lost, is the platform's own, as old as that claim."""
        sets = shadow_sets(self.M, doc("a", "present"), "Lead", {"Email": value}, T2, read=True, own=own)
        assert sets == {"_sync.sf.Lead.Email": {"v": value, "at": None if untimed else T2}}, why


@dataclass
class _Pending:
    change: SalesforceChange
    collection: str
    doc: dict[str, Any]
    held: dict[str, str] = field(default_factory=dict)
    own: dict[str, list[Any]] = field(default_factory=dict)

    def put(self, path: str, value: Any, *, logged: bool = True) -> None:
        raise AssertionError("edits_only writes nothing")


class TestEventOlderThanOurWrite:
    """Both sides edited a field within a second: the flusher sent the platform's value after the
    Salesforce edit it had not seen, then that edit's event arrived. Salesforce holds our value
    now; applying the event would swap the two sides (CI seed 83, A4.domain). Both times are on
    Salesforce's clock: the event's stamp as stamped, `sent` as Salesforce's time of our write."""

    def item(self, event_at: datetime, source: ChangeSource = ChangeSource.STREAM) -> _Pending:
        change = SalesforceChange(sobject="Lead", sf_id="00Q1", kind=ChangeKind.UPDATE,
                                  fields={"Email": "theirs@x"}, changed_at=event_at, source=source)
        sync = {"sf": {"Lead": {"Email": {"v": "ours@x", "at": T0, "sent": T2}}}}
        return _Pending(change, "people", {"_id": 1, "email": "ours@x", "_sync": sync})

    def test_an_event_older_than_our_write_is_not_salesforces_value_any_more(self) -> None:
        assert edits_only(self.item(T1), [mapping()], {"Email": "theirs@x"}, T1) == {}

    def test_an_event_after_our_write_is_an_edit(self) -> None:
        assert edits_only(self.item(T3), [mapping()], {"Email": "theirs@x"}, T3) == {"Email": "theirs@x"}

    def test_an_event_in_the_second_of_our_write_is_an_edit(self) -> None:
        """Event times may be whole seconds: one stamped in our write's second may be later than
        it (CI seed 64, P3.owner_crm_id: an owner change 0.3 s after the create)."""
        item = self.item(T2)
        item.doc["_sync"]["sf"]["Lead"]["Email"]["sent"] = T2 + timedelta(milliseconds=300)
        assert edits_only(item, [mapping()], {"Email": "theirs@x"}, T2) == {"Email": "theirs@x"}

    @pytest.mark.parametrize("source", [ChangeSource.POLL, ChangeSource.GAP])
    def test_a_record_read_before_our_write_landed_is_not_an_edit_of_what_we_wrote(
        self, source: ChangeSource
    ) -> None:
        """A read races our write: a record last modified before Salesforce took our value was
        read before it, and is applied after it (the inbound compare-and-set re-merges over the
        shadow our write left). Its value of the field we wrote is the one we replaced (CI seed
        83, A4.domain: a new leader's catch-up poll read the Account just before the flusher
        sent the platform's edit)."""
        item = self.item(T1, source)
        assert edits_only(item, [mapping()], {"Email": "theirs@x"}, T1) == {}

    def test_a_record_read_after_our_write_is_an_edit(self) -> None:
        """Modified since Salesforce took our value: someone changed it again."""
        item = self.item(T3, ChangeSource.POLL)
        assert edits_only(item, [mapping()], {"Email": "theirs@x"}, T3) == {"Email": "theirs@x"}


class TestAReadOfAValueOurQueuedWriteSent:
    """Chaos seed 40427, P20.title: our update was applied and its answer lost; before the write
    was sent again, a poll read the record. What any claim of the queued write sent (`own`) is
    the platform's own value coming back, not a Salesforce edit, even at a later
    `LastModifiedDate` than the platform's last edit."""

    def item(self, source: ChangeSource, own: dict[str, list[Any]]) -> _Pending:
        change = SalesforceChange(sobject="Lead", sf_id="00Q1", kind=ChangeKind.UPSERT,
                                  fields={"Email": "ours@x"}, changed_at=T3, source=source)
        sync = {"sf": {"Lead": {"Email": {"v": "old@x", "at": T0}}}}
        return _Pending(change, "people", {"_id": 1, "email": None, "_sync": sync}, own=own)

    @pytest.mark.parametrize(("source", "own", "edit", "why"), [
        (ChangeSource.POLL, {"Email": ["ours@x"]}, False, "a poll of our lost answer's value"),
        (ChangeSource.GAP, {"Email": ["older@x", "ours@x"]}, False, "a gap fetch, any claim's value"),
        (ChangeSource.POLL, {"Email": ["older@x"]}, True, "a value no claim sent: Salesforce's edit"),
        (ChangeSource.POLL, {}, True, "no queued write"),
        (ChangeSource.STREAM, {"Email": ["ours@x"]}, True, "an event: our own are echoes already"),
    ])
    def test_it_is_no_edit(self, source: ChangeSource, own: dict[str, list[Any]], edit: bool,
                           why: str) -> None:
        found = edits_only(self.item(source, own), [mapping()], {"Email": "ours@x"}, T3)
        assert found == ({"Email": "ours@x"} if edit else {}), why


class TestAMergeDatesAValueTheServiceKnew:
    """Chaos seed 60607, P25.first_name: a merge (a re-import, a retry) of a record read weighs a
    value the service knew already by when that value came (the shadow's time, or none for a
    value a claim of the record's queued write sent), not by the record's `LastModifiedDate`,
    which any later write moves (here our own create's), and never later than that date. The
    platform's value was set at T1; the record read is dated T3 unless the row says otherwise."""

    @pytest.mark.parametrize(("read", "shadow", "own", "record_at", "winner", "why"), [
        ("ours@x", ("ours@x", T0), {}, T3, "platform", "our own write's value, set at T0"),
        ("ours@x", ("ours@x", None), {}, T3, "platform", "known with no time: older than any"),
        ("ours@x", ("old@x", T0), {"Email": ["ours@x"]}, T3, "platform", "a queued write's claim sent it"),
        ("theirs@x", ("ours@x", T0), {}, T3, "salesforce", "changed since: the record's date"),
        ("theirs@x", None, {}, T3, "salesforce", "the shadow never knew the field"),
        ("ours@x", ("ours@x", T2), {}, T3, "salesforce", "set after the platform's value"),
        ("ours@x", ("ours@x", T3), {}, T0, "platform", "never later than the record's date"),
    ])
    def test_the_winner(self, read: str, shadow: tuple[str, datetime | None] | None,
                        own: dict[str, list[Any]], record_at: datetime, winner: str, why: str) -> None:
        sync: dict[str, Any] = {"written_at": T1, "field_times": {"email": T1}}
        if shadow is not None:
            sync["sf"] = {"Lead": {"Email": {"v": shadow[0], "at": shadow[1]}}}
        change = SalesforceChange(sobject="Lead", sf_id="00Q1", kind=ChangeKind.UPSERT,
                                  fields={"Email": read}, changed_at=record_at, source=ChangeSource.IMPORT)
        item = _Pending(change, "people", {"_id": 1, "email": "plat@x", "updated_at": T1, "_sync": sync},
                        own=own)
        times = known_times(item, [mapping()], {"Email": read}, record_at)
        merged = merge_record([mapping()], item.doc, {"Email": read}, record_at, sf_field_times=times)
        got = "platform" if merged.sf_updates == {"Email": "plat@x"} else (
            "salesforce" if merged.local_updates == {"email": read} else "neither")
        assert got == winner, why
