"""The SOQL subset: what parses, what each operator selects, ordering, and Salesforce's errors."""

from __future__ import annotations

from typing import Any

import pytest

from emulator.cdc import ChangeEventBus
from emulator.describe import LEAD
from emulator.org import INTEGRATION_USER_ID, Actor, Org
from emulator.soql import SoqlError, parse

_LEADS: list[dict[str, Any]] = [
    {
        "FirstName": "Ada",
        "LastName": "Lovelace",
        "Company": "Analytical",
        "Email": "ada@a.example.com",
        "NumberOfEmployees": 10,
        "LastModifiedDate": "2024-01-01T10:00:00.000+0000",
    },
    {
        "FirstName": "Alan",
        "LastName": "Turing",
        "Company": "Bletchley",
        "Email": "alan@b.example.com",
        "NumberOfEmployees": 200,
        "LastModifiedDate": "2024-03-01T10:00:00Z",
    },
    {
        "FirstName": "Grace",
        "LastName": "Hopper",
        "Company": "Navy",
        "NumberOfEmployees": 5000,
        "LastModifiedDate": "2024-02-01T10:00:00Z",
    },
    {
        "LastName": "Anonymous",
        "Company": "Unknown",
        "IsUnreadByOwner": True,
        "LastModifiedDate": "2024-02-15T00:00:00Z",
    },
]


@pytest.fixture(scope="module")
def org() -> Org:
    org = Org(ChangeEventBus(), clock=lambda: 1_714_564_800.0)
    tx = org.transaction(Actor(INTEGRATION_USER_ID), emit=False)
    for values in _LEADS:
        org.create(LEAD, org.prepare_create(LEAD, values, trusted=True), tx)
    return org


def _last_names(org: Org, soql: str) -> list[str]:
    return [r["LastName"] for r in parse(soql).run(org.tables["Lead"].values())]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("LastName = 'Turing'", ["Turing"]),
        ("LastName = 'turing'", ["Turing"]),  # text compares ignore case
        ("LastName != 'Turing'", ["Lovelace", "Hopper", "Anonymous"]),
        ("LastName <> 'Turing'", ["Lovelace", "Hopper", "Anonymous"]),
        ("NumberOfEmployees > 100", ["Turing", "Hopper"]),
        ("NumberOfEmployees >= 200", ["Turing", "Hopper"]),
        ("NumberOfEmployees < 200", ["Lovelace"]),  # null never compares
        ("NumberOfEmployees <= 10.5", ["Lovelace"]),
        ("FirstName = null", ["Anonymous"]),
        ("FirstName != null", ["Lovelace", "Turing", "Hopper"]),
        ("LastName IN ('Turing', 'Hopper')", ["Turing", "Hopper"]),
        ("LastName NOT IN ('Turing', 'Hopper')", ["Lovelace", "Anonymous"]),
        ("Email LIKE '%@b.example.com'", ["Turing"]),
        ("Company LIKE 'n_v%'", ["Hopper"]),
        ("IsUnreadByOwner = true", ["Anonymous"]),
        ("IsUnreadByOwner = false AND NumberOfEmployees > 100", ["Turing", "Hopper"]),
        ("LastName = 'Turing' OR LastName = 'Lovelace'", ["Lovelace", "Turing"]),
        ("NOT LastName = 'Turing'", ["Lovelace", "Hopper", "Anonymous"]),
        ("(LastName = 'Turing' OR LastName = 'Hopper') AND NumberOfEmployees < 1000", ["Turing"]),
        ("LastModifiedDate > 2024-02-01T10:00:00Z", ["Turing", "Anonymous"]),
        ("LastModifiedDate >= 2024-02-01T10:00:00.000+0000", ["Turing", "Hopper", "Anonymous"]),
        ("LastModifiedDate <= 2024-02-01T12:00:00+02:00", ["Lovelace", "Hopper"]),  # offset honoured
        ("Name = 'Ada Lovelace'", ["Lovelace"]),
        ("Score__c >= 60", ["Lovelace", "Turing"]),  # formula: Email 40 + Company 20
    ],
)
class TestWhere:
    def test_selects_matching_records(self, org: Org, where: str, expected: list[str]) -> None:
        """Each WHERE form selects exactly the records Salesforce would."""
        assert _last_names(org, f"SELECT Id, LastName FROM Lead WHERE {where}") == expected


