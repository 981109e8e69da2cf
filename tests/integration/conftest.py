"""Fixtures for integration tests: a connected, indexed Store on the per-test database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from reconciler.store import Store


@pytest.fixture
async def store(mongo_uri: str, database_name: str) -> AsyncIterator[Store]:
    """The real Store on a fresh database with its indexes, dropped afterwards."""
    store = await Store.connect(mongo_uri, database_name)
    await store.ensure_indexes()
    try:
        yield store
    finally:
        await store.client.drop_database(database_name)
        await store.close()
