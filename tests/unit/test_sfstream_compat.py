"""The aiosfstream-ng compatibility layer: error translation, auth, replay ids."""

from __future__ import annotations

from typing import Any

import pytest
from aiocometd_ng.exceptions import ServerError as CometdServerError
from aiocometd_ng.exceptions import TransportError
from aiosfstream_ng.auth import AuthenticatorBase
from aiosfstream_ng.exceptions import ServerError

from listener.sources._sfstream_compat import (
    CommittedReplayIds,
    DeliveryLimitError,
    ReplayIdInvalidError,
    TokenAuthenticator,
    UnknownClientError,
    _ErrorWatch,
    _VersionedClient,
    classify_server_error,
    translate,
)
from reconciler.errors import (
    BudgetExhaustedError,
    FatalError,
    RetriableError,
    SessionExpiredError,
    SyncError,
)


class FakeTokens:
    """A token source that counts how it was asked."""

    instance_url = "https://example.my.salesforce.com"

    def __init__(self) -> None:
        self.plain = 0
        self.renewed = 0

    async def access_token(self) -> str:
        self.plain += 1
        return "token-a"

    async def reauthenticate(self) -> str:
        self.renewed += 1
        return "token-b"


class TestClassification:
    @pytest.mark.parametrize(
        ("channel", "error", "expected"),
        [
            ("/meta/connect", "401::Authentication invalid", SessionExpiredError),
            ("/meta/connect", "403::Unknown client", UnknownClientError),
            ("/meta/connect", "403::Organization total events daily limit exceeded", DeliveryLimitError),
            ("/meta/subscribe", "403::Organization total events daily limit exceeded", DeliveryLimitError),
            ("/meta/subscribe", "400::The replayId {7} you provided was invalid.  Please provide a valid ID",
             ReplayIdInvalidError),
            ("/meta/subscribe", "400::The channel you requested to subscribe to does not exist {/x}",
             FatalError),
            ("/meta/handshake", "403::Handshake denied", RetriableError),
            ("/meta/connect", None, RetriableError),
        ],
    )
    def test_table(self, channel: str, error: str | None, expected: type[SyncError]) -> None:
        """Bayeux errors map to the project's errors by code (and, for 403s, Salesforce's text)."""
        assert type(classify_server_error(channel, error)) is expected

    def test_delivery_limit_is_a_budget_error(self) -> None:
        """The CDC allocation being spent is a BudgetExhaustedError, so callers treat it as such."""
        assert isinstance(classify_server_error("/meta/connect", "403::Organization total events daily limit "
                                                                  "exceeded"), BudgetExhaustedError)

    @pytest.mark.parametrize(
        ("exc", "expected"),
        [
            (ServerError("Subscribe request failed.", {"channel": "/meta/subscribe",
                                                        "error": "400::The replayId {1} was invalid"}),
             ReplayIdInvalidError),
            (CometdServerError("Connect request failed.", {"channel": "/meta/connect",
                                                            "error": "403::Unknown client"}),
             UnknownClientError),
            (TransportError("Server disconnected"), RetriableError),
        ],
    )
    def test_library_exceptions_are_translated(self, exc: Exception, expected: type[SyncError]) -> None:
        """aiocometd/aiosfstream exceptions never escape this module untranslated."""
        assert type(translate(exc)) is expected


