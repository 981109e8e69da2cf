"""Executing operations on both sides, as their users do, and acknowledging them.

Salesforce side: REST as another integration (`client=chaos-other-app`) or a UI edit through the
emulator's control API; conversions, deletes and undeletes as a UI user. Platform side: what the
platform does — top-level fields plus `updated_at` written straight to MongoDB.

Each executed step yields an *ack*: the step id, which side acknowledged it, when, and what it
wrote (Salesforce field names for Salesforce writes, local names for platform writes). The oracle
is fed the acks in the order they were acknowledged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from pymongo.errors import PyMongoError

from bench.chaos.env import Environment
from bench.chaos.schedule import Step

OTHER_APP = "chaos-other-app"
BIND_WAIT = 1.5  # how long a step waits for its target to cross over before it is skipped


@dataclass
class Entity:
    """A slot bound to real records: its Salesforce object and id, its local document."""

    slot: str
    sobject: str
    collection: str
    origin: str
    sf_id: str | None = None
    local_id: Any = None
    lead_id: str | None = None     # the Lead it was before conversion
    bound_at: float | None = None  # when the run first saw the record on the other side
    emails: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"slot": self.slot, "sobject": self.sobject, "collection": self.collection,
                "origin": self.origin, "sf_id": self.sf_id, "local_id": _text(self.local_id),
                "lead_id": self.lead_id}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass
class Ack:
    step: str
    kind: str
    side: str            # salesforce | platform
    slot: str | None
    at: float            # when the side acknowledged it (epoch seconds)
    status: str          # ok | skipped | rejected
    sobject: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"step": self.step, "kind": self.kind, "side": self.side, "slot": self.slot,
                "at": round(self.at, 3), "status": self.status, "sobject": self.sobject,
                "fields": self.fields, "detail": self.detail}


class Operations:
    def __init__(self, env: Environment) -> None:
        self.env = env
        self.org = env.org
        self.entities: dict[str, Entity] = {}

    # binding -----------------------------------------------------------------------------------
    def _collection(self, sobject: str) -> str:
        return "companies" if sobject == "Account" else "people"

    def refresh(self, entity: Entity) -> None:
        """Learn the other side's id of `entity` from MongoDB, if it has crossed over."""
        try:
            coll = self.env.db[entity.collection]
            if entity.local_id is None and entity.sf_id is not None:
                doc = coll.find_one({"crm.id": entity.sf_id}, {"_id": 1})
                if doc is None and entity.lead_id:
                    doc = coll.find_one({"crm.id": entity.lead_id}, {"_id": 1})
                if doc is not None:
                    entity.local_id = doc["_id"]
                    entity.bound_at = time.time()
            elif entity.sf_id is None and entity.local_id is not None:
                doc = coll.find_one({"_id": entity.local_id}, {"crm": 1})
                crm = (doc or {}).get("crm") or {}
                if crm.get("id"):
                    entity.sf_id = str(crm["id"])
                    entity.bound_at = time.time()
        except PyMongoError:
            pass

    def bound(self, slot: str | None, *, sf: bool = False, local: bool = False,
              wait: float = BIND_WAIT) -> Entity | None:
        entity = self.entities.get(slot or "")
        if entity is None:
            return None
        deadline = time.monotonic() + wait
        while True:
            if (not sf or entity.sf_id) and (not local or entity.local_id is not None):
                return entity
            self.refresh(entity)
            if (not sf or entity.sf_id) and (not local or entity.local_id is not None):
                return entity
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)

    # execution ---------------------------------------------------------------------------------
    def run(self, step: Step) -> list[Ack]:
        handler = getattr(self, f"_{step.kind}")
        acks: list[Ack] = handler(step)
        return acks

    def _skip(self, step: Step, side: str, why: str) -> list[Ack]:
        return [Ack(step.id, step.kind, side, step.target, time.time(), "skipped", detail=why)]

    def _sf_create(self, step: Step, sobject: str, fields: dict[str, Any]) -> list[Ack]:
        reply = self.org.rest("POST", f"sobjects/{sobject}", json_body=fields, client=OTHER_APP)
        at = time.time()
        if reply.status != 201:
            return [Ack(step.id, step.kind, "salesforce", step.target, at, "rejected", sobject, fields,
                        str(reply.body)[:200])]
        entity = Entity(str(step.target), sobject, self._collection(sobject), "salesforce",
                        sf_id=str(reply.body["id"]))
        if fields.get("Email"):
            entity.emails.append(str(fields["Email"]))
        self.entities[entity.slot] = entity
        return [Ack(step.id, step.kind, "salesforce", step.target, at, "ok", sobject, fields)]

    def _sf_create_lead(self, step: Step) -> list[Ack]:
        return self._sf_create(step, "Lead", dict(step.args["fields"]))

    def _sf_create_account(self, step: Step) -> list[Ack]:
        return self._sf_create(step, "Account", dict(step.args["fields"]))

    def _sf_create_contact(self, step: Step) -> list[Ack]:
        fields = dict(step.args["fields"])
        account = self.entities.get(step.args.get("account") or "")
        if account is not None and account.sf_id:
            fields["AccountId"] = account.sf_id
        return self._sf_create(step, "Contact", fields)

    def _sf_write(self, step: Step, entity: Entity, fields: dict[str, Any], via: str,
                  *, emit: bool = True) -> Ack:
        sf_id = str(entity.sf_id)
        if via == "ui" or not emit:
            reply = self.org.control("PATCH", f"records/{entity.sobject}/{sf_id}"
                                     + ("" if emit else "?emit_event=false"), fields)
            ok = reply.status == 200
        else:
            reply = self.org.rest("PATCH", f"sobjects/{entity.sobject}/{sf_id}", json_body=fields,
                                  client=OTHER_APP)
            ok = reply.status == 204
        at = time.time()
        if ok and "Email" in fields and fields["Email"]:
            entity.emails.append(str(fields["Email"]))
        return Ack(step.id, step.kind, "salesforce", entity.slot, at, "ok" if ok else "rejected",
                   entity.sobject, fields, "" if ok else str(reply.body)[:200])

    def _sf_update(self, step: Step) -> list[Ack]:
        entity = self.bound(step.target, sf=True)
        if entity is None:
            return self._skip(step, "salesforce", "no Salesforce record yet")
        fields = _fit(entity.sobject, dict(step.args["fields"]))
        if not fields:
            return self._skip(step, "salesforce", "no field fits the object")
        return [self._sf_write(step, entity, fields, str(step.args.get("via", "rest")))]

    def _sf_owner_change(self, step: Step) -> list[Ack]:
        entity = self.bound(step.target, sf=True)
        if entity is None:
            return self._skip(step, "salesforce", "no Salesforce record yet")
        return [self._sf_write(step, entity, {"OwnerId": step.args["owner"]}, "ui")]

    def _sf_bulk_update(self, step: Step) -> list[Ack]:
        records: list[dict[str, Any]] = []
        slots: list[tuple[Entity, dict[str, Any]]] = []
        for slot, fields in step.args["updates"].items():
            entity = self.bound(slot, sf=True, wait=0.5)
            if entity is None or entity.sobject != "Lead":
                continue
            fitted = _fit("Lead", dict(fields))
            if fitted:
                records.append({"attributes": {"type": "Lead"}, "Id": entity.sf_id, **fitted})
                slots.append((entity, fitted))
        if not records:
            return self._skip(step, "salesforce", "no target bound")
        reply = self.org.rest("PATCH", "composite/sobjects", client=OTHER_APP,
                              json_body={"allOrNone": True, "records": records})
        at = time.time()
        results = reply.body if isinstance(reply.body, list) else []
        acks = []
        for index, (entity, fitted) in enumerate(slots):
            ok = reply.status == 200 and index < len(results) and bool(results[index].get("success"))
            acks.append(Ack(step.id, step.kind, "salesforce", entity.slot, at, "ok" if ok else "rejected",
                            "Lead", fitted, "" if ok else str(reply.body)[:200]))
        return acks

    def _sf_delete(self, step: Step) -> list[Ack]:
        entity = self.bound(step.target, sf=True)
        if entity is None:
            return self._skip(step, "salesforce", "no Salesforce record yet")
        reply = self.org.control("DELETE", f"records/{entity.sobject}/{entity.sf_id}")
        return [Ack(step.id, step.kind, "salesforce", entity.slot, time.time(),
                    "ok" if reply.status == 200 else "rejected", entity.sobject)]

    def _sf_undelete(self, step: Step) -> list[Ack]:
        entity = self.bound(step.target, sf=True)
        if entity is None:
            return self._skip(step, "salesforce", "no Salesforce record yet")
        reply = self.org.control("POST", f"records/{entity.sobject}/{entity.sf_id}/undelete")
        return [Ack(step.id, step.kind, "salesforce", entity.slot, time.time(),
                    "ok" if reply.status == 200 else "rejected", entity.sobject)]

    def _sf_convert(self, step: Step) -> list[Ack]:
        entity = self.bound(step.target, sf=True)
        if entity is None or entity.sobject != "Lead":
            return self._skip(step, "salesforce", "no Lead to convert")
        record = self.org.control("GET", f"records/Lead/{entity.sf_id}")
        if record.status != 200 or record.body.get("IsDeleted") or record.body.get("IsConverted"):
            return self._skip(step, "salesforce", "Lead deleted or already converted")
        lead = dict(record.body)
        reply = self.org.control("POST", "convert-lead", {"leadId": entity.sf_id})
        at = time.time()
        if reply.status != 200:
            return [Ack(step.id, step.kind, "salesforce", entity.slot, at, "rejected", "Lead",
                        detail=str(reply.body)[:200])]
        body = reply.body
        entity.lead_id, entity.sf_id, entity.sobject = entity.sf_id, str(body["contactId"]), "Contact"
        account = Entity(str(step.args["account"]), "Account", "companies", "salesforce",
                         sf_id=str(body["accountId"]))
        self.entities[account.slot] = account
        return [Ack(step.id, step.kind, "salesforce", entity.slot, at, "ok", "Lead",
                    {"ConvertedContactId": body["contactId"], "ConvertedAccountId": body["accountId"],
                     "account_slot": account.slot, "lead_before": lead})]

    # platform ----------------------------------------------------------------------------------
    def _platform_write(self, collection: str, op: str, doc_id: Any, fields: dict[str, Any]) -> float:
        """Insert or `$set` (+ `updated_at`), retried while MongoDB is down; the ack time."""
        deadline = time.monotonic() + 60
        while True:
            now = datetime.now(UTC)
            try:
                coll = self.env.db[collection]
                if op == "insert":
                    coll.insert_one({"_id": doc_id, **fields, "created_at": now, "updated_at": now})
                else:
                    coll.update_one({"_id": doc_id}, {"$set": {**fields, "updated_at": now}})
                return time.time()
            except PyMongoError as exc:
                if "duplicate key" in str(exc).lower() and op == "insert":
                    return time.time()  # the retried insert had landed
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def _pf_create(self, step: Step, sobject: str) -> list[Ack]:
        collection = self._collection(sobject)
        fields = dict(step.args["fields"])
        entity = Entity(str(step.target), sobject, collection, "platform", local_id=ObjectId())
        if fields.get("email"):
            entity.emails.append(str(fields["email"]))
        self.entities[entity.slot] = entity
        at = self._platform_write(collection, "insert", entity.local_id, fields)
        return [Ack(step.id, step.kind, "platform", entity.slot, at, "ok", sobject, fields)]

    def _pf_create_person(self, step: Step) -> list[Ack]:
        return self._pf_create(step, "Lead")

    def _pf_create_company(self, step: Step) -> list[Ack]:
        return self._pf_create(step, "Account")

    def _pf_edit(self, step: Step) -> list[Ack]:
        entity = self.bound(step.target, local=True)
        if entity is None:
            return self._skip(step, "platform", "no local record yet")
        fields = dict(step.args["fields"])
        at = self._platform_write(entity.collection, "update", entity.local_id, fields)
        return [Ack(step.id, step.kind, "platform", entity.slot, at, "ok", entity.sobject, fields)]

    def _conflict(self, step: Step) -> list[Ack]:
        entity = self.bound(step.target, sf=True, local=True)
        if entity is None:
            return self._skip(step, "both", "not linked yet")
        sf_fields = _fit(entity.sobject, {step.args["sf_field"]: step.args["sf_value"]})
        acks: list[Ack] = []
        for side in (step.args["first"], "platform" if step.args["first"] == "salesforce" else "salesforce"):
            if side == "salesforce":
                acks.append(self._sf_write(step, entity, sf_fields, "rest"))
            else:
                fields = {step.args["local_field"]: step.args["local_value"]}
                at = self._platform_write(entity.collection, "update", entity.local_id, fields)
                acks.append(Ack(step.id, step.kind, "platform", entity.slot, at, "ok", entity.sobject,
                                fields))
        return acks

    # a Salesforce change without a CDC event (the GAP / overflow faults announce it) ------------
    def silent_update(self, step: Step) -> Ack | None:
        entity = self.bound(step.target, sf=True, wait=0.5)
        if entity is None:
            return None
        fields = _fit(entity.sobject, dict(step.args["fields"]))
        if not fields:
            return None
        return self._sf_write(step, entity, fields, "ui", emit=False)


_LEAD_ONLY = {"Company", "City", "State", "PostalCode"}
_CONTACT_ONLY = {"MailingCity", "MailingState", "AccountId"}
_PERSON = {"FirstName", "LastName", "Title", "Phone", "LeadSource", "MobilePhone", "Description", "Email",
           "OwnerId"}
_ACCOUNT = {"Name", "Website", "Industry", "BillingCity", "Description", "OwnerId"}


def _fit(sobject: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The fields of a drawn edit that exist on the object the slot is now (a converted Lead is a
    Contact: its City edit becomes MailingCity)."""
    if sobject == "Account":
        return {k: v for k, v in fields.items() if k in _ACCOUNT}
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if sobject == "Contact" and name in ("City", "State"):
            name = f"Mailing{name}"
        if sobject == "Lead" and name in ("MailingCity", "MailingState"):
            name = name.removeprefix("Mailing")
        allowed = _PERSON | (_LEAD_ONLY if sobject == "Lead" else _CONTACT_ONLY)
        if name in allowed:
            out[name] = value
    return out


__all__ = ["Ack", "Entity", "Operations"]
