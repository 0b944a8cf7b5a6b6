"""Writing through a view over HTTP (DESIGN §8 "Writing through a view"): a view-bound key
or device writes only records its view shows before the write and after it; every other
item is OUT_OF_VIEW and writes nothing, in sync, pushChanges (atomic or not), dry runs and
the entity actions. Unbound writers are untouched and pay nothing for it."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from app.db import write_transaction
from app.engine.devices.devices import DEVICES
from app.engine.views.spec import check_binding
from tests.api.actions_client import Device, delete, pull_all, upsert
from tests.api.test_views import ids_by_alias, items, school
from tests.conftest import Tenant, statements

Json = dict[str, Any]

SYNC = """mutation($input: SyncInput!, $dryRun: Boolean) { sync(input: $input, dryRun: $dryRun) {
  totals { inserted updated failed }
  members { ids errors { index id alias field code message } }
  classrooms { ids errors { index id alias field code message } } } }"""
PUSH = """mutation($input: PushInput!) { pushChanges(input: $input) { applied
  conflicts { entity id reason serverVersion serverRecord }
  errors { entity index id field code message } } }"""
MEMBERS = "{ members(first: 100) { nodes { id alias name version userIds } } }"


async def guardian(tenant: Tenant) -> tuple[str, dict[str, str]]:
    """The school of ``test_views``, and a key bound to guardian g1 (children m1, m2)."""
    await school(tenant)
    key, _ = await tenant.view_key("guardian", user="g1")
    return key, await ids_by_alias(tenant)


async def sync(tenant: Tenant, payload: Json, key: str, *, dry_run: bool = False) -> Json:
    body = await tenant.gql(SYNC, {"input": payload, "dryRun": dry_run}, key=key)
    report: Json = body["data"]["sync"]
    return report


async def push(tenant: Tenant, payload: Json, key: str) -> Json:
    report: Json = (await tenant.gql(PUSH, {"input": payload}, key=key))["data"]["pushChanges"]
    return report


async def members(tenant: Tenant) -> dict[str, Json]:
    """Every member by alias, as the tenant's unbound key reads them."""
    nodes = (await tenant.gql(MEMBERS))["data"]["members"]["nodes"]
    return {n["alias"] or n["id"]: n for n in nodes}


async def checkpoint(tenant: Tenant) -> int:
    return int((await tenant.gql("{ changes { checkpoint } }"))["data"]["changes"]["checkpoint"])


def codes(errors: list[Json]) -> dict[int, str]:
    return {e["index"]: e["code"] for e in errors}


async def test_a_guardian_writes_its_child_and_a_member_linked_to_itself(tenant: Tenant) -> None:
    key, ids = await guardian(tenant)
    report = await sync(
        tenant,
        {
            "members": items(
                {"alias": "m1", "name": "Annie"}, {"alias": "m4", "users": ["g1"], "name": "Dot"}
            )
        },
        key,
    )
    pushed = await push(
        tenant, {"members": {"updated": [{"id": ids["m2"], "data": {"name": "Bobby"}}]}}, key
    )
    assert report["members"]["errors"] == []
    assert report["totals"] == {"inserted": 1, "updated": 1, "failed": 0}
    assert pushed == {"applied": 1, "conflicts": [], "errors": []}
    stored = await members(tenant)
    assert (stored["m1"]["name"], stored["m2"]["name"]) == ("Annie", "Bobby")
    assert stored["m4"]["userIds"] == [ids["g1"]]


async def test_another_guardians_child_is_out_of_view_and_unchanged(tenant: Tenant) -> None:
    key, ids = await guardian(tenant)
    before = await members(tenant)
    report = await sync(
        tenant,
        {
            "members": items(
                {"id": ids["m3"], "name": "by id"},
                {"alias": "m3", "name": "by alias"},
                {"id": str(uuid.uuid4()), "alias": "m3", "name": "its alias"},  # no KEY_MISMATCH
            )
        },
        key,
    )
    assert codes(report["members"]["errors"]) == {
        0: "OUT_OF_VIEW",
        1: "OUT_OF_VIEW",
        2: "OUT_OF_VIEW",
    }
    assert all(ids["m3"] not in e["message"] for e in report["members"]["errors"])
    assert report["members"]["ids"] == [None, None, None]
    # an old base would be a conflict carrying the record: out of view, it is an error only
    stale = {"id": ids["m3"], "baseVersion": 0, "data": {"name": "stale"}}
    pushed = await push(
        tenant, {"members": {"updated": [stale], "deleted": [{"id": ids["m3"]}]}}, key
    )
    assert pushed["applied"] == 0
    assert pushed["conflicts"] == []
    assert [(e["code"], e["field"]) for e in pushed["errors"]] == [
        ("OUT_OF_VIEW", "updated.id"),
        ("OUT_OF_VIEW", "deleted.id"),
    ]
    assert await members(tenant) == before


