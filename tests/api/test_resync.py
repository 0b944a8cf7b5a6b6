"""``mutation resync`` through HTTP, on both backends: named records and whole entities come
back to pullers as ``updated`` with their version unchanged, unknown ids are listed, rows
written behind the server's back are delivered, other tenants are out of reach, and the
operation needs ``sync:manage``."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from tests.api.test_push import Json, checkpoint, pull, push, sync
from tests.conftest import Tenant

RESYNC = (
    "mutation($type: Entity!, $ids: [ID!]) {"
    " resync(objectType: $type, objectIds: $ids) { checkpoint resynced notFound } }"
)
USERS = "users { inserted { id name version } updated { id name version } deleted }"


async def resync(
    t: Tenant, ids: list[str] | None, *, entity: str = "USER", key: str | None = None
) -> Json:
    body = await t.gql(RESYNC, {"type": entity, "ids": ids}, key=key)
    result: Json = body["data"]["resync"]
    return result


async def seed_users(t: Tenant, *names: str) -> list[str]:
    report = await sync(t, {"users": {"data": [{"name": n} for n in names]}})
    return list(report["users"]["ids"])


async def raw_insert(t: Tenant, table: str, **values: Any) -> None:
    """A row written to the database behind the server's back (server defaults fill in)."""
    columns = ", ".join(["tenant_id", *values])
    params = ", ".join(f":{c}" for c in ["tenant_id", *values])
    async with t.state.engine.begin() as conn:
        await conn.execute(
            sa.text(f"INSERT INTO {table} ({columns}) VALUES ({params})"),
            {"tenant_id": t.id, **values},
        )


async def test_resynced_records_come_back_as_updated_with_their_version(tenant: Tenant) -> None:
    first, second, third = await seed_users(tenant, "ann", "bob", "cid")
    await sync(tenant, {"users": {"data": [{"id": second, "name": "bob 2"}]}})
    base = await checkpoint(tenant)
    before = (await tenant.gql("{ changes { serverTime } }"))["data"]["changes"]["serverTime"]

    result = await resync(tenant, [second, first])
    assert (result["resynced"], result["notFound"]) == (2, [])
    assert int(result["checkpoint"]) == int(base) + 2
    page = await pull(tenant, base, USERS)
    assert page["checkpoint"] == result["checkpoint"]
    # in their previous seq order, version unchanged
    assert page["users"] == {
        "inserted": [],
        "updated": [
            {"id": first, "name": "ann", "version": 1},
            {"id": second, "name": "bob 2", "version": 2},
        ],
        "deleted": [],
    }
    # a snapshot still has every record once, as inserted
    snapshot = await pull(tenant, None, USERS)
    assert sorted(u["id"] for u in snapshot["users"]["inserted"]) == sorted([first, second, third])
    # a date-based puller sees them too
    body = await tenant.gql(
        "query($from: DateTime) { changes(fromDate: $from) {"
        " users { inserted { id } updated { id } } } }",
        {"from": before},
    )
    found = body["data"]["changes"]["users"]
    assert sorted(u["id"] for u in found["inserted"] + found["updated"]) == sorted([first, second])


async def test_unknown_and_malformed_ids_are_not_found(tenant: Tenant) -> None:
    [known] = await seed_users(tenant, "ann")
    base = await checkpoint(tenant)
    missing = str(uuid.uuid4())
    result = await resync(tenant, [missing, known, "not an id!", missing, known.upper()])
    assert result["resynced"] == 1
    # as given, in input order, once each
    assert result["notFound"] == [missing, "not an id!"]
    page = await pull(tenant, base, USERS)
    assert page["users"]["updated"] == [{"id": known, "name": "ann", "version": 1}]

    nothing = await resync(tenant, [missing])
    assert (nothing["resynced"], nothing["notFound"]) == (0, [missing])
    assert nothing["checkpoint"] == result["checkpoint"]
    empty = await resync(tenant, [])
    assert (empty["resynced"], empty["notFound"], empty["checkpoint"]) == (
        0,
        [],
        result["checkpoint"],
    )


