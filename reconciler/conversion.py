"""Lead conversion: the SAME Person moves from the Lead to the new Contact.

Salesforce sends, in one transaction, Account CREATE, Contact CREATE, then Lead UPDATE with
`IsConverted`, `ConvertedContactId`, `ConvertedAccountId` (a polled Lead carries the same
fields). The approach chosen:

1. Within a batch the conversion runs FIRST, whatever the order of the changes: the Person
   linked to the Lead is relinked to the Contact (`crm.object = "Contact"`, `crm.id` = the
   contact id, `crm.converted_from` = [the lead id]), and its Company to the Account. The
   Contact CREATE of the same batch is then applied as a merge into that Person, so no second
   Person is ever created when both arrive together (the Contact create is in effect held
   back behind its transaction's Lead update).
2. Across batches (the Contact CREATE applied in an earlier batch created a Person for it):
   the conversion is detected on the Lead update and that Person is folded into the Lead's
   Person — its values fill the Lead Person's blanks (data wins over blank), then it is
   deleted if the service created it, or unlinked (its old link kept in `crm_previous`) if it
   was a platform record. A Person the service created holds the Contact's values, which are
   the Lead's latest: it is merged by the merge behaviour (field times), not only into blanks.
   The Lead's Person survives: it carries the platform's history.
3. When the Contact's data is not in the batch, the Contact is re-fetched (one SOQL call, when
   the budget allows) and merged with the merge behaviours (a conversion is a merge: where both
   sides differ, the preferred data wins, not only blanks), a folded Person or not: its
   Salesforce edits made before the conversion may never have reached the Lead's Person.
4. No Person is linked to the Lead (it was never read: created and converted before the service
   read either, chaos seed 60013 L10; or never synced). Its Contact's Person records the Lead
   (`crm.converted_from`): one that exists at once (a `convert` log); else the one the Contact's
   create or read makes or links in this batch (the Contact re-fetched when it is not in the
   batch, unless a backfill read the Lead: it imports the Contacts next). A Lead create or read
   of a batch holding its conversion, or applied after it, then starts nothing
   (`rules.cannot_start`): the Lead's channel and the Contact's have no order between them, and
   the Lead's create event carries the Lead as created (`IsConverted` false).
5. A Lead converted into an EXISTING Contact (Salesforce's "merge into an existing contact": no
   Contact CREATE; the Lead's values fill the Contact's blank fields, a Contact UPDATE), so one
   Contact, and its Person, may absorb several Leads over time: `crm.converted_from` is the
   list of every Lead converted into the Person's Contact (a document written before holds one
   id; `recorded_leads` reads both), and a Lead not in it is still to record (steps 4 and 5),
   in whatever order its events come (chaos.md, round 8). A Contact's Person that records a
   Lead already is such an existing Contact's: the new Lead's Person, if it has one, is folded
   into it as in step 2 (`Step.FOLD`; the roles swapped, the Lead's Person deleted or
   unlinked), not the other way round, so the Person the first conversion left, and the Leads
   it records, stay. Several Leads converted into one Contact in one batch are planned in turn,
   each on the Person the ones before left.

Each conversion leaves one `convert` sync log; the merge that follows leaves a `merge` log.
A conversion already applied (the Contact's Person records the Lead) is recognised and not
applied twice.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from reconciler.merge import Side, merge_field
from reconciler.objects import COMPANIES, PEOPLE
from reconciler.ports import Budget, ChangeSource, RecordFetcher, SalesforceChange
from reconciler.records import get_path, is_blank, set_path
from reconciler.rules import is_converted_lead
from reconciler.shadow import stamped_time, unstamped_times
from reconciler.store import BulkOutcome, RecordWrite
from reconciler.sync_logs import SyncLog, failed_inbound, utcnow
from settings import Direction, Mappings


class ConversionStore(Protocol):
    async def find_linked(self, collection: str, sf_ids: Any, *,
                          converted: bool = False) -> list[dict[str, Any]]: ...
    async def find_records(self, collection: str, ids: Any) -> list[dict[str, Any]]: ...
    async def bulk_apply(self, collection: str, writes: Sequence[RecordWrite]) -> BulkOutcome: ...
    async def write_in_order(self, collection: str, writes: Sequence[RecordWrite]) -> BulkOutcome: ...


class Converter(Protocol):
    """What a conversion needs of the `Reconciler` applying the batch (no import of it: the
    reconciler imports this module)."""

    @property
    def store(self) -> ConversionStore: ...

    @property
    def mappings(self) -> Mappings: ...

    @property
    def fetcher(self) -> RecordFetcher | None: ...

    @property
    def budget(self) -> Budget | None: ...


@dataclass(frozen=True)
class Conversion:
    lead_id: str
    contact_id: str
    account_id: str | None
    changed_at: datetime
    source: ChangeSource = ChangeSource.STREAM


@dataclass
class Relinked:
    """What `relink` did: its `convert` logs and counts, and the Contacts it re-fetched to merge.
    `leads`: every converted Lead of the batch (its changes start no Person); `follows`: Contact
    id -> the conversions its Person, made or linked in this batch, is to record."""

    logs: list[SyncLog] = field(default_factory=list)
    applied: int = 0
    failed: int = 0
    refetched: list[SalesforceChange] = field(default_factory=list)
    leads: set[str] = field(default_factory=set)
    follows: dict[str, list[Conversion]] = field(default_factory=dict)


class Step(StrEnum):
    """What a conversion does, by the Persons linked to its Lead and to its Contact."""

    RELINK = "relink"  # the Lead's Person follows the Contact, folding in the Contact's, if any
    FOLD = "fold"      # the Lead's Person folds into the Contact's, which records another Lead
    MARK = "mark"      # no Lead Person: the Contact's records the Lead
    FOLLOW = "follow"  # no Person of either yet: the one the Contact's change makes records the Lead
    DONE = "done"      # applied already: the Contact's Person records this Lead


def conversion_step(lead_id: str, lead_person: Mapping[str, Any] | None,
                    contact_person: Mapping[str, Any] | None) -> Step:
    """The pure decision behind `relink` (`lead_person`: linked by `crm.id` to the Lead). A
    Contact's Person that records a Lead already is an existing Contact's, which Salesforce let a
    user convert this Lead into: it stays, the Lead's Person folds into it."""
    if lead_person is not None and get_path(lead_person, "crm.object") == "Lead":
        return Step.FOLD if recorded_leads(contact_person) else Step.RELINK
    if contact_person is None:
        return Step.FOLLOW
    return Step.DONE if lead_id in recorded_leads(contact_person) else Step.MARK


