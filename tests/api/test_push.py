"""``mutation pushChanges`` through HTTP, as an offline client sees it, on both backends:
every conflict reason with the server's record, the conflict bases (baseVersion, since,
fromDate, none), REJECT against LAST_WRITE_WINS, atomic pushes, what ``applied`` counts,
references and item errors in pushed data, request-level refusals, tenant isolation, the
recorded actor, and a full offline round trip of two clients."""

from __future__ import annotations

import copy
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from app.main import create_app
from app.settings import Settings
from app.state import make_state
from tests.conftest import Tenant, example, make_tenant

Json = dict[str, Any]

PUSH = (
    "mutation($input: PushInput!) { pushChanges(input: $input) { checkpoint applied caughtUp"
    " conflicts { entity id reason serverVersion serverRecord }"
    " errors { entity index id alias field code message } } }"
)
BADGE = (
    "id alias version createdAt updatedAt name firstName lastName gender phone infant vegan"
    " feed number batch role position photo comment personId"
)
USER = "id alias version createdAt updatedAt name email birth active invite roleSet"
ROLE_SET = "{ guardian student teacher staff admin }"
TIMES = ("createdAt", "updatedAt")
OLD = "2024-07-01T00:00:00Z"


# --- helpers (also used by test_resync and test_idempotency) ------------------------------


async def push(t: Tenant, payload: Json, *, key: str | None = None) -> Json:
    body = await t.gql(PUSH, {"input": payload}, key=key)
    report: Json = body["data"]["pushChanges"]
    return report


async def push_refused(t: Tenant, payload: Json, *, key: str | None = None) -> str:
    """The code of a request-level refusal (no report at all)."""
    body = await t.gql(PUSH, {"input": payload}, key=key, expect_errors=True)
    assert body["data"] is None, body
    [error] = body["errors"]
    return str(error["extensions"]["code"])


async def sync(t: Tenant, payload: Json, *, key: str | None = None) -> Json:
    selection = " ".join(f"{p} {{ ids errors {{ index field code }} }}" for p in payload)
    body = await t.gql(
        f"mutation($input: SyncInput!) {{ sync(input: $input) {{ checkpoint {selection} }} }}",
        {"input": payload},
        key=key,
    )
    report: Json = body["data"]["sync"]
    for plural in payload:
        assert report[plural]["errors"] == [], report
    return report


async def checkpoint(t: Tenant) -> str:
    body = await t.gql("{ changes { checkpoint } }")
    return str(body["data"]["changes"]["checkpoint"])


async def pull(t: Tenant, since: str | None, selection: str) -> Json:
    body = await t.gql(
        f"query($since: String) {{ changes(since: $since) {{ checkpoint hasMore {selection} }} }}",
        {"since": since},
    )
    page: Json = body["data"]["changes"]
    assert page["hasMore"] is False
    return page


async def get_badge(t: Tenant, id_: str) -> Json | None:
    body = await t.gql(f"query($id: ID) {{ badge(id: $id) {{ {BADGE} }} }}", {"id": id_})
    badge: Json | None = body["data"]["badge"]
    return badge


async def get_user(t: Tenant, id_: str) -> Json | None:
    body = await t.gql(
        f"query($id: ID) {{ user(id: $id) {{ {USER} {ROLE_SET} }} }}",
        {"id": id_},
    )
    user: Json | None = body["data"]["user"]
    return user


async def seed_badge(t: Tenant, **fields: Any) -> str:
    id_ = str(uuid.uuid4())
    data = {"id": id_, "name": "Тузик", "gender": "MALE", "feed": "FREE", **fields}
    await sync(t, {"badges": {"data": [data]}})
    return id_


def comparable(record: Json) -> Json:
    """A record with its times parsed, so the JSON scalar and DateTime compare equal."""
    return {k: datetime.fromisoformat(v) if k in TIMES else v for k, v in record.items()}


def conflict(report: Json) -> Json:
    """The one conflict of a push that applied nothing else."""
    [found] = report["conflicts"]
    assert report["errors"] == []
    return found


async def stored_column(t: Tenant, plural: str, id_: str, column: str) -> Any:
    table = t.state.service.registry.by_plural(plural).table
    async with t.state.engine.connect() as conn:
        query = sa.select(table.c[column]).where(table.c.tenant_id == t.id, table.c.id == id_)
        return (await conn.execute(query)).scalar_one()


def change(id_: str, **fields: Any) -> Json:
    """One change: the sync fields (baseVersion, changedAt, actor) and the data."""
    sync_fields = {k: fields.pop(k) for k in ("baseVersion", "changedAt", "actor") if k in fields}
    return {"id": id_, **sync_fields, "data": fields}


# --- the festival example -----------------------------------------------------------------


def festival_as_push(changed_at: str) -> Json:
    """festival-sync.json as a push of inserts made offline at ``changed_at``."""
    payload = example("festival-sync.json")
    return {
        plural: {
            "inserted": [{"id": i["id"], "changedAt": changed_at, "data": i} for i in batch["data"]]
        }
        for plural, batch in payload.items()
    }


