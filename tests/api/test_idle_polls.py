"""Idle polls answered from the tenant's latest seq as heard (app/engine/read/latest.py):
no round trip when nothing happened, never a missed change."""

from __future__ import annotations

from app.db import write_transaction
from app.engine.tenants import create_key
from app.engine.views.spec import check_binding
from app.state import make_state
from tests.conftest import Tenant, statements

SYNC = """mutation($input: SyncInput!) { sync(input: $input) { checkpoint } }"""
POLL = (
    """query($since: String) { changes(since: $since) { checkpoint users { inserted { id } } } }"""
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def poll(tenant: Tenant, since: str | None, key: str | None = None) -> dict:
    body = await tenant.gql(POLL, {"since": since}, key=key)
    page: dict = body["data"]["changes"]
    return page


async def test_a_heard_idle_poll_reads_nothing_and_news_still_arrive(tenant: Tenant) -> None:
    latest = tenant.state.service.latest
    latest.clock = clock = Clock()
    latest.enable()
    first = await poll(tenant, None)
    await poll(tenant, first["checkpoint"])  # reads the counter once, and remembers it
    with statements(tenant.state) as seen:
        idle = await poll(tenant, first["checkpoint"])
    assert idle["checkpoint"] == first["checkpoint"]
    assert [s for s in seen if "api_keys" not in s] == []  # the credential's lookup only
    await tenant.gql(SYNC, {"input": {"users": {"data": [{"name": "heard"}]}}})
    news = await poll(tenant, first["checkpoint"])  # this process's own commit was heard
    assert [u["id"] for u in news["users"]["inserted"]]
    # a commit this process did not hear (another process, a lost notification) arrives
    # once the remembered seq is older than the ttl
    await poll(tenant, news["checkpoint"])
    other = make_state(tenant.state.settings)
    try:
        async with write_transaction(other.engine) as conn:
            issued = await create_key(conn, tenant_id=tenant.id, scopes=("sync:write",))
        await tenant.gql(SYNC, {"input": {"users": {"data": [{"name": "x"}]}}}, key=issued.key)
    finally:
        await other.close()
    clock.now += latest.ttl
    later = await poll(tenant, news["checkpoint"])
    assert later["checkpoint"] != news["checkpoint"]


async def test_a_view_bound_idle_poll_uses_the_heard_seq_too(tenant: Tenant) -> None:
    latest = tenant.state.service.latest
    latest.enable()
    await tenant.gql(SYNC, {"input": {"users": {"data": [{"alias": "g", "name": "G"}]}}})
    binding = check_binding(tenant.state.registry, "guardian", {"user": "g"})
    async with write_transaction(tenant.state.engine) as conn:
        key = (await create_key(conn, tenant_id=tenant.id, scopes=("sync:read",), view=binding)).key
    first = await poll(tenant, None, key)
    await poll(tenant, first["checkpoint"], key)
    with statements(tenant.state) as seen:
        idle = await poll(tenant, first["checkpoint"], key)
    assert idle["checkpoint"] == first["checkpoint"]
    assert [s for s in seen if "api_keys" not in s] == []


async def test_a_reconnect_forgets_what_was_heard(tenant: Tenant) -> None:
    latest = tenant.state.service.latest
    latest.enable()
    first = await poll(tenant, None)
    await poll(tenant, first["checkpoint"])
    assert latest.is_latest(tenant.id, int(first["checkpoint"]))
    tenant.state._on_reconnect()
    assert not latest.is_latest(tenant.id, int(first["checkpoint"]))
