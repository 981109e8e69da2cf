"""Record bulk writes: one `bulk_write` per batch, with per-record outcomes.

Every write the store makes to a record increments `_sync.version`. A `RecordWrite` with
`expected` (the `RecordVersion` its caller read) is compare-and-set: it applies only if the
document still has that `updated_at` (which every writer, the platform included, sets) and that
`_sync.version` (which tells two of this service's writes apart when they share a millisecond).
A write that finds the document changed or gone is reported in `BulkOutcome.conflicts` and
changes nothing; the caller re-reads and merges again.

How conflicts are found without a round trip per record: compare-and-set writes also set
`_sync.write_id` to a token of the call. When the bulk result matched every write, there is no
conflict (no extra read); otherwise the compare-and-set documents are read back and those not
carrying the token are conflicts. A document rewritten by someone else right after our write is
then reported as a conflict although ours applied: the re-merge that follows is idempotent.

Encoding errors (a value BSON cannot hold, an integer beyond 64 bits, a document over 16 MB)
make the driver refuse the whole batch before sending it. The offending writes are found by
encoding each one, reported in `errors` ("INVALID_DOCUMENT: ..."), and the rest is written
again. (If the driver had already sent an earlier part of the batch, as it may with mixed
updates and deletes, that part is applied twice: idempotent, except that an upsert it made is
then reported as matched, without its new `_id`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import bson
from bson import ObjectId
from bson.errors import InvalidDocument, InvalidStringData
from pymongo import DeleteOne, UpdateOne
from pymongo.errors import BulkWriteError

from reconciler.errors import RetriableError, UnencodableError
from reconciler.store._client import translate_errors

VERSION = "_sync.version"
WRITE_ID = "_sync.write_id"
MAX_BSON = 16 * 1024 * 1024
ENCODING_ERRORS = (InvalidDocument, InvalidStringData, OverflowError)


@dataclass(frozen=True)
class RecordVersion:
    """The version of a document as its reader saw it (`RecordVersion.of(doc)`)."""

    updated_at: datetime | None
    version: int | None

    @classmethod
    def of(cls, doc: dict[str, Any]) -> RecordVersion:
        sync = doc.get("_sync")
        version = sync.get("version") if isinstance(sync, dict) else None
        return cls(doc.get("updated_at"), int(version) if version is not None else None)

    def filter(self) -> dict[str, Any]:
        """Equality on both fields. A value is written `{$all: [value]}`, which MongoDB documents as
        the same predicate as `{field: value}`: SecantusDB then goes straight to the `_id` point
        lookup instead of first trying every index for the bare equalities (0.3-0.6 ms of server
        CPU per write). `None` stays bare: it must match a missing field too (a document never
        stamped), and SecantusDB's `{$all: [null]}` does not."""
        return {"updated_at": _equal(self.updated_at), VERSION: _equal(self.version)}


def _equal(value: Any) -> Any:
    return value if value is None else {"$all": [value]}


@dataclass
class RecordWrite:
    """One document's change, written in a batch. `filter` selects it (`{"_id": ...}` or
    `{"crm.id": ...}`); `upsert` inserts it (with `set_on_insert`) when nothing matches;
    `expected` makes it compare-and-set (see the module docstring), and cannot upsert."""

    filter: dict[str, Any]
    set: dict[str, Any] = field(default_factory=dict)
    unset: list[str] = field(default_factory=list)
    set_on_insert: dict[str, Any] = field(default_factory=dict)
    upsert: bool = False
    delete: bool = False
    expected: RecordVersion | None = None

    def __post_init__(self) -> None:
        if self.expected is not None and self.upsert:
            raise ValueError("a compare-and-set write (expected=...) cannot upsert: a changed "
                             "document would be inserted a second time")
        if self.expected is not None and "_id" not in self.filter:
            raise ValueError("a compare-and-set write (expected=...) selects its document by _id")


@dataclass
class BulkOutcome:
    upserted: dict[int, Any] = field(default_factory=dict)   # write index -> new _id
    errors: dict[int, str] = field(default_factory=dict)     # write index -> "CODE: message"
    conflicts: set[int] = field(default_factory=set)          # write indexes: changed since read


