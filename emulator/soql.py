"""The SOQL subset the sync uses: one object, a field list, WHERE with comparisons, IN, LIKE,
AND/OR/NOT and parentheses, ORDER BY, LIMIT/OFFSET, and `COUNT()`.

`parse` turns text into a `Query` (raising `SoqlError` shaped like Salesforce's MALFORMED_QUERY /
INVALID_FIELD / INVALID_TYPE errors); `Query.matches` and `Query.sort_key` are closures compiled
once per query, so evaluating 100,000 records is a tight loop.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from emulator.describe import (
    TEXT_TYPES,
    FieldDef,
    SObjectDef,
    normalize_id,
    parse_date,
    parse_datetime,
    sobject,
)
from emulator.org import read_value

Predicate = Callable[[dict[str, Any]], bool]

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2}(?![\dT]))
  | (?P<number>[+-]?\d+(?:\.\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<op>!=|<>|<=|>=|=|<|>)
  | (?P<punct>[(),])
""",
    re.VERBOSE,
)
_ESCAPES = {
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "b": "\b",
    "f": "\f",
    "'": "'",
    '"': '"',
    "\\": "\\",
    "%": "\\%",
    "_": "\\_",
}
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_KEYWORDS = frozenset(
    {
        "select",
        "from",
        "where",
        "and",
        "or",
        "not",
        "in",
        "like",
        "order",
        "by",
        "asc",
        "desc",
        "nulls",
        "first",
        "last",
        "limit",
        "offset",
        "true",
        "false",
        "null",
    }
)
_UNKNOWN_COLUMN = (
    "No such column '{name}' on entity '{entity}'. If you are attempting to use a custom field, "
    "be sure to append the '__c' after the custom field name. Please reference your WSDL or "
    "the describe call for the appropriate names."
)
_UNKNOWN_OBJECT = (
    "sObject type '{name}' is not supported. If you are attempting to use a custom object, be "
    "sure to append the '__c' after the entity name. Please reference your WSDL or the describe "
    "call for the appropriate names."
)


class SoqlError(Exception):
    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


@dataclass(frozen=True)
class Token:
    kind: str  # datetime | date | number | string | ident | op | punct | eof
    text: str
    pos: int

    def keyword(self, *words: str) -> bool:
        return self.kind == "ident" and self.text.lower() in words


