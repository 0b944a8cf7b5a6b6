"""The Python recipe, examples/clients/gql_client.py, with the real `gql` client (HTTPX and
websockets transports) against a live server."""

from __future__ import annotations

import asyncio
import importlib.util
from types import ModuleType

import pytest

from tests.clients.conftest import RECIPES
from tests.conftest import Tenant

SYNC = "mutation($input: SyncInput!) { sync(input: $input) { checkpoint users { ids } } }"


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    """The recipe file the README quotes, loaded as it is."""
    spec = importlib.util.spec_from_file_location("gql_client", RECIPES / "gql_client.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_pull_pages_and_push_without_echoes(
    recipe: ModuleType, host: str, tenant: Tenant
) -> None:
    data = [{"name": f"u{i}"} for i in range(5)]
    made = await tenant.gql(SYNC, {"input": {"users": {"data": data}}})
    ids = made["data"]["sync"]["users"]["ids"]
    async with recipe.http_client(f"http://{host}/graphql", tenant.key) as session:
        pages, since = await recipe.pull(session, None, limit=2)
        assert [len(p["users"]["inserted"]) for p in pages] == [2, 2, 1]
        assert sorted(u["id"] for p in pages for u in p["users"]["inserted"]) == sorted(ids)

        created = {"id": "device_1-Ab", "data": {"name": "From gql"}}
        report = await recipe.push(session, since, {"inserted": [created]})
        assert report["applied"] == 1
        assert report["caughtUp"] is True
        pages, _ = await recipe.pull(session, report["checkpoint"])
        assert pages[0]["users"] == {"inserted": [], "updated": [], "deleted": []}


async def test_a_stale_push_reports_the_server_record(
    recipe: ModuleType, host: str, tenant: Tenant
) -> None:
    made = await tenant.gql(SYNC, {"input": {"users": {"data": [{"name": "Old"}]}}})
    (id_,) = made["data"]["sync"]["users"]["ids"]
    stale = made["data"]["sync"]["checkpoint"]
    await tenant.gql(SYNC, {"input": {"users": {"data": [{"id": id_, "name": "Server"}]}}})
    async with recipe.http_client(f"http://{host}/graphql", tenant.key) as session:
        change = {"id": id_, "data": {"name": "Mine"}}
        report = await recipe.push(session, stale, {"updated": [change]})
    assert report["applied"] == 0
    assert report["caughtUp"] is False
    (conflict,) = report["conflicts"]
    assert conflict["reason"] == "CHANGED_ON_SERVER"
    assert conflict["serverRecord"]["name"] == "Server"


async def test_follow_catches_up_then_receives_each_commit(
    recipe: ModuleType, host: str, tenant: Tenant
) -> None:
    made = await tenant.gql(SYNC, {"input": {"users": {"data": [{"name": "Before"}]}}})
    emissions = recipe.follow(f"ws://{host}/graphql", tenant.key, tenant.id, None)
    try:
        first = await asyncio.wait_for(anext(emissions), 20)
        assert [u["name"] for u in first["users"]["inserted"]] == ["Before"]
        assert first["checkpoint"] == made["data"]["sync"]["checkpoint"]
        async with recipe.http_client(f"http://{host}/graphql", tenant.key) as session:
            created = {"id": "live-1", "data": {"name": "Live"}}
            report = await recipe.push(session, first["checkpoint"], {"inserted": [created]})
        live = await asyncio.wait_for(anext(emissions), 20)
    finally:
        await emissions.aclose()
    assert live["users"]["inserted"] == [
        {"id": "live-1", "name": "Live", "email": None, "version": 1}
    ]
    assert live["checkpoint"] == report["checkpoint"]