def _parts(write: RecordWrite, token: ObjectId) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(filter, update) of one write; update None for a delete."""
    query = {**write.filter, **write.expected.filter()} if write.expected else write.filter
    if write.delete:
        return query, None
    update: dict[str, Any] = {"$inc": {VERSION: 1}}
    sets = {**write.set, WRITE_ID: token} if write.expected else write.set
    if sets:
        update["$set"] = sets
    if write.unset:
        update["$unset"] = dict.fromkeys(write.unset, "")
    if write.set_on_insert:
        update["$setOnInsert"] = write.set_on_insert
    return query, update


def _operation(write: RecordWrite, token: ObjectId) -> Any:
    query, update = _parts(write, token)
    return DeleteOne(query) if update is None else UpdateOne(query, update, upsert=write.upsert)


def encoding_error(write: RecordWrite, token: ObjectId) -> str | None:
    """Why the driver cannot send this write, or None."""
    query, update = _parts(write, token)
    try:
        size = len(bson.encode({"q": query, "u": update or {}}))
    except ENCODING_ERRORS as exc:
        return f"INVALID_DOCUMENT: {type(exc).__name__}: {exc}"
    return f"INVALID_DOCUMENT: {size} bytes, over MongoDB's 16 MB" if size > MAX_BSON else None


# BSONObjectTooLarge, and "the document after this update would exceed 16 MB" (update, upsert)
_TOO_LARGE = frozenset({10334, 17419, 17420})


def _write_error(error: dict[str, Any]) -> str:
    if error.get("code") in _TOO_LARGE:
        return f"INVALID_DOCUMENT: {error.get('errmsg')}"
    if error.get("code") == 11000:
        return f"DUPLICATE_VALUE: {error.get('keyValue') or error.get('errmsg')}"
    return f"WRITE_ERROR {error.get('code')}: {error.get('errmsg')}"


@dataclass
class _Result:
    """What one `bulk_write` said: counts, upserted ids and errors by operation index."""

    applied: int = 0
    upserted: dict[int, Any] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)


async def _bulk_write(coll: Any, ops: list[Any], ordered: bool) -> _Result:
    try:
        result = await coll.bulk_write(ops, ordered=ordered)
    except BulkWriteError as exc:
        details = exc.details
        if details.get("writeConcernErrors"):
            raise RetriableError("MongoDB write concern not satisfied") from exc
        applied = int(details.get("nMatched", 0)) + int(details.get("nUpserted", 0)) \
            + int(details.get("nRemoved", 0))
        errors = {e["index"]: _write_error(e) for e in details.get("writeErrors", [])}
        if ordered and errors:
            first = min(errors)  # ordered: everything after the first failure did not run
            errors.update({i: "NOT_RUN: an earlier write failed" for i in range(first + 1, len(ops))})
        return _Result(applied, {u["index"]: u["_id"] for u in details.get("upserted", [])}, errors)
    applied = result.matched_count + result.upserted_count + result.deleted_count
    return _Result(applied, dict(result.upserted_ids or {}))


async def write_records(coll: Any, writes: Sequence[RecordWrite], *, ordered: bool,
                        operation: str) -> BulkOutcome:
    """One bulk write of `writes` (see the module docstring); per-record outcomes by index."""
    token = ObjectId()
    outcome = BulkOutcome()
    sent = list(range(len(writes)))
    with translate_errors(operation):
        try:
            result = await _bulk_write(coll, [_operation(w, token) for w in writes], ordered)
        except ENCODING_ERRORS as exc:
            bad = {i: e for i, w in enumerate(writes) if (e := encoding_error(w, token)) is not None}
            if not bad:
                raise UnencodableError(f"{operation}: {type(exc).__name__}: {exc}") from exc
            outcome.errors.update(bad)
            sent = [i for i in sent if i not in bad]
            if ordered:  # the first bad write stops an ordered batch there
                first = min(bad)
                outcome.errors.update({i: "NOT_RUN: an earlier write failed" for i in sent if i > first})
                sent = [i for i in sent if i < first]
            result = await _bulk_write(coll, [_operation(writes[i], token) for i in sent], ordered)
        outcome.upserted.update({sent[i]: _id for i, _id in result.upserted.items()})
        outcome.errors.update({sent[i]: text for i, text in result.errors.items()})
        if result.applied + len(result.errors) < len(sent):
            outcome.conflicts = await _conflicts(coll, writes, sent, outcome, token)
    return outcome


async def _conflicts(coll: Any, writes: Sequence[RecordWrite], sent: list[int], outcome: BulkOutcome,
                     token: ObjectId) -> set[int]:
    """The compare-and-set writes that did not apply: their documents lack our token (or,
    for a delete, still exist)."""
    checked = [i for i in sent if writes[i].expected is not None and i not in outcome.errors]
    if not checked:
        return set()
    ids = [writes[i].filter.get("_id") for i in checked]
    docs = await coll.find({"_id": {"$in": ids}}, {WRITE_ID: 1}).to_list(None)
    ours = {d["_id"] for d in docs if (d.get("_sync") or {}).get("write_id") == token}
    present = {d["_id"] for d in docs}
    return {i for i, doc_id in zip(checked, ids, strict=True)
            if (doc_id in present if writes[i].delete else doc_id not in ours)}
