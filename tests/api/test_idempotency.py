"""``Idempotency-Key`` on mutations through HTTP, on both backends: a retry gets the first
answer again and writes nothing, another body under the same key is refused, keys belong to
a tenant, error answers are kept (but not UNAUTHENTICATED), queries ignore the header, and
concurrent requests with one key apply once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from app.engine import idempotency
from app.engine.devices.devices import list_devices
from app.engine.idempotency import KeyedRequest
from app.engine.models import IdempotencyKey
from tests.api.test_push import PUSH, Json, change, checkpoint, get_badge, seed_badge, sync
from tests.conftest import Tenant

INSERT = (
    "mutation($input: SyncInput!) { sync(input: $input) {"
    " checkpoint totals { inserted updated unchanged } users { ids } } }"
)
COUNT = "{ users { totalCount nodes { id name version } } }"


def idem(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def new_user(name: str = "ann") -> Json:
    """A sync input that creates a new user each time it is executed (no id, no alias)."""
    return {"input": {"users": {"data": [{"name": name}]}}}


async def users(t: Tenant) -> Json:
    body = await t.gql(COUNT)
    result: Json = body["data"]["users"]
    return result


def replayed(body: Json) -> bool:
    flag = body["extensions"].get("idempotentReplay", False)
    assert isinstance(flag, bool)
    return flag


def only_code(body: Json) -> str:
    assert body["data"] is None, body
    [error] = body["errors"]
    return str(error["extensions"]["code"])


async def test_a_retry_gets_the_first_answer_and_writes_nothing(tenant: Tenant) -> None:
    key = str(uuid.uuid4())
    first = await tenant.gql(INSERT, new_user(), headers=idem(key))
    assert not replayed(first)
    report = first["data"]["sync"]
    assert report["totals"] == {"inserted": 1, "updated": 0, "unchanged": 0}
    after_first = await checkpoint(tenant)

    again = await tenant.gql(INSERT, new_user(), headers=idem(key))
    assert replayed(again)
    assert again["data"] == first["data"]
    # the replay is a request of its own
    assert again["extensions"]["requestId"] != first["extensions"]["requestId"]
    assert await checkpoint(tenant) == after_first
    assert await users(tenant) == {
        "totalCount": 1,
        "nodes": [{"id": report["users"]["ids"][0], "name": "ann", "version": 1}],
    }

    # the variables' key order does not make another body
    shuffled = {"input": {"users": {"data": [{"name": "ann"}], "cleanSync": False}}}
    reordered = {"input": {"users": dict(reversed(list(shuffled["input"]["users"].items())))}}
    other_key = str(uuid.uuid4())
    made = await tenant.gql(INSERT, shuffled, headers=idem(other_key))
    assert not replayed(made)
    same = await tenant.gql(INSERT, reordered, headers=idem(other_key))
    assert replayed(same)
    assert same["data"] == made["data"]
    assert (await users(tenant))["totalCount"] == 2


async def test_a_replayed_push_does_not_apply_again(tenant: Tenant) -> None:
    badge_id = await seed_badge(tenant)
    key = str(uuid.uuid4())
    payload = {"input": {"badges": {"updated": [change(badge_id, name="from the phone")]}}}
    first = await tenant.gql(PUSH, payload, headers=idem(key))
    assert first["data"]["pushChanges"]["applied"] == 1
    # someone else changes the record; a re-execution of the push would overwrite it
    await sync(tenant, {"badges": {"data": [{"id": badge_id, "name": "from the office"}]}})
    before = await checkpoint(tenant)

    again = await tenant.gql(PUSH, payload, headers=idem(key))
    assert replayed(again)
    assert again["data"] == first["data"]
    assert await checkpoint(tenant) == before
    badge = await get_badge(tenant, badge_id)
    assert badge is not None
    assert (badge["name"], badge["version"]) == ("from the office", 3)


async def test_the_same_key_with_another_body_is_refused(tenant: Tenant) -> None:
    key = str(uuid.uuid4())
    await tenant.gql(INSERT, new_user("ann"), headers=idem(key))
    other_variables = await tenant.gql(
        INSERT, new_user("bob"), headers=idem(key), expect_errors=True
    )
    assert only_code(other_variables) == "IDEMPOTENCY_KEY_REUSED"
    other_query = await tenant.gql(
        INSERT.replace("checkpoint totals", "totals"),
        new_user("ann"),
        headers=idem(key),
        expect_errors=True,
    )
    assert only_code(other_query) == "IDEMPOTENCY_KEY_REUSED"
    assert not replayed(other_query)
    assert [u["name"] for u in (await users(tenant))["nodes"]] == ["ann"]
    # the first body still replays
    assert replayed(await tenant.gql(INSERT, new_user("ann"), headers=idem(key)))


async def test_keys_belong_to_their_tenant(tenant: Tenant, other_tenant: Tenant) -> None:
    key = str(uuid.uuid4())
    mine = await tenant.gql(INSERT, new_user(), headers=idem(key))
    # the same key and body in another tenant is a request of its own
    theirs = await other_tenant.gql(INSERT, new_user(), headers=idem(key))
    assert not replayed(theirs)
    assert theirs["data"]["sync"]["users"]["ids"] != mine["data"]["sync"]["users"]["ids"]
    assert (await users(other_tenant))["totalCount"] == 1
    # another body under the key is refused there, and does not disturb the first tenant
    reused = await other_tenant.gql(INSERT, new_user("bob"), headers=idem(key), expect_errors=True)
    assert only_code(reused) == "IDEMPOTENCY_KEY_REUSED"
    again = await tenant.gql(INSERT, new_user(), headers=idem(key))
    assert replayed(again)
    assert again["data"] == mine["data"]
    # a key used first by the other tenant with another body is free here
    fresh = str(uuid.uuid4())
    await other_tenant.gql(INSERT, new_user("cid"), headers=idem(fresh))
    own = await tenant.gql(INSERT, new_user("dan"), headers=idem(fresh))
    assert not replayed(own)
    assert sorted(u["name"] for u in (await users(tenant))["nodes"]) == ["ann", "dan"]


async def test_error_answers_are_stored_and_replayed(tenant: Tenant) -> None:
    # BATCH_TOO_LARGE
    key = str(uuid.uuid4())
    too_many = {"input": {"users": {"data": [{"name": f"u{i}"} for i in range(1001)]}}}
    first = await tenant.gql(INSERT, too_many, headers=idem(key), expect_errors=True)
    assert only_code(first) == "BATCH_TOO_LARGE"
    assert not replayed(first)
    again = await tenant.gql(INSERT, too_many, headers=idem(key), expect_errors=True)
    assert only_code(again) == "BATCH_TOO_LARGE"
    assert replayed(again)
    assert again["errors"][0]["message"] == first["errors"][0]["message"]

    # FORBIDDEN: a cleanSync without sync:manage
    writer = await tenant.new_key("sync:write")
    clean = {"input": {"users": {"data": [{"name": "only"}], "cleanSync": True}}}
    key = str(uuid.uuid4())
    first = await tenant.gql(INSERT, clean, key=writer, headers=idem(key), expect_errors=True)
    assert only_code(first) == "FORBIDDEN"
    again = await tenant.gql(INSERT, clean, key=writer, headers=idem(key), expect_errors=True)
    assert only_code(again) == "FORBIDDEN"
    assert replayed(again)
    assert (await users(tenant))["totalCount"] == 0
    assert await checkpoint(tenant) == "0"


async def test_an_unauthenticated_answer_is_not_stored(tenant: Tenant) -> None:
    key = str(uuid.uuid4())
    refused = await tenant.post(INSERT, new_user(), key="sgk_not-a-real-key", headers=idem(key))
    assert refused.status_code == 401
    assert only_code(refused.json()) == "UNAUTHENTICATED"
    first = await tenant.gql(INSERT, new_user(), headers=idem(key))
    assert not replayed(first)
    assert first["data"]["sync"]["totals"]["inserted"] == 1
    assert (await users(tenant))["totalCount"] == 1


async def test_queries_ignore_the_header(tenant: Tenant) -> None:
    key = str(uuid.uuid4())
    empty = await tenant.gql(COUNT, headers=idem(key))
    assert not replayed(empty)
    assert empty["data"]["users"]["totalCount"] == 0
    await tenant.gql(INSERT, new_user())
    counted = await tenant.gql(COUNT, headers=idem(key))
    assert not replayed(counted)
    assert counted["data"]["users"]["totalCount"] == 1
    # the queries did not take the key
    made = await tenant.gql(INSERT, new_user("bob"), headers=idem(key))
    assert not replayed(made)
    assert (await users(tenant))["totalCount"] == 2


async def test_a_key_over_255_characters_is_bad_request(tenant: Tenant) -> None:
    body = await tenant.gql(INSERT, new_user(), headers=idem("k" * 256), expect_errors=True)
    assert only_code(body) == "BAD_REQUEST"
    assert (await users(tenant))["totalCount"] == 0
    assert not replayed(await tenant.gql(INSERT, new_user(), headers=idem("k" * 255)))


async def test_concurrent_requests_with_one_key_apply_once(tenant: Tenant) -> None:
    key = str(uuid.uuid4())
    responses = await asyncio.gather(
        *(tenant.post(INSERT, new_user(), headers=idem(key)) for _ in range(5))
    )
    bodies = [r.json() for r in responses]
    assert [r.status_code for r in responses] == [200] * 5
    assert all("errors" not in b for b in bodies), bodies
    assert sorted(replayed(b) for b in bodies) == [False, True, True, True, True]
    assert all(b["data"] == bodies[0]["data"] for b in bodies)
    [created] = bodies[0]["data"]["sync"]["users"]["ids"]
    assert await users(tenant) == {
        "totalCount": 1,
        "nodes": [{"id": created, "name": "ann", "version": 1}],
    }
    assert await checkpoint(tenant) == bodies[0]["data"]["sync"]["checkpoint"]


async def test_a_key_is_kept_for_24_hours(tenant: Tenant) -> None:
    key = str(uuid.uuid4())
    await tenant.gql(INSERT, new_user(), headers=idem(key))
    keys = IdempotencyKey.__table__  # type: ignore[attr-defined]

    async def age(hours: float) -> None:
        async with tenant.state.engine.begin() as conn:
            await conn.execute(
                sa.update(keys)
                .where(keys.c.tenant_id == tenant.id, keys.c.key == key)
                .values(created_at=datetime.now(UTC) - timedelta(hours=hours))
            )

    await age(23.9)
    assert replayed(await tenant.gql(INSERT, new_user(), headers=idem(key)))
    assert (await users(tenant))["totalCount"] == 1
    # expired: the key is free again, for any body
    await age(24.1)
    fresh = await tenant.gql(INSERT, new_user("bob"), headers=idem(key))
    assert not replayed(fresh)
    assert sorted(u["name"] for u in (await users(tenant))["nodes"]) == ["ann", "bob"]
    assert replayed(await tenant.gql(INSERT, new_user("bob"), headers=idem(key)))


TWO_WRITES = (
    "mutation($a: SyncInput!, $b: SyncInput!) {"
    " a: sync(input: $a) { checkpoint users { ids } }"
    " b: sync(input: $b) { checkpoint users { ids } } }"
)
REGISTER = "mutation($name: String!) { registerDevice(name: $name) { deviceId token } }"


async def test_two_writes_in_one_keyed_mutation_apply_once(tenant: Tenant) -> None:
    key = str(uuid.uuid4())
    variables = {"a": new_user("ann")["input"], "b": new_user("bob")["input"]}
    first = await tenant.gql(TWO_WRITES, variables, headers=idem(key))
    assert int(first["data"]["b"]["checkpoint"]) == int(first["data"]["a"]["checkpoint"]) + 1
    again = await tenant.gql(TWO_WRITES, variables, headers=idem(key))
    assert replayed(again)
    assert again["data"] == first["data"]
    assert sorted(u["name"] for u in (await users(tenant))["nodes"]) == ["ann", "bob"]
    assert await checkpoint(tenant) == first["data"]["b"]["checkpoint"]


async def test_a_refused_atomic_push_is_stored_and_writes_nothing(tenant: Tenant) -> None:
    badge_id = await seed_badge(tenant)
    base = await checkpoint(tenant)
    await sync(tenant, {"badges": {"data": [{"id": badge_id, "name": "server"}]}})
    before = await checkpoint(tenant)
    key = str(uuid.uuid4())
    badges = {"updated": [change(badge_id, name="stale")], "inserted": [change(str(uuid.uuid4()))]}
    payload = {"input": {"atomic": True, "since": base, "badges": badges}}
    first = await tenant.gql(PUSH, payload, headers=idem(key))
    assert first["data"]["pushChanges"]["applied"] == 0
    assert [c["reason"] for c in first["data"]["pushChanges"]["conflicts"]] == ["CHANGED_ON_SERVER"]
    again = await tenant.gql(PUSH, payload, headers=idem(key))
    assert replayed(again)
    assert again["data"] == first["data"]
    assert await checkpoint(tenant) == before
    badge = await get_badge(tenant, badge_id)
    assert badge is not None
    assert (badge["name"], badge["version"]) == ("server", 2)


async def test_a_keyed_device_registration_replays_the_same_device(tenant: Tenant) -> None:
    key = str(uuid.uuid4())
    first = await tenant.gql(REGISTER, {"name": "phone"}, headers=idem(key))
    again = await tenant.gql(REGISTER, {"name": "phone"}, headers=idem(key))
    assert replayed(again)
    assert again["data"] == first["data"]
    async with tenant.state.engine.connect() as conn:
        devices = await list_devices(conn, tenant.id)
    assert [d["name"] for d in devices] == ["phone"]


async def test_writes_whose_answer_was_never_stored_are_gone_and_the_key_is_free(
    tenant: Tenant,
) -> None:
    """What a crash between the writes and the answer leaves: the parked transaction rolls
    back, and a retry runs at once (no "still running" claim to wait out)."""
    key = str(uuid.uuid4())
    digest = idempotency.request_hash(INSERT, new_user(), None)
    keyed = KeyedRequest(tenant.id, key, digest, timedelta(hours=24))
    with idempotency.keyed_request(keyed):
        registration = await tenant.state.service.register_device(tenant.id, "lost")
    assert keyed.parked is not None  # written, not committed
    assert await idempotency.abandon(keyed)
    async with tenant.state.engine.connect() as conn:
        assert await list_devices(conn, tenant.id) == []
    assert registration.device_id
    retry = await tenant.gql(INSERT, new_user(), headers=idem(key))
    assert not replayed(retry)
    assert (await users(tenant))["totalCount"] == 1