def recorded_leads(person: Mapping[str, Any] | None) -> list[str]:
    """The Leads a Person records as converted into its Contact (`crm.converted_from`, a list,
    queried with `$in`; a document written before a Contact could record several holds one id)."""
    value = get_path(person, "crm.converted_from")
    if isinstance(value, str):
        return [value] if value else []
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def with_lead(leads: Sequence[str], lead_id: str) -> list[str]:
    return [*leads, lead_id] if lead_id not in leads else list(leads)


def conversions_in(changes: list[SalesforceChange]) -> list[Conversion]:
    out: dict[str, Conversion] = {}
    for c in changes:
        contact = c.fields.get("ConvertedContactId")
        if is_converted_lead(c) and isinstance(contact, str) and contact:
            account = c.fields.get("ConvertedAccountId")
            out[c.sf_id] = Conversion(c.sf_id, contact, account if isinstance(account, str) else None,
                                      c.changed_at, c.source)
    return list(out.values())


@dataclass
class _Planned:
    """The writes of a batch's conversions, and each applied one's (conversion, Person, folded)."""

    people: list[RecordWrite] = field(default_factory=list)
    companies: list[RecordWrite] = field(default_factory=list)
    done: list[tuple[Conversion, dict[str, Any], dict[str, Any] | None]] = field(default_factory=list)


