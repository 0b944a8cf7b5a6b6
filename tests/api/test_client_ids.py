"""Client ids: any string of 1 to 36 characters from ``[A-Za-z0-9_-]`` (WatermelonDB's
16-character ids, RxDB's string keys), kept exactly as given; a UUID is lower-cased."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import Tenant

Json = dict[str, Any]
WATERMELON = "aBcD3fGh1jKlMn0p"  # WatermelonDB's default: 16 random alphanumerics
RXDB = "user_17-b"


async def sync(t: Tenant, payload: Json) -> Json:
    selection = " ".join(f"{p} {{ ids errors {{ index field code message }} }}" for p in payload)
    body = await t.gql(
        f"mutation($input: SyncInput!) {{ sync(input: $input) {{ {selection} }} }}",
        {"input": payload},
    )
    report: Json = body["data"]["sync"]
    return report


async def user(t: Tenant, id_: str) -> Json | None:
    body = await t.gql("query($id: ID) { user(id: $id) { id name version } }", {"id": id_})
    found: Json | None = body["data"]["user"]
    return found


async def test_client_ids_are_kept_exactly_and_uuids_lower_cased(tenant: Tenant) -> None:
    upper = str(uuid.uuid4()).upper()
    report = await sync(
        tenant,
        {
            "users": {
                "data": [
                    {"id": WATERMELON, "name": "watermelon"},
                    {"id": RXDB, "name": "rxdb"},
                    {"id": upper, "name": "uuid"},
                    {"id": "x" * 36, "name": "longest"},
                ]
            }
        },
    )
    assert report["users"] == {
        "ids": [WATERMELON, RXDB, upper.lower(), "x" * 36],
        "errors": [],
    }
    assert await user(tenant, WATERMELON) == {"id": WATERMELON, "name": "watermelon", "version": 1}
    assert await user(tenant, WATERMELON.lower()) is None  # not a UUID: case matters
    assert (await user(tenant, upper) or {})["id"] == upper.lower()
    body = await tenant.gql("{ changes { users { inserted { id } } } }")
    ids = {u["id"] for u in body["data"]["changes"]["users"]["inserted"]}
    assert ids == {WATERMELON, RXDB, upper.lower(), "x" * 36}


@pytest.mark.parametrize(
    "bad",
    ["x" * 37, "has space", "dot.ted", "ümlaut", "", "slash/ed"],
    ids=["37 characters", "space", "dot", "non-ASCII", "empty", "slash"],
)
async def test_other_ids_are_item_errors_and_the_rest_applies(tenant: Tenant, bad: str) -> None:
    report = await sync(
        tenant, {"users": {"data": [{"id": bad, "name": "bad"}, {"id": RXDB, "name": "ok"}]}}
    )
    [error] = report["users"]["errors"]
    assert (error["index"], error["field"], error["code"]) == (0, "id", "UNPROCESSABLE")
    assert report["users"]["ids"] == [None, RXDB]
    body = await tenant.gql(
        "query($id: ID) { user(id: $id) { id } }", {"id": bad}, expect_errors=True
    )
    assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_references_and_pushes_take_client_ids(tenant: Tenant) -> None:
    await sync(tenant, {"users": {"data": [{"id": WATERMELON, "name": "guardian"}]}})
    report = await sync(
        tenant, {"members": {"data": [{"id": RXDB, "name": "child", "users": [WATERMELON]}]}}
    )
    assert report["members"]["errors"] == []
    body = await tenant.gql(
        "query($id: ID) { member(id: $id) { userIds users { name } } }", {"id": RXDB}
    )
    assert body["data"]["member"] == {"userIds": [WATERMELON], "users": [{"name": "guardian"}]}

    push = (
        "mutation($input: PushInput!) { pushChanges(input: $input) { applied"
        " conflicts { id reason } errors { field code } } }"
    )
    created = "wmNewRecord00001"
    body = await tenant.gql(
        push,
        {
            "input": {
                "users": {
                    "inserted": [{"id": created, "data": {"name": "offline"}}],
                    "updated": [{"id": WATERMELON, "data": {"name": "renamed"}}],
                    "deleted": [{"id": "neverSeenHere001"}],
                }
            }
        },
    )
    assert body["data"]["pushChanges"] == {"applied": 2, "conflicts": [], "errors": []}
    assert (await user(tenant, created) or {})["name"] == "offline"
    assert (await user(tenant, WATERMELON) or {})["name"] == "renamed"


async def test_the_same_client_id_in_two_tenants_names_two_records(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    await sync(tenant, {"users": {"data": [{"id": WATERMELON, "name": "mine"}]}})
    await sync(other_tenant, {"users": {"data": [{"id": WATERMELON, "name": "theirs"}]}})
    assert (await user(tenant, WATERMELON) or {})["name"] == "mine"
    assert (await user(other_tenant, WATERMELON) or {})["name"] == "theirs"
