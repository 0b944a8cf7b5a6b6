"""Views through HTTP (DESIGN §8): what a view-bound key pulls, moving in and out, the
digest, and what unbound credentials see of the new fields."""

from __future__ import annotations

import hashlib
from typing import Any

from app.db import write_transaction
from app.engine.tenants import set_key_view
from app.engine.views.spec import check_binding
from tests.conftest import Tenant

SYNC = """
mutation($input: SyncInput!) { sync(input: $input) {
  totals { failed } users { ids } members { ids } classrooms { ids }
}}"""

CHANGES = """
query($since: String, $limit: Int) {
  changes(since: $since, limit: $limit) {
    checkpoint hasMore fullSyncRequired fullSyncReason
    users { inserted { id version } updated { id version } deleted }
    members { inserted { id version } updated { id version } deleted }
    classrooms { inserted { id version } updated { id version } deleted }
  }
}"""

DIGEST = """
query($since: String) {
  changes(since: $since) {
    checkpoint hasMore digest { entity count checksum }
    users { deleted } members { deleted } classrooms { deleted }
  }
}"""

PLURALS = ("users", "members", "classrooms")


async def sync(tenant: Tenant, payload: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    body = await tenant.gql(SYNC, {"input": payload}, key=key)
    report: dict[str, Any] = body["data"]["sync"]
    assert report["totals"]["failed"] == 0, report
    return report


def items(*records: dict[str, Any]) -> dict[str, Any]:
    return {"data": list(records)}


async def school(tenant: Tenant) -> None:
    """Two guardians (g1, g2), three pupils, two classrooms; by alias."""
    await sync(
        tenant,
        {
            "users": items(
                {"alias": "g1", "name": "Guardian One"},
                {"alias": "g2", "name": "Guardian Two"},
                {"alias": "t1", "name": "Teacher"},
            ),
            "members": items(
                {"alias": "m1", "name": "Ann", "users": ["g1"]},
                {"alias": "m2", "name": "Bob", "users": ["g1", "g2"]},
                {"alias": "m3", "name": "Cid", "users": ["g2"]},
            ),
            "classrooms": items(
                {"alias": "c1", "name": "1A", "members": ["m1"], "admins": ["t1"]},
                {"alias": "c2", "name": "2B", "members": ["m3"], "admins": ["t1"]},
            ),
        },
    )


class Replica:
    """A client's local copy: id -> version per collection, fed by ``changes`` pages."""

    def __init__(self, tenant: Tenant, key: str, limit: int = 1000) -> None:
        self.tenant, self.key, self.limit = tenant, key, limit
        self.records: dict[str, dict[str, int]] = {p: {} for p in PLURALS}
        self.checkpoint: str | None = None
        self.deleted: dict[str, list[str]] = {p: [] for p in PLURALS}

    async def pull(self) -> dict[str, Any]:
        """Loop until caught up; returns the last page."""
        while True:
            page = await self.page(self.checkpoint)
            if not page["hasMore"]:
                return page

    async def page(self, since: str | None) -> dict[str, Any]:
        """Ask for one page from ``since`` and apply it; the checkpoint becomes its."""
        body = await self.tenant.gql(CHANGES, {"since": since, "limit": self.limit}, key=self.key)
        page: dict[str, Any] = body["data"]["changes"]
        assert not page["fullSyncRequired"], page
        for plural in PLURALS:
            for record in page[plural]["inserted"] + page[plural]["updated"]:
                self.records[plural][record["id"]] = record["version"]
            for id_ in page[plural]["deleted"]:
                self.deleted[plural].append(id_)
                self.records[plural].pop(id_, None)
        self.checkpoint = page["checkpoint"]
        return page

    def names(self, plural: str, ids: dict[str, str]) -> set[str]:
        by_id = {v: k for k, v in ids.items()}
        return {by_id.get(i, i) for i in self.records[plural]}


async def ids_by_alias(tenant: Tenant) -> dict[str, str]:
    query = "{ users(first: 100) { nodes { id alias } } members(first: 100) { nodes { id alias } }"
    query += " classrooms(first: 100) { nodes { id alias } } }"
    data = (await tenant.gql(query))["data"]
    return {n["alias"]: n["id"] for p in PLURALS for n in data[p]["nodes"]}


async def test_a_guardian_pulls_only_their_children_and_classrooms(tenant: Tenant) -> None:
    await school(tenant)
    key, _ = await tenant.view_key("guardian", user="g1")
    replica = Replica(tenant, key)
    await replica.pull()
    ids = await ids_by_alias(tenant)
    assert replica.names("users", ids) == {"g1"}
    assert replica.names("members", ids) == {"m1", "m2"}
    assert replica.names("classrooms", ids) == {"c1"}


async def test_an_old_record_moves_in_and_a_lost_one_moves_out_once(tenant: Tenant) -> None:
    await school(tenant)
    key, _ = await tenant.view_key("guardian", user="g1", scopes=("sync:read",))
    replica = Replica(tenant, key)
    await replica.pull()
    ids = await ids_by_alias(tenant)
    # c2 was written long before the checkpoint: linking m2 into it moves it in
    await sync(
        tenant, {"classrooms": items({"alias": "c2", "name": "2B", "members": ["m3", "m2"]})}
    )
    # m1 loses its guardian: m1 moves out, and with it c1 (its only link), untouched itself
    await sync(tenant, {"members": items({"alias": "m1", "name": "Ann", "users": []})})
    await replica.pull()
    assert replica.names("members", ids) == {"m2"}
    assert replica.names("classrooms", ids) == {"c2"}
    assert replica.deleted["members"] == [ids["m1"]]
    assert replica.deleted["classrooms"] == [ids["c1"]]
    again = await replica.pull()  # nothing moves twice
    assert all(not again[p]["deleted"] for p in PLURALS)


async def test_deleting_the_parameter_record_empties_the_view(tenant: Tenant) -> None:
    await school(tenant)
    key, _ = await tenant.view_key("guardian", user="g2")
    replica = Replica(tenant, key)
    await replica.pull()
    ids = await ids_by_alias(tenant)
    push = "mutation($id: ID!) { pushChanges(input: {users: {deleted: [{id: $id}]}}) { applied } }"
    assert (await tenant.gql(push, {"id": ids["g2"]}))["data"]["pushChanges"]["applied"] == 1
    await replica.pull()
    assert all(not replica.records[p] for p in PLURALS)


async def test_rebinding_a_key_moves_records_in_and_out(tenant: Tenant) -> None:
    await school(tenant)
    key, key_id = await tenant.view_key("guardian", user="g1")
    replica = Replica(tenant, key)
    await replica.pull()
    ids = await ids_by_alias(tenant)
    binding = check_binding(tenant.state.registry, "guardian", {"user": "g2"})
    async with write_transaction(tenant.state.engine) as conn:
        await set_key_view(conn, key_id, binding)
    await replica.pull()
    assert replica.names("users", ids) == {"g2"}
    assert replica.names("members", ids) == {"m2", "m3"}
    assert replica.names("classrooms", ids) == {"c2"}
    assert ids["m2"] not in replica.deleted["members"]  # visible before and after


async def test_a_rebinding_pulled_one_record_a_page_is_not_taken_for_an_idle_poll(
    tenant: Tenant,
) -> None:
    """No write follows the rebinding, so every page of the difference keeps the tenant's
    latest seq: the page after one that had more must not be answered as an idle poll."""
    await school(tenant)
    key, key_id = await tenant.view_key("guardian", user="g1")
    replica = Replica(tenant, key, limit=1)
    await replica.pull()
    binding = check_binding(tenant.state.registry, "guardian", {"user": "g2"})
    async with write_transaction(tenant.state.engine) as conn:
        await set_key_view(conn, key_id, binding)
    await replica.pull()
    ids = await ids_by_alias(tenant)
    assert replica.names("users", ids) == {"g2"}
    assert replica.names("members", ids) == {"m2", "m3"}
    assert replica.names("classrooms", ids) == {"c2"}


async def test_a_retried_page_takes_back_what_the_first_answer_moved_in(tenant: Tenant) -> None:
    """The client applied an answer, then asks again from the checkpoint before it (it lost
    the new one): what the first answer moved in and has left since is deleted all the same."""
    await school(tenant)
    key, _ = await tenant.view_key("guardian", user="g1")
    replica = Replica(tenant, key)
    await replica.pull()
    since = replica.checkpoint
    await sync(tenant, {"members": items({"alias": "m3", "name": "Cid", "users": ["g2", "g1"]})})
    await replica.page(since)  # m3 and c2 move in
    await sync(tenant, {"members": items({"alias": "m3", "name": "Cid", "users": ["g2"]})})
    await replica.page(since)  # asked again: they have left
    await replica.pull()
    ids = await ids_by_alias(tenant)
    assert replica.names("members", ids) == {"m1", "m2"}
    assert replica.names("classrooms", ids) == {"c1"}


async def test_a_retried_page_sends_again_what_the_first_answer_moved_out(tenant: Tenant) -> None:
    """As above, the other way: a classroom the first answer deleted is back, its own row
    untouched since the checkpoint, and the second answer sends it."""
    await school(tenant)
    key, _ = await tenant.view_key("guardian", user="g1")
    replica = Replica(tenant, key)
    await replica.pull()
    since = replica.checkpoint
    await sync(tenant, {"members": items({"alias": "m1", "name": "Ann", "users": []})})
    await replica.page(since)  # m1 moves out, and c1 (its only pupil of g1's) with it
    await sync(tenant, {"members": items({"alias": "m1", "name": "Ann", "users": ["g1"]})})
    await replica.page(since)  # asked again: both are back
    await replica.pull()
    ids = await ids_by_alias(tenant)
    assert replica.names("members", ids) == {"m1", "m2"}
    assert replica.names("classrooms", ids) == {"c1"}


async def test_small_pages_converge_to_the_view(tenant: Tenant) -> None:
    await school(tenant)
    key, _ = await tenant.view_key("teacher", user="t1")
    small = Replica(tenant, key, limit=1)
    await small.pull()
    await sync(
        tenant, {"classrooms": items({"alias": "c1", "name": "1A", "members": ["m1", "m2"]})}
    )
    await sync(tenant, {"members": items({"alias": "m4", "name": "Dan", "users": ["g2"]})})
    await sync(tenant, {"classrooms": items({"alias": "c2", "name": "2B", "members": ["m4"]})})
    await small.pull()
    fresh = Replica(tenant, key)
    await fresh.pull()
    assert small.records == fresh.records
    ids = await ids_by_alias(tenant)
    assert fresh.names("members", ids) == {"m1", "m2", "m4"}
    assert fresh.names("users", ids) == {"t1", "g1", "g2"}


def digest_of(records: dict[str, int]) -> tuple[int, str]:
    total = sum(
        int.from_bytes(hashlib.sha256(f"{i}:{v}".encode()).digest()[:4], "big")
        for i, v in records.items()
    )
    return len(records), f"{total % 2**32:08x}"


async def test_the_digest_matches_the_replica(tenant: Tenant) -> None:
    await school(tenant)
    for key in (tenant.key, (await tenant.view_key("guardian", user="g2"))[0]):
        replica = Replica(tenant, key)
        await replica.pull()
        page = (await tenant.gql(DIGEST, {"since": replica.checkpoint}, key=key))["data"]
        digests = {d["entity"]: (d["count"], d["checksum"]) for d in page["changes"]["digest"]}
        assert digests == {p.upper()[:-1]: digest_of(replica.records[p]) for p in PLURALS}, (
            replica.records
        )


async def test_checkpoints_do_not_cross_between_bound_and_unbound(tenant: Tenant) -> None:
    await school(tenant)
    key, _ = await tenant.view_key("guardian", user="g1")
    unbound = Replica(tenant, tenant.key)
    await unbound.pull()
    bound = Replica(tenant, key)
    await bound.pull()
    for since, who in ((unbound.checkpoint, key), (bound.checkpoint, tenant.key)):
        page = (await tenant.gql(CHANGES, {"since": since}, key=who))["data"]["changes"]
        assert page["fullSyncRequired"]
        assert page["fullSyncReason"] == "VIEW_CHANGED"


async def test_an_idle_poll_through_a_view_keeps_its_checkpoint(tenant: Tenant) -> None:
    await school(tenant)
    key, _ = await tenant.view_key("guardian", user="g1")
    replica = Replica(tenant, key)
    await replica.pull()
    before = replica.checkpoint
    page = await replica.pull()
    assert page["checkpoint"] == before
    await sync(tenant, {"members": items({"alias": "m3", "name": "Cid 2", "users": ["g2"]})})
    page = await replica.pull()  # a change outside the view: nothing sent
    assert all(not page[p][k] for p in PLURALS for k in ("inserted", "updated", "deleted"))


async def test_a_checkpoint_ahead_says_why(tenant: Tenant) -> None:
    page = (await tenant.gql(CHANGES, {"since": "999999"}))["data"]["changes"]
    assert page["fullSyncRequired"]
    assert page["fullSyncReason"] == "CHECKPOINT_AHEAD"
    fine = (await tenant.gql(CHANGES, {"since": None}))["data"]["changes"]
    assert fine["fullSyncReason"] is None


async def test_a_parameter_naming_another_tenants_record_matches_nothing(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    await school(other_tenant)
    theirs = await ids_by_alias(other_tenant)
    await sync(tenant, {"users": items({"alias": "someone", "name": "Someone"})})
    for value in ("g1", theirs["g1"]):  # their alias, their id
        key, _ = await tenant.view_key("guardian", user=value)
        replica = Replica(tenant, key)
        await replica.pull()
        assert all(not replica.records[p] for p in PLURALS), value


async def test_view_checkpoints_are_checked(tenant: Tenant) -> None:
    key, _ = await tenant.view_key("guardian", user="g1")
    bad_ones = ("1.zz.3aa50749", "1.abc", "1.abc.3aa5074", "x.abc.3aa50749", "1..3aa50749")
    for bad in (*bad_ones, "1.abc.3aa50749.xyz", "1.abc.3aa50749.0a0b0c0d.0a0b0c0d"):
        body = await tenant.gql(CHANGES, {"since": bad}, key=key, expect_errors=True)
        assert body["errors"][0]["extensions"]["code"] == "BAD_REQUEST", bad
    unknown = "0.0123456789abcdef01234567.3aa50749"  # a set this server never stored
    page = (await tenant.gql(CHANGES, {"since": unknown}, key=key))["data"]["changes"]
    assert page["fullSyncRequired"]
    assert page["fullSyncReason"] == "TOMBSTONES_PURGED"


async def test_statements_kept_for_one_tenant_answer_another_with_its_own_records(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    """The server builds its statements once and keeps them (``app.db.statement``), the
    tenant a parameter: two tenants with the same aliases, taking turns through the same
    writes (references by alias), view pulls and unbound pulls, each only ever see their
    own records, and each reference resolves within its own tenant."""
    sides = []
    for side in (other_tenant, tenant):  # the other tenant builds every statement first
        await school(side)
        key, _ = await side.view_key("guardian", user="g1")
        sides.append((side, Replica(side, key), Replica(side, side.key)))
    for round_ in range(2):
        for side, guardian, everything in sides:
            if round_:  # the same write by alias again, moving m3 under g1 in both tenants
                await sync(
                    side, {"members": items({"alias": "m3", "name": "Cid", "users": ["g1"]})}
                )
            await guardian.pull()
            await everything.pull()
    whole = {"users": {"g1", "g2", "t1"}, "members": {"m1", "m2", "m3"}, "classrooms": {"c1", "c2"}}
    for side, guardian, everything in sides:
        ids = await ids_by_alias(side)  # another tenant's id would stay an id in names()
        assert guardian.names("members", ids) == {"m1", "m2", "m3"}
        assert guardian.names("classrooms", ids) == {"c1", "c2"}
        assert guardian.names("users", ids) == {"g1"}
        for plural in PLURALS:
            assert everything.names(plural, ids) == whole[plural], plural
        members = await side.gql("{ members(first: 10) { nodes { alias users { id } } } }")
        for node in members["data"]["members"]["nodes"]:
            assert {u["id"] for u in node["users"]} <= set(ids.values()), node


async def test_a_parameter_names_its_record_by_id_or_alias_an_id_first(tenant: Tenant) -> None:
    """``user=`` takes the guardian's id or alias; a value that is one record's id and
    another's alias names the record with that id."""
    await school(tenant)
    ids = await ids_by_alias(tenant)
    await sync(tenant, {"users": items({"alias": ids["g1"], "name": "Alias like an id"})})
    children = {"g1": {ids["m1"], ids["m2"]}, "g2": {ids["m2"], ids["m3"]}}
    for value, guardian in (("g1", "g1"), (ids["g2"], "g2"), (ids["g1"], "g1")):
        key, _ = await tenant.view_key("guardian", user=value)
        replica = Replica(tenant, key)
        await replica.pull()
        assert set(replica.records["users"]) == {ids[guardian]}, value
        assert set(replica.records["members"]) == children[guardian], value


async def test_another_tenants_record_with_the_same_id_shows_nothing(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    """Ids are the clients' own, so two tenants may hold records with one id: g1's view
    finds the classrooms holding g1's children by their id, and another tenant's classroom
    with the id of c2 holding g1's child m1 must not make c2 visible."""
    await school(tenant)
    ids = await ids_by_alias(tenant)
    await sync(other_tenant, {"members": items({"id": ids["m1"], "name": "Same id"})})
    twin = {"id": ids["c2"], "name": "Twin", "members": [ids["m1"]]}
    await sync(other_tenant, {"classrooms": items(twin)})
    key, _ = await tenant.view_key("guardian", user="g1")
    replica = Replica(tenant, key)
    await replica.pull()
    assert set(replica.records["classrooms"]) == {ids["c1"]}
