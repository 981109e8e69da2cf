"""What users type: owners, picklist values and random subsets of fields on either side."""

from __future__ import annotations

from typing import Any

from bench.chaos.schedule.drawing import Drawing

MAPPED_OWNERS = ("005000000000001AAA", "005000000000002AAA")  # local users u-1, u-2
UNMAPPED_OWNER = "005000000000003AAA"  # the integration user: not in [[users]]
OWNER_USERS = {MAPPED_OWNERS[0]: "u-1", MAPPED_OWNERS[1]: "u-2"}
INDUSTRIES = ("Banking", "Consulting", "Education", "Energy", "Healthcare", "Retail", "Technology")
LEAD_SOURCES = ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")


def person_fields(d: Drawing, sobject: str, *, blanks: bool = True) -> dict[str, Any]:
    """A random subset of Salesforce fields: mapped, unmapped, blanks, compound parts."""
    rng = d.rng
    choices: list[tuple[str, Any]] = [
        ("FirstName", d.word("Fn")), ("LastName", d.word("Ln")), ("Title", d.word("Title")),
        ("Phone", f"+1 555 {rng.randrange(10_000):04d}"),
        ("City" if sobject == "Lead" else "MailingCity", d.word("City")),
        ("State" if sobject == "Lead" else "MailingState", d.word("St")),
        ("LeadSource", rng.choice(LEAD_SOURCES)),
        ("MobilePhone", f"+1 666 {rng.randrange(10_000):04d}"),  # unmapped
        ("Description", d.word("Unmapped")),                     # unmapped
    ]
    if sobject == "Lead":
        choices.append(("Company", d.word("Co")))
        choices.append(("PostalCode", f"{rng.randrange(100_000):05d}"))  # unmapped part of Address
    picked = dict(rng.sample(choices, rng.randint(1, 4)))
    if blanks and rng.random() < 0.2:
        name = rng.choice([n for n in ("Title", "Phone", "FirstName", "LeadSource") if n in picked]
                          or ["Title"])
        picked[name] = rng.choice([None, ""])
    return picked


def local_person_fields(d: Drawing, *, blanks: bool = True) -> dict[str, Any]:
    rng = d.rng
    choices: list[tuple[str, Any]] = [
        ("first_name", d.word("fn")), ("last_name", d.word("ln")), ("title", d.word("title")),
        ("phone", f"+1 777 {rng.randrange(10_000):04d}"), ("city", d.word("city")),
        ("state", d.word("st")), ("company_name", d.word("co")),
        ("lead_source", d.word("ls")),  # from_salesforce: stays local
        ("notes", d.word("unmapped")),  # unmapped local field
    ]
    picked = dict(rng.sample(choices, rng.randint(1, 3)))
    if blanks and rng.random() < 0.15:
        picked[rng.choice(("title", "phone", "city"))] = rng.choice([None, ""])
    return picked


def account_fields(d: Drawing) -> dict[str, Any]:
    rng = d.rng
    choices: list[tuple[str, Any]] = [
        ("Name", d.word("Acct")), ("Website", f"https://{d.word('www')}.example.com"),
        ("Industry", rng.choice(INDUSTRIES)), ("BillingCity", d.word("Bcity")),
        ("Description", d.word("Unmapped")),
    ]
    picked = dict(rng.sample(choices, rng.randint(1, 3)))
    if rng.random() < 0.15:
        picked["Industry" if "Industry" in picked else "BillingCity"] = None
    return picked


def local_company_fields(d: Drawing) -> dict[str, Any]:
    rng = d.rng
    choices: list[tuple[str, Any]] = [
        ("name", d.word("Company")), ("domain", f"{d.word('dom')}.example.org"),
        ("industry", rng.choice(INDUSTRIES)), ("city", d.word("ccity")),
    ]
    return dict(rng.sample(choices, rng.randint(1, 2)))


def salesforce_fields(d: Drawing, sobject: str, *, blanks: bool = True) -> dict[str, Any]:
    """An edit of a Salesforce record of `sobject`: Account fields or person fields."""
    return account_fields(d) if sobject == "Account" else person_fields(d, sobject, blanks=blanks)


__all__ = ["INDUSTRIES", "LEAD_SOURCES", "MAPPED_OWNERS", "OWNER_USERS", "UNMAPPED_OWNER", "account_fields",
           "local_company_fields", "local_person_fields", "person_fields", "salesforce_fields"]