async def test_a_write_that_would_leave_the_view_is_refused(tenant: Tenant) -> None:
    key, ids = await guardian(tenant)
    before = await members(tenant)
    unlink = await sync(
        tenant, {"members": items({"alias": "m1", "name": "Ann", "users": []})}, key
    )
    relink = await push(
        tenant,
        {"members": {"updated": [{"id": ids["m2"], "data": {"users": [ids["g2"]]}}]}},
        key,
    )
    stranger = await sync(
        tenant, {"members": items({"alias": "m9", "name": "Eve", "users": ["g2"]})}, key
    )
    assert codes(unlink["members"]["errors"]) == {0: "OUT_OF_VIEW"}
    assert [e["code"] for e in relink["errors"]] == ["OUT_OF_VIEW"]
    assert relink["applied"] == 0
    assert codes(stranger["members"]["errors"]) == {0: "OUT_OF_VIEW"}
    assert await members(tenant) == before  # m9 was not created either


async def test_a_mixed_batch_writes_only_the_items_in_view(tenant: Tenant) -> None:
    key, ids = await guardian(tenant)
    start = await checkpoint(tenant)
    report = await sync(
        tenant,
        {
            "members": items(
                {"alias": "m1", "name": "Annie"},
                {"alias": "m3", "name": "Cyd"},
                {"alias": "m5", "name": "Fay", "users": ["g1"]},
                {"alias": "m6", "name": "Gus", "users": ["g2"]},
            ),
            # c1 would keep only m3 (g2's child): c1 would leave the view, c2 is not in it
            "classrooms": items(
                {"alias": "c1", "name": "1A", "members": ["m3"]}, {"alias": "c2", "name": "2C"}
            ),
        },
        key,
    )
    assert codes(report["members"]["errors"]) == {1: "OUT_OF_VIEW", 3: "OUT_OF_VIEW"}
    assert report["members"]["ids"][0] == ids["m1"]
    assert report["members"]["ids"][2] is not None
    assert codes(report["classrooms"]["errors"]) == {0: "OUT_OF_VIEW", 1: "OUT_OF_VIEW"}
    assert report["totals"] == {"inserted": 1, "updated": 1, "failed": 4}
    assert await checkpoint(tenant) == start + 2  # the two changes written, numbered once
    stored = await members(tenant)
    assert [stored[a]["name"] for a in ("m1", "m3", "m5")] == ["Annie", "Cid", "Fay"]
    assert "m6" not in stored
    rooms = await tenant.gql("{ classrooms(first: 9) { nodes { alias name memberIds } } }")
    by_alias = {n["alias"]: n for n in rooms["data"]["classrooms"]["nodes"]}
    assert by_alias["c1"]["memberIds"] == [ids["m1"]]
    assert by_alias["c2"]["name"] == "2B"


async def test_an_atomic_push_with_one_item_out_of_view_applies_nothing(tenant: Tenant) -> None:
    key, ids = await guardian(tenant)
    before = await members(tenant)
    report = await push(
        tenant,
        {
            "atomic": True,
            "members": {
                "updated": [
                    {"id": ids["m1"], "data": {"name": "Annie"}},
                    {"id": ids["m3"], "data": {"name": "Cyd"}},
                ]
            },
        },
        key,
    )
    assert report["applied"] == 0
    assert [(e["index"], e["code"]) for e in report["errors"]] == [(1, "OUT_OF_VIEW")]
    assert await members(tenant) == before


async def test_a_keyed_retry_of_a_refused_write_replays_the_first_answer(
    tenant: Tenant,
) -> None:
    """The view's retry runs inside the keyed request's own savepoint: the answer and the
    writes are the first attempt's, once."""
    key, _ = await guardian(tenant)
    payload = {
        "members": items(
            {"alias": "m5", "name": "Fay", "users": ["g1"]}, {"alias": "m1", "users": []}
        )
    }
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    variables = {"input": payload, "dryRun": False}
    first = await tenant.gql(SYNC, variables, key=key, headers=headers)
    start = await checkpoint(tenant)
    again = await tenant.gql(SYNC, variables, key=key, headers=headers)
    assert again["data"] == first["data"]
    assert codes(first["data"]["sync"]["members"]["errors"]) == {1: "OUT_OF_VIEW"}
    assert await checkpoint(tenant) == start
    assert (await members(tenant))["m1"]["userIds"] != []