async def test_festival_push_applies_over_older_changes_and_records_the_actor(
    tenant: Tenant,
) -> None:
    sync_payload = example("festival-sync.json")
    ids = {plural: batch["data"][0]["id"] for plural, batch in sync_payload.items()}
    # the records' last change is a push made offline at OLD, before the example's edits
    created = await push(tenant, {"conflictPolicy": "LAST_WRITE_WINS", **festival_as_push(OLD)})
    assert (created["applied"], created["conflicts"], created["errors"]) == (5, [], [])
    page = await pull(
        tenant,
        None,
        "badges { inserted { id personId version } }"
        " arrivals { inserted { id badgeId status version } }"
        " engagements { inserted { id personId directionId } }",
    )
    assert page["badges"]["inserted"] == [
        {"id": ids["badges"], "personId": ids["persons"], "version": 1}
    ]
    assert page["arrivals"]["inserted"] == [
        {"id": ids["arrivals"], "badgeId": ids["badges"], "status": "PLANNED", "version": 1}
    ]
    assert page["engagements"]["inserted"] == [
        {"id": ids["engagements"], "personId": ids["persons"], "directionId": ids["directions"]}
    ]
    before = created["checkpoint"]

    report = await push(tenant, example("festival-push.json"))
    assert (report["applied"], report["conflicts"], report["errors"]) == (2, [], [])
    assert int(report["checkpoint"]) == int(before) + 2
    badge = await get_badge(tenant, ids["badges"])
    assert badge is not None
    assert (badge["name"], badge["vegan"], badge["version"]) == ("новое имя", True, 2)
    assert (badge["firstName"], badge["number"]) == ("Иван", "0042")  # omitted: kept
    body = await tenant.gql(
        "query($id: ID) { arrival(id: $id) { status version arrivalTransport } }",
        {"id": ids["arrivals"]},
    )
    assert body["data"]["arrival"] == {"status": "ARRIVED", "version": 2, "arrivalTransport": "BUS"}
    changed = await pull(
        tenant, before, "badges { updated { id version } } arrivals { updated { id } }"
    )
    assert changed["badges"]["updated"] == [{"id": ids["badges"], "version": 2}]
    assert changed["arrivals"]["updated"] == [{"id": ids["arrivals"]}]
    assert await stored_column(tenant, "badges", ids["badges"], "actor") == ids["badges"]
    assert await stored_column(tenant, "arrivals", ids["arrivals"], "actor") is None

    # the same push again: same time, same data -> nothing to do
    again = await push(tenant, example("festival-push.json"))
    assert (again["applied"], again["conflicts"], again["checkpoint"]) == (
        0,
        [],
        report["checkpoint"],
    )

    # an edit made before the one the server holds loses
    older = example("festival-push.json")
    del older["arrivals"]
    older["badges"]["updated"][0].update(changedAt="2024-07-05T00:00:00Z", data={"name": "старое"})
    lost = conflict(await push(tenant, older))
    assert (lost["entity"], lost["id"], lost["reason"]) == (
        "BADGE",
        ids["badges"],
        "CHANGED_ON_SERVER",
    )
    assert lost["serverVersion"] == 2
    assert comparable(lost["serverRecord"]) == comparable(badge)


async def test_festival_push_loses_against_records_synced_now(tenant: Tenant) -> None:
    """The example's 2024 edits are older than a sync made now: LWW keeps the server's."""
    await sync(tenant, example("festival-sync.json"))
    before = await checkpoint(tenant)
    report = await push(tenant, example("festival-push.json"))
    assert (report["applied"], report["errors"], report["checkpoint"]) == (0, [], before)
    reasons = {(c["entity"], c["reason"], c["serverVersion"]) for c in report["conflicts"]}
    assert reasons == {("BADGE", "CHANGED_ON_SERVER", 1), ("ARRIVAL", "CHANGED_ON_SERVER", 1)}
    records = {c["entity"]: c["serverRecord"] for c in report["conflicts"]}
    assert (records["BADGE"]["name"], records["BADGE"]["vegan"]) == ("Тузик", False)
    assert records["ARRIVAL"]["status"] == "PLANNED"


# --- conflict bases ------------------------------------------------------------------------


async def test_changed_on_server_after_since_is_a_conflict_with_the_server_record(
    tenant: Tenant,
) -> None:
    badge_id = await seed_badge(tenant, number="0042")
    base = await checkpoint(tenant)
    await sync(tenant, {"badges": {"data": [{"id": badge_id, "name": "server name"}]}})
    server = await get_badge(tenant, badge_id)
    assert server is not None

    report = await push(
        tenant, {"since": base, "badges": {"updated": [change(badge_id, comment="local")]}}
    )
    found = conflict(report)
    assert report["applied"] == 0
    assert (found["entity"], found["id"], found["reason"]) == (
        "BADGE",
        badge_id,
        "CHANGED_ON_SERVER",
    )
    assert found["serverVersion"] == 2
    record = found["serverRecord"]
    # the record as its GraphQL type shows it: camelCase, id, version, times
    assert set(record) == set(BADGE.split())
    assert comparable(record) == comparable(server)
    assert (record["name"], record["number"], record["personId"]) == ("server name", "0042", None)
    assert await get_badge(tenant, badge_id) == server

    # from the server's checkpoint the same change applies
    current = await checkpoint(tenant)
    applied = await push(
        tenant, {"since": current, "badges": {"updated": [change(badge_id, comment="local")]}}
    )
    assert (applied["applied"], applied["conflicts"]) == (1, [])
    after = await get_badge(tenant, badge_id)
    assert after is not None
    assert (after["name"], after["comment"], after["version"]) == ("server name", "local", 3)


