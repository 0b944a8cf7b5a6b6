"""Browsing through a view over HTTP (DESIGN §8 "Reading through a view"): the list and get
queries and nested related objects of a view-bound key show only what its view shows; the
raw reference keys stay as stored; unbound keys read as before, at the same cost."""

from __future__ import annotations

from typing import Any

from tests.api.live import WsClient, live_server
from tests.conftest import Tenant, statements

SYNC = "mutation($input: SyncInput!) { sync(input: $input) { totals { failed } } }"

IDS = """{
  users(first: 100) { nodes { id alias } }
  members(first: 100) { nodes { id alias } }
  classrooms(first: 100) { nodes { id alias } }
}"""

LIST = """
query($first: Int, $after: String, $deleted: Boolean) {
  users(first: $first, after: $after, includeDeleted: $deleted) {
    nodes { alias } endCursor hasNextPage totalCount
  }
  members(first: $first, after: $after, includeDeleted: $deleted) {
    nodes { alias } endCursor hasNextPage totalCount
  }
  classrooms(first: $first, after: $after, includeDeleted: $deleted) {
    nodes { alias } endCursor hasNextPage totalCount
  }
}"""

PLURALS = ("users", "members", "classrooms")


def items(*records: dict[str, Any]) -> dict[str, Any]:
    return {"data": list(records)}


async def sync(tenant: Tenant, payload: dict[str, Any]) -> None:
    body = await tenant.gql(SYNC, {"input": payload})
    assert body["data"]["sync"]["totals"]["failed"] == 0, body


async def school(tenant: Tenant) -> dict[str, str]:
    """Guardians g1 and g2, teachers t1 and t2; pupils m1 (of g1), m2 (of g1 and g2), m3 (of
    g2), m4 (of nobody); t1 teaches c1 (m1) and c2 (m3), t2 teaches c3 (m4). Returns the
    ids by alias."""
    await sync(
        tenant,
        {
            "users": items(*({"alias": a, "name": a} for a in ("g1", "g2", "t1", "t2"))),
            "members": items(
                {"alias": "m1", "name": "Ann", "users": ["g1"]},
                {"alias": "m2", "name": "Bob", "users": ["g1", "g2"]},
                {"alias": "m3", "name": "Cid", "users": ["g2"]},
                {"alias": "m4", "name": "Dan", "users": []},
            ),
            "classrooms": items(
                {"alias": "c1", "name": "1A", "members": ["m1"], "admins": ["t1"]},
                {"alias": "c2", "name": "2B", "members": ["m3"], "admins": ["t1"]},
                {"alias": "c3", "name": "3C", "members": ["m4"], "admins": ["t2"]},
            ),
        },
    )
    data = (await tenant.gql(IDS))["data"]
    return {n["alias"]: n["id"] for p in PLURALS for n in data[p]["nodes"]}


async def listed(tenant: Tenant, key: str, **variables: Any) -> dict[str, Any]:
    data: dict[str, Any] = (await tenant.gql(LIST, variables, key=key))["data"]
    return data


def aliases(connection: dict[str, Any]) -> list[str]:
    return [n["alias"] for n in connection["nodes"]]


def reads(executed: list[str]) -> list[str]:
    """The statements that read records, without transaction control (drivers differ in it)
    and the credential's lookup."""
    control = ("BEGIN", "COMMIT", "ROLLBACK")
    return [s for s in executed if s.split()[0].upper() not in control and "api_keys" not in s]


async def test_a_guardian_lists_only_itself_its_children_and_their_classrooms(
    tenant: Tenant,
) -> None:
    await school(tenant)
    key, _ = await tenant.view_key("guardian", user="g1", scopes=("sync:read",))
    data = await listed(tenant, key, first=10)
    assert sorted(aliases(data["users"])) == ["g1"]
    assert sorted(aliases(data["members"])) == ["m1", "m2"]
    assert sorted(aliases(data["classrooms"])) == ["c1"]
    assert [data[p]["totalCount"] for p in PLURALS] == [1, 2, 1]
    assert not any(data[p]["hasNextPage"] for p in PLURALS)


async def test_a_teacher_lists_the_pupils_of_their_classrooms(tenant: Tenant) -> None:
    await school(tenant)
    key, _ = await tenant.view_key("teacher", user="t1")
    data = await listed(tenant, key, first=10)
    assert sorted(aliases(data["classrooms"])) == ["c1", "c2"]
    assert sorted(aliases(data["members"])) == ["m1", "m3"]
    # the teacher, and the guardians of their pupils
    assert sorted(aliases(data["users"])) == ["g1", "g2", "t1"]
    assert [data[p]["totalCount"] for p in PLURALS] == [3, 2, 2]


async def test_pages_of_one_walk_only_the_visible_records(tenant: Tenant) -> None:
    await school(tenant)
    key, _ = await tenant.view_key("teacher", user="t2")  # c3, m4, t2 of a larger tenant
    query = """query($after: String) { members(first: 1, after: $after) {
      nodes { alias } endCursor hasNextPage totalCount } }"""
    key_g, _ = await tenant.view_key("guardian", user="g2")
    for credential, expected in ((key, ["m4"]), (key_g, ["m2", "m3"])):
        seen: list[str] = []
        after = None
        while True:
            body = await tenant.gql(query, {"after": after}, key=credential)
            page = body["data"]["members"]
            seen += aliases(page)
            assert page["totalCount"] == len(expected)
            after = page["endCursor"]
            if not page["hasNextPage"]:
                break
        assert sorted(seen) == expected


