"""Deterministic sample data: Accounts with website domains, Contacts linked to them, Leads owned
by the mapped user and another, and (for benchmarks) many generated Leads."""

from __future__ import annotations

import random
import sys
from datetime import timedelta
from importlib.resources import files
from typing import Any

from emulator.describe import ACCOUNT, CONTACT, LEAD, SObjectDef
from emulator.org import OTHER_USER_ID, OWNER_USER_ID, Actor, Org, Transaction

# Mappings that fit this data (the demo's; tests edit them): one source, packaged with the emulator.
SAMPLE_MAPPINGS_TOML = files("emulator").joinpath("sample_mappings.toml").read_text(encoding="utf-8")

FIRST = (
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Dennis",
    "Frances",
    "John",
    "Radia",
    "Tim",
    "Hedy",
    "Vint",
    "Katherine",
    "Edsger",
    "Sophie",
    "Niklaus",
    "Joan",
    "Donald",
    "Lynn",
    "Guido",
    "Anita",
    "Bjarne",
    "Shafi",
    "Leslie",
    "Sally",
    "Yukihiro",
    "Mary",
    "James",
)
LAST = (
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Thompson",
    "Liskov",
    "Ritchie",
    "Allen",
    "McCarthy",
    "Perlman",
    "Berners-Lee",
    "Lamarr",
    "Cerf",
    "Johnson",
    "Dijkstra",
    "Wilson",
    "Wirth",
    "Clarke",
    "Knuth",
    "Conway",
    "van Rossum",
    "Borg",
    "Stroustrup",
    "Goldwasser",
    "Lamport",
    "Floyd",
    "Matsumoto",
    "Keller",
    "Gosling",
)
WORDS = (
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Wonka",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Hooli",
    "Vandelay",
    "Massive",
    "Pied",
    "Aperture",
    "Black Mesa",
    "Oscorp",
    "Gringotts",
    "Monarch",
    "Duff",
    "Nakatomi",
    "Virtucon",
    "Zorg",
    "Dunder",
    "Sterling",
    "Prestige",
    "Oceanic",
    "Wernham",
)
SUFFIX = ("Corp", "Industries", "Labs", "Systems", "Group", "Holdings", "Logistics", "Analytics")
CITIES = (
    ("San Francisco", "CA", "94105"),
    ("New York", "NY", "10001"),
    ("Austin", "TX", "73301"),
    ("Seattle", "WA", "98101"),
    ("Boston", "MA", "02108"),
    ("Chicago", "IL", "60601"),
)
TITLES = ("CEO", "CTO", "VP Sales", "Head of Marketing", "Account Executive", "Engineer", "Director of Ops")
INDUSTRIES = ("Technology", "Finance", "Healthcare", "Manufacturing", "Retail", "Media")
SAMPLE_ACCOUNTS, SAMPLE_CONTACTS, SAMPLE_LEADS = 60, 200, 300


def _person(rng: random.Random, domain: str) -> dict[str, Any]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = f"{first}.{last}".lower().replace(" ", "").replace("-", "")
    city, state, postal = rng.choice(CITIES)
    return {
        "FirstName": first,
        "LastName": last,
        "Email": f"{local}@{domain}",
        "Title": rng.choice(TITLES),
        "Phone": f"+1 415 555 {rng.randrange(10000):04d}",
        "City": city,
        "State": state,
        "PostalCode": postal,
        "Country": "USA",
        "Street": f"{rng.randrange(1, 999)} Market St",
    }


def _company(rng: random.Random, n: int) -> tuple[str, str]:
    name = f"{WORDS[n % len(WORDS)]} {SUFFIX[(n // len(WORDS)) % len(SUFFIX)]}"
    if n >= len(WORDS) * len(SUFFIX):
        name += f" {n}"
    return name, name.lower().replace(" ", "") + ".example.com"