async def test_a_dry_run_reports_the_errors_of_the_real_write(tenant: Tenant) -> None:
    key, _ = await guardian(tenant)
    payload = {
        "members": items(
            {"alias": "m1", "name": "Annie", "users": []},
            {"alias": "m2", "name": "Bobby"},
            {"alias": "m3", "name": "Cyd"},
        )
    }
    before = await members(tenant)
    rehearsed = await sync(tenant, payload, key, dry_run=True)
    assert await members(tenant) == before
    real = await sync(tenant, payload, key)
    assert rehearsed["members"] == real["members"]
    assert codes(real["members"]["errors"]) == {0: "OUT_OF_VIEW", 2: "OUT_OF_VIEW"}
    assert (await members(tenant))["m2"]["name"] == "Bobby"


async def test_clean_sync_is_refused_to_a_view_bound_key(tenant: Tenant) -> None:
    key, _ = await guardian(tenant)
    payload = {"members": {"data": [{"alias": "m1", "name": "Ann"}], "cleanSync": True}}
    body = await tenant.gql(SYNC, {"input": payload}, key=key, expect_errors=True)
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert len(await members(tenant)) == 3


async def test_a_conflict_never_shows_a_deleted_record_to_a_view_bound_pusher(
    tenant: Tenant,
) -> None:
    key, ids = await guardian(tenant)
    await push(tenant, {"members": {"deleted": [{"id": ids["m3"]}]}}, tenant.key)
    stale = {"members": {"updated": [{"id": ids["m3"], "baseVersion": 1, "data": {"name": "x"}}]}}
    bound = await push(tenant, stale, key)
    unbound = await push(tenant, stale, tenant.key)
    assert [(c["reason"], c["serverRecord"]) for c in bound["conflicts"]] == [
        ("DELETED_ON_SERVER", None)
    ]
    assert unbound["conflicts"][0]["serverRecord"]["name"] == "Cid"  # unbound: as before


async def bound_device(tenant: Tenant, view: str, **params: str) -> Device:
    """A device registered by the tenant and bound to ``view`` before its first request."""
    device = await Device.register(tenant.http, tenant.key)
    binding = check_binding(tenant.state.registry, view, params)
    async with write_transaction(tenant.state.engine) as conn:
        await conn.execute(
            sa.update(DEVICES)
            .where(DEVICES.c.id == device.device_id)
            .values(view=binding.as_json())
        )
    return device


async def test_an_entity_action_out_of_view_is_rejected_and_not_stored(tenant: Tenant) -> None:
    _, ids = await guardian(tenant)
    device = await bound_device(tenant, "guardian", user="g1")
    result = await device.push(
        device.actions(
            upsert("members", {"id": ids["m1"], "name": "Annie"}),
            upsert("members", {"id": ids["m3"], "name": "Cyd"}),
            delete("members", ids["m3"]),
            upsert("members", {"id": str(uuid.uuid4()), "name": "Eve", "users": [ids["g2"]]}),
        )
    )
    assert result["accepted"] == 1
    assert result["shouldDoFullSync"] is True
    assert [r["sequenceNumber"] for r in result["rejected"]] == [1, 2, 3]
    assert all(r["reason"].startswith("OUT_OF_VIEW") for r in result["rejected"])
    stored = await members(tenant)
    assert (len(stored), stored["m1"]["name"], stored["m3"]["name"]) == (3, "Annie", "Cid")
    log = await pull_all(tenant.http, tenant.key)
    assert [(a["sequenceNumber"], a["payload"]["data"]["name"]) for a in log] == [(0, "Annie")]


async def test_only_view_bound_writers_pay_for_the_check(tenant: Tenant) -> None:
    """An unbound writer's sync reads nothing for a view and opens no savepoint; a bound
    writer's reads its view (the guardian's users) around a savepoint."""
    key, _ = await guardian(tenant)
    payload = {"members": items({"alias": "m1", "name": "Annie"})}
    with statements(tenant.state) as unbound:
        await sync(tenant, payload, tenant.key)
    with statements(tenant.state) as bound:
        await sync(tenant, {"members": items({"alias": "m1", "name": "Ann"})}, key)

    def view_reads(seen: list[str]) -> list[str]:
        return [s for s in seen if "SAVEPOINT" in s.upper() or "FROM users" in s]

    assert view_reads(unbound) == []
    assert view_reads(bound) != []
