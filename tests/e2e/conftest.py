"""End-to-end fixtures: one emulated org (a separate process) per test module, the platform's
MongoDB seen through a plain PyMongo client, and a factory for the real service process.

A module shares one org and one service; its tests keep apart by using records of their own
(`tests.support.service.unique()` names and emails), and each module gets its own database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from tests.support.emulator import EmulatorProcess, start_emulator_process
from tests.support.secantus import SecantusServer
from tests.support.service import Doc, SalesforceOrg, ServiceFactory, ServiceProcess


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[EmulatorProcess]:
    """`python -m emulator` on a free port: an empty org for this module."""
    handle = start_emulator_process()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def org(emulator_process: EmulatorProcess) -> SalesforceOrg:
    return SalesforceOrg(emulator_process.base_url)


@pytest.fixture(scope="module")
def module_database() -> str:
    return f"e2e_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def db(secantus: SecantusServer, module_database: str) -> Iterator[Database[Doc]]:
    """The platform's database, as the platform (a plain PyMongo client) sees it."""
    client: MongoClient[Doc] = MongoClient(secantus.uri, tz_aware=True, serverSelectionTimeoutMS=10_000)
    try:
        yield client[module_database]
    finally:
        client.close()


@pytest.fixture(scope="module")
def service_factory(
    tmp_path_factory: pytest.TempPathFactory, secantus: SecantusServer, org: SalesforceOrg,
    module_database: str,
) -> Iterator[ServiceFactory]:
    """Builds (does not start) the real service over this module's org and database (or
    `database`); every service built is stopped at the end of the module."""
    built: list[ServiceProcess] = []

    def build(mappings: str, *, database: str | None = None) -> ServiceProcess:
        workdir: Path = tmp_path_factory.mktemp("service")
        service = ServiceProcess(workdir=workdir, salesforce_url=org.base_url, mongo_uri=secantus.uri,
                                 database=database or module_database, mappings=mappings)
        built.append(service)
        return service

    yield build
    for service in built:
        try:
            service.stop()
        finally:
            service.kill()