async def test_a_get_of_an_invisible_record_is_null_by_id_and_by_alias(tenant: Tenant) -> None:
    ids = await school(tenant)
    key, _ = await tenant.view_key("guardian", user="g1")
    query = """query($id: ID, $alias: String) {
      byId: member(id: $id) { alias } byAlias: member(alias: $alias) { alias }
      user(alias: "g2") { alias } classroom(alias: "c2") { alias } }"""
    hidden = (await tenant.gql(query, {"id": ids["m3"], "alias": "m3"}, key=key))["data"]
    assert hidden == {"byId": None, "byAlias": None, "user": None, "classroom": None}
    shown = (await tenant.gql(query, {"id": ids["m2"], "alias": "m1"}, key=key))["data"]
    assert shown["byId"] == {"alias": "m2"}
    assert shown["byAlias"] == {"alias": "m1"}
    everything = (await tenant.gql(query, {"id": ids["m3"], "alias": "m3"}))["data"]
    assert everything["byId"] == {"alias": "m3"}  # the unbound key sees the whole tenant
    assert everything["user"] == {"alias": "g2"}


async def test_nested_objects_leave_out_what_the_view_hides_but_keys_stay(
    tenant: Tenant,
) -> None:
    ids = await school(tenant)
    key, _ = await tenant.view_key("guardian", user="g1")
    query = """{
      member(alias: "m2") { userIds users { alias } }
      classrooms(first: 10) {
        nodes { adminIds admins { alias } members { alias users { alias } } }
      }
    }"""
    data = (await tenant.gql(query, key=key))["data"]
    # m2 belongs to g1 and g2: g2 is another guardian, never shown to g1, but its key stays
    assert data["member"]["users"] == [{"alias": "g1"}]
    assert sorted(data["member"]["userIds"]) == sorted([ids["g1"], ids["g2"]])
    [c1] = data["classrooms"]["nodes"]
    assert c1["admins"] == []  # the teacher is not in the guardian's view
    assert c1["adminIds"] == [ids["t1"]]
    assert c1["members"] == [{"alias": "m1", "users": [{"alias": "g1"}]}]
    whole = (await tenant.gql(query))["data"]
    assert sorted(u["alias"] for u in whole["member"]["users"]) == ["g1", "g2"]


async def test_include_deleted_shows_no_tombstone_through_a_view(tenant: Tenant) -> None:
    ids = await school(tenant)
    key, _ = await tenant.view_key("guardian", user="g1")
    push = (
        "mutation($id: ID!) { pushChanges(input: {members: {deleted: [{id: $id}]}}) { applied } }"
    )
    assert (await tenant.gql(push, {"id": ids["m1"]}))["data"]["pushChanges"]["applied"] == 1
    data = await listed(tenant, key, first=10, deleted=True)
    assert aliases(data["members"]) == ["m2"]
    assert data["members"]["totalCount"] == 1
    assert aliases(data["classrooms"]) == []  # c1 went with m1
    whole = await listed(tenant, tenant.key, first=10, deleted=True)
    assert sorted(aliases(whole["members"])) == ["m1", "m2", "m3", "m4"]


async def test_a_websocket_operation_does_not_get_what_moved_out_since_an_earlier_one(
    tenant: Tenant,
) -> None:
    await school(tenant)
    # t2 is visible to the teacher t1 while m1 (a pupil of c1) names t2 as a guardian
    await sync(tenant, {"members": items({"alias": "m1", "users": ["g1", "t2"]})})
    await sync(tenant, {"classrooms": items({"alias": "c1", "admins": ["t1", "t2"]})})
    key, _ = await tenant.view_key("teacher", user="t1")
    query = '{ classroom(alias: "c1") { admins { alias } } }'
    async with (
        live_server(tenant.state) as host,
        WsClient.connect(host, {"authorization": f"Bearer {key}", "tenant": tenant.id}) as ws,
    ):
        await ws.subscribe(query)  # a query operation: one result on the shared connection
        before = await ws.next_data()
        assert sorted(a["alias"] for a in before["classroom"]["admins"]) == ["t1", "t2"]
        await ws.receive()  # complete
        await sync(tenant, {"members": items({"alias": "m1", "users": ["g1"]})})  # t2 moves out
        await ws.subscribe(query)
        after = await ws.next_data()
    assert after["classroom"]["admins"] == [{"alias": "t1"}]


NESTED = "{ members(first: 100) { totalCount nodes { id userIds users { id } } } }"


async def family(tenant: Tenant, children: int) -> str:
    """A guardian of its own with ``children`` pupils; returns its alias."""
    guardian = f"g{children}"
    await sync(
        tenant,
        {
            "users": items({"alias": guardian, "name": guardian}),
            "members": items(
                *(
                    {"alias": f"{guardian}-{i}", "name": "p", "users": [guardian]}
                    for i in range(children)
                )
            ),
        },
    )
    return guardian


async def test_a_view_costs_the_same_statements_for_5_or_50_records(tenant: Tenant) -> None:
    cost: dict[int, int] = {}
    for children in (5, 50):
        key, _ = await tenant.view_key("guardian", user=await family(tenant, children))
        with statements(tenant.state) as executed:
            data = (await tenant.gql(NESTED, key=key))["data"]["members"]
        assert data["totalCount"] == len(data["nodes"]) == children
        assert all(len(n["users"]) == 1 for n in data["nodes"])
        cost[children] = len(reads(executed))
    # two evaluations of the view (the list, the related users), each a few statements
    # (on PostgreSQL one more: favour_index_scans), never one per record
    assert cost[5] == cost[50] <= 9, cost


async def test_an_unbound_key_reads_without_evaluating_a_view(tenant: Tenant) -> None:
    await family(tenant, 5)
    with statements(tenant.state) as executed:
        data = (await tenant.gql(NESTED))["data"]["members"]
    assert data["totalCount"] == 5
    # the page, its count, one batch of related users: nothing more than before views
    assert len(reads(executed)) == 3, executed
