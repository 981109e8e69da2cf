"""The one Salesforce read path: fields selected, record -> change, fetch by id, keyset pages."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from listener.reader import RecordReader, record_change, select_fields
from reconciler.ports import ChangeKind, ChangeSource
from reconciler.remerge import restricted
from reconciler.watermark import Watermark
from tests.support.salesforce_changes import MAPPINGS, T0, FakeSalesforce

READ_AT = datetime(2030, 1, 1, tzinfo=UTC)
MODSTAMP = "2024-05-01T10:00:05.000+0000"
MODIFIED = "2024-05-01T10:00:00.000+0000"


def stamp(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


class TestSelectedFields:
    def test_always_then_system_then_mapped_fields(self) -> None:
        """A full-record query selects Id and the timestamps first, then owner/linking/conversion
        fields from the objects registry, then the mapped fields, each once."""
        lead = select_fields(MAPPINGS, "Lead")
        assert lead[:4] == ["Id", "SystemModstamp", "LastModifiedDate", "IsDeleted"]
        assert lead[4:9] == ["OwnerId", "Email", "IsConverted", "ConvertedContactId", "ConvertedAccountId"]
        assert {"FirstName", "City"} <= set(lead)
        assert {"AccountId", "MailingCity"} <= set(select_fields(MAPPINGS, "Contact"))
        assert len(lead) == len(set(lead))


class TestRecordChange:
    @pytest.mark.parametrize(("record", "kind", "changed_at"), [
        ({"Id": "00Q1", "LastModifiedDate": MODIFIED, "SystemModstamp": MODSTAMP},
         ChangeKind.UPSERT, datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ({"Id": "00Q1", "LastModifiedDate": MODIFIED, "SystemModstamp": MODSTAMP, "IsDeleted": True},
         ChangeKind.DELETE, datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ({"Id": "00Q1", "SystemModstamp": MODSTAMP, "IsDeleted": False},
         ChangeKind.UPSERT, datetime(2024, 5, 1, 10, 0, 5, tzinfo=UTC)),
        ({"Id": "00Q1", "LastModifiedDate": "not a date", "SystemModstamp": MODSTAMP},
         ChangeKind.UPSERT, datetime(2024, 5, 1, 10, 0, 5, tzinfo=UTC)),
        ({"Id": "00Q1", "IsDeleted": "true"}, ChangeKind.UPSERT, READ_AT),
        ({"Id": "00Q1", "SystemModstamp": None, "IsDeleted": True}, ChangeKind.DELETE, READ_AT),
    ])
    def test_kind_and_time(self, record: dict[str, Any], kind: ChangeKind, changed_at: datetime) -> None:
        """DELETE only when IsDeleted is true; changed_at is LastModifiedDate, else SystemModstamp,
        else the time the record was read."""
        change = record_change("Lead", {**record, "attributes": {"type": "Lead"}}, ChangeSource.POLL,
                               read_at=READ_AT)
        assert change is not None
        assert (change.sf_id, change.kind, change.changed_at) == ("00Q1", kind, changed_at)
        assert change.fields == {k: v for k, v in record.items() if k != "Id"}
        assert change.source is ChangeSource.POLL

    @pytest.mark.parametrize("record", [{}, {"Id": None}, {"Id": ""}, {"Id": 42}])
    def test_a_record_without_an_id_is_no_change(self, record: dict[str, Any]) -> None:
        """Without a string Id there is nothing to apply it to."""
        assert record_change("Lead", {**record, "SystemModstamp": MODSTAMP}, ChangeSource.IMPORT,
                             read_at=READ_AT) is None


class TestFetch:
    async def test_ids_are_fetched_200_a_query_deleted_included(self) -> None:
        """Fetch by id: one `Id IN (...)` query per 200 ids (duplicates once), deleted ones as DELETE."""
        leads = [{"Id": f"00Q{i:04d}", "SystemModstamp": stamp(0), "IsDeleted": i == 3} for i in range(450)]
        sf = FakeSalesforce({"Lead": leads})
        reader = RecordReader(sf, MAPPINGS)
        changes = await reader.fetch("Lead", [r["Id"] for r in leads] + ["00Q0001"], source=ChangeSource.GAP)
        assert len(sf.queries) == 3 and all(" WHERE Id IN (" in q for q in sf.queries)
        assert len(changes) == 450
        assert [c.sf_id for c in changes if c.kind is ChangeKind.DELETE] == ["00Q0003"]

    async def test_a_restricted_view_selects_only_its_fields(self) -> None:
        """`mappings` narrows the mapped fields selected (remerge), system fields stay."""
        sf = FakeSalesforce({"Lead": [{"Id": "00Q1", "SystemModstamp": stamp(0)}]})
        view = restricted(MAPPINGS, {"people": ["city"]})
        await RecordReader(sf, MAPPINGS).fetch("Lead", ["00Q1"], source=ChangeSource.IMPORT, mappings=view)
        assert sf.queries[0].startswith(f"SELECT {', '.join(select_fields(view, 'Lead'))} FROM Lead")
        assert "FirstName" not in sf.queries[0] and "City" in sf.queries[0]


class TestKeysetPages:
    async def test_pages_carry_the_watermark_below_the_signpost(self) -> None:
        """Each page comes with the position after it; the position never reaches the signpost."""
        leads = [{"Id": f"00Q{i}", "SystemModstamp": stamp(i // 2)} for i in range(6)]  # seconds 0 0 1 1 2 2
        reader = RecordReader(FakeSalesforce({"Lead": leads}, page_size=2), MAPPINGS)
        pages = reader.pages("Lead", Watermark(), T0 + timedelta(seconds=2), source=ChangeSource.IMPORT,
                             stop_at_signpost=False, include_deleted=False, read_ahead=True)
        seen = []
        async with contextlib.aclosing(pages):
            async for page in pages:
                seen.append(([c.sf_id for c in page.changes], page.mark.last_id, page.read))
        assert seen == [(["00Q0", "00Q1"], "00Q1", 2), (["00Q2", "00Q3"], "00Q3", 2),
                        (["00Q4", "00Q5"], "00Q3", 2)]

    async def test_a_record_without_a_modstamp_is_applied_but_never_moves_the_watermark(self) -> None:
        """No keyset position: the change is kept (not silently dropped), the watermark stays put."""
        class Unstamped(FakeSalesforce):
            async def query(self, soql: str, *, include_deleted: bool = False) -> Any:
                self.queries.append(soql)
                yield [{"Id": "00Q1", "SystemModstamp": "garbled", "LastModifiedDate": MODIFIED},
                       {"SystemModstamp": stamp(0)}]

        pages = RecordReader(Unstamped(), MAPPINGS).pages("Lead", Watermark(), T0 + timedelta(seconds=5),
                                                          source=ChangeSource.POLL)
        [page] = [p async for p in pages]
        assert [c.sf_id for c in page.changes] == ["00Q1"]
        assert page.mark == Watermark() and page.read == 2