async def test_base_version_decides_before_since(tenant: Tenant) -> None:
    badge_id = await seed_badge(tenant)
    old = await checkpoint(tenant)
    await sync(tenant, {"badges": {"data": [{"id": badge_id, "name": "v2"}]}})
    current = await checkpoint(tenant)

    stale = await push(
        tenant,
        {"since": current, "badges": {"updated": [change(badge_id, baseVersion=1, name="x")]}},
    )
    found = conflict(stale)
    assert (found["reason"], found["serverVersion"]) == ("CHANGED_ON_SERVER", 2)
    assert found["serverRecord"]["name"] == "v2"

    fresh = await push(
        tenant, {"since": old, "badges": {"updated": [change(badge_id, baseVersion=2, name="x")]}}
    )
    assert (fresh["applied"], fresh["conflicts"], fresh["errors"]) == (1, [], [])
    badge = await get_badge(tenant, badge_id)
    assert badge is not None
    assert (badge["name"], badge["version"]) == ("x", 3)


async def test_from_date_base(tenant: Tenant) -> None:
    badge_id = await seed_badge(tenant)
    seen = await get_badge(tenant, badge_id)
    assert seen is not None
    await sync(tenant, {"badges": {"data": [{"id": badge_id, "name": "server"}]}})
    server = await get_badge(tenant, badge_id)
    assert server is not None

    stale = await push(
        tenant,
        {"fromDate": seen["updatedAt"], "badges": {"updated": [change(badge_id, comment="c")]}},
    )
    found = conflict(stale)
    assert (found["reason"], found["serverVersion"]) == ("CHANGED_ON_SERVER", 2)
    assert comparable(found["serverRecord"]) == comparable(server)

    fresh = await push(
        tenant,
        {"fromDate": server["updatedAt"], "badges": {"updated": [change(badge_id, comment="c")]}},
    )
    assert (fresh["applied"], fresh["conflicts"]) == (1, [])


async def test_without_any_base_a_change_is_a_blind_write(tenant: Tenant) -> None:
    badge_id = await seed_badge(tenant)
    await sync(tenant, {"badges": {"data": [{"id": badge_id, "name": "v2"}]}})
    report = await push(
        tenant, {"since": None, "badges": {"updated": [change(badge_id, name="blind")]}}
    )
    assert (report["applied"], report["conflicts"], report["errors"]) == (1, [], [])
    badge = await get_badge(tenant, badge_id)
    assert badge is not None
    assert (badge["name"], badge["version"]) == ("blind", 3)


# --- conflict policies ----------------------------------------------------------------------


async def test_last_write_wins_compares_changed_at(tenant: Tenant) -> None:
    badge_id = str(uuid.uuid4())
    made = await push(
        tenant, {"badges": {"inserted": [change(badge_id, changedAt=OLD, name="v1")]}}
    )
    assert made["applied"] == 1
    base = made["checkpoint"]
    lww = {"conflictPolicy": "LAST_WRITE_WINS"}

    older = await push(
        tenant,
        {
            **lww,
            "badges": {"updated": [change(badge_id, changedAt="2024-06-30T23:59:59Z", name="old")]},
        },
    )
    found = conflict(older)
    assert (found["reason"], found["serverVersion"], older["applied"]) == (
        "CHANGED_ON_SERVER",
        1,
        0,
    )
    assert found["serverRecord"]["name"] == "v1"

    # the same instant is not older; a time zone offset names the same instant
    same = await push(
        tenant,
        {
            **lww,
            "badges": {
                "updated": [change(badge_id, changedAt="2024-07-01T02:00:00+02:00", name="v2")]
            },
        },
    )
    assert (same["applied"], same["conflicts"]) == (1, [])

    # LAST_WRITE_WINS judges by time, not by base: a stale since does not matter
    newer = await push(
        tenant,
        {
            **lww,
            "since": base,
            "badges": {"updated": [change(badge_id, changedAt="2024-07-02T00:00:00Z", name="v3")]},
        },
    )
    assert (newer["applied"], newer["conflicts"]) == (1, [])
    # while REJECT reports the same change as a conflict, whatever its changedAt
    rejected = await push(
        tenant,
        {
            "since": base,
            "badges": {"updated": [change(badge_id, changedAt="2030-01-01T00:00:00Z", name="v4")]},
        },
    )
    assert conflict(rejected)["reason"] == "CHANGED_ON_SERVER"

    # a change without changedAt is made now: it wins over 2024 ...
    now = await push(tenant, {**lww, "badges": {"updated": [change(badge_id, name="now")]}})
    assert (now["applied"], now["conflicts"]) == (1, [])
    # ... and a later 2024 edit loses against it
    late = await push(
        tenant,
        {
            **lww,
            "badges": {"updated": [change(badge_id, changedAt="2024-12-31T00:00:00Z", name="x")]},
        },
    )
    assert conflict(late)["serverRecord"]["name"] == "now"
    badge = await get_badge(tenant, badge_id)
    assert badge is not None
    assert (badge["name"], badge["version"]) == ("now", 4)


async def test_last_write_wins_for_deletes(tenant: Tenant) -> None:
    badge_id = str(uuid.uuid4())
    await push(tenant, {"badges": {"inserted": [change(badge_id, changedAt=OLD, name="v1")]}})
    lww = {"conflictPolicy": "LAST_WRITE_WINS"}
    older = await push(
        tenant,
        {**lww, "badges": {"deleted": [{"id": badge_id, "changedAt": "2024-01-01T00:00:00Z"}]}},
    )
    assert conflict(older)["reason"] == "CHANGED_ON_SERVER"
    assert await get_badge(tenant, badge_id) is not None
    newer = await push(
        tenant,
        {**lww, "badges": {"deleted": [{"id": badge_id, "changedAt": "2024-08-01T00:00:00Z"}]}},
    )
    assert (newer["applied"], newer["conflicts"]) == (1, [])
    assert await get_badge(tenant, badge_id) is None


