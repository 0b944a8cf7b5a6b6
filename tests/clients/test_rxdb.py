"""RxDB 17 replicateGraphQL with the README's recipe, examples/clients/rxdb.mjs (memory
storage, pull from a checkpoint, push, live stream over graphql-ws): two clients converge
through a live server."""

from __future__ import annotations

from typing import Any

import pytest

from tests.clients.conftest import Driver
from tests.conftest import Tenant

SYNC = "mutation($input: SyncInput!) { sync(input: $input) { checkpoint users { ids } } }"
PUSH = "mutation($input: PushInput!) { pushChanges(input: $input) { applied } }"
USERS = "{ users(first: 100) { nodes { id name email version } } }"


@pytest.fixture
async def rxdb(node: str, host: str, tenant: Tenant, drivers: list[Driver]) -> Driver:
    driver = await Driver.start(node, "rxdb_driver.mjs", host, tenant.key, tenant.id)
    drivers.append(driver)
    return driver


def doc(id_: str, name: str, version: int) -> dict[str, Any]:
    return {"id": id_, "name": name, "email": None, "version": version}


async def converged(rxdb: Driver, expect: list[dict[str, Any]]) -> None:
    for db in ("a", "b"):
        state = await rxdb.call("waitFor", db=db, expect=expect)
        assert state["docs"] == expect, (db, state)


async def test_two_clients_converge_through_the_server(rxdb: Driver, tenant: Tenant) -> None:
    made = await tenant.gql(SYNC, {"input": {"users": {"data": [{"name": "Server"}]}}})
    (server_id,) = made["data"]["sync"]["users"]["ids"]
    await converged(rxdb, [doc(server_id, "Server", 1)])

    await rxdb.call("insert", db="a", id="rx-a-1", name="From A")
    await rxdb.call("insert", db="b", id="rx_b_1", name="From B")
    await rxdb.call("inSync", db="a")
    await rxdb.call("inSync", db="b")
    # each client's own create comes back from the server with its version
    expect = sorted(
        [doc(server_id, "Server", 1), doc("rx-a-1", "From A", 1), doc("rx_b_1", "From B", 1)],
        key=lambda d: d["id"],
    )
    await converged(rxdb, expect)

    await rxdb.call("patch", db="b", id="rx-a-1", name="Edited on B")
    await rxdb.call("remove", db="a", id=server_id)
    await tenant.gql(SYNC, {"input": {"users": {"data": [{"id": "rx_b_1", "name": "On server"}]}}})
    expect = [doc("rx-a-1", "Edited on B", 2), doc("rx_b_1", "On server", 2)]
    await converged(rxdb, expect)
    nodes = (await tenant.gql(USERS))["data"]["users"]["nodes"]
    assert sorted(nodes, key=lambda n: n["id"]) == expect
    for db in ("a", "b"):
        assert (await rxdb.call("dump", db=db))["errors"] == []


async def test_a_concurrent_edit_resolves_to_the_server_record(
    rxdb: Driver, tenant: Tenant
) -> None:
    made = await tenant.gql(SYNC, {"input": {"users": {"data": [{"name": "Base"}]}}})
    (id_,) = made["data"]["sync"]["users"]["ids"]
    await converged(rxdb, [doc(id_, "Base", 1)])
    # A edits offline while the server changes the record: A's edit is based on version 1,
    # a conflict that RxDB's default handler resolves to the server's record, on both clients
    await rxdb.call("pause", db="a")
    await tenant.gql(SYNC, {"input": {"users": {"data": [{"id": id_, "name": "Server"}]}}})
    await rxdb.call("patch", db="a", id=id_, name="Client")
    await rxdb.call("resume", db="a")
    await converged(rxdb, [doc(id_, "Server", 2)])
    nodes = (await tenant.gql(USERS))["data"]["users"]["nodes"]
    assert nodes == [doc(id_, "Server", 2)]