async def relink(reconciler: Converter, changes: list[SalesforceChange], *, attempt: int = 1) -> Relinked:
    """Apply the batch's conversions; `refetched` holds extra changes (re-fetched Contacts) to merge."""
    result = Relinked()
    conversions = conversions_in(changes)
    if not conversions:
        return result
    store = reconciler.store
    ids = {x.lead_id for x in conversions} | {x.contact_id for x in conversions}
    people = await store.find_linked(PEOPLE, ids)
    by_crm = {d["crm"]["id"]: d for d in people if get_path(d, "crm.id")}
    companies = await _companies(reconciler, conversions, by_crm)
    result.leads = {x.lead_id for x in conversions}
    plan = _plan(reconciler, conversions, by_crm, companies, result)
    await store.bulk_apply(COMPANIES, plan.companies)
    outcome = await store.write_in_order(PEOPLE, plan.people)
    # ordered writes stop at the first failure: the batch's conversions stand or fall together
    error = outcome.errors[min(outcome.errors)] if outcome.errors else None
    failed = error is not None
    for conv, person, duplicate in plan.done:
        result.logs.append(_log(conv, person, duplicate, error, attempt))
        if failed:
            result.failed += 1
        else:
            result.applied += 1
    # A relinked Person merges its Contact; a Contact to make or link a Person for records the
    # Lead (not an import's: the backfill reads Contacts after Leads, a page at a time).
    in_batch = {c.sf_id for c in changes if c.sobject == "Contact"}
    refetch = [x.contact_id for x, p, _ in plan.done if not _marked(x, p)]
    refetch += [c for c, xs in result.follows.items() if any(x.source is not ChangeSource.IMPORT for x in xs)]
    refetch = [c for c in refetch if c not in in_batch]
    if refetch and not failed:
        result.refetched = await _refetch(reconciler, refetch)
    return result


def _plan(reconciler: Converter, conversions: list[Conversion], by_crm: dict[str, dict[str, Any]],
          companies: dict[str, Any], result: Relinked) -> _Planned:
    """Each conversion's step (`conversion_step`) as writes, or as a Contact to follow. `by_crm`
    is kept as the writes leave it, so that several Leads converted into one Contact in one batch
    each see the Person the ones before made the Contact's; Leads with a Person go first, so a
    Lead without one records itself on the Person the others relinked, not on one to be made;
    then in Salesforce's order: the first conversion made the Contact, the later ones fold."""
    plan = _Planned()
    for conv in sorted(conversions, key=lambda x: (x.lead_id not in by_crm, x.changed_at)):
        person, contact_person = by_crm.get(conv.lead_id), by_crm.get(conv.contact_id)
        step = conversion_step(conv.lead_id, person, contact_person)
        if step is Step.FOLLOW:
            result.follows.setdefault(conv.contact_id, []).append(conv)
            continue
        if step is Step.DONE or (step is Step.RELINK and person is None) or \
                (step is not Step.RELINK and contact_person is None):
            continue
        # the Person that stays, and the one folded into it
        stays, folded = (person, contact_person) if step is Step.RELINK else (contact_person, person)
        assert stays is not None
        writes, after = _person_writes(reconciler, conv, stays, folded, companies, plan.companies)
        plan.people += writes
        plan.done.append((conv, stays, folded))
        by_crm.pop(conv.lead_id, None)
        by_crm[conv.contact_id] = after
    return plan


def _marked(conv: Conversion, person: dict[str, Any]) -> bool:
    """Was this conversion applied to the Contact's own Person (`Step.MARK`, `Step.FOLD`)?"""
    return bool(person["crm"]["id"] == conv.contact_id)