async def test_without_ids_the_whole_entity_is_resynced(tenant: Tenant) -> None:
    ann, bob, cid = await seed_users(tenant, "ann", "bob", "cid")
    await push(tenant, {"users": {"deleted": [{"id": cid}]}})
    await sync(tenant, {"persons": {"data": [{"name": "not a user"}]}})
    base = await checkpoint(tenant)

    result = await resync(tenant, None)
    assert (result["resynced"], result["notFound"]) == (3, [])
    page = await pull(tenant, base, USERS + " persons { inserted { id } updated { id } }")
    assert page["users"]["updated"] == [
        {"id": ann, "name": "ann", "version": 1},
        {"id": bob, "name": "bob", "version": 1},
    ]
    # a tombstone is re-sent as what it is
    assert page["users"]["deleted"] == [cid]
    assert page["persons"] == {"inserted": [], "updated": []}

    empty = await resync(tenant, None, entity="CLASSROOM")
    assert (empty["resynced"], empty["checkpoint"]) == (0, result["checkpoint"])


async def test_a_row_written_behind_the_servers_back_is_delivered_after_resync(
    tenant: Tenant,
) -> None:
    [seeded] = await seed_users(tenant, "ann")
    base = await checkpoint(tenant)
    sneaked, other = str(uuid.uuid4()), str(uuid.uuid4())
    await raw_insert(tenant, "users", id=sneaked, name="sneaked in")
    await raw_insert(tenant, "users", id=other, name="also sneaked in")
    assert (await pull(tenant, base, USERS))["users"]["updated"] == []

    result = await resync(tenant, [sneaked])
    assert (result["resynced"], result["notFound"]) == (1, [])
    page = await pull(tenant, base, USERS)
    assert page["users"]["updated"] == [{"id": sneaked, "name": "sneaked in", "version": 1}]
    body = await tenant.gql(
        "query($id: ID) { user(id: $id) { id name version active createdAt updatedAt } }",
        {"id": sneaked},
    )
    assert body["data"]["user"]["name"] == "sneaked in"

    # the whole-entity resync picks up the other one
    again = await resync(tenant, None)
    assert again["resynced"] == 3
    page = await pull(tenant, result["checkpoint"], USERS)
    assert sorted(u["id"] for u in page["users"]["updated"]) == sorted([seeded, sneaked, other])
    # and a fresh client gets all three
    snapshot = await pull(tenant, None, USERS)
    assert sorted(u["id"] for u in snapshot["users"]["inserted"]) == sorted(
        [seeded, sneaked, other]
    )


async def test_another_tenants_ids_are_not_found(tenant: Tenant, other_tenant: Tenant) -> None:
    [theirs] = await seed_users(other_tenant, "theirs")
    their_checkpoint = await checkpoint(other_tenant)
    result = await resync(tenant, [theirs])
    assert (result["resynced"], result["notFound"]) == (0, [theirs])
    whole = await resync(tenant, None)
    assert whole["resynced"] == 0
    assert await checkpoint(other_tenant) == their_checkpoint
    page = await pull(other_tenant, None, USERS)
    assert page["users"]["inserted"] == [{"id": theirs, "name": "theirs", "version": 1}]


async def test_resync_needs_manage_scope(tenant: Tenant) -> None:
    [ann] = await seed_users(tenant, "ann")
    base = await checkpoint(tenant)
    for scope in ("sync:read", "sync:write"):
        key = await tenant.new_key(scope)
        body = await tenant.gql(RESYNC, {"type": "USER", "ids": [ann]}, key=key, expect_errors=True)
        assert body["data"] is None
        assert [e["extensions"]["code"] for e in body["errors"]] == ["FORBIDDEN"]
    assert await checkpoint(tenant) == base
    manager = await tenant.new_key("sync:manage")
    assert (await resync(tenant, [ann], key=manager))["resynced"] == 1
