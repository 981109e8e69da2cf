"""Shared fixtures: one real SecantusDB process per test session, one database per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.secantus import SecantusServer, start_secantus


@pytest.fixture(scope="session")
def secantus() -> Iterator[SecantusServer]:
    """A real MongoDB-wire-protocol server (SecantusDB) running as a separate process."""
    server = start_secantus()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mongo_uri(secantus: SecantusServer) -> str:
    return secantus.uri


@pytest.fixture
def database_name() -> str:
    """A fresh database name per test, so tests share the server but not data."""
    return f"t_{uuid.uuid4().hex[:12]}"
