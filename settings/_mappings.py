"""The mappings file (TOML): field mappings per local collection, the users table and the rules."""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

_LOCAL_FIELD = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")
_SF_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class Direction(StrEnum):
    BOTH = "both"
    FROM_SALESFORCE = "from_salesforce"
    TO_SALESFORCE = "to_salesforce"


class MergeBehaviour(StrEnum):
    MOST_RECENT = "most_recent"
    SALESFORCE_UNLESS_BLANK = "salesforce_unless_blank"
    LOCAL_UNLESS_BLANK = "local_unless_blank"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PersonFieldMapping(_Strict):
    lead: str | None = Field(default=None, pattern=_SF_FIELD.pattern)
    contact: str | None = Field(default=None, pattern=_SF_FIELD.pattern)
    direction: Direction = Direction.BOTH
    merge: MergeBehaviour = MergeBehaviour.MOST_RECENT

    @model_validator(mode="after")
    def _at_least_one(self) -> PersonFieldMapping:
        if not (self.lead or self.contact):
            raise ValueError("map to `lead` and/or `contact`")
        return self

    def salesforce_field(self, sobject: str) -> str | None:
        return {"Lead": self.lead, "Contact": self.contact}.get(sobject)


class CompanyFieldMapping(_Strict):
    account: str = Field(pattern=_SF_FIELD.pattern)
    direction: Direction = Direction.BOTH
    merge: MergeBehaviour = MergeBehaviour.MOST_RECENT

    def salesforce_field(self, sobject: str) -> str | None:
        return self.account if sobject == "Account" else None


class UserLink(_Strict):
    local: str = Field(min_length=1)
    salesforce: str = Field(pattern=r"^005[A-Za-z0-9]{12}([A-Za-z0-9]{3})?$")


class Rules(_Strict):
    create_person_from_salesforce: bool = True
    create_in_salesforce: Literal["lead", "contact", "none"] = "lead"
    on_salesforce_owner_change: Literal["update_owner", "ignore"] = "update_owner"


class FieldMapping(_Strict):
    """One mapped field seen from one Salesforce object: what the merge core works with."""

    local_field: str
    sobject: str
    sf_field: str
    direction: Direction
    merge: MergeBehaviour


class Mappings(_Strict):
    people: dict[str, PersonFieldMapping] = Field(default_factory=dict)
    companies: dict[str, CompanyFieldMapping] = Field(default_factory=dict)
    users: list[UserLink] = Field(default_factory=list)
    rules: Rules = Field(default_factory=Rules)
    _by_object: dict[str, list[FieldMapping]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _local_names(self) -> Mappings:
        for section in ("people", "companies"):
            for name in getattr(self, section):
                if not _LOCAL_FIELD.match(name):
                    raise ValueError(
                        f"[{section}.{name}] is not a local field name "
                        "(snake_case, dotted paths allowed)"
                    )
        return self

    @model_validator(mode="after")
    def _owner_rules(self) -> Mappings:
        problem = owner_rule_problem(self)
        if problem:
            raise ValueError(problem)
        return self

    def for_object(self, sobject: str) -> list[FieldMapping]:
        """The field mappings that apply to one Salesforce object (Lead, Contact or Account)."""
        # The model is frozen, so the answer never changes: computed once per object, since the
        # reconciler asks for it for every change it applies.
        cached = self._by_object.get(sobject)
        if cached is None:
            cached = self._by_object[sobject] = self._mappings_for(sobject)
        return list(cached)

    def _mappings_for(self, sobject: str) -> list[FieldMapping]:
        section: dict[str, Any] = self.companies if sobject == "Account" else self.people
        out: list[FieldMapping] = []
        for local, mapping in section.items():
            sf_field = mapping.salesforce_field(sobject)
            if sf_field:
                out.append(
                    FieldMapping(local_field=local, sobject=sobject, sf_field=sf_field,
                                 direction=mapping.direction, merge=mapping.merge)
                )
        return out

    def local_user(self, salesforce_user_id: str) -> str | None:
        for link in self.users:
            if _same_sf_id(link.salesforce, salesforce_user_id):
                return link.local
        return None

    def salesforce_user(self, local_user_id: str) -> str | None:
        for link in self.users:
            if link.local == local_user_id:
                return link.salesforce
        return None

    def accounts_importable(self) -> bool:
        """Accounts are imported only when Company name and domain are mapped."""
        return "name" in self.companies and "domain" in self.companies

    def __eq__(self, other: object) -> bool:
        # Equal when the file says the same thing; the per-object cache is not part of it.
        if not isinstance(other, Mappings):
            return NotImplemented
        return self.model_dump(mode="json") == other.model_dump(mode="json")

    def __hash__(self) -> int:
        return hash(self.content_hash())

    def content_hash(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def owner_rule_problem(mappings: Mappings) -> str | None:
    """Why the rules cannot run with these mappings, or None. The product's help: Owner CRM ID
    "must be set to use" the rules that create a Person or a Lead/Contact and the owner-change
    rule. Only when People are mapped at all (with none, the People rules have nothing to do)."""
    if not mappings.people:
        return None
    owned = {sobject for sobject in ("Lead", "Contact")
             if any(m.salesforce_field(sobject) == "OwnerId" for m in mappings.people.values())}
    for rule, objects in _rules_needing_owner(mappings.rules):
        if not objects & owned:
            wanted = " or ".join(f'{o.lower()} = "OwnerId"' for o in sorted(objects, reverse=True))
            return (f"rules.{rule} needs the Owner CRM ID mapping [people.owner_crm_id] with {wanted}; "
                    "map it or turn the rule off")
    return None


def _rules_needing_owner(rules: Rules) -> list[tuple[str, set[str]]]:
    """(the rule as written, the objects whose owner mapping would do) for each rule that is on."""
    out: list[tuple[str, set[str]]] = []
    if rules.create_person_from_salesforce:
        out.append(("create_person_from_salesforce = true", {"Lead", "Contact"}))
    if rules.create_in_salesforce != "none":
        out.append((f'create_in_salesforce = "{rules.create_in_salesforce}"',
                    {rules.create_in_salesforce.title()}))
    if rules.on_salesforce_owner_change == "update_owner":
        out.append(('on_salesforce_owner_change = "update_owner"', {"Lead", "Contact"}))
    return out


def _same_sf_id(a: str, b: str) -> bool:
    """Salesforce ids compare on their case-sensitive 15-character prefix."""
    return a[:15] == b[:15]


def parse_mappings(text: str) -> Mappings:
    return Mappings.model_validate(tomllib.loads(text))
