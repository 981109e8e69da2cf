"""Where a lost create's record is looked for from: its first send on Salesforce's clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from reconciler.outbound import LostCreates


class SlewingBack:
    """Salesforce's clock as the service learned it during a skew (+3 s ahead of this host),
    while the org's clock slews back: the `Date` it last sent says it is only +1 s ahead now.
    The bounds of the offset learned still hold +3 s (no answer has contradicted them yet)."""

    offset = timedelta(seconds=3)
    uncertainty = timedelta(0)

    def __init__(self) -> None:
        self.latest: datetime | None = datetime.now(UTC) + timedelta(seconds=1)


def test_a_send_is_stamped_no_later_than_salesforce_said_it_was() -> None:
    """Chaos seed 57329 (8 records created twice): a create's answer was lost 6 s after an org
    clock skew of +3 s healed; the offset learned was still +2.7 s while Salesforce's clock,
    slewing back, was about +1 s ahead. The first send, stamped with that offset, was later
    than the record's `CreatedDate`, so the lookup for the record missed it and the create was
    sent again. Salesforce's clock never goes back: a record the send makes is created no
    earlier than the latest `Date` it sent, which bounds the stamp."""
    clock = SlewingBack()
    lost = LostCreates(cast(Any, None), cast(Any, None), sf_clock=clock)
    stamped = datetime.now(UTC) + lost.offset()
    assert clock.latest is not None and stamped <= clock.latest


def test_without_a_date_yet_the_offset_learned_stands() -> None:
    clock = SlewingBack()
    clock.latest = None
    assert LostCreates(cast(Any, None), cast(Any, None), sf_clock=clock).offset() == timedelta(seconds=3)
