"""The keyset watermark shared by the backfill and the poller: pure position arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler.watermark import Watermark, record_position

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def at(seconds: int) -> datetime:
    return T0 + seconds * S


class TestStoredShape:
    def test_is_constant_size(self) -> None:
        """A watermark is one timestamp and one id, however many records share the second."""
        mark = Watermark().advance([(f"00Q{i:06d}", T0) for i in range(100_000)])
        assert mark.to_state() == {"ts": "2024-05-01T10:00:00Z", "last_id": "00Q099999"}

    def test_round_trips(self) -> None:
        """What is saved reads back as the same watermark."""
        mark = Watermark(at(3), "00Q7")
        assert Watermark.from_state(mark.to_state()) == mark

    @pytest.mark.parametrize("state", [None, {}, {"ts": None, "last_id": None}, {"ts": "garbage"}])
    def test_nothing_stored_is_the_beginning(self, state: dict[str, object] | None) -> None:
        """No (usable) document means nothing applied yet."""
        assert Watermark.from_state(state) == Watermark()

    def test_an_old_ids_document_is_still_read(self) -> None:
        """`{"ts", "ids"}` becomes ts (whole second re-read) with those ids skipped once."""
        mark = Watermark.from_state({"ts": "2024-05-01T10:00:00Z", "ids": ["b", "d"]})
        assert mark == Watermark(T0, None, frozenset({"b", "d"}))
        assert mark.soql_filter() == "SystemModstamp >= 2024-05-01T10:00:00Z"
        assert [i for i in "abcde" if not mark.covers(i, T0)] == ["a", "c", "e"]


class TestCovers:
    @pytest.mark.parametrize(
        ("mark", "sf_id", "modstamp", "expected"),
        [
            (Watermark(), "a", T0, False),                     # nothing applied yet
            (Watermark(at(5), "m"), "z", at(4), True),         # an earlier second
            (Watermark(at(5), "m"), "a", at(5), True),         # same second, ordered before
            (Watermark(at(5), "m"), "m", at(5), True),         # the position itself
            (Watermark(at(5), "m"), "n", at(5), False),        # same second, after
            (Watermark(at(5), "m"), "a", at(6), False),        # a later second
            (Watermark(at(5)), "a", at(5), False),             # no id: nothing of that second yet
            (Watermark(at(5), None, frozenset({"q"})), "q", at(5), True),   # old-shape id
            (Watermark(at(5), "m", frozenset({"q"})), "p", at(5), False),
        ],
    )
    def test_covers(self, mark: Watermark, sf_id: str, modstamp: datetime, expected: bool) -> None:
        """A pair is applied when it is ordered at or before (ts, last_id), or an old id at ts."""
        assert mark.covers(sf_id, modstamp) is expected


class TestAdvance:
    def test_moves_to_the_last_pair_read(self) -> None:
        """The position is the last (Id, SystemModstamp) read, in query order."""
        mark = Watermark().advance([("a", at(0)), ("b", at(1)), ("c", at(1))])
        assert mark == Watermark(at(1), "c")
        assert mark.advance([("d", at(1))]) == Watermark(at(1), "d")

    def test_never_reaches_the_signpost(self) -> None:
        """Pairs at or after the signpost do not move it."""
        mark = Watermark().advance([("a", at(0)), ("b", at(2)), ("c", at(3))], signpost=at(2))
        assert mark == Watermark(at(0), "a")

    def test_never_moves_back(self) -> None:
        """An out-of-order earlier pair leaves the position alone."""
        assert Watermark(at(5), "m").advance([("a", at(1))]) == Watermark(at(5), "m")

    def test_old_ids_are_dropped_once_passed(self) -> None:
        """Old-shape ids are kept only while still ahead inside their second."""
        mark = Watermark(T0, None, frozenset({"b", "d"}))
        assert mark.advance([("a", T0), ("b", T0), ("c", T0)]) == Watermark(T0, "c", frozenset({"d"}))
        assert mark.advance([("e", T0)]) == Watermark(T0, "e")
        assert mark.advance([("a", at(1))]) == Watermark(at(1), "a")
        assert "ids" not in mark.advance([("e", T0)]).to_state()


class TestQuery:
    @pytest.mark.parametrize(
        ("mark", "signpost", "expected"),
        [
            (Watermark(), None, None),
            (Watermark(), at(9), "SystemModstamp < 2024-05-01T10:00:09Z"),
            (Watermark(at(1)), at(9),
             "SystemModstamp >= 2024-05-01T10:00:01Z AND SystemModstamp < 2024-05-01T10:00:09Z"),
            (Watermark(at(1), "00Q'x"), at(9),
             "(SystemModstamp > 2024-05-01T10:00:01Z OR (SystemModstamp = 2024-05-01T10:00:01Z"
             " AND Id > '00Q\\'x')) AND SystemModstamp < 2024-05-01T10:00:09Z"),
        ],
    )
    def test_soql_filter(self, mark: Watermark, signpost: datetime | None, expected: str | None) -> None:
        """The WHERE condition asks for what follows the position, keyset on (SystemModstamp, Id)."""
        assert mark.soql_filter(signpost) == expected


class TestRecordPosition:
    @pytest.mark.parametrize(
        ("record", "expected"),
        [
            ({"Id": "a", "SystemModstamp": "2024-05-01T10:00:00.000+0000"}, ("a", T0)),
            ({"Id": "a", "SystemModstamp": "2024-05-01T10:00:00.250Z"}, ("a", T0)),
            ({"Id": "a"}, None),
            ({"SystemModstamp": "2024-05-01T10:00:00Z"}, None),
        ],
    )
    def test_record_position(self, record: dict[str, object], expected: tuple[str, datetime] | None) -> None:
        """A record's (Id, SystemModstamp) at second precision; None when either is missing."""
        assert record_position(record) == expected
