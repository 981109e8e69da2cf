"""The seeded schedule: operations on both sides and faults, drawn from `random.Random(seed)`.

The schedule is a pure function of (seed, ops, fault kinds): it names records by *slots*
(`L3` a Lead created in Salesforce, `C2` a Contact, `A1` an Account, `P4` a Person created on
the platform, `Q1` a Company created on the platform) and keeps its own small picture of which
slots exist, are deleted or converted, so every step it draws is one a user could make. The
runner binds slots to real ids as it goes; a step whose target is not there yet (its record has
not crossed over) is acknowledged as skipped, which changes what the oracle is fed but never the
schedule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

MAPPED_OWNERS = ("005000000000001AAA", "005000000000002AAA")  # local users u-1, u-2
UNMAPPED_OWNER = "005000000000003AAA"  # the integration user: not in [[users]]
OWNER_USERS = {MAPPED_OWNERS[0]: "u-1", MAPPED_OWNERS[1]: "u-2"}
INDUSTRIES = ("Banking", "Consulting", "Education", "Energy", "Healthcare", "Retail", "Technology")
LEAD_SOURCES = ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")

# Every fault kind the run can inject (see faults.py); the default is all of them.
FAULT_KINDS = (
    "kill_leader", "stop_leader", "restart_mongo", "cometd_drop", "rest_5xx", "lock_row",
    "apply_then_drop", "token_expiry", "budget_swing", "cdc_gap", "cdc_overflow",
    "replay_retention", "poison_event",
)
PROCESS_FAULTS = frozenset({"kill_leader", "stop_leader", "restart_mongo"})
FAULT_RATE = 0.12  # chance that a fault step comes before an operation


@dataclass
class Step:
    """One operation or fault. `id` is `op-0007` / `f-003`; `heal` names the fault it ends."""

    id: str
    kind: str
    side: str  # "salesforce" | "platform" | "fault" | "heal"
    target: str | None = None
    args: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "side": self.side, "target": self.target, "args": self.args}


@dataclass
class _Slot:
    name: str
    sobject: str  # Lead | Contact | Account (the Salesforce object it is, or becomes)
    origin: str   # salesforce | platform
    owner_mapped: bool = True
    deleted: bool = False
    converted: bool = False


class _Drawer:
    def __init__(self, seed: int, faults: tuple[str, ...]) -> None:
        self.rng = random.Random(seed)
        self.faults = faults
        self.slots: dict[str, _Slot] = {}
        self.counts: dict[str, int] = {}
        self.steps: list[Step] = []
        self.n_ops = 0
        self.n_faults = 0
        self.pending_heals: list[tuple[int, Step]] = []  # (heal at op count, heal step)
        self.process_fault_open = False

    # names -------------------------------------------------------------------------------------
    def new_slot(self, prefix: str, sobject: str, origin: str, **kw: Any) -> _Slot:
        self.counts[prefix] = self.counts.get(prefix, 0) + 1
        slot = _Slot(f"{prefix}{self.counts[prefix]}", sobject, origin, **kw)
        self.slots[slot.name] = slot
        return slot

    def word(self, what: str) -> str:
        return f"{what}{self.rng.randrange(10_000):04d}"

    def pick(self, *, people: bool = True, companies: bool = False, alive: bool = True,
             sobject: str | None = None) -> _Slot | None:
        pool = [s for s in self.slots.values()
                if ((people and s.sobject in ("Lead", "Contact")) or (companies and s.sobject == "Account"))
                and (not alive or not s.deleted) and (sobject is None or s.sobject == sobject)]
        return self.rng.choice(pool) if pool else None

    # steps -------------------------------------------------------------------------------------
    def op(self, kind: str, side: str, target: str | None, **args: Any) -> Step:
        self.n_ops += 1
        step = Step(f"op-{self.n_ops:04d}", kind, side, target, args)
        self.steps.append(step)
        return step

    def person_fields(self, sobject: str, *, blanks: bool = True) -> dict[str, Any]:
        """A random subset of Salesforce fields: mapped, unmapped, blanks, compound parts."""
        rng = self.rng
        choices: list[tuple[str, Any]] = [
            ("FirstName", self.word("Fn")), ("LastName", self.word("Ln")), ("Title", self.word("Title")),
            ("Phone", f"+1 555 {rng.randrange(10_000):04d}"),
            ("City" if sobject == "Lead" else "MailingCity", self.word("City")),
            ("State" if sobject == "Lead" else "MailingState", self.word("St")),
            ("LeadSource", rng.choice(LEAD_SOURCES)),
            ("MobilePhone", f"+1 666 {rng.randrange(10_000):04d}"),  # unmapped
            ("Description", self.word("Unmapped")),                  # unmapped
        ]
        if sobject == "Lead":
            choices.append(("Company", self.word("Co")))
            choices.append(("PostalCode", f"{rng.randrange(100_000):05d}"))  # unmapped part of Address
        picked = dict(rng.sample(choices, rng.randint(1, 4)))
        if blanks and rng.random() < 0.2:
            name = rng.choice([n for n in ("Title", "Phone", "FirstName", "LeadSource") if n in picked]
                              or ["Title"])
            picked[name] = rng.choice([None, ""])
        return picked

    def local_person_fields(self, *, blanks: bool = True) -> dict[str, Any]:
        rng = self.rng
        choices: list[tuple[str, Any]] = [
            ("first_name", self.word("fn")), ("last_name", self.word("ln")), ("title", self.word("title")),
            ("phone", f"+1 777 {rng.randrange(10_000):04d}"), ("city", self.word("city")),
            ("state", self.word("st")), ("company_name", self.word("co")),
            ("lead_source", self.word("ls")),  # from_salesforce: stays local
            ("notes", self.word("unmapped")),  # unmapped local field
        ]
        picked = dict(rng.sample(choices, rng.randint(1, 3)))
        if blanks and rng.random() < 0.15:
            picked[rng.choice(("title", "phone", "city"))] = rng.choice([None, ""])
        return picked

    def account_fields(self) -> dict[str, Any]:
        rng = self.rng
        choices: list[tuple[str, Any]] = [
            ("Name", self.word("Acct")), ("Website", f"https://{self.word('www')}.example.com"),
            ("Industry", rng.choice(INDUSTRIES)), ("BillingCity", self.word("Bcity")),
            ("Description", self.word("Unmapped")),
        ]
        picked = dict(rng.sample(choices, rng.randint(1, 3)))
        if rng.random() < 0.15:
            picked["Industry" if "Industry" in picked else "BillingCity"] = None
        return picked

    def local_company_fields(self) -> dict[str, Any]:
        rng = self.rng
        choices: list[tuple[str, Any]] = [
            ("name", self.word("Company")), ("domain", f"{self.word('dom')}.example.org"),
            ("industry", rng.choice(INDUSTRIES)), ("city", self.word("ccity")),
        ]
        return dict(rng.sample(choices, rng.randint(1, 2)))

    # drawing -----------------------------------------------------------------------------------
    def draw_op(self) -> None:
        rng = self.rng
        weights = {
            "sf_create_lead": 10, "sf_create_contact": 3, "sf_create_account": 4, "sf_update": 22,
            "sf_delete": 2, "sf_undelete": 2, "sf_convert": 3, "sf_owner_change": 4, "sf_bulk_update": 3,
            "pf_create_person": 8, "pf_create_company": 3, "pf_edit_person": 20, "pf_edit_company": 5,
            "conflict": 8,
        }
        while True:
            kind = rng.choices(list(weights), list(weights.values()))[0]
            if getattr(self, f"_{kind}")():
                return

    def _sf_create_lead(self) -> bool:
        mapped = self.rng.random() < 0.85
        slot = self.new_slot("L", "Lead", "salesforce", owner_mapped=mapped)
        fields = {"FirstName": self.word("Fn"), "LastName": self.word("Ln"), "Company": self.word("Co"),
                  "Email": f"{slot.name.lower()}.{self.word('e')}@chaos.example.com",
                  "OwnerId": self.rng.choice(MAPPED_OWNERS) if mapped else UNMAPPED_OWNER}
        fields.update({k: v for k, v in self.person_fields("Lead", blanks=False).items()
                       if k not in ("LastName", "Company")})
        self.op("sf_create_lead", "salesforce", slot.name, fields=fields)
        return True

    def _sf_create_contact(self) -> bool:
        account = self.pick(people=False, companies=True)
        slot = self.new_slot("C", "Contact", "salesforce")
        fields = {"FirstName": self.word("Fn"), "LastName": self.word("Ln"),
                  "Email": f"{slot.name.lower()}.{self.word('e')}@chaos.example.com",
                  "OwnerId": self.rng.choice(MAPPED_OWNERS)}
        extra = self.person_fields("Contact", blanks=False)
        fields.update({k: v for k, v in extra.items() if k != "LastName"})
        self.op("sf_create_contact", "salesforce", slot.name, fields=fields,
                account=account.name if account else None)
        return True

    def _sf_create_account(self) -> bool:
        slot = self.new_slot("A", "Account", "salesforce")
        fields = {"Name": self.word("Acct"), "Website": f"https://{slot.name.lower()}{self.word('w')}.example.com",
                  "Industry": self.rng.choice(INDUSTRIES), "OwnerId": MAPPED_OWNERS[0]}
        self.op("sf_create_account", "salesforce", slot.name, fields=fields)
        return True

    def _sf_update(self) -> bool:
        slot = self.pick(people=True, companies=True)
        if slot is None:
            return False
        fields = self.account_fields() if slot.sobject == "Account" else self.person_fields(slot.sobject)
        self.op("sf_update", "salesforce", slot.name, fields=fields, via=self.rng.choice(("rest", "ui")))
        return True

    def _sf_bulk_update(self) -> bool:
        slots = [s for s in self.slots.values() if s.sobject == "Lead" and not s.deleted]
        if len(slots) < 2:
            return False
        chosen = self.rng.sample(slots, min(len(slots), self.rng.randint(2, 4)))
        self.op("sf_bulk_update", "salesforce", None,
                updates={s.name: self.person_fields("Lead", blanks=False) for s in chosen})
        return True

    def _sf_delete(self) -> bool:
        slot = self.pick(sobject="Lead") or self.pick(sobject="Contact")
        if slot is None:
            return False
        slot.deleted = True
        self.op("sf_delete", "salesforce", slot.name)
        return True

    def _sf_undelete(self) -> bool:
        pool = [s for s in self.slots.values() if s.deleted]
        if not pool:
            return False
        slot = self.rng.choice(pool)
        slot.deleted = False
        self.op("sf_undelete", "salesforce", slot.name)
        return True

    def _sf_convert(self) -> bool:
        slot = self.pick(sobject="Lead")
        if slot is None:
            return False
        slot.sobject, slot.converted = "Contact", True
        account = self.new_slot("A", "Account", "salesforce")
        self.op("sf_convert", "salesforce", slot.name, account=account.name)
        return True

    def _sf_owner_change(self) -> bool:
        slot = self.pick(people=True)
        if slot is None:
            return False
        owner = self.rng.choice((*MAPPED_OWNERS, UNMAPPED_OWNER))
        self.op("sf_owner_change", "salesforce", slot.name, owner=owner)
        return True

    def _pf_create_person(self) -> bool:
        slot = self.new_slot("P", "Lead", "platform")
        fields: dict[str, Any] = {
            "first_name": self.word("fn"), "last_name": self.word("ln"), "company_name": self.word("co"),
            "email": f"{slot.name.lower()}.{self.word('e')}@platform.example.com",
            "title": self.word("title"), "owner_crm_id": MAPPED_OWNERS[0], "owner_id": "u-1",
        }
        if self.rng.random() < 0.1:
            del fields["company_name"]  # a Lead needs Company: a failed create, one failed log
        self.op("pf_create_person", "platform", slot.name, fields=fields)
        return True

    def _pf_create_company(self) -> bool:
        slot = self.new_slot("Q", "Account", "platform")
        fields = {"name": self.word("Company"), "domain": f"{slot.name.lower()}{self.word('d')}.example.org",
                  "industry": self.rng.choice(INDUSTRIES), "city": self.word("ccity")}
        self.op("pf_create_company", "platform", slot.name, fields=fields)
        return True

    def _pf_edit_person(self) -> bool:
        slot = self.pick(people=True)
        if slot is None:
            return False
        self.op("pf_edit", "platform", slot.name, fields=self.local_person_fields())
        return True

    def _pf_edit_company(self) -> bool:
        slot = self.pick(people=False, companies=True)
        if slot is None:
            return False
        self.op("pf_edit", "platform", slot.name, fields=self.local_company_fields())
        return True

    def _conflict(self) -> bool:
        """The same field edited on both sides within the same second."""
        slot = self.pick(people=True)
        if slot is None:
            return False
        local_field, lead_field, contact_field = self.rng.choice((
            ("title", "Title", "Title"), ("first_name", "FirstName", "FirstName"),
            ("city", "City", "MailingCity"), ("phone", "Phone", "Phone")))
        sf_field = lead_field if slot.sobject == "Lead" else contact_field
        first = self.rng.choice(("salesforce", "platform"))
        self.op("conflict", "both", slot.name, local_field=local_field, sf_field=sf_field,
                sf_value=self.word("SfWins"), local_value=self.word("pfwins"), first=first)
        return True

    def draw_fault(self) -> None:
        rng = self.rng
        kinds = [k for k in self.faults if not (k in PROCESS_FAULTS and self.process_fault_open)]
        if not kinds:
            return
        kind = rng.choice(kinds)
        self.n_faults += 1
        fid = f"f-{self.n_faults:03d}"
        args: dict[str, Any] = {}
        heal_after: int | None = None
        if kind in ("kill_leader", "stop_leader"):
            heal_after = rng.randint(2, 6)
        elif kind == "restart_mongo":
            args["down_s"] = round(rng.uniform(0.5, 2.0), 1)
        elif kind in ("rest_5xx", "lock_row"):
            args["count"] = rng.randint(1, 4)
            args["status"] = rng.choice((500, 503)) if kind == "rest_5xx" else 400
            if kind == "rest_5xx":  # the service's calls: outbound writes, polling/GAP queries
                args["path"] = rng.choice(("composite/sobjects", "query", "queryAll"))
        elif kind == "budget_swing":
            args["level"] = rng.choice(("polling", "paused"))
            heal_after = rng.randint(2, 8)
        elif kind in ("cdc_gap", "cdc_overflow"):
            slot = self.pick(people=True, companies=True)
            if slot is None:
                self.n_faults -= 1
                return
            fields = self.account_fields() if slot.sobject == "Account" else self.person_fields(
                slot.sobject, blanks=False)
            args.update(target=slot.name, fields=fields)
        elif kind == "replay_retention":
            heal_after = rng.randint(1, 4)
        elif kind == "poison_event":
            args["variant"] = rng.choice(("future_commit", "int_lastmodified", "no_header"))
        step = Step(fid, kind, "fault", args.pop("target", None), args)
        self.steps.append(step)
        if heal_after is not None:
            if kind in PROCESS_FAULTS:
                self.process_fault_open = True
            self.pending_heals.append((self.n_ops + heal_after, Step(f"{fid}-heal", kind, "heal", None,
                                                                      {"fault": fid})))

    def flush_heals(self, *, force: bool = False) -> None:
        due = [h for h in self.pending_heals if force or h[0] <= self.n_ops]
        for item in due:
            self.pending_heals.remove(item)
            self.steps.append(item[1])
            if item[1].kind in PROCESS_FAULTS:
                self.process_fault_open = False


def build_schedule(seed: int, ops: int, faults: tuple[str, ...] = FAULT_KINDS) -> list[Step]:
    """The steps of a run: `ops` operations, faults at FAULT_RATE between them, every heal."""
    unknown = set(faults) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kind(s): {', '.join(sorted(unknown))}")
    drawer = _Drawer(seed, tuple(k for k in FAULT_KINDS if k in faults))
    # a few records on both sides before the first fault
    for _ in range(min(6, ops)):
        drawer.draw_op()
    while drawer.n_ops < ops:
        if drawer.faults and drawer.rng.random() < FAULT_RATE:
            drawer.draw_fault()
        drawer.draw_op()
        drawer.flush_heals()
    drawer.flush_heals(force=True)
    return drawer.steps


__all__ = ["FAULT_KINDS", "MAPPED_OWNERS", "OWNER_USERS", "UNMAPPED_OWNER", "Step", "build_schedule"]
