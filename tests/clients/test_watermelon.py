"""WatermelonDB 0.28's own synchronize() (LokiJS in Node) with the README's recipe,
examples/clients/watermelon.mjs, against a live server: the scenarios of issue #17."""

from __future__ import annotations

from typing import Any

import pytest

from tests.clients.conftest import Driver
from tests.conftest import Tenant

SYNC = "mutation($input: SyncInput!) { sync(input: $input) { checkpoint users { ids } } }"
PUSH = "mutation($input: PushInput!) { pushChanges(input: $input) { applied conflicts { id } } }"
USERS = "{ users(first: 500) { nodes { id name email version } } }"


@pytest.fixture
async def device(node: str, host: str, tenant: Tenant, drivers: list[Driver]) -> Driver:
    driver = await Driver.start(node, "watermelon_driver.mjs", f"http://{host}/graphql", tenant.key)
    drivers.append(driver)
    return driver


async def server_users(tenant: Tenant) -> dict[str, dict[str, Any]]:
    nodes = (await tenant.gql(USERS))["data"]["users"]["nodes"]
    return {n["id"]: n for n in nodes}


async def server_create(tenant: Tenant, *names: str) -> list[str]:
    data = [{"name": name} for name in names]
    result = await tenant.gql(SYNC, {"input": {"users": {"data": data}}})
    return list(result["data"]["sync"]["users"]["ids"])


async def server_update(tenant: Tenant, id_: str, **fields: Any) -> None:
    await tenant.gql(SYNC, {"input": {"users": {"data": [{"id": id_, **fields}]}}})


def pulled(sync: dict[str, Any]) -> list[str]:
    """Every id the sync's pull pages carried, in any list."""
    ids: list[str] = []
    for page in sync["pulls"]:
        users = page["users"]
        ids += [u["id"] for u in users["inserted"] + users["updated"]] + users["deleted"]
    return ids


async def settled(device: Driver) -> dict[str, Any]:
    """The device's state, asserting WatermelonDB logged no sync anomaly."""
    state = await device.call("dump")
    assert state["warnings"] == [], state["warnings"]
    return state


async def test_default_ids_and_a_caught_up_push_bring_nothing_back(
    device: Driver, tenant: Tenant
) -> None:
    created = await device.call("create", fields={"name": "Ada", "email": "ada@example.org"})
    first = await device.call("sync")
    report = first["reports"][0]
    assert report["caughtUp"] is True
    assert report["applied"] == 1

    stored = await server_users(tenant)
    assert len(created["id"]) == 16
    assert stored[created["id"]]["name"] == "Ada"  # WatermelonDB's id kept exactly as given
    second = await device.call("sync")
    assert pulled(second) == []  # its own create does not come back
    state = await settled(device)
    assert state["records"] == [
        {"id": created["id"], "name": "Ada", "email": "ada@example.org", "status": "synced"}
    ]
    assert state["checkpoint"] == report["checkpoint"]


async def test_a_push_behind_another_write_gets_its_own_create_back(
    device: Driver, tenant: Tenant
) -> None:
    created = (await device.call("create", fields={"name": "Mine"}))["id"]
    other = {"query": SYNC, "variables": {"input": {"users": {"data": [{"name": "Other"}]}}}}
    first = await device.call("sync", serverWriteBeforePush=other)
    assert first["reports"][0]["caughtUp"] is False

    second = await device.call("sync")
    echoed = [u["id"] for u in second["pulls"][0]["users"]["inserted"]]
    assert created in echoed  # its own create comes back, as the README says
    state = await device.call("dump")
    assert state["warnings"] == [
        f"Diagnostic error: [Sync] Server wants client to create record users#{created}, but "
        "it already exists locally. This may suggest last sync partially executed, and then "
        "failed; or it could be a serious bug. Will update existing record instead."
    ]
    assert {r["name"] for r in state["records"]} == {"Mine", "Other"}
    assert {r["status"] for r in state["records"]} == {"synced"}


async def test_offline_create_and_delete_syncs_and_keeps_syncing(
    device: Driver, tenant: Tenant
) -> None:
    kept = (await device.call("create", fields={"name": "Kept"}))["id"]
    gone = (await device.call("create", fields={"name": "Gone"}))["id"]
    await device.call("delete", id=gone)

    first = await device.call("sync")
    assert first["pushes"][0]["users"]["deleted"] == [{"id": gone}]
    assert first["reports"][0]["applied"] == 1
    assert set(await server_users(tenant)) == {kept}
    await device.call("sync")  # the device is not stuck
    state = await settled(device)
    assert [r["id"] for r in state["records"]] == [kept]
    assert state["pendingDeletes"] == []


async def test_a_create_edited_while_its_push_is_in_flight(device: Driver, tenant: Tenant) -> None:
    id_ = (await device.call("create", fields={"name": "Draft"}))["id"]
    await device.call("sync", editDuringPush={"id": id_, "name": "Final"})
    state = await device.call("dump")
    assert state["records"][0]["status"] == "created"  # WatermelonDB re-sends it as created

    again = await device.call("sync")
    assert again["pushes"][0]["users"]["inserted"][0]["data"]["name"] == "Final"
    assert again["reports"][0]["applied"] == 1
    stored = (await server_users(tenant))[id_]
    assert (stored["name"], stored["version"]) == ("Final", 2)
    state = await settled(device)
    assert state["records"][0] | {"email": None} == {
        "id": id_,
        "name": "Final",
        "email": None,
        "status": "synced",
    }