async def test_insert_of_an_existing_id(tenant: Tenant) -> None:
    user_id = str(uuid.uuid4())
    await sync(
        tenant,
        {
            "users": {
                "data": [
                    {
                        "id": user_id,
                        "name": "Ann",
                        "birth": "1990-01-02",
                        "roleSet": {"teacher": True},
                    }
                ]
            }
        },
    )
    server = await get_user(tenant, user_id)
    assert server is not None
    before = await checkpoint(tenant)

    # identical data: a retried insert, harmless
    same = await push(
        tenant, {"users": {"inserted": [change(user_id, name="Ann", birth="1990-01-02")]}}
    )
    assert (same["applied"], same["conflicts"], same["errors"]) == (0, [], [])
    assert same["checkpoint"] == before

    # baseVersion 0, "this record must not exist yet": ALREADY_EXISTS with the server's record
    other = {"users": {"inserted": [change(user_id, name="Bob", baseVersion=0)]}}
    found = conflict(await push(tenant, other))
    assert (found["entity"], found["reason"], found["serverVersion"]) == (
        "USER",
        "ALREADY_EXISTS",
        1,
    )
    assert comparable(found["serverRecord"]) == comparable(server)
    assert found["serverRecord"]["roleSet"] == {
        "guardian": False,
        "student": False,
        "teacher": True,
        "staff": False,
        "admin": False,
    }
    assert found["serverRecord"]["birth"] == "1990-01-02"
    assert await get_user(tenant, user_id) == server

    # otherwise judged as an update with the same base: changed on the server after it ...
    stale = {"since": "0", "users": {"inserted": [change(user_id, name="Bob")]}}
    assert conflict(await push(tenant, stale))["reason"] == "CHANGED_ON_SERVER"
    assert await get_user(tenant, user_id) == server

    # ... and applied when the record has not changed since (WatermelonDB re-sends a create
    # edited while its first push was in flight: the server MUST update it)
    current = {"since": before, "users": {"inserted": [change(user_id, name="Bob")]}}
    won = await push(tenant, current)
    assert (won["applied"], won["conflicts"]) == (1, [])
    user = await get_user(tenant, user_id)
    assert user is not None
    assert (user["name"], user["birth"], user["version"]) == ("Bob", "1990-01-02", 2)


async def test_insert_of_an_existing_id_without_a_base_is_a_blind_write(tenant: Tenant) -> None:
    badge_id = await seed_badge(tenant)
    blind = await push(tenant, {"badges": {"inserted": [change(badge_id, name="blind")]}})
    assert (blind["applied"], blind["conflicts"]) == (1, [])
    badge = await get_badge(tenant, badge_id)
    assert badge is not None
    assert (badge["name"], badge["version"]) == ("blind", 2)


async def test_retried_insert_is_harmless(tenant: Tenant) -> None:
    base = await checkpoint(tenant)
    badge_id = str(uuid.uuid4())
    payload = {"since": base, "badges": {"inserted": [change(badge_id, name="new", feed="PAID")]}}
    first = await push(tenant, payload)
    assert (first["applied"], first["conflicts"], first["errors"]) == (1, [], [])
    page = await pull(tenant, base, "badges { inserted { id version name feed } }")
    assert page["badges"]["inserted"] == [
        {"id": badge_id, "version": 1, "name": "new", "feed": "PAID"}
    ]
    # the client did not get the answer and sends the same push again
    retry = await push(tenant, payload)
    assert (retry["applied"], retry["conflicts"], retry["errors"]) == (0, [], [])
    assert retry["checkpoint"] == first["checkpoint"]
    badge = await get_badge(tenant, badge_id)
    assert badge is not None
    assert badge["version"] == 1


async def test_deleted_on_server(tenant: Tenant) -> None:
    badge_id = await seed_badge(tenant)
    base = await checkpoint(tenant)
    gone = await push(tenant, {"badges": {"deleted": [{"id": badge_id, "actor": "phone-2"}]}})
    assert gone["applied"] == 1
    assert await get_badge(tenant, badge_id) is None
    assert await stored_column(tenant, "badges", badge_id, "actor") == "phone-2"

    for payload in (
        {"since": base, "badges": {"updated": [change(badge_id, name="edited")]}},
        {"badges": {"updated": [change(badge_id, baseVersion=1, name="edited")]}},
    ):
        report = await push(tenant, payload)
        found = conflict(report)
        assert (found["entity"], found["id"], found["reason"]) == (
            "BADGE",
            badge_id,
            "DELETED_ON_SERVER",
        )
        assert found["serverVersion"] == 2
        record = found["serverRecord"]
        assert (record["id"], record["version"], record["deleted"]) == (badge_id, 2, True)
        assert (record["name"], record["gender"]) == ("Тузик", "MALE")
        assert "updatedAt" in record
    assert await get_badge(tenant, badge_id) is None

    # deleting it again is a no-op, whatever the base
    at = await checkpoint(tenant)
    for payload in (
        {"badges": {"deleted": [{"id": badge_id}]}},
        {"since": base, "badges": {"deleted": [{"id": badge_id, "baseVersion": 1}]}},
    ):
        again = await push(tenant, payload)
        assert (again["applied"], again["conflicts"], again["errors"]) == (0, [], [])
        assert again["checkpoint"] == at
    page = await pull(tenant, base, "badges { inserted { id } updated { id } deleted }")
    assert page["badges"] == {"inserted": [], "updated": [], "deleted": [badge_id]}