class TestAuthenticator:
    async def test_token_comes_from_the_rest_client(self) -> None:
        """The CometD bearer token is the REST client's; no OAuth flow of its own."""
        tokens = FakeTokens()
        auth = TokenAuthenticator(tokens)
        assert isinstance(auth, AuthenticatorBase)
        await auth.authenticate()
        headers: dict[str, str] = {}
        await auth.outgoing([], headers)
        assert headers == {"Authorization": "Bearer token-a"}
        assert (tokens.plain, tokens.renewed) == (1, 0)

    @pytest.mark.parametrize(
        ("reply", "renews"),
        [
            ({"channel": "/meta/connect", "successful": False, "error": "401::Authentication invalid"}, 1),
            ({"channel": "/meta/handshake", "successful": False, "error": "403::Handshake denied",
              "ext": {"sfdc": {"failureReason": "401::Authentication invalid"}}}, 1),
            ({"channel": "/meta/connect", "successful": False, "error": "403::Unknown client"}, 0),
        ],
    )
    async def test_only_a_401_forces_a_new_token(self, reply: dict[str, Any], renews: int) -> None:
        """After a 401 the next authenticate() re-authenticates; a 403 reuses the token."""
        tokens = FakeTokens()
        auth = TokenAuthenticator(tokens)
        await auth.incoming([reply])
        await auth.authenticate()
        assert tokens.renewed == renews

    async def test_cometd_url_uses_our_api_version(self) -> None:
        """The CometD endpoint carries the configured version, not the library's 45.0."""
        client = _VersionedClient(TokenAuthenticator(FakeTokens()), api_version="62.0", connection_timeout=0)
        assert client.get_cometd_url("https://x.my.salesforce.com/") == "https://x.my.salesforce.com/cometd/62.0"


class TestReplayIds:
    async def test_subscribe_carries_the_committed_replay_id(self) -> None:
        """Only committed ids reach /meta/subscribe; an override (-1 after a resync) wins once set."""
        replay = CommittedReplayIds({"/data/LeadChangeEvent": 41})
        message: dict[str, Any] = {"channel": "/meta/subscribe", "subscription": "/data/LeadChangeEvent"}
        await replay.outgoing([message], {})
        assert message["ext"]["replay"] == {"/data/LeadChangeEvent": 41}

        replay.override("/data/LeadChangeEvent", -1)
        await replay.outgoing([message], {})
        assert message["ext"]["replay"] == {"/data/LeadChangeEvent": -1}

        replay.commit("/data/LeadChangeEvent", 50)
        await replay.outgoing([message], {})
        assert message["ext"]["replay"] == {"/data/LeadChangeEvent": 50}

    async def test_receiving_does_not_store_anything(self) -> None:
        """MANUAL policy: a received message does not move the stored replay id."""
        replay = CommittedReplayIds({"/data/LeadChangeEvent": 41})
        await replay.extract_replay_id({"channel": "/data/LeadChangeEvent",
                                        "data": {"payload": {"ChangeEventHeader": {"commitTimestamp": 1}},
                                                 "event": {"replayId": 99}}})
        assert await replay.get_replay_id("/data/LeadChangeEvent") == 41

    async def test_new_channel_defaults_to_new_events(self) -> None:
        """A channel never committed subscribes with -1."""
        assert await CommittedReplayIds().get_replay_id("/data/AccountChangeEvent") == -1


class TestErrorWatch:
    async def test_surfaces_the_first_server_error(self) -> None:
        """A failed meta reply inside the transport's own loop is remembered and signalled."""
        watch = _ErrorWatch()
        await watch.incoming([{"channel": "/meta/subscribe", "successful": False,
                               "subscription": "/data/LeadChangeEvent",
                               "error": "400::The replayId {3} you provided was invalid."}])
        assert isinstance(watch.error, ReplayIdInvalidError)
        assert watch.error.channel == "/data/LeadChangeEvent"
        assert watch.raised.is_set()

    async def test_a_single_401_is_left_to_reauthentication(self) -> None:
        """One 401 is cured in-band by re-authenticating; only repeated 401s are an error."""
        watch = _ErrorWatch()
        reply = {"channel": "/meta/connect", "successful": False, "error": "401::Authentication invalid"}
        await watch.incoming([reply])
        assert watch.error is None
        await watch.incoming([reply])
        await watch.incoming([reply])
        assert isinstance(watch.error, SessionExpiredError)

    async def test_events_are_ignored(self) -> None:
        """Data messages are not errors."""
        watch = _ErrorWatch()
        await watch.incoming([{"channel": "/data/LeadChangeEvent", "data": {}}])
        assert watch.error is None