def _add(org: Org, sobj: SObjectDef, values: dict[str, Any], tx: Transaction, age: timedelta | None) -> str:
    record_id = org.create(sobj, values, tx)
    if age is not None:  # sample data predates today; keep one timestamp for all three audit fields
        record = org.tables[sobj.name][record_id]
        when = record["CreatedDate"] - age
        record.update(CreatedDate=when, LastModifiedDate=when, SystemModstamp=when)
    return record_id


def seed_sample(org: Org, *, emit_events: bool = False, extra_leads: int = 0) -> dict[str, list[str]]:
    """Add the sample records (same content on every run) and `extra_leads` generated Leads."""
    rng = random.Random(20240501)
    tx = org.transaction(Actor(OWNER_USER_ID), emit=emit_events)
    ids: dict[str, list[str]] = {"Account": [], "Contact": [], "Lead": []}
    accounts: list[tuple[str, str]] = []
    for n in range(SAMPLE_ACCOUNTS):
        name, domain = _company(rng, n)
        city, state, postal = rng.choice(CITIES)
        values = {
            "Name": name,
            "Website": f"https://www.{domain}",
            "Industry": rng.choice(INDUSTRIES),
            "Phone": f"+1 212 555 {rng.randrange(10000):04d}",
            "BillingCity": city,
            "BillingState": state,
            "BillingPostalCode": postal,
            "BillingCountry": "USA",
            "OwnerId": OWNER_USER_ID if n % 3 else OTHER_USER_ID,
        }
        account_id = _add(org, ACCOUNT, values, tx, timedelta(days=rng.randrange(30, 400)))
        ids["Account"].append(account_id)
        accounts.append((account_id, domain))
    for n in range(SAMPLE_CONTACTS):
        account_id, domain = accounts[n % len(accounts)]
        person = _person(rng, domain)
        values = {
            **{
                k: v
                for k, v in person.items()
                if k not in ("City", "State", "PostalCode", "Country", "Street")
            },
            "MailingCity": person["City"],
            "MailingState": person["State"],
            "AccountId": account_id,
            "OwnerId": OWNER_USER_ID if n % 4 else OTHER_USER_ID,
        }
        ids["Contact"].append(_add(org, CONTACT, values, tx, timedelta(days=rng.randrange(1, 300))))
    statuses = ("Open - Not Contacted", "Working - Contacted", "Closed - Not Converted")
    for n in range(SAMPLE_LEADS):
        company, domain = _company(rng, SAMPLE_ACCOUNTS + n)
        values = {
            **_person(rng, domain),
            "Company": company,
            "Status": statuses[n % 3],
            "LeadSource": "Web",
            "OwnerId": OWNER_USER_ID if n % 5 else OTHER_USER_ID,
        }
        ids["Lead"].append(_add(org, LEAD, values, tx, timedelta(days=rng.randrange(0, 120), hours=n % 24)))
    if extra_leads:
        ids["Lead"].extend(generate_leads(org, extra_leads))
    return ids


def generate_leads(org: Org, count: int) -> list[str]:
    """`count` Leads for benchmarks, fast (no events, no validation) and light: strings that repeat
    are interned and the audit timestamps are one shared object."""
    now = org.now()
    ids: list[str] = []
    table = org.tables["Lead"]
    intern = sys.intern
    for n in range(count):
        first, last = FIRST[n % len(FIRST)], LAST[(n // len(FIRST)) % len(LAST)]
        record_id = org.new_id(LEAD)
        owner = OWNER_USER_ID if n % 2 else OTHER_USER_ID
        table[record_id] = {
            "Id": record_id,
            "IsDeleted": False,
            "FirstName": first,
            "LastName": last,
            "Name": intern(f"{first} {last}"),
            "Company": intern(f"Bench Co {n % 500}"),
            "Email": f"{first.lower()}.{n}@bench{n % 500}.example.com",
            "Status": "Open - Not Contacted",
            "IsConverted": False,
            "IsUnreadByOwner": False,
            "OwnerId": owner,
            "CreatedById": owner,
            "LastModifiedById": owner,
            "CreatedDate": now,
            "LastModifiedDate": now,
            "SystemModstamp": now,
        }
        ids.append(record_id)
    return ids
