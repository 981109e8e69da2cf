"""The chaos run's admin (bench/chaos/operations/admin_side.py) against the real service: two
replicas over one SecantusDB and the emulator, as `python -m bench.chaos` starts them."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chaos.env import Environment
from bench.chaos.operations import OTHER_APP, Operations
from bench.chaos.schedule import MAPPED_OWNERS, Step
from tests.support.service import wait_for


@pytest.fixture(scope="module")
def env() -> Iterator[Environment]:
    work = Path(tempfile.mkdtemp(prefix="chaos-admin-"))
    environment = Environment(work, database="chaos_admin")
    try:
        environment.start()
        yield environment
    finally:
        environment.stop()


def linked_lead(env: Environment, **fields: str) -> str:
    lead_id = env.org.create("Lead", {"LastName": "Admin", "Company": "Admin Ltd",
                                      "OwnerId": MAPPED_OWNERS[0], **fields}, client=OTHER_APP)
    wait_for(lambda: env.db.people.find_one({"crm.id": lead_id}), timeout=60, what="the Person of the Lead")
    return lead_id


@pytest.mark.chaos
class TestAdminSide:
    def test_a_call_to_the_standby_goes_to_the_leader(self, env: Environment) -> None:
        """The standby answers 409 not_leader; the admin tries the other replica, as the admin
        page would, and the leader re-imports the record."""
        lead_id = linked_lead(env)
        leader = env.wait_leader(timeout=30)
        assert leader is not None
        standby = next(r for r in env.replicas if r is not leader)
        admin = Operations(env).admin
        reply = admin.api("POST", "/api/import", {"sf_id": lead_id}, first=standby)
        assert reply.status == 200, reply.body
        assert admin.hops == [f"{standby.name}:409", f"{leader.name}:200"]

    def test_a_mapping_edit_is_rolled_out_and_remerged(self, env: Environment) -> None:
        """`people.mobile_phone` mapped: both replicas restart, the new leader remerges, and the
        Person takes the MobilePhone Salesforce held while the field was unmapped."""
        lead_id = linked_lead(env, MobilePhone="+1 666 0001")
        ops = Operations(env)
        step = Step("adm-001", "mapping_edit", "admin", None,
                    {"change": "mobile_phone", "title_merge": "most_recent", "mobile_phone": True})
        starts = [r.service.starts for r in env.replicas]
        began = time.time()
        [ack] = ops.run(step)
        assert ack.status == "ok", ack.detail
        assert [r.service.starts for r in env.replicas] == [n + 1 for n in starts]
        person = env.db.people.find_one({"crm.id": lead_id})
        assert person is not None and person.get("mobile_phone") == "+1 666 0001"
        assert ack.fields["started"] >= began