async def test_local_and_server_edits_of_the_same_record_merge(
    device: Driver, tenant: Tenant
) -> None:
    (id_,) = await server_create(tenant, "Old")
    await device.call("sync")
    await device.call("update", id=id_, name="Local")
    await server_update(tenant, id_, name="Server", email="server@example.org")

    await device.call("sync")
    # WatermelonDB keeps the column changed on the device, takes the server's other columns
    stored = (await server_users(tenant))[id_]
    assert (stored["name"], stored["email"]) == ("Local", "server@example.org")
    state = await settled(device)
    assert state["records"] == [
        {"id": id_, "name": "Local", "email": "server@example.org", "status": "synced"}
    ]


async def test_a_push_refused_by_a_conflict_is_retried_after_the_next_pull(
    device: Driver, tenant: Tenant
) -> None:
    (id_,) = await server_create(tenant, "Old")
    await device.call("sync")
    await device.call("update", id=id_, name="Local")
    racing = {
        "query": SYNC,
        "variables": {"input": {"users": {"data": [{"id": id_, "email": "server@example.org"}]}}},
    }
    refused = await device.ask("sync", serverWriteBeforePush=racing)
    assert refused["ok"] is False
    assert "CHANGED_ON_SERVER" in refused["error"]  # atomic: nothing of the push applied
    assert (await server_users(tenant))[id_]["name"] == "Old"

    await device.call("sync")
    stored = (await server_users(tenant))[id_]
    assert (stored["name"], stored["email"]) == ("Local", "server@example.org")
    state = await settled(device)
    assert state["records"] == [
        {"id": id_, "name": "Local", "email": "server@example.org", "status": "synced"}
    ]


async def test_a_server_delete_removes_the_record(device: Driver, tenant: Tenant) -> None:
    ids = await server_create(tenant, "Stays", "Goes")
    await device.call("sync")
    await tenant.gql(PUSH, {"input": {"users": {"deleted": [{"id": ids[1]}]}}})
    sync = await device.call("sync")
    assert sync["pulls"][0]["users"]["deleted"] == [ids[1]]
    state = await settled(device)
    assert [r["id"] for r in state["records"]] == [ids[0]]


async def test_an_idle_sync_changes_nothing(device: Driver, tenant: Tenant) -> None:
    (id_,) = await server_create(tenant, "Still")
    await device.call("sync")
    before = await settled(device)
    stored = await server_users(tenant)

    idle = await device.call("sync")
    assert pulled(idle) == []
    assert idle["pushes"] == []
    assert await settled(device) == before
    assert await server_users(tenant) == stored
    assert stored[id_]["version"] == 1


async def test_two_hundred_records_paged_with_a_small_limit(device: Driver, tenant: Tenant) -> None:
    ids = await server_create(tenant, *(f"u{i:03}" for i in range(200)))
    sync = await device.call("sync", limit=15)
    assert len(sync["pulls"]) == 14  # ceil(200 / 15) pages, each followed while hasMore
    state = await settled(device)
    assert sorted(r["id"] for r in state["records"]) == sorted(ids)
    assert {r["status"] for r in state["records"]} == {"synced"}
    assert state["checkpoint"] == sync["pulls"][-1]["checkpoint"]


async def make_late_update(tenant: Tenant) -> tuple[str, str]:
    """R created, then A, then R updated: in pages of one, A comes first and R after it,
    labelled `updated` (created before that page's `since`)."""
    (late,) = await server_create(tenant, "R")
    (early,) = await server_create(tenant, "A")
    await server_update(tenant, late, name="R2")
    return late, early


async def test_a_paged_first_sync_creates_every_record_without_warnings(
    device: Driver, tenant: Tenant
) -> None:
    late, early = await make_late_update(tenant)
    sync = await device.call("sync", limit=1)
    assert [u["id"] for u in sync["pulls"][1]["users"]["updated"]] == [late]
    state = await settled(device)  # the recipe files a first sync's records under created
    assert {r["id"]: r["name"] for r in state["records"]} == {late: "R2", early: "A"}


async def test_a_later_paged_sync_may_update_a_record_the_device_never_had(
    device: Driver, tenant: Tenant
) -> None:
    await device.call("sync")  # an empty tenant: the checkpoint is "0", no longer a first sync
    late, early = await make_late_update(tenant)
    await device.call("sync", limit=1)
    state = await device.call("dump")
    # what the README says WatermelonDB logs then; the record is created all the same
    assert state["warnings"] == [
        "Diagnostic error: [Sync] Server wants client to update record "
        f"users#{late}, but it doesn't exist "
        "locally. This could be a serious bug. Will create record instead. If this was "
        "intentional, please check the flag sendCreatedAsUpdated in "
        "https://watermelondb.dev/docs/Sync/Frontend#additional-synchronize-flags"
    ]
    assert {r["id"]: r["name"] for r in state["records"]} == {late: "R2", early: "A"}
    assert {r["status"] for r in state["records"]} == {"synced"}