async def _companies(
    reconciler: Converter, conversions: list[Conversion], by_crm: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Account id -> Company doc: the one linked to the Account, else the Lead Person's own
    (still unlinked) Company, which the conversion links to the Account."""
    account_ids = {x.account_id for x in conversions if x.account_id}
    linked = await reconciler.store.find_linked(COMPANIES, account_ids)
    out: dict[str, Any] = {d["crm"]["id"]: d for d in linked if get_path(d, "crm.id")}
    own = {x.account_id: by_crm[x.lead_id].get("company_id") for x in conversions
           if x.account_id and x.account_id not in out and x.lead_id in by_crm}
    own_docs = await reconciler.store.find_records(COMPANIES, {v for v in own.values() if v is not None})
    by_id = {d["_id"]: d for d in own_docs if not get_path(d, "crm.id")}
    for account_id, company_id in own.items():
        if company_id in by_id:
            out[account_id] = {**by_id[company_id], "_link_to_account": True}
    return out


def _person_writes(
    reconciler: Converter, conv: Conversion, person: dict[str, Any], duplicate: dict[str, Any] | None,
    companies: dict[str, Any], company_writes: list[RecordWrite],
) -> tuple[list[RecordWrite], dict[str, Any]]:
    """The writes by which `person` records the Lead (relinked to the Contact when it is the
    Lead's), taking over `duplicate`'s values and the Leads it records; and `person` as they
    leave it."""
    now = utcnow()
    stamp = {"_sync.written_at": now, "updated_at": now}
    relinked = person["crm"]["id"] == conv.lead_id
    leads = with_lead([*recorded_leads(person), *recorded_leads(duplicate)], conv.lead_id)
    # the stamp below hides an edit the watcher has not stamped yet: it is dated here
    edited = unstamped_times(person, reconciler.mappings.for_object(person["crm"]["object"]))
    values: dict[str, Any] = {**edited, "crm.converted_from": leads, "crm.converted_at": conv.changed_at,
                              **stamp}
    where: dict[str, Any] = {"_id": person["_id"], "crm.id": conv.lead_id}
    if relinked:
        values.update({"crm.object": "Contact", "crm.id": conv.contact_id, "crm.linked_at": now})
        values.update(_company(conv, companies, company_writes, stamp))
    else:
        where.update({"crm.id": conv.contact_id, "crm.converted_from": {"$ne": conv.lead_id}})
    writes: list[RecordWrite] = []
    if duplicate is not None and duplicate["_id"] != person["_id"]:
        # free the contact id first (unique index), then take over the duplicate's values
        if get_path(duplicate, "_sync.created_by_sync"):
            writes.append(RecordWrite(filter={"_id": duplicate["_id"]}, delete=True))
        else:
            writes.append(RecordWrite(filter={"_id": duplicate["_id"]}, unset=["crm"],
                                      set={"crm_previous": duplicate.get("crm"), **stamp}))
        values.update(_folded(reconciler.mappings, person, duplicate, contacts=relinked))
    writes.append(RecordWrite(filter=where, set=values))
    after = copy.deepcopy(person)
    for path, value in values.items():
        set_path(after, path, value)
    return writes, after


def _company(conv: Conversion, companies: dict[str, Any], company_writes: list[RecordWrite],
             stamp: dict[str, Any]) -> dict[str, Any]:
    """A relinked Person's Company follows to the conversion's Account (linking it, if it is the
    Lead Person's own)."""
    company = companies.get(conv.account_id) if conv.account_id else None
    if company is None:
        return {}
    if company.get("_link_to_account"):
        company_writes.append(RecordWrite(
            filter={"_id": company["_id"], "crm.id": {"$exists": False}},
            set={"crm.object": "Account", "crm.id": conv.account_id, "crm.linked_at": stamp["updated_at"],
                 **stamp}))
    return {"company_id": company["_id"]}


def _folded(mappings: Mappings, person: dict[str, Any], duplicate: dict[str, Any], *,
            contacts: bool = True) -> dict[str, Any]:
    """What the Person that stays takes from the one folded into it.

    `contacts`: the Lead's Person takes from the Person the Contact's create made. That one holds
    the Contact's values, i.e. the Lead's latest (some perhaps never seen on the Lead: their
    events lost), so it is merged like a same-batch Contact create: by the merge behaviour, on
    both sides' field times. A platform record taken over only fills blanks (its values are the
    platform's own, not Salesforce's). So are a `to_salesforce` field's, which Salesforce never
    writes: a platform edit of the Person the create made (chaos seed 12289, L8.state: lost with
    it, as Salesforce's value, which never writes the field) -- the later edit stays.

    Else (`Step.FOLD`) an existing Contact's Person takes from the Lead's only what it lacks:
    Salesforce kept the Contact's values, filling only its blanks from the Lead ("only empty
    fields in the target object are overwritten"), and so does the platform, or the two would
    differ with nothing to send the difference."""
    from_salesforce = contacts and bool(get_path(duplicate, "_sync.created_by_sync"))
    out: dict[str, Any] = {}
    for m in mappings.for_object("Contact"):
        mine = Side(get_path(person, m.local_field), stamped_time(person, m.local_field))
        theirs = Side(get_path(duplicate, m.local_field), stamped_time(duplicate, m.local_field))
        if from_salesforce and m.direction is Direction.TO_SALESFORCE:
            take = theirs.value != mine.value and _edited_later(theirs, mine)
        elif from_salesforce:
            take = merge_field(m, mine, theirs, sf_field_writable=True).write_local
        else:
            take = is_blank(mine.value) and not is_blank(theirs.value)
        if take:
            out[m.local_field] = theirs.value
            if from_salesforce and theirs.changed_at is not None:
                out[f"_sync.field_times.{m.local_field}"] = theirs.changed_at
    return out


def _edited_later(theirs: Side, mine: Side) -> bool:
    """Of two platform values, is `theirs` the later edit? A stamped edit is later than an
    unstamped value; with neither stamped, data only fills a blank."""
    if theirs.changed_at is None:
        return mine.changed_at is None and is_blank(mine.value) and not is_blank(theirs.value)
    return mine.changed_at is None or _utc(theirs.changed_at) > _utc(mine.changed_at)


def _utc(value: datetime) -> datetime:
    """BSON dates may come back naive (they are UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _log(
    conv: Conversion, person: dict[str, Any], duplicate: dict[str, Any] | None, error: str | None,
    attempt: int,
) -> SyncLog:
    fields: dict[str, dict[str, Any]] = {
        "crm.object": {"old": "Lead", "new": "Contact"},
        "crm.id": {"old": conv.lead_id, "new": conv.contact_id},
    }
    if _marked(conv, person):
        before = recorded_leads(person)
        fields = {"crm.converted_from": {"old": before or None, "new": with_lead(before, conv.lead_id)}}
    if error is not None:
        return failed_inbound("Lead", conv.lead_id, error, type="convert", collection=PEOPLE,
                              local_id=str(person["_id"]), attempt=attempt, fields=fields)
    if duplicate is not None:
        fields["merged_person"] = {"old": str(duplicate["_id"]), "new": str(person["_id"])}
    return SyncLog(source="salesforce", type="convert", status="success", object="Contact",
                   sf_id=conv.contact_id, local_id=str(person["_id"]), collection=PEOPLE,
                   fields=fields, attempt=attempt)


async def _refetch(reconciler: Converter, contact_ids: list[str]) -> list[SalesforceChange]:
    fetcher = reconciler.fetcher
    if fetcher is None or (reconciler.budget and not reconciler.budget.allows_optional_calls()):
        return []
    return await fetcher.fetch("Contact", contact_ids, source=ChangeSource.IMPORT,
                               mappings=reconciler.mappings)
