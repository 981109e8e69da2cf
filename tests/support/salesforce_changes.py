"""Shared test material for the inbound reconciler: mappings, change builders, fakes of the
Salesforce REST surface and of the outbox (seams, not patches)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from reconciler.ports import (
    ChangeKind,
    ChangeSource,
    OutboundWrite,
    RecordResult,
    ResendGuard,
    SalesforceChange,
    SentValues,
)
from reconciler.soql import parse_sf_datetime
from settings import parse_mappings
from tests.support.mappings import sample_mappings

OWNER_1 = "005000000000001AAA"
OWNER_2 = "005000000000002AAA"
UNMAPPED_OWNER = "005000000000009AAA"
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)

# The sample mappings as the inbound tests use them: Salesforce owns City and OwnerId, a custom
# field, no phone/company/state/account link, and both sample owners mapped.
INBOUND_EDITS: dict[str, dict[str, str] | None] = {
    "people.phone": None,
    "people.company_name": None,
    "people.state": None,
    "people.company_crm_id": None,
    "companies.industry": None,
    "companies.city": None,
    "people.city": {"direction": "from_salesforce"},
    "people.custom_fields.linkedin": {"lead": "LinkedIn__c"},
    "people.owner_crm_id": {"direction": "from_salesforce"},
}


def mappings_toml(edits: Mapping[str, Mapping[str, str] | None] | None = None) -> str:
    """The inbound tests' mappings TOML, with further `edits` (as `sample_mappings` takes them)."""
    return sample_mappings({**INBOUND_EDITS, **(edits or {})}, users={"u-2": OWNER_2})


MAPPINGS_TOML = mappings_toml()
MAPPINGS = parse_mappings(MAPPINGS_TOML)


def change(sf_id: str, fields: dict[str, Any], *, sobject: str = "Lead", kind: ChangeKind = ChangeKind.UPDATE,
           at: datetime = T0, **kw: Any) -> SalesforceChange:
    return SalesforceChange(sobject=sobject, sf_id=sf_id, kind=kind, fields=fields, changed_at=at,
                            source=kw.pop("source", ChangeSource.STREAM), **kw)


class FakeOutbox:
    """Collects what would be sent to Salesforce."""

    def __init__(self) -> None:
        self.writes: list[OutboundWrite] = []

    async def enqueue(self, writes: Sequence[OutboundWrite]) -> None:
        self.writes.extend(writes)

    async def release_held(self, records: Collection[tuple[str, str]]) -> None:
        pass  # nothing is ever sent, so nothing is held

    async def sent_values(self, records: Collection[tuple[str, str]]) -> SentValues:
        return {}  # nothing is ever sent, so no answer is lost


_SELECT = re.compile(r"SELECT (?P<fields>.+?) FROM (?P<object>\w+)(?: WHERE (?P<where>.+?))?"
                     r"(?: ORDER BY (?P<order>.+))?$")


class FakeSalesforce:
    """An in-memory org answering the small SOQL subset the reconciler sends: `Id IN (...)`,
    `SystemModstamp >= <ts>` or the keyset `(SystemModstamp > <ts> OR (SystemModstamp = <ts> AND
    Id > '<id>'))`, `AND SystemModstamp < <signpost>`, `ORDER BY SystemModstamp, Id`, in pages
    of `page_size`."""

    instance_url = "https://fake.my.salesforce.com"

    def __init__(self, records: dict[str, list[dict[str, Any]]] | None = None, page_size: int = 2000) -> None:
        self.records = records or {}
        self.page_size = page_size
        self.queries: list[str] = []
        self.calls = 0

    async def query(self, soql: str, *, include_deleted: bool = False) -> AsyncIterator[list[dict[str, Any]]]:
        self.queries.append(soql)
        match = _SELECT.match(soql)
        assert match, soql
        fields = [f.strip() for f in match["fields"].split(",")]
        rows = [r for r in self.records.get(match["object"], [])
                if (include_deleted or not r.get("IsDeleted")) and _where(r, match["where"])]
        if match["order"]:
            rows.sort(key=lambda r: (_ts(r["SystemModstamp"]), r["Id"]))
        for start in range(0, max(len(rows), 1), self.page_size):
            self.calls += 1
            yield [{f: r.get(f) for f in fields} for r in rows[start:start + self.page_size]]

    async def describe(self, sobject: str) -> dict[str, Any]:
        return {"name": sobject, "fields": []}

    async def create(self, sobject: str, records: Sequence[dict[str, Any]], *,
                     before_resend: ResendGuard | None = None) -> list[RecordResult]:
        raise NotImplementedError

    async def update(self, sobject: str, records: Sequence[dict[str, Any]], *,
                     before_resend: ResendGuard | None = None) -> list[RecordResult]:
        raise NotImplementedError


_KEYSET = re.compile(r"\(SystemModstamp > (\S+) OR \(SystemModstamp = (\S+) AND Id > '([^']*)'\)\)")


def _where(record: dict[str, Any], where: str | None) -> bool:
    """`Id IN (...)`, or the watermark's keyset / `>=` condition, then an optional signpost."""
    if not where:
        return True
    if where.startswith("Id IN"):
        return f"'{record['Id']}'" in where
    at = _ts(record["SystemModstamp"])
    condition, _, signpost = where.partition("SystemModstamp < ")
    if signpost and not at < _ts(signpost):
        return False
    condition = condition.removesuffix(" AND ").strip()
    if not condition:
        return True
    if keyset := _KEYSET.fullmatch(condition):
        return at > _ts(keyset[1]) or (at == _ts(keyset[2]) and record["Id"] > keyset[3])
    stamp = re.fullmatch(r"SystemModstamp >= (\S+)", condition)
    assert stamp, where
    return at >= _ts(stamp[1])


def _ts(value: str) -> datetime:
    parsed = parse_sf_datetime(value)
    assert parsed is not None, value
    return parsed
