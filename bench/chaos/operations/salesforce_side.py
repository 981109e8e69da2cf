"""The Salesforce side, as its users act: REST as another integration (`client=chaos-other-app`)
or a UI edit through the emulator's control API; conversions, deletes and undeletes as a UI user.
Acks carry Salesforce field names."""

from __future__ import annotations

import time
from typing import Any

from bench.chaos.env import Environment
from bench.chaos.operations.binding import Bindings, collection_of
from bench.chaos.operations.records import Ack, Entity, skip
from bench.chaos.schedule import Step

OTHER_APP = "chaos-other-app"


class SalesforceSide:
    def __init__(self, env: Environment, bindings: Bindings) -> None:
        self.org = env.org
        self.bindings = bindings

    # creates -----------------------------------------------------------------------------------
    def _create(self, step: Step, sobject: str, fields: dict[str, Any]) -> list[Ack]:
        reply = self.org.rest("POST", f"sobjects/{sobject}", json_body=fields, client=OTHER_APP)
        at = time.time()
        if reply.status != 201:
            return [Ack(step.id, step.kind, "salesforce", step.target, at, "rejected", sobject, fields,
                        str(reply.body)[:200])]
        entity = Entity(str(step.target), sobject, collection_of(sobject), "salesforce",
                        sf_id=str(reply.body["id"]))
        if fields.get("Email"):
            entity.emails.append(str(fields["Email"]))
        self.bindings.entities[entity.slot] = entity
        return [Ack(step.id, step.kind, "salesforce", step.target, at, "ok", sobject, fields)]

    def create_lead(self, step: Step) -> list[Ack]:
        return self._create(step, "Lead", dict(step.args["fields"]))

    def create_account(self, step: Step) -> list[Ack]:
        return self._create(step, "Account", dict(step.args["fields"]))

    def create_contact(self, step: Step) -> list[Ack]:
        fields = dict(step.args["fields"])
        account = self.bindings.entities.get(step.args.get("account") or "")
        if account is not None and account.sf_id:
            fields["AccountId"] = account.sf_id
        return self._create(step, "Contact", fields)

    # edits -------------------------------------------------------------------------------------
    def write(self, step: Step, entity: Entity, fields: dict[str, Any], via: str,
              *, emit: bool = True) -> Ack:
        """Edit `entity` by REST or in the UI; `emit` False: a change with no CDC event."""
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

    def update(self, step: Step) -> list[Ack]:
        entity = self.bindings.bound(step.target, sf=True)
        if entity is None:
            return skip(step, "salesforce", "no Salesforce record yet")
        fields = fit(entity.sobject, dict(step.args["fields"]))
        if not fields:
            return skip(step, "salesforce", "no field fits the object")
        return [self.write(step, entity, fields, str(step.args.get("via", "rest")))]

    def owner_change(self, step: Step) -> list[Ack]:
        entity = self.bindings.bound(step.target, sf=True)
        if entity is None:
            return skip(step, "salesforce", "no Salesforce record yet")
        return [self.write(step, entity, {"OwnerId": step.args["owner"]}, "ui")]

    def bulk_update(self, step: Step) -> list[Ack]:
        records: list[dict[str, Any]] = []
        slots: list[tuple[Entity, dict[str, Any]]] = []
        for slot, fields in step.args["updates"].items():
            entity = self.bindings.bound(slot, sf=True, wait=0.5)
            if entity is None or entity.sobject != "Lead":
                continue
            fitted = fit("Lead", dict(fields))
            if fitted:
                records.append({"attributes": {"type": "Lead"}, "Id": entity.sf_id, **fitted})
                slots.append((entity, fitted))
        if not records:
            return skip(step, "salesforce", "no target bound")
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

    def silent_update(self, step: Step) -> Ack | None:
        """A Salesforce change without a CDC event (the GAP / overflow faults announce it)."""
        entity = self.bindings.bound(step.target, sf=True, wait=0.5)
        if entity is None:
            return None
        fields = fit(entity.sobject, dict(step.args["fields"]))
        if not fields:
            return None
        return self.write(step, entity, fields, "ui", emit=False)

    # record lifecycle --------------------------------------------------------------------------
    def delete(self, step: Step) -> list[Ack]:
        entity = self.bindings.bound(step.target, sf=True)
        if entity is None:
            return skip(step, "salesforce", "no Salesforce record yet")
        reply = self.org.control("DELETE", f"records/{entity.sobject}/{entity.sf_id}")
        return [Ack(step.id, step.kind, "salesforce", entity.slot, time.time(),
                    "ok" if reply.status == 200 else "rejected", entity.sobject)]

    def undelete(self, step: Step) -> list[Ack]:
        entity = self.bindings.bound(step.target, sf=True)
        if entity is None:
            return skip(step, "salesforce", "no Salesforce record yet")
        reply = self.org.control("POST", f"records/{entity.sobject}/{entity.sf_id}/undelete")
        return [Ack(step.id, step.kind, "salesforce", entity.slot, time.time(),
                    "ok" if reply.status == 200 else "rejected", entity.sobject)]

    def convert(self, step: Step) -> list[Ack]:
        entity = self.bindings.bound(step.target, sf=True)
        if entity is None or entity.sobject != "Lead":
            return skip(step, "salesforce", "no Lead to convert")
        record = self.org.control("GET", f"records/Lead/{entity.sf_id}")
        if record.status != 200 or record.body.get("IsDeleted") or record.body.get("IsConverted"):
            return skip(step, "salesforce", "Lead deleted or already converted")
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
        self.bindings.entities[account.slot] = account
        return [Ack(step.id, step.kind, "salesforce", entity.slot, at, "ok", "Lead",
                    {"ConvertedContactId": body["contactId"], "ConvertedAccountId": body["accountId"],
                     "account_slot": account.slot, "lead_before": lead})]


_LEAD_ONLY = {"Company", "City", "State", "PostalCode"}
_CONTACT_ONLY = {"MailingCity", "MailingState", "AccountId"}
_PERSON = {"FirstName", "LastName", "Title", "Phone", "LeadSource", "MobilePhone", "Description", "Email",
           "OwnerId"}
_ACCOUNT = {"Name", "Website", "Industry", "BillingCity", "Description", "OwnerId"}


def fit(sobject: str, fields: dict[str, Any]) -> dict[str, Any]:
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


__all__ = ["OTHER_APP", "SalesforceSide", "fit"]
