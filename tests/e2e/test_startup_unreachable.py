"""A service that cannot reach MongoDB stays up, says why, and recovers without a restart."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.mappings import sample_mappings
from tests.support.secantus import free_port, start_secantus
from tests.support.service import Reply, SalesforceOrg, ServiceProcess, http, wait_for


@pytest.fixture
def unreachable_mongo_service(tmp_path: Path, org: SalesforceOrg) -> ServiceProcess:
    port = free_port()  # nothing listens here yet
    service = ServiceProcess(
        workdir=tmp_path / "svc", salesforce_url=org.base_url, database="startup_unreachable",
        mongo_uri=f"mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=1000",
        mappings=sample_mappings({}),
    )
    service.extra_env["_TEST_MONGO_PORT"] = str(port)
    return service


class TestStartupWithoutMongoDB:
    def test_health_answers_readiness_says_why_and_service_recovers(
        self, unreachable_mongo_service: ServiceProcess, tmp_path: Path
    ) -> None:
        """Admin HTTP answers at once; /readyz is 503 naming MongoDB; once it is up, the service starts."""
        service = unreachable_mongo_service
        process = service.launch()
        mongo = None
        try:
            health = wait_for(lambda: _get(service, "/healthz"), what="/healthz answering")
            assert health.status == 200
            not_ready = wait_for(
                lambda: (r := _get(service, "/readyz")) and r.status == 503 and "MongoDB" in str(r.body)
                and r, what="/readyz 503 naming MongoDB")
            assert not_ready.body["ready"] is False
            logs = http("GET", f"{service.admin_url}/api/sync-logs",
                        headers={"Authorization": f"Bearer {service.admin_token}"})
            assert logs.status == 503
            assert process.poll() is None, "the process must not exit while MongoDB is down"

            # MongoDB comes up on the port the service was given: it starts without being restarted.
            mongo = start_secantus(tmp_path / "late-mongo", port=int(service.extra_env["_TEST_MONGO_PORT"]))
            service.wait_ready(60.0)
            assert process.poll() is None
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
            if mongo is not None:
                mongo.stop()


def _get(service: ServiceProcess, path: str) -> Reply | None:
    try:
        return http("GET", f"{service.admin_url}{path}", timeout=2.0)
    except OSError:
        return None