class TestOrderAndLimit:
    @pytest.mark.parametrize(
        ("clause", "expected"),
        [
            ("ORDER BY LastName", ["Anonymous", "Hopper", "Lovelace", "Turing"]),
            ("ORDER BY LastModifiedDate DESC", ["Turing", "Anonymous", "Hopper", "Lovelace"]),
            ("ORDER BY FirstName", ["Anonymous", "Lovelace", "Turing", "Hopper"]),  # nulls first on ASC
            ("ORDER BY FirstName DESC", ["Hopper", "Turing", "Lovelace", "Anonymous"]),  # nulls last on DESC
            ("ORDER BY FirstName ASC NULLS LAST", ["Lovelace", "Turing", "Hopper", "Anonymous"]),
            ("ORDER BY IsUnreadByOwner DESC, LastName ASC", ["Anonymous", "Hopper", "Lovelace", "Turing"]),
            ("ORDER BY LastName LIMIT 2", ["Anonymous", "Hopper"]),
            ("ORDER BY LastName LIMIT 2 OFFSET 1", ["Hopper", "Lovelace"]),
        ],
    )
    def test_orders_and_limits(self, org: Org, clause: str, expected: list[str]) -> None:
        """ORDER BY (several fields, ASC/DESC, NULLS) and LIMIT/OFFSET order and cut the result."""
        assert _last_names(org, f"SELECT LastName FROM Lead {clause}") == expected

    def test_keywords_and_names_are_case_insensitive(self, org: Org) -> None:
        """`select lastname from lead` is the same query."""
        assert _last_names(org, "select lastname from lead where lastname = 'TURING'") == ["Turing"]


@pytest.mark.parametrize(
    ("soql", "code", "fragment"),
    [
        ("SELECT Id FROM Lead WHERE", "MALFORMED_QUERY", "unexpected token: '<EOF>'"),
        ("SELECT FROM Lead", "MALFORMED_QUERY", "unexpected token: 'FROM'"),
        ("SELECT Id Lead", "MALFORMED_QUERY", "unexpected token: 'Lead'"),
        (
            "SELECT Id FROM Lead WHERE LastName = 'a' AND Company = 'b' OR Email = 'c'",
            "MALFORMED_QUERY",
            "unexpected token: 'OR'",
        ),
        ("SELECT Id FROM Lead WHERE LastName = 'unterminated", "MALFORMED_QUERY", "no viable alternative"),
        ("SELECT Id FROM Lead ORDER LastName", "MALFORMED_QUERY", "unexpected token: 'LastName'"),
        ("SELECT Id FROM Lead LIMIT x", "MALFORMED_QUERY", "unexpected token: 'x'"),
        ("SELECT Id, Id FROM Lead", "MALFORMED_QUERY", "duplicate field selected: Id"),
        ("SELECT Id, Foo FROM Lead", "INVALID_FIELD", "No such column 'Foo' on entity 'Lead'"),
        ("SELECT Id FROM Lead WHERE Bar = 1", "INVALID_FIELD", "No such column 'Bar' on entity 'Lead'"),
        ("SELECT Id FROM Lead ORDER BY Baz", "INVALID_FIELD", "No such column 'Baz'"),
        ("SELECT Id FROM Widget__c", "INVALID_TYPE", "sObject type 'Widget__c' is not supported"),
        (
            "SELECT Id FROM Lead WHERE LastModifiedDate > '2024-01-01'",
            "INVALID_QUERY_FILTER_OPERATOR",
            "must be of type dateTime and should not be enclosed in quotes",
        ),
        (
            "SELECT Id FROM Lead WHERE LastName = 5",
            "INVALID_QUERY_FILTER_OPERATOR",
            "must be of type string and should be enclosed in quotes",
        ),
    ],
)
class TestErrors:
    def test_bad_queries_raise_salesforce_errors(self, soql: str, code: str, fragment: str) -> None:
        """Malformed SOQL, unknown fields/objects and mistyped literals raise the Salesforce error code."""
        with pytest.raises(SoqlError) as raised:
            parse(soql)
        assert raised.value.error_code == code
        assert fragment in raised.value.message
        assert "ERROR at Row:1:Column:" in raised.value.message


class TestCount:
    def test_count_counts_matching_records(self, org: Org) -> None:
        """SELECT COUNT() parses to a count-only query."""
        query = parse("SELECT COUNT() FROM Lead WHERE NumberOfEmployees > 100")
        assert query.count_only and len(query.run(org.tables["Lead"].values())) == 2


class TestIds:
    def test_15_character_id_literals_match_18_character_ids(self, org: Org) -> None:
        """Salesforce accepts either id form in filters."""
        record = next(iter(org.tables["Lead"].values()))
        rows = parse(f"SELECT Id FROM Lead WHERE Id = '{record['Id'][:15]}'").run(org.tables["Lead"].values())
        assert [r["Id"] for r in rows] == [record["Id"]]