async def test_an_update_of_an_unknown_id_is_not_found(tenant: Tenant) -> None:
    before = await checkpoint(tenant)
    missing = str(uuid.uuid4())
    report = await push(tenant, {"badges": {"updated": [change(missing, name="x")]}})
    assert report["applied"] == 0
    assert report["conflicts"] == [
        {
            "entity": "BADGE",
            "id": missing,
            "reason": "NOT_FOUND",
            "serverVersion": None,
            "serverRecord": None,
        }
    ]
    assert report["checkpoint"] == before


async def test_deleting_an_unknown_or_deleted_id_is_a_no_op(tenant: Tenant) -> None:
    """WatermelonDB: a record created and deleted offline is pushed in ``deleted``; the
    server "MUST ignore it and MUST NOT return an error code" — atomic pushes included, or
    the device never syncs again."""
    gone = await seed_badge(tenant)
    await push(tenant, {"badges": {"deleted": [{"id": gone}]}})
    before = await checkpoint(tenant)
    never = str(uuid.uuid4())
    for atomic in (False, True):
        report = await push(
            tenant,
            {"atomic": atomic, "badges": {"deleted": [{"id": never}, {"id": gone}]}},
        )
        assert (report["applied"], report["conflicts"], report["errors"]) == (0, [], [])
        assert report["checkpoint"] == before
    assert await get_badge(tenant, never) is None


