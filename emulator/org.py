"""The org's records, kept in memory, and every write Salesforce would make to them.

Each write validates like Salesforce (required, read-only, type, email, length, references),
bumps the audit fields at one-second precision, and publishes a Change Data Capture event
through the bus — unless the caller seeds data that predates any subscriber.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from emulator.describe import (
    ACCOUNT,
    BY_PREFIX,
    CONTACT,
    LEAD,
    USER,
    FieldDef,
    FieldError,
    SObjectDef,
    coerce,
    event_value,
    id18,
    normalize_id,
)

if TYPE_CHECKING:
    from emulator.cdc import ChangeEventBus

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
OWNER_USER_ID = "005000000000001AAA"  # the mapped owner in the sample mappings; acts in UI-style changes
OTHER_USER_ID = "005000000000002AAA"
INTEGRATION_USER_ID = "005000000000003AAA"  # the API user every OAuth token runs as
_AUDIT = ("CreatedDate", "CreatedById", "LastModifiedDate", "LastModifiedById", "SystemModstamp")
_NOT_IN_EVENTS = frozenset({"Id", "IsDeleted", "SystemModstamp"})


class RecordRejected(Exception):
    """A record write Salesforce would refuse; `errors` are its per-record errors."""

    def __init__(self, *errors: FieldError) -> None:
        super().__init__(errors[0].message if errors else "rejected")
        self.errors = list(errors)


@dataclass(frozen=True)
class Actor:
    """Who makes a change: the CDC `commitUser` and `changeOrigin`."""

    user_id: str
    change_origin: str = ""


@dataclass
class Transaction:
    """One Salesforce transaction: its writes share a transactionKey and number their events."""

    actor: Actor
    commit_number: int
    commit_timestamp_ms: int
    emit: bool = True
    key: str = field(default_factory=lambda: str(uuid.uuid4()))
    sequence: int = 0


def read_value(fd: FieldDef, record: dict[str, Any]) -> Any:
    """A field's current value, computing formulas and compound addresses on read."""
    if fd.formula is not None:
        return fd.formula(record)
    if fd.type == "address":
        prefix = fd.name[: -len("Address")]
        parts = {
            key: record.get(prefix + api)
            for key, api in (
                ("street", "Street"),
                ("city", "City"),
                ("state", "State"),
                ("postalCode", "PostalCode"),
                ("country", "Country"),
            )
        }
        return parts if any(v is not None for v in parts.values()) else None
    return record.get(fd.name)