@dataclass
class Query:
    sobject: SObjectDef
    fields: list[FieldDef]  # empty for COUNT()
    count_only: bool = False
    where: Predicate | None = None
    order: list[tuple[FieldDef, bool, bool]] = field(default_factory=list)  # (field, descending, nulls_first)
    limit: int | None = None
    offset: int = 0

    def run(self, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The matching records, ordered and limited (the records themselves, not copies)."""
        where = self.where
        rows = [r for r in records if where(r)] if where else list(records)
        for fd, descending, nulls_first in reversed(self.order):
            rows.sort(key=_sort_key(fd, nulls_first != descending), reverse=descending)
        end = None if self.limit is None else self.offset + self.limit
        return rows[self.offset : end] if self.offset or end is not None else rows


def _sort_key(fd: FieldDef, nulls_low: bool) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
    fold = fd.type in TEXT_TYPES and fd.type not in ("id", "reference")
    formula = fd.formula is not None

    def key(record: dict[str, Any]) -> tuple[bool, Any]:
        value = read_value(fd, record) if formula else record.get(fd.name)
        if value is None:
            return (not nulls_low, None)
        return (nulls_low, value.casefold() if fold else value)

    return key


def parse(text: str) -> Query:
    return _Parser(text).query()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.sobject: SObjectDef | None = None

    # --- token stream ------------------------------------------------------------------------

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def advance(self) -> Token:
        token = self.tokens[self.i]
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return token

    def error(self, token: Token, detail: str | None = None, code: str = "MALFORMED_QUERY") -> SoqlError:
        before = self.text[: token.pos]
        row, col = before.count("\n") + 1, token.pos - (before.rfind("\n") + 1) + 1
        shown = "<EOF>" if token.kind == "eof" else token.text
        detail = detail or f"unexpected token: '{shown}'"
        return SoqlError(
            code, f"\n{self.text}\n{' ' * (col - 1)}^\nERROR at Row:{row}:Column:{col}\n{detail}"
        )

    def expect_keyword(self, word: str) -> Token:
        if not self.tok.keyword(word):
            raise self.error(self.tok)
        return self.advance()

    def expect_punct(self, char: str) -> None:
        if self.tok.kind != "punct" or self.tok.text != char:
            raise self.error(self.tok)
        self.advance()

    # --- grammar -----------------------------------------------------------------------------

    def query(self) -> Query:
        self.expect_keyword("select")
        names, count_only = self.select_list()
        self.expect_keyword("from")
        self.sobject = self.from_object()
        query = Query(self.sobject, [self.resolve(t) for t in names], count_only)
        seen: set[str] = set()
        for fd, token in zip(query.fields, names, strict=True):
            if fd.name in seen:
                raise self.error(token, f"duplicate field selected: {fd.name}")
            seen.add(fd.name)
        self.clauses(query)
        if self.tok.kind != "eof":
            raise self.error(self.tok)
        return query

    def from_object(self) -> SObjectDef:
        object_token = self.advance()
        if object_token.kind != "ident" or object_token.text.lower() in _KEYWORDS:
            raise self.error(object_token)
        found = sobject(object_token.text)
        if found is None:
            raise SoqlError(
                "INVALID_TYPE",
                self.error(object_token, _UNKNOWN_OBJECT.format(name=object_token.text)).message,
            )
        return found

    def clauses(self, query: Query) -> None:
        """WHERE, ORDER BY, LIMIT and OFFSET, each optional, in that order."""
        if self.tok.keyword("where"):
            self.advance()
            query.where = self.condition()
        if self.tok.keyword("order"):
            self.advance()
            self.expect_keyword("by")
            query.order = self.order_list()
        for word in ("limit", "offset"):
            if self.tok.keyword(word):
                self.advance()
                if self.tok.kind != "number" or not self.tok.text.isdigit():
                    raise self.error(self.tok)
                setattr(query, word, int(self.advance().text))

    def select_list(self) -> tuple[list[Token], bool]:
        if self.tok.keyword("count") and self.tokens[self.i + 1].text == "(":
            self.advance()
            self.expect_punct("(")
            self.expect_punct(")")
            return [], True
        names = [self.field_token()]
        while self.tok.text == ",":
            self.advance()
            names.append(self.field_token())
        return names, False

    def field_token(self) -> Token:
        token = self.advance()
        if token.kind != "ident" or token.text.lower() in _KEYWORDS:
            raise self.error(token)
        return token

    def resolve(self, token: Token) -> FieldDef:
        assert self.sobject is not None
        fd = self.sobject.field(token.text)
        if fd is None:
            raise self.error(
                token, _UNKNOWN_COLUMN.format(name=token.text, entity=self.sobject.name), "INVALID_FIELD"
            )
        return fd

    def condition(self) -> Predicate:
        """Salesforce refuses `a AND b OR c` without parentheses, so one level holds one connector."""
        parts = [self.unary()]
        connector: str | None = None
        while self.tok.keyword("and", "or"):
            word = self.tok.text.lower()
            if connector is not None and word != connector:
                raise self.error(self.tok)
            connector = word
            self.advance()
            parts.append(self.unary())
        if len(parts) == 1:
            return parts[0]
        if connector == "and":
            return lambda r: all(p(r) for p in parts)
        return lambda r: any(p(r) for p in parts)

    def unary(self) -> Predicate:
        if self.tok.keyword("not"):
            self.advance()
            inner = self.unary()
            return lambda r: not inner(r)
        if self.tok.text == "(" and self.tok.kind == "punct":
            self.advance()
            inner = self.condition()
            self.expect_punct(")")
            return inner
        return self.comparison()

    def comparison(self) -> Predicate:
        fd = self.resolve(self.field_token())
        token = self.tok
        if token.kind == "op":
            self.advance()
            return _compare(fd, token.text, self.literal(fd))
        negate = token.keyword("not")
        if negate:
            self.advance()
        if self.tok.keyword("in"):
            self.advance()
            values = self.literal_list(fd)
            return _membership(fd, values, negate)
        if self.tok.keyword("like") and not negate:
            self.advance()
            pattern = self.literal(fd)
            if not isinstance(pattern, str) or fd.type not in TEXT_TYPES:
                raise self.error(
                    token, f"invalid operator on field: {fd.name}", "INVALID_QUERY_FILTER_OPERATOR"
                )
            return _like(fd, pattern)
        raise self.error(self.tok)

    def literal_list(self, fd: FieldDef) -> list[Any]:
        self.expect_punct("(")
        values = [self.literal(fd)]
        while self.tok.text == "," and self.tok.kind == "punct":
            self.advance()
            values.append(self.literal(fd))
        self.expect_punct(")")
        return values

    def literal(self, fd: FieldDef) -> Any:
        token = self.advance()
        value = _literal_value(token)
        if value is _NOT_A_LITERAL:
            raise self.error(token)
        if value is not None and not _fits(fd, value):
            raise self.error(
                token, _type_message(fd, token.kind == "string"), "INVALID_QUERY_FILTER_OPERATOR"
            )
        if fd.type in ("id", "reference") and isinstance(value, str):
            value = normalize_id(value) or value
        return value

    def order_list(self) -> list[tuple[FieldDef, bool, bool]]:
        order = [self.order_item()]
        while self.tok.text == "," and self.tok.kind == "punct":
            self.advance()
            order.append(self.order_item())
        return order

    def order_item(self) -> tuple[FieldDef, bool, bool]:
        fd = self.resolve(self.field_token())
        descending = False
        if self.tok.keyword("asc", "desc"):
            descending = self.advance().text.lower() == "desc"
        nulls_first = not descending
        if self.tok.keyword("nulls"):
            self.advance()
            if not self.tok.keyword("first", "last"):
                raise self.error(self.tok)
            nulls_first = self.advance().text.lower() == "first"
        return fd, descending, nulls_first


_NOT_A_LITERAL = object()


def _tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise _bad_char(text, pos)
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, match.group(), pos))
        pos = match.end()
    tokens.append(Token("eof", "", len(text)))
    return tokens


def _bad_char(text: str, pos: int) -> SoqlError:
    before = text[:pos]
    row, col = before.count("\n") + 1, pos - (before.rfind("\n") + 1) + 1
    return SoqlError(
        "MALFORMED_QUERY",
        f"\n{text}\n{' ' * (col - 1)}^\nERROR at Row:{row}:Column:{col}\n"
        f"line {row}:{col - 1} no viable alternative at character '{text[pos]}'",
    )


def _literal_value(token: Token) -> Any:
    if token.kind == "string":
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[1]), token.text[1:-1])
    if token.kind == "number":
        return float(token.text) if "." in token.text else int(token.text)
    if token.kind == "datetime":
        return parse_datetime(token.text) or _NOT_A_LITERAL
    if token.kind == "date":
        return parse_date(token.text) or _NOT_A_LITERAL
    if token.keyword("true", "false"):
        return token.text.lower() == "true"
    if token.keyword("null"):
        return None
    return _NOT_A_LITERAL


def _fits(fd: FieldDef, value: Any) -> bool:
    if fd.type in TEXT_TYPES:
        return isinstance(value, str)
    if fd.type == "boolean":
        return isinstance(value, bool)
    if fd.type in ("int", "double", "currency"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if fd.type == "datetime":
        return isinstance(value, datetime)
    if fd.type == "date":
        return isinstance(value, date) and not isinstance(value, datetime)
    return False


def _type_message(fd: FieldDef, quoted: bool) -> str:
    soql_type = {
        "datetime": "dateTime",
        "double": "double",
        "currency": "currency",
        "int": "integer",
        "boolean": "boolean",
        "date": "date",
    }.get(fd.type, "string")
    quoting = "should be enclosed in quotes" if fd.type in TEXT_TYPES else "should not be enclosed in quotes"
    return f"value of filter criterion for field '{fd.name}' must be of type {soql_type} and {quoting}"


def _getter(fd: FieldDef) -> Callable[[dict[str, Any]], Any]:
    fold = fd.type in TEXT_TYPES and fd.type not in ("id", "reference")
    if fd.formula is not None or fd.type == "address":
        return lambda r: read_value(fd, r)
    if fold:
        name = fd.name

        def folded(record: dict[str, Any]) -> Any:
            value = record.get(name)
            return value.casefold() if value is not None else None

        return folded
    return lambda r: r.get(fd.name)


def _fold(fd: FieldDef, value: Any) -> Any:
    text_field = fd.type in TEXT_TYPES and fd.type not in ("id", "reference")
    return value.casefold() if text_field and isinstance(value, str) else value


def _compare(fd: FieldDef, op: str, literal: Any) -> Predicate:
    get, compare, value = _getter(fd), _COMPARE[op], _fold(fd, literal)
    if value is None:
        if op in ("=", "!="):
            want_null = op == "="
            return lambda r: (get(r) is None) == want_null
        return lambda r: False
    if op in ("!=", "<>"):
        return lambda r: (v := get(r)) is None or v != value
    return lambda r: (v := get(r)) is not None and compare(v, value)


def _membership(fd: FieldDef, literals: list[Any], negate: bool) -> Predicate:
    get = _getter(fd)
    values = frozenset(_fold(fd, v) for v in literals)
    if negate:
        return lambda r: get(r) not in values
    return lambda r: get(r) in values


def _like(fd: FieldDef, pattern: str) -> Predicate:
    regex, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            regex += re.escape(pattern[i + 1])
            i += 2
            continue
        regex += ".*" if char == "%" else "." if char == "_" else re.escape(char)
        i += 1
    compiled = re.compile(f"^{regex}$", re.IGNORECASE | re.DOTALL)
    get = _getter(fd)
    return lambda r: (v := get(r)) is not None and compiled.match(v) is not None


@dataclass
class Cursor:
    """A query's result set, computed once and served page by page through `nextRecordsUrl`."""

    query: Query
    rows: list[dict[str, Any]]
    resource: str  # "query" | "queryAll"
    batch_size: int


class QueryCursors:
    """Open query locators, least recently used dropped first (Salesforce also caps open cursors)."""

    def __init__(self, *, max_open: int = 50) -> None:
        self.max_open = max_open
        self._open: dict[str, Cursor] = {}
        self._counter = 0

    def open(self, cursor: Cursor) -> str:
        self._counter += 1
        locator = normalize_id(f"01gDn{self._counter:010d}") or ""
        self._open[locator] = cursor
        while len(self._open) > self.max_open:
            del self._open[next(iter(self._open))]
        return locator

    def get(self, locator: str) -> Cursor | None:
        cursor = self._open.pop(locator, None)
        if cursor is not None:
            self._open[locator] = cursor
        return cursor

    def close(self, locator: str) -> None:
        self._open.pop(locator, None)

    def clear(self) -> None:
        self._open.clear()