async def test_another_tenants_record_is_not_found_and_untouched(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = await seed_badge(other_tenant, comment="theirs")
    their_checkpoint = await checkpoint(other_tenant)
    report = await push(
        tenant,
        {
            "badges": {
                "updated": [change(theirs, name="hijack")],
                "deleted": [{"id": theirs}],  # no record of this tenant: a no-op
            }
        },
    )
    assert report["applied"] == 0
    assert [(c["reason"], c["serverRecord"]) for c in report["conflicts"]] == [
        ("NOT_FOUND", None),
    ]
    # the same id in this tenant names a record of its own
    mine = await push(tenant, {"badges": {"inserted": [change(theirs, name="mine")]}})
    assert (mine["applied"], mine["conflicts"]) == (1, [])
    badge = await get_badge(other_tenant, theirs)
    assert badge is not None
    assert (badge["name"], badge["comment"], badge["version"]) == ("Тузик", "theirs", 1)
    assert await checkpoint(other_tenant) == their_checkpoint
    own = await get_badge(tenant, theirs)
    assert own is not None
    assert (own["name"], own["comment"]) == ("mine", None)


# --- caughtUp: echo-free pushes ------------------------------------------------------------


async def test_a_caught_up_push_never_gets_its_own_changes_back(tenant: Tenant) -> None:
    """Nobody committed between the client's ``since`` and its push: the report's checkpoint
    is a safe next ``since``, and the next pull has nothing of the client's own."""
    seeded = await seed_badge(tenant)
    since = await checkpoint(tenant)
    mine = str(uuid.uuid4())
    report = await push(
        tenant,
        {
            "since": since,
            "badges": {
                "inserted": [change(mine, name="mine")],
                "updated": [change(seeded, name="renamed")],
            },
        },
    )
    assert (report["applied"], report["caughtUp"]) == (2, True)
    assert int(report["checkpoint"]) == int(since) + 2
    page = await pull(tenant, report["checkpoint"], "badges { inserted { id } updated { id } }")
    assert page["badges"] == {"inserted": [], "updated": []}
    # a push that changes nothing is caught up too when nothing else happened
    idle = await push(tenant, {"since": report["checkpoint"], "badges": {"deleted": []}})
    assert (idle["applied"], idle["caughtUp"], idle["checkpoint"]) == (
        0,
        True,
        report["checkpoint"],
    )


async def test_a_push_behind_another_write_is_not_caught_up(tenant: Tenant) -> None:
    since = await checkpoint(tenant)
    other = await seed_badge(tenant)  # another writer commits after the client's since
    mine = str(uuid.uuid4())
    report = await push(
        tenant, {"since": since, "badges": {"inserted": [change(mine, name="mine")]}}
    )
    assert (report["applied"], report["caughtUp"]) == (1, False)
    # so the client pulls from its old since, and gets the other write (and its own echo)
    page = await pull(tenant, since, "badges { inserted { id } }")
    assert {b["id"] for b in page["badges"]["inserted"]} == {other, mine}
    # without since the server cannot tell
    blind = await push(tenant, {"badges": {"updated": [change(mine, name="again")]}})
    assert (blind["applied"], blind["caughtUp"]) == (1, False)


# --- atomic, applied -------------------------------------------------------------------------


async def test_atomic_push_with_one_conflict_applies_nothing(tenant: Tenant) -> None:
    ok_id, contested = await seed_badge(tenant), await seed_badge(tenant)
    base = await checkpoint(tenant)
    await sync(tenant, {"badges": {"data": [{"id": contested, "name": "server"}]}})
    current = await checkpoint(tenant)
    new_id = str(uuid.uuid4())
    changes = {
        "since": base,
        "badges": {
            "inserted": [change(new_id, name="new")],
            "updated": [change(ok_id, name="ok"), change(contested, name="contested")],
        },
        "persons": {"inserted": [change(str(uuid.uuid4()), name="p")]},
    }

    atomic = await push(tenant, {**changes, "atomic": True})
    assert atomic["applied"] == 0
    assert [(c["id"], c["reason"]) for c in atomic["conflicts"]] == [
        (contested, "CHANGED_ON_SERVER")
    ]
    assert atomic["checkpoint"] == current
    assert await checkpoint(tenant) == current
    assert await get_badge(tenant, new_id) is None
    unchanged = await get_badge(tenant, ok_id)
    assert unchanged is not None
    assert (unchanged["name"], unchanged["version"]) == ("Тузик", 1)
    assert (await tenant.gql("{ persons { totalCount } }"))["data"]["persons"]["totalCount"] == 0

    # not atomic: the rest applies
    partial = await push(tenant, changes)
    assert partial["applied"] == 3
    assert [(c["id"], c["reason"]) for c in partial["conflicts"]] == [
        (contested, "CHANGED_ON_SERVER")
    ]
    assert int(partial["checkpoint"]) == int(current) + 3
    applied = await get_badge(tenant, ok_id)
    assert applied is not None
    assert (applied["name"], applied["version"]) == ("ok", 2)
    contested_now = await get_badge(tenant, contested)
    assert contested_now is not None
    assert contested_now["name"] == "server"


async def test_atomic_push_with_an_item_error_applies_nothing(tenant: Tenant) -> None:
    badge_id = await seed_badge(tenant)
    before = await checkpoint(tenant)
    report = await push(
        tenant,
        {
            "atomic": True,
            "badges": {"updated": [change(badge_id, name="ok"), change(badge_id, gender="ROBOT")]},
        },
    )
    assert (report["applied"], report["conflicts"], report["checkpoint"]) == (0, [], before)
    assert [(e["index"], e["field"]) for e in report["errors"]] == [(1, "updated.data.gender")]
    badge = await get_badge(tenant, badge_id)
    assert badge is not None
    assert (badge["name"], badge["version"]) == ("Тузик", 1)


async def test_applied_counts_only_real_changes(tenant: Tenant) -> None:
    same_id, changed_id = await seed_badge(tenant), await seed_badge(tenant)
    before = await checkpoint(tenant)
    identical = await push(
        tenant, {"badges": {"updated": [change(same_id, name="Тузик", gender="MALE")]}}
    )
    assert (identical["applied"], identical["conflicts"], identical["errors"]) == (0, [], [])
    assert identical["checkpoint"] == before
    mixed = await push(
        tenant,
        {
            "since": before,
            "badges": {"updated": [change(same_id, feed="FREE"), change(changed_id, feed="PAID")]},
        },
    )
    assert (mixed["applied"], mixed["conflicts"]) == (1, [])
    assert int(mixed["checkpoint"]) == int(before) + 1
    page = await pull(tenant, before, "badges { updated { id version feed } }")
    assert page["badges"]["updated"] == [{"id": changed_id, "version": 2, "feed": "PAID"}]
    same = await get_badge(tenant, same_id)
    assert same is not None
    assert same["version"] == 1


# --- data: references and item errors ----------------------------------------------------


async def test_references_resolve_like_in_sync(tenant: Tenant, other_tenant: Tenant) -> None:
    await sync(other_tenant, {"persons": {"data": [{"alias": "THEIRS", "name": "x"}]}})
    synced = await sync(tenant, {"persons": {"data": [{"alias": "P-1", "name": "Иван"}]}})
    [person_1] = synced["persons"]["ids"]
    person_2, badge_1, badge_2, arrival = (str(uuid.uuid4()) for _ in range(4))
    report = await push(
        tenant,
        {
            "persons": {"inserted": [change(person_2, alias="P-2", name="Пётр")]},
            "badges": {
                "inserted": [
                    change(badge_1, name="b1", person="P-1"),  # an alias
                    change(badge_2, name="b2", person="P-2"),  # created in this push
                    change(str(uuid.uuid4()), name="b3", person="THEIRS"),  # other tenant
                ]
            },
            "arrivals": {"inserted": [change(arrival, badge=badge_1, status="PLANNED")]},
        },
    )
    assert report["applied"] == 4
    assert report["conflicts"] == []
    [error] = report["errors"]
    assert (error["entity"], error["index"], error["field"], error["code"]) == (
        "BADGE",
        2,
        "inserted.data.person",
        "UNRESOLVED_REFERENCE",
    )
    assert "THEIRS" in error["message"]
    one, two = await get_badge(tenant, badge_1), await get_badge(tenant, badge_2)
    assert one is not None
    assert two is not None
    assert (one["personId"], two["personId"]) == (person_1, person_2)
    body = await tenant.gql("query($id: ID) { arrival(id: $id) { badgeId } }", {"id": arrival})
    assert body["data"]["arrival"] == {"badgeId": badge_1}

    unresolved = await push(
        tenant,
        {"badges": {"updated": [change(badge_1, name="kept"), change(badge_2, person="nobody")]}},
    )
    assert unresolved["applied"] == 1
    [error] = unresolved["errors"]
    assert (error["index"], error["id"], error["field"], error["code"]) == (
        1,
        badge_2,
        "updated.data.person",
        "UNRESOLVED_REFERENCE",
    )
    two = await get_badge(tenant, badge_2)
    assert two is not None
    assert (two["personId"], two["version"]) == (person_2, 1)


async def test_invalid_data_gives_item_errors_with_index_and_field(tenant: Tenant) -> None:
    badge_id = await seed_badge(tenant)
    user_ok, user_nameless, user_valid = (str(uuid.uuid4()) for _ in range(3))
    report = await push(
        tenant,
        {
            "badges": {
                "inserted": [change("not an id!", name="x")],
                "updated": [change(badge_id, name="fine"), change(badge_id, feed="CAVIAR")],
            },
            "users": {
                "inserted": [
                    change(user_ok, name="ok"),
                    change(user_nameless, email="x@example.com"),
                    change(user_valid, name="valid"),
                ],
                "updated": [change(user_ok, name=None)],
            },
        },
    )
    assert report["conflicts"] == []
    errors = {(e["entity"], e["field"]): e for e in report["errors"]}
    assert set(errors) == {
        ("BADGE", "inserted.id"),
        ("BADGE", "updated.data.feed"),
        ("USER", "inserted.data.name"),
        ("USER", "updated.data.name"),
    }
    assert errors[("BADGE", "inserted.id")]["index"] == 0
    assert errors[("BADGE", "updated.data.feed")]["index"] == 1
    assert errors[("BADGE", "updated.data.feed")]["id"] == badge_id
    assert "CAVIAR" in errors[("BADGE", "updated.data.feed")]["message"]
    assert errors[("USER", "inserted.data.name")]["index"] == 1
    assert errors[("USER", "inserted.data.name")]["id"] == user_nameless
    assert errors[("USER", "updated.data.name")]["index"] == 0
    assert {e["code"] for e in report["errors"]} == {"UNPROCESSABLE"}
    assert all(e["message"] for e in report["errors"])
    # the valid changes applied: a badge update and two user inserts
    assert report["applied"] == 3
    badge = await get_badge(tenant, badge_id)
    assert badge is not None
    assert (badge["name"], badge["feed"], badge["version"]) == ("fine", "FREE", 2)
    assert await get_user(tenant, user_nameless) is None
    kept = await get_user(tenant, user_ok)
    assert kept is not None
    assert kept["name"] == "ok"


# --- request-level refusals ---------------------------------------------------------------


async def test_since_and_from_date_together_is_bad_request(tenant: Tenant) -> None:
    badge_id = await seed_badge(tenant)
    base = await checkpoint(tenant)
    payload = {
        "since": base,
        "fromDate": "2024-01-01T00:00:00Z",
        "badges": {"updated": [change(badge_id, name="x")]},
    }
    assert await push_refused(tenant, payload) == "BAD_REQUEST"
    assert await push_refused(tenant, {**payload, "fromDate": None, "since": "later"}) == (
        "BAD_REQUEST"
    )
    badge = await get_badge(tenant, badge_id)
    assert badge is not None
    assert badge["version"] == 1


async def test_push_needs_write_scope(tenant: Tenant) -> None:
    badge_id = str(uuid.uuid4())
    payload = {"badges": {"inserted": [change(badge_id, name="x")]}}
    reader = await tenant.new_key("sync:read")
    assert await push_refused(tenant, payload, key=reader) == "FORBIDDEN"
    assert await get_badge(tenant, badge_id) is None
    writer = await tenant.new_key("sync:write")
    assert (await push(tenant, payload, key=writer))["applied"] == 1


async def test_push_over_the_batch_limit_is_refused(tenant: Tenant) -> None:
    new_id = str(uuid.uuid4())
    # the limit counts inserted, updated and deleted together
    payload = {
        "badges": {
            "inserted": [change(new_id, name="x")],
            "deleted": [{"id": str(uuid.uuid4())} for _ in range(1000)],
        }
    }
    assert await push_refused(tenant, payload) == "BATCH_TOO_LARGE"
    assert await get_badge(tenant, new_id) is None
    assert await checkpoint(tenant) == "0"


async def test_company_guid_must_name_the_callers_tenant(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    own, foreign = str(uuid.uuid4()), str(uuid.uuid4())
    person = str(uuid.uuid4())
    payload = {
        "persons": {"inserted": [change(person, name="p")]},
        "projects": {
            "inserted": [
                change(own, name="own", companyGuid=tenant.id.upper()),
                change(foreign, name="foreign", companyGuid=other_tenant.id),
            ]
        },
    }
    assert await push_refused(tenant, payload) == "FORBIDDEN"
    assert await checkpoint(tenant) == "0"
    assert await checkpoint(other_tenant) == "0"
    del payload["projects"]["inserted"][1]
    report = await push(tenant, payload)
    assert (report["applied"], report["errors"]) == (2, [])
    body = await tenant.gql("{ projects { nodes { id name } } }")
    assert body["data"]["projects"]["nodes"] == [{"id": own, "name": "own"}]


@pytest.fixture
async def small_badges(backend: str, database_urls: dict[str, str]) -> AsyncIterator[Tenant]:
    """A server configured with a batch limit of 3 badges (other entities: the default)."""
    settings = Settings(
        database_url=database_urls[backend], dev=False, pool_size=5, batch_limits={"badges": 3}
    )
    state = make_state(settings)
    transport = httpx.ASGITransport(app=create_app(state=state))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield await make_tenant(state, client, "limits")
    await state.close()


async def test_per_entity_push_limit(small_badges: Tenant) -> None:
    t = small_badges
    four = [change(str(uuid.uuid4()), name=f"b{i}") for i in range(4)]
    refused = {
        "persons": {"inserted": [change(str(uuid.uuid4()), name="p")]},
        "badges": {"inserted": four},
    }
    assert await push_refused(t, refused) == "BATCH_TOO_LARGE"
    assert (await t.gql("{ persons { totalCount } }"))["data"]["persons"]["totalCount"] == 0
    assert (await push(t, {"badges": {"inserted": four[:3]}}))["applied"] == 3
    assert (await push(t, {"persons": {"inserted": four}}))["applied"] == 4


# --- an offline client's round trip -----------------------------------------------------------


class Client:
    """An offline client: a local copy of the badges and the checkpoint of its last pull."""

    def __init__(self, t: Tenant) -> None:
        self.t = t
        self.since: str | None = None
        self.local: dict[str, Json] = {}

    async def pull(self) -> None:
        page = await pull(
            self.t, self.since, f"badges {{ inserted {{ {BADGE} }} updated {{ {BADGE} }} deleted }}"
        )
        for record in page["badges"]["inserted"] + page["badges"]["updated"]:
            self.local[record["id"]] = record
        for id_ in page["badges"]["deleted"]:
            self.local.pop(id_, None)
        self.since = page["checkpoint"]


async def test_offline_client_round_trip(tenant: Tenant) -> None:
    badge_id = await seed_badge(tenant, number="0042")
    a, b = Client(tenant), Client(tenant)
    await a.pull()
    await b.pull()
    assert a.local[badge_id]["version"] == 1

    # A edits offline; meanwhile B's change reaches the server
    a_edit = {"comment": "allergic to nuts"}
    await sync(tenant, {"badges": {"data": [{"id": badge_id, "name": "Тузик (B)"}]}})
    server = await get_badge(tenant, badge_id)
    assert server is not None

    first = await push(
        tenant, {"since": a.since, "badges": {"updated": [change(badge_id, **a_edit)]}}
    )
    found = conflict(first)
    assert (found["reason"], found["serverVersion"]) == ("CHANGED_ON_SERVER", 2)
    assert comparable(found["serverRecord"]) == comparable(server)
    assert found["serverRecord"]["name"] == "Тузик (B)"

    # A pulls, re-applies its edit on top of B's, and pushes from the new checkpoint
    await a.pull()
    assert a.local[badge_id] == server
    second = await push(
        tenant, {"since": a.since, "badges": {"updated": [change(badge_id, **a_edit)]}}
    )
    assert (second["applied"], second["conflicts"], second["errors"]) == (1, [], [])
    # the same with baseVersion would have applied too; now it is stale
    stale = await push(
        tenant, {"badges": {"updated": [change(badge_id, baseVersion=2, comment="again")]}}
    )
    assert conflict(stale)["serverVersion"] == 3

    await a.pull()
    await b.pull()
    final = await get_badge(tenant, badge_id)
    assert final is not None
    assert (final["name"], final["comment"], final["version"]) == (
        "Тузик (B)",
        "allergic to nuts",
        3,
    )
    assert a.local == b.local == {badge_id: final}
    assert a.since == b.since == second["checkpoint"]


async def test_a_pushed_change_reaches_other_pullers_with_its_version(tenant: Tenant) -> None:
    badge_id = await seed_badge(tenant)
    base = await checkpoint(tenant)
    payload = copy.deepcopy({"badges": {"updated": [change(badge_id, baseVersion=1, vegan=True)]}})
    report = await push(tenant, payload)
    assert report["applied"] == 1
    page = await pull(tenant, base, "badges { inserted { id } updated { id version vegan } }")
    assert page["badges"] == {
        "inserted": [],
        "updated": [{"id": badge_id, "version": 2, "vegan": True}],
    }
    assert page["checkpoint"] == report["checkpoint"]


# --- aliases --------------------------------------------------------------------------------


async def badge_by_alias(t: Tenant, alias: str) -> Json | None:
    body = await t.gql(
        "query($alias: String) { badge(alias: $alias) { id alias name version } }",
        {"alias": alias},
    )
    badge: Json | None = body["data"]["badge"]
    return badge


async def test_an_alias_of_another_live_record_is_a_key_mismatch(tenant: Tenant) -> None:
    holder = await seed_badge(tenant, alias="A1")
    other = await seed_badge(tenant)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    report = await push(
        tenant,
        {
            "badges": {
                "inserted": [
                    change(first, alias="A1", name="x"),
                    change(second, alias="NEW", name="y"),
                    change(str(uuid.uuid4()), alias="NEW", name="z"),
                ],
                "updated": [change(other, alias="A1")],
            }
        },
    )
    assert (report["applied"], report["conflicts"]) == (1, [])
    assert sorted((e["field"], e["index"], e["code"]) for e in report["errors"]) == [
        ("inserted.data.alias", 0, "KEY_MISMATCH"),
        ("inserted.data.alias", 2, "KEY_MISMATCH"),
        ("updated.data.alias", 0, "KEY_MISMATCH"),
    ]
    assert await badge_by_alias(tenant, "A1") == {
        "id": holder,
        "alias": "A1",
        "name": "Тузик",
        "version": 1,
    }
    created = await badge_by_alias(tenant, "NEW")
    assert created is not None
    assert created["id"] == second
    assert await get_badge(tenant, first) is None


async def test_aliases_move_between_records_in_one_push(tenant: Tenant) -> None:
    # whatever the order of the ids (rows are written in id order)
    a, b = sorted([str(uuid.uuid4()), str(uuid.uuid4())], reverse=True)
    await sync(tenant, {"badges": {"data": [{"id": a, "alias": "A"}, {"id": b, "alias": "B"}]}})
    gone = await seed_badge(tenant, alias="GONE")
    await push(tenant, {"badges": {"deleted": [{"id": gone}]}})
    heir = str(uuid.uuid4())
    report = await push(
        tenant,
        {
            "badges": {
                "inserted": [change(heir, alias="GONE", name="heir")],  # a tombstone's alias
                # a renames itself, then b takes a's old alias
                "updated": [change(a, alias="C"), change(b, alias="A")],
            }
        },
    )
    assert (report["applied"], report["conflicts"], report["errors"]) == (3, [], [])
    for alias, id_ in (("A", b), ("C", a), ("GONE", heir)):
        found = await badge_by_alias(tenant, alias)
        assert found is not None
        assert found["id"] == id_