class Org:
    """Records per object (`tables["Lead"][id] -> record`), users, and the write paths."""

    def __init__(
        self, bus: ChangeEventBus, *, clock: Callable[[], float] = time.time, api_version: str = "62.0"
    ) -> None:
        self.bus = bus
        self.clock = clock
        self.api_version = api_version
        self.tables: dict[str, dict[str, dict[str, Any]]] = {}
        self._counters: dict[str, itertools.count[int]] = {}
        self._commits = itertools.count(1)
        self.reset()

    # --- bookkeeping -------------------------------------------------------------------------

    def reset(self) -> None:
        self.tables = {name: {} for name in ("Lead", "Contact", "Account", "User")}
        self._counters = {}
        now = self.now()
        for user_id, username, name in (
            (OWNER_USER_ID, "alex.morgan@example.com", "Alex Morgan"),
            (OTHER_USER_ID, "blair.chen@example.com", "Blair Chen"),
            (INTEGRATION_USER_ID, "integration@example.com", "Integration User"),
        ):
            self.tables["User"][user_id] = {
                "Id": user_id,
                "Username": username,
                "Name": name,
                "Email": username,
                "IsActive": True,
                "IsDeleted": False,
                "CreatedDate": now,
                "CreatedById": user_id,
                "LastModifiedDate": now,
                "LastModifiedById": user_id,
                "SystemModstamp": now,
            }

    def now(self) -> datetime:
        """Salesforce stores datetimes to the second."""
        return datetime.fromtimestamp(int(self.clock()), UTC)

    def new_id(self, sobject: SObjectDef) -> str:
        counter = self._counters.setdefault(sobject.key_prefix, itertools.count(1))
        n, digits = next(counter), ""
        while n:
            n, rem = divmod(n, 62)
            digits = _BASE62[rem] + digits
        return id18(sobject.key_prefix + "Dn" + digits.rjust(10, "0"))

    def transaction(self, actor: Actor, *, emit: bool = True) -> Transaction:
        return Transaction(actor, next(self._commits), int(self.clock() * 1000), emit)

    def find(self, record_id: str) -> tuple[SObjectDef, dict[str, Any]] | None:
        normal = normalize_id(record_id)
        sobject = BY_PREFIX.get(normal[:3]) if normal else None
        if normal is None or sobject is None:
            return None
        record = self.tables[sobject.name].get(normal)
        return (sobject, record) if record is not None else None

    # --- validation --------------------------------------------------------------------------

    def _coerce_payload(
        self, sobject: SObjectDef, payload: dict[str, Any], *, creating: bool, trusted: bool
    ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        unknown = [k for k in payload if k != "attributes" and sobject.field(k) is None]
        if unknown:
            raise RecordRejected(
                FieldError(
                    "INVALID_FIELD", f"No such column '{unknown[0]}' on sobject of type {sobject.name}", ()
                )
            )
        fds = [fd for k in payload if k != "attributes" and (fd := sobject.field(k)) is not None]
        if not trusted:
            locked = [fd.name for fd in fds if not (fd.createable if creating else fd.updateable)]
            if locked:
                raise RecordRejected(
                    FieldError(
                        "INVALID_FIELD_FOR_INSERT_UPDATE",
                        f"Unable to create/update fields: {', '.join(locked)}. Please check the security "
                        "settings of this field and verify that it is read/write for your profile or "
                        "permission set.",
                        tuple(locked),
                    )
                )
        errors: list[FieldError] = []
        for key, fd in zip([k for k in payload if k != "attributes"], fds, strict=True):
            if fd.calculated or fd.type == "address":
                continue
            try:
                values[fd.name] = coerce(fd, payload[key])
            except FieldError as exc:
                errors.append(exc)
        if errors:
            raise RecordRejected(*errors)
        self._check_references(sobject, values)
        return values

    def _check_references(self, sobject: SObjectDef, values: dict[str, Any]) -> None:
        for name, value in values.items():
            fd = sobject.field(name)
            if value is None or fd is None or fd.type != "reference":
                continue
            target = self.find(value)
            if target is None or target[1].get("IsDeleted"):
                raise RecordRejected(
                    FieldError(
                        "INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {value}", (fd.name,)
                    )
                )

    @staticmethod
    def _missing_required(sobject: SObjectDef, record: dict[str, Any]) -> None:
        missing = [fd.name for fd in sobject.fields if fd.required_on_create and record.get(fd.name) is None]
        if missing:
            raise RecordRejected(
                FieldError(
                    "REQUIRED_FIELD_MISSING",
                    f"Required fields are missing: [{', '.join(missing)}]",
                    tuple(missing),
                )
            )

    def prepare_create(
        self, sobject: SObjectDef, payload: dict[str, Any], *, trusted: bool = False
    ) -> dict[str, Any]:
        """The coerced field values of a create, or RecordRejected."""
        values = self._coerce_payload(sobject, payload, creating=True, trusted=trusted)
        self._missing_required(sobject, values)
        return values

    def prepare_update(
        self, sobject: SObjectDef, record_id: Any, payload: dict[str, Any], *, trusted: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the stored record, the coerced changes) of an update, or RecordRejected."""
        normal = normalize_id(record_id) if isinstance(record_id, str) else None
        if normal is None or normal[:3] != sobject.key_prefix:
            raise RecordRejected(
                FieldError(
                    "MALFORMED_ID", f"{sobject.name} ID: id value of incorrect type: {record_id}", ("Id",)
                )
            )
        record = self.tables[sobject.name].get(normal)
        if record is None:
            raise RecordRejected(FieldError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", ()))
        if record.get("IsDeleted"):
            raise RecordRejected(FieldError("ENTITY_IS_DELETED", "entity is deleted", ()))
        if record.get("IsConverted") and not trusted:
            raise RecordRejected(
                FieldError("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead", ())
            )
        payload = {k: v for k, v in payload.items() if k.lower() != "id"}
        values = self._coerce_payload(sobject, payload, creating=False, trusted=trusted)
        merged = {**record, **values}
        self._missing_required(sobject, merged)
        return record, values

    # --- writes ------------------------------------------------------------------------------

    def create(self, sobject: SObjectDef, values: dict[str, Any], tx: Transaction) -> str:
        """Store a prepared create and publish its CREATE event; returns the new id."""
        now = self.now()
        record_id = values.get("Id") or self.new_id(sobject)
        record: dict[str, Any] = {
            "Id": record_id,
            "IsDeleted": False,
            "OwnerId": tx.actor.user_id,
            "CreatedDate": now,
            "CreatedById": tx.actor.user_id,
            "LastModifiedDate": now,
            "LastModifiedById": tx.actor.user_id,
            "SystemModstamp": now,
        }
        if sobject is LEAD:
            record.update(IsConverted=False, Status="Open - Not Contacted", IsUnreadByOwner=False)
        record.update({k: v for k, v in values.items() if v is not None})
        _derive_name(sobject, record)
        self.tables[sobject.name][record_id] = record
        if tx.emit:
            self._emit(tx, sobject, "CREATE", record_id, self._event_fields(sobject, record), [], [])
        return str(record_id)

    def update(
        self,
        sobject: SObjectDef,
        record: dict[str, Any],
        values: dict[str, Any],
        tx: Transaction,
        *,
        stamp_event: bool = True,
    ) -> None:
        """Apply prepared changes; an update that changes nothing still bumps SystemModstamp."""
        changed = [name for name, value in values.items() if record.get(name) != value]
        for name in changed:
            if values[name] is None:
                record.pop(name, None)
            else:
                record[name] = values[name]
        _derive_name(sobject, record)
        now = self.now()
        explicit = {k for k in ("LastModifiedDate", "SystemModstamp") if k in values}
        record.setdefault("SystemModstamp", now)
        if "SystemModstamp" not in explicit:
            record["SystemModstamp"] = now
        if "LastModifiedDate" not in explicit:
            record["LastModifiedDate"] = now
        if record.get("LastModifiedById") != tx.actor.user_id:
            record["LastModifiedById"] = tx.actor.user_id
            changed.append("LastModifiedById")
        if stamp_event and "LastModifiedDate" not in changed:
            changed.append("LastModifiedDate")
        changed = [name for name in changed if name not in _NOT_IN_EVENTS]
        nulled = [name for name in changed if record.get(name) is None]
        fields = {name: event_value(record[name]) for name in changed if record.get(name) is not None}
        self._emit(tx, sobject, "UPDATE", record["Id"], fields, changed, nulled)

    def delete(self, sobject: SObjectDef, record: dict[str, Any], tx: Transaction) -> None:
        """Soft-delete (to the recycle bin); deleting an Account deletes its Contacts, as Salesforce does."""
        if sobject is ACCOUNT:
            for contact in list(self.tables["Contact"].values()):
                if contact.get("AccountId") == record["Id"] and not contact.get("IsDeleted"):
                    self.delete(CONTACT, contact, tx)
        now = self.now()
        record.update(
            IsDeleted=True, SystemModstamp=now, LastModifiedDate=now, LastModifiedById=tx.actor.user_id
        )
        self._emit(tx, sobject, "DELETE", record["Id"], {}, [], [])

    def undelete(self, sobject: SObjectDef, record: dict[str, Any], tx: Transaction) -> None:
        now = self.now()
        record.update(
            IsDeleted=False, SystemModstamp=now, LastModifiedDate=now, LastModifiedById=tx.actor.user_id
        )
        self._emit(tx, sobject, "UNDELETE", record["Id"], self._event_fields(sobject, record), [], [])

    @staticmethod
    def _event_fields(sobject: SObjectDef, record: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        for fd in sobject.fields:
            value = record.get(fd.name)
            if value is None or fd.name in _NOT_IN_EVENTS or fd.calculated or fd.type == "address":
                continue
            if fd.name == "Name" and not fd.createable:
                continue  # the compound Name travels as its parts
            fields[fd.name] = event_value(value)
        return fields

    def _emit(
        self,
        tx: Transaction,
        sobject: SObjectDef,
        change_type: str,
        record_id: str,
        fields: dict[str, Any],
        changed: list[str],
        nulled: list[str],
    ) -> None:
        if not tx.emit or sobject is USER:
            return
        tx.sequence += 1
        self.bus.publish_change(
            entity=sobject.name,
            change_type=change_type,
            record_ids=[record_id],
            record=fields,
            changed_fields=changed,
            nulled_fields=nulled,
            diff_fields=[],
            change_origin=tx.actor.change_origin,
            transaction_key=tx.key,
            sequence_number=tx.sequence,
            commit_user=tx.actor.user_id,
            commit_timestamp_ms=tx.commit_timestamp_ms,
            commit_number=tx.commit_number,
        )


def _derive_name(sobject: SObjectDef, record: dict[str, Any]) -> None:
    if sobject in (LEAD, CONTACT):
        parts = [record.get("FirstName"), record.get("LastName")]
        record["Name"] = " ".join(p for p in parts if p) or None


_LEAD_TO_CONTACT = {
    "Salutation": "Salutation",
    "FirstName": "FirstName",
    "LastName": "LastName",
    "Email": "Email",
    "Title": "Title",
    "Phone": "Phone",
    "MobilePhone": "MobilePhone",
    "LeadSource": "LeadSource",
    "OwnerId": "OwnerId",
    "Street": "MailingStreet",
    "City": "MailingCity",
    "State": "MailingState",
    "PostalCode": "MailingPostalCode",
    "Country": "MailingCountry",
}
_LEAD_TO_ACCOUNT = {
    "Company": "Name",
    "Website": "Website",
    "Industry": "Industry",
    "Phone": "Phone",
    "AnnualRevenue": "AnnualRevenue",
    "NumberOfEmployees": "NumberOfEmployees",
    "OwnerId": "OwnerId",
    "Street": "BillingStreet",
    "City": "BillingCity",
    "State": "BillingState",
    "PostalCode": "BillingPostalCode",
    "Country": "BillingCountry",
}


def convert_lead(
    org: Org,
    lead_id: str,
    actor: Actor,
    *,
    account_id: str | None = None,
    contact_id: str | None = None,
    converted_status: str = "Closed - Converted",
) -> dict[str, str]:
    """Convert a Lead the way Salesforce does, in one transaction: Account CREATE (unless an existing
    one is given), Contact CREATE (unless given), then the Lead UPDATE — whose event, as documented,
    carries no LastModifiedDate in changedFields.

    Into an existing Account or Contact (`convertLead`: "only empty fields in the target object
    are overwritten"): the Lead's values fill that record's blank fields only, an UPDATE when any
    was blank; a Contact needs its Account given (`contactId`: "this contact must be associated
    with the specified accountId, and an accountId must be specified")."""
    found = org.find(lead_id)
    if found is None or found[0] is not LEAD or found[1].get("IsDeleted"):
        raise RecordRejected(
            FieldError("INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {lead_id}")
        )
    lead = found[1]
    if lead.get("IsConverted"):
        raise RecordRejected(FieldError("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead"))
    for given, sobject in ((account_id, ACCOUNT), (contact_id, CONTACT)):
        hit = org.find(given) if given else None
        if given and (hit is None or hit[0] is not sobject or hit[1].get("IsDeleted")):
            raise RecordRejected(
                FieldError("INVALID_CROSS_REFERENCE_KEY", f"invalid cross reference id: {given}")
            )
    contact = org.find(contact_id) if contact_id else None
    if contact is not None and (not account_id or normalize_id(str(contact[1].get("AccountId") or ""))
                                != normalize_id(account_id)):
        raise RecordRejected(FieldError(
            "INVALID_CROSS_REFERENCE_KEY", "the contact must be associated with the specified accountId"))
    tx = org.transaction(actor)
    if account_id is None:
        account_id = org.create(ACCOUNT, _copy(lead, _LEAD_TO_ACCOUNT), tx)
    else:
        _fill_blanks(org, ACCOUNT, account_id, _copy(lead, _LEAD_TO_ACCOUNT), tx)
    account_id = normalize_id(account_id) or account_id
    if contact_id is None:
        contact_id = org.create(CONTACT, {**_copy(lead, _LEAD_TO_CONTACT), "AccountId": account_id}, tx)
    else:
        _fill_blanks(org, CONTACT, contact_id, _copy(lead, _LEAD_TO_CONTACT), tx)
    contact_id = normalize_id(contact_id) or contact_id
    changes = {
        "IsConverted": True,
        "ConvertedAccountId": account_id,
        "ConvertedContactId": contact_id,
        "ConvertedDate": org.now().date(),
        "Status": converted_status,
    }
    org.update(LEAD, lead, changes, tx, stamp_event=False)
    return {"leadId": lead["Id"], "accountId": account_id, "contactId": contact_id}


def _fill_blanks(
    org: Org, sobject: SObjectDef, record_id: str, values: dict[str, Any], tx: Transaction
) -> None:
    """A conversion into an existing record: the Lead's values of its blank fields, if any."""
    found = org.find(record_id)
    assert found is not None  # checked by `convert_lead`
    blanks = {name: value for name, value in values.items() if found[1].get(name) in (None, "")}
    if blanks:
        org.update(sobject, found[1], blanks, tx)


def _copy(source: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    return {target: source[name] for name, target in mapping.items() if source.get(name) is not None}
