"""Apollo Client 4 built by the README's recipe, examples/clients/apollo.mjs (HttpLink,
GraphQLWsLink, InMemoryCache keyed by id), against a live server."""

from __future__ import annotations

import pytest

from tests.clients.conftest import Driver
from tests.conftest import Tenant

SYNC = "mutation($input: SyncInput!) { sync(input: $input) { checkpoint users { ids } } }"


@pytest.fixture
async def apollo(node: str, host: str, tenant: Tenant, drivers: list[Driver]) -> Driver:
    driver = await Driver.start(node, "apollo_driver.mjs", host, tenant.key, tenant.id)
    drivers.append(driver)
    return driver


async def test_list_then_get_by_id_is_served_from_the_cache(apollo: Driver, tenant: Tenant) -> None:
    made = await tenant.gql(SYNC, {"input": {"users": {"data": [{"name": "A"}, {"name": "B"}]}}})
    ids = made["data"]["sync"]["users"]["ids"]
    listed = await apollo.call("list")
    users = listed["data"]["users"]
    assert users["totalCount"] == 2
    assert sorted(u["id"] for u in users["nodes"]) == sorted(ids)

    got = await apollo.call("get", id=ids[1])
    assert got["data"]["user"] == {
        "__typename": "User",
        "id": ids[1],
        "name": "B",
        "email": None,
        "version": 1,
    }
    assert got["requests"] == listed["requests"]  # no request: User:<id> was in the cache


async def test_a_mutation_and_the_subscription_keep_the_cache_current(
    apollo: Driver, tenant: Tenant
) -> None:
    made = await tenant.gql(SYNC, {"input": {"users": {"data": [{"name": "Old"}]}}})
    (id_,) = made["data"]["sync"]["users"]["ids"]
    await apollo.call("get", id=id_)
    await apollo.call("subscribe", since=made["data"]["sync"]["checkpoint"])
    first = (await apollo.call("next"))["changes"]
    assert first["hasMore"] is False  # current at once

    renamed = await apollo.call("rename", id=id_, name="New")
    assert renamed["data"]["sync"]["users"]["updated"] == 1
    live = (await apollo.call("next"))["changes"]
    assert [u["name"] for u in live["users"]["updated"]] == ["New"]
    assert live["checkpoint"] == renamed["data"]["sync"]["checkpoint"]
    # the emission's User landed on the cached User:<id>, so the get query shows it
    cached = (await apollo.call("cached", id=id_))["user"]
    assert (cached["name"], cached["version"]) == ("New", 2)


async def test_a_bad_key_surfaces_the_error_code(apollo: Driver) -> None:
    """Apollo asks for application/graphql-response+json: the 401 then carries the GraphQL
    body Apollo reads, and ``extensions.code`` reaches the app (a bare 401 otherwise)."""
    answer = await apollo.call("badKey")
    assert answer["error"] == {"kind": "graphql", "code": "UNAUTHENTICATED"}
