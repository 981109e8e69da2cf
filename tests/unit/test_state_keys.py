"""`sync_state` keys are built and parsed in one module."""

from __future__ import annotations

import pytest

from reconciler.store.state_keys import (
    MAPPINGS_KEY,
    StateKind,
    lease_key,
    local_watermark_key,
    of_kind,
    parse_key,
    replay_key,
    resume_key,
    watermark_key,
)


class TestStateKeys:
    @pytest.mark.parametrize(("key", "expected"), [
        (replay_key("/data/LeadChangeEvent"), (StateKind.REPLAY, "/data/LeadChangeEvent")),
        (watermark_key("Lead"), (StateKind.WATERMARK, "Lead")),
        (resume_key("people"), (StateKind.RESUME, "people")),
        (local_watermark_key("people"), (StateKind.LOCAL_WATERMARK, "people")),
        (lease_key("sync"), (StateKind.LEASE, "sync")),
        (MAPPINGS_KEY, None),
        ("budget:today", None),
    ])
    def test_every_built_key_parses_back(self, key: str, expected: tuple[StateKind, str] | None) -> None:
        """What a builder makes, `parse_key` reads back; other keys are not ours to parse."""
        assert parse_key(key) == expected

    def test_the_stored_forms_are_unchanged(self) -> None:
        """The strings already in users' `sync_state` collections keep their form."""
        assert [lease_key("sync"), resume_key("people"), local_watermark_key("companies")] == [
            "lease:sync", "resume:people", "local_watermark:companies"]

    def test_of_kind_keeps_watermarks_and_local_watermarks_apart(self) -> None:
        """A whole-state read split by kind: the local watermark is not a Salesforce watermark."""
        state = {watermark_key("Lead"): {"ts": 1}, local_watermark_key("people"): {"id": 2},
                 MAPPINGS_KEY: {"hash": "h"}}
        assert of_kind(state, StateKind.WATERMARK) == {"Lead": {"ts": 1}}
        assert of_kind(state, StateKind.LOCAL_WATERMARK) == {"people": {"id": 2}}
