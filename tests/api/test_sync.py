"""``mutation sync`` through HTTP, as an importing client sees it, on both backends: the
shipped payloads, re-sends, update semantics, item errors, cleanSync, dryRun, request-level
refusals, tenant isolation, and the list/get queries that show the result."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import pytest_asyncio

from app.main import create_app
from app.settings import Settings
from app.state import AppState, make_state
from tests.conftest import BACKENDS, Tenant, example, make_tenant, statements

PLURALS = [
    *("users", "members", "classrooms"),
    *("persons", "directions", "badges", "arrivals", "engagements"),
    *("projects", "articles", "components", "assemblies", "pieces"),
]
RESULT = (
    "inserted updated unchanged deleted failed ids deletedIds cleanSync "
    "errors { entity index id alias field code message }"
)
SYNC = (
    "mutation($input: SyncInput!, $dryRun: Boolean, $force: Boolean) {"
    " sync(input: $input, dryRun: $dryRun, force: $force) {"
    " checkpoint dryRun totals { inserted updated unchanged deleted failed } "
    + " ".join(f"{p} {{ {RESULT} }}" for p in PLURALS)
    + " } }"
)
FEED = " ".join(
    f"{p} {{ inserted {{ id version }} updated {{ id version }} deleted }}" for p in PLURALS
)
ZERO = {"inserted": 0, "updated": 0, "unchanged": 0, "deleted": 0, "failed": 0}

Json = dict[str, Any]


# --- one server per backend for this module (an app per test cost more than the tests);
# every test still gets tenants of its own ---

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def server_settings(url: str, **overrides: Any) -> Settings:
    return Settings(database_url=url, dev=False, pool_size=5, **overrides)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def state(backend: str, database_urls: dict[str, str]) -> AsyncIterator[AppState]:
    app_state = make_state(server_settings(database_urls[backend]))
    yield app_state
    await app_state.close()


@asynccontextmanager
async def client_for(app_state: AppState) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(state=app_state))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def http(state: AppState) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(state) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="module")
async def tenant(state: AppState, http: httpx.AsyncClient) -> Tenant:
    return await make_tenant(state, http, "a")


@pytest_asyncio.fixture(loop_scope="module")
async def other_tenant(state: AppState, http: httpx.AsyncClient) -> Tenant:
    return await make_tenant(state, http, "b")


# --- helpers ---------------------------------------------------------------------------


async def sync(
    t: Tenant, payload: Json, *, dry_run: bool = False, force: bool = False, key: str | None = None
) -> Json:
    body = await t.gql(SYNC, {"input": payload, "dryRun": dry_run, "force": force}, key=key)
    report: Json = body["data"]["sync"]
    assert report["dryRun"] is dry_run
    return report


async def sync_refused(
    t: Tenant, payload: Json, *, dry_run: bool = False, key: str | None = None
) -> str:
    """The code of a request-level refusal (no report at all)."""
    body = await t.gql(SYNC, {"input": payload, "dryRun": dry_run}, key=key, expect_errors=True)
    assert body["data"] is None, body
    [error] = body["errors"]
    return str(error["extensions"]["code"])


async def pull(t: Tenant, since: str | None, selection: str = FEED) -> Json:
    body = await t.gql(
        "query($since: String) { changes(since: $since) {"
        f" checkpoint hasMore fullSyncRequired {selection} }} }}",
        {"since": since},
    )
    page: Json = body["data"]["changes"]
    assert page["hasMore"] is False
    assert page["fullSyncRequired"] is False
    return page


async def checkpoint(t: Tenant) -> str:
    body = await t.gql("{ changes { checkpoint } }")
    return str(body["data"]["changes"]["checkpoint"])


def feed_is_empty(page: Json) -> bool:
    return all(not page[p][kind] for p in PLURALS for kind in ("inserted", "updated", "deleted"))


async def listing(t: Tenant, plural: str, args: str = "", fields: str = "id alias") -> Json:
    body = await t.gql(
        f"{{ {plural}{args} {{ totalCount hasNextPage endCursor nodes {{ {fields} }} }} }}"
    )
    page: Json = body["data"][plural]
    return page


async def get_user(t: Tenant, fields: str = "id alias name version", **by: str) -> Json | None:
    body = await t.gql(
        f"query($id: ID, $alias: String) {{ user(id: $id, alias: $alias) {{ {fields} }} }}",
        {"id": None, "alias": None, **by},
    )
    user: Json | None = body["data"]["user"]
    return user


def is_uuid(value: object) -> bool:
    return isinstance(value, str) and str(uuid.UUID(value)) == value


def user(alias: str, **fields: Any) -> Json:
    return {"alias": alias, "name": f"user {alias}", **fields}


async def seed_users(t: Tenant, count: int) -> list[str]:
    report = await sync(t, {"users": {"data": [user(f"u{i}") for i in range(count)]}})
    assert report["users"]["inserted"] == count
    return list(report["users"]["ids"])


def reordered(payload: Json, order: str) -> Json:
    keys = list(payload)
    return {k: payload[k] for k in (reversed(keys) if order == "reversed" else keys)}


def by_alias(records: list[Json]) -> dict[str, Json]:
    return {r["alias"]: r for r in records}


# --- the shipped examples ------------------------------------------------------------------


async def check_education(t: Tenant, report: Json) -> None:
    page = await pull(
        t,
        None,
        "users { inserted { id alias name email birth active invite version"
        " roleSet { guardian student teacher staff admin } } }"
        " members { inserted { id alias name birth active userIds users { email } } }"
        " classrooms { inserted { id alias name active tags memberIds adminIds"
        " members { alias } admins { alias } } }",
    )
    [u] = page["users"]["inserted"]
    [m] = page["members"]["inserted"]
    [c] = page["classrooms"]["inserted"]
    assert report["users"]["ids"] == [u["id"]]
    assert report["members"]["ids"] == [m["id"]]
    assert report["classrooms"]["ids"] == [c["id"]]
    assert u == {
        "id": u["id"],
        "alias": "ID456",
        "name": "familiar exemplo",
        "email": "familiar.exemplo@email.com",
        "birth": "1962-11-16",
        "active": True,
        "invite": False,
        "version": 1,
        "roleSet": {
            "guardian": True,
            "student": False,
            "teacher": False,
            "staff": False,
            "admin": False,
        },
    }
    # the member names its user by email, the classroom its member and admin by alias
    assert m["userIds"] == [u["id"]]
    assert m["users"] == [{"email": "familiar.exemplo@email.com"}]
    assert (m["alias"], m["name"], m["birth"], m["active"]) == (
        "ID123",
        "aluno exemplo",
        "2004-08-22",
        True,
    )
    assert c["memberIds"] == [m["id"]]
    assert c["adminIds"] == [u["id"]]
    assert c["members"] == [{"alias": "ID123"}]
    assert c["admins"] == [{"alias": "ID456"}]
    assert (c["alias"], c["name"], c["tags"]) == ("ID789", "turma exemplo", ["ensino médio"])


async def check_festival(t: Tenant, report: Json) -> None:
    payload = example("festival-sync.json")
    for plural, batch in payload.items():
        # client-given ids are kept, in input order
        assert report[plural]["ids"] == [item["id"] for item in batch["data"]]
    page = await pull(
        t,
        None,
        "persons { inserted { id name gender birthDate vegan } }"
        " directions { inserted { id name type firstYear lastYear } }"
        " badges { inserted { id personId person { name } gender feed role number } }"
        " arrivals { inserted { id badgeId badge { number } status arrivalDate"
        " arrivalTransport departureDate departureTransport } }"
        " engagements { inserted { id year role status personId directionId"
        " direction { name } } }",
    )
    person_id, direction_id, badge_id = (payload[p]["data"][0]["id"] for p in PLURALS[3:6])
    [person] = page["persons"]["inserted"]
    assert person == {
        "id": person_id,
        "name": "Иван Петров",
        "gender": "MALE",
        "birthDate": "1990-11-05",
        "vegan": False,
    }
    [direction] = page["directions"]["inserted"]
    assert (direction["type"], direction["firstYear"], direction["lastYear"]) == (
        "FIELD_SERVICE",
        2020,
        2024,
    )
    [badge] = page["badges"]["inserted"]
    assert badge["personId"] == person_id
    assert badge["person"] == {"name": "Иван Петров"}
    assert (badge["gender"], badge["feed"], badge["role"], badge["number"]) == (
        "MALE",
        "FREE",
        "VOLUNTEER",
        "0042",
    )
    [arrival] = page["arrivals"]["inserted"]
    assert arrival["badgeId"] == badge_id
    assert arrival["badge"] == {"number": "0042"}
    assert (arrival["status"], arrival["arrivalDate"], arrival["arrivalTransport"]) == (
        "PLANNED",
        "2024-07-10",
        "BUS",
    )
    assert (arrival["departureDate"], arrival["departureTransport"]) == ("2024-07-21", "SELF")
    [engagement] = page["engagements"]["inserted"]
    assert (engagement["personId"], engagement["directionId"]) == (person_id, direction_id)
    assert engagement["direction"] == {"name": "Кухня"}
    assert (engagement["year"], engagement["role"], engagement["status"]) == (
        2024,
        "VOLUNTEER",
        "CONFIRMED",
    )


async def check_manufacturing(t: Tenant, report: Json) -> None:
    page = await pull(
        t,
        None,
        "projects { inserted { id alias name startDate dueDate } }"
        " articles { inserted { id alias number } }"
        " components { inserted { id alias projectId project { alias } quantity } }"
        " assemblies { inserted { id alias componentId quantity } }"
        " pieces { inserted { id alias assemblyId articleId lengthMm widthMm weightKg } }",
    )
    records = {p: by_alias(page[p]["inserted"]) for p in PLURALS[8:]}
    for plural, batch in example("manufacturing-sync.json").items():
        expected = [records[plural][item["alias"]]["id"] for item in batch["data"]]
        assert report[plural]["ids"] == expected  # in input order
    project, article = records["projects"]["P-2024-001"], records["articles"]["HEA200"]
    component, assembly = records["components"]["C-1"], records["assemblies"]["A-1"]
    assert (project["startDate"], project["dueDate"]) == ("2024-03-01", None)
    assert component["projectId"] == project["id"]
    assert component["project"] == {"alias": "P-2024-001"}
    assert (assembly["componentId"], assembly["quantity"]) == (component["id"], 4)
    shaft, plate = records["pieces"]["PC-1"], records["pieces"]["PC-2"]
    assert (shaft["assemblyId"], shaft["articleId"]) == (assembly["id"], article["id"])
    assert (shaft["lengthMm"], shaft["weightKg"], shaft["widthMm"]) == (6000.0, 253.2, None)
    assert (plate["assemblyId"], plate["articleId"], plate["widthMm"]) == (
        assembly["id"],
        None,
        400.0,
    )


EXAMPLES: dict[str, Callable[[Tenant, Json], Any]] = {
    "education": check_education,
    "festival": check_festival,
    "manufacturing": check_manufacturing,
}


def item_counts(payload: Json) -> dict[str, int]:
    return {plural: len(batch["data"]) for plural, batch in payload.items()}


@pytest.mark.parametrize("order", ["as shipped", "reversed"])
@pytest.mark.parametrize("name", list(EXAMPLES))
async def test_example_payload_creates_every_record(tenant: Tenant, name: str, order: str) -> None:
    """Dependency order comes from the schema, not from the key order of the input."""
    payload = reordered(example(f"{name}-sync.json"), order)
    report = await sync(tenant, payload)
    counts = item_counts(payload)
    assert report["totals"] == {**ZERO, "inserted": sum(counts.values())}
    for plural in PLURALS:
        if plural not in counts:
            assert report[plural] is None
            continue
        result = report[plural]
        assert result["errors"] == []
        assert result["inserted"] == counts[plural]
        assert result["cleanSync"] is None
        assert all(is_uuid(i) for i in result["ids"])
    await EXAMPLES[name](tenant, report)


@pytest.mark.parametrize("name", list(EXAMPLES))
async def test_resending_a_payload_changes_nothing(tenant: Tenant, name: str) -> None:
    payload = example(f"{name}-sync.json")
    first = await sync(tenant, payload)
    before = first["checkpoint"]
    again = await sync(tenant, payload)
    total = sum(item_counts(payload).values())
    assert again["totals"] == {**ZERO, "unchanged": total}
    for plural, count in item_counts(payload).items():
        assert again[plural]["unchanged"] == count
        assert again[plural]["ids"] == first[plural]["ids"]
    assert again["checkpoint"] == before
    page = await pull(tenant, before)
    assert feed_is_empty(page)
    assert page["checkpoint"] == before
    snapshot = await pull(tenant, None)
    assert {r["version"] for p in PLURALS for r in snapshot[p]["inserted"]} == {1}


# --- updates ------------------------------------------------------------------------------

USER_FIELDS = "id alias name email birth version roleSet { teacher guardian }"


async def test_omitted_field_keeps_its_value_and_null_clears_it(tenant: Tenant) -> None:
    first = await sync(
        tenant,
        {
            "users": {
                "data": [
                    user(
                        "u1",
                        email="ann@example.com",
                        birth="1990-01-02",
                        roleSet={"teacher": True},
                    )
                ]
            }
        },
    )
    [uid] = first["users"]["ids"]
    assert is_uuid(uid)

    renamed = await sync(tenant, {"users": {"data": [{"alias": "u1", "name": "Ann B"}]}})
    assert (renamed["users"]["updated"], renamed["users"]["ids"]) == (1, [uid])
    assert await get_user(tenant, USER_FIELDS, alias="u1") == {
        "id": uid,
        "alias": "u1",
        "name": "Ann B",
        "email": "ann@example.com",
        "birth": "1990-01-02",
        "version": 2,
        "roleSet": {"teacher": True, "guardian": False},
    }

    cleared = await sync(tenant, {"users": {"data": [{"id": uid, "email": None, "roleSet": None}]}})
    assert cleared["totals"] == {**ZERO, "updated": 1}
    stored = await get_user(tenant, USER_FIELDS, id=uid)
    assert stored is not None
    assert (stored["name"], stored["email"], stored["roleSet"]) == ("Ann B", None, None)
    assert (stored["birth"], stored["version"]) == ("1990-01-02", 3)


async def test_update_bumps_version_once_and_reports_updated(tenant: Tenant) -> None:
    [uid] = await seed_users(tenant, 1)
    before = await checkpoint(tenant)
    report = await sync(tenant, {"users": {"data": [{"id": uid, "name": "changed"}]}})
    assert report["totals"] == {**ZERO, "updated": 1}
    page = await pull(tenant, before)
    assert page["users"]["updated"] == [{"id": uid, "version": 2}]
    assert page["users"]["inserted"] == []
    assert int(page["checkpoint"]) > int(before)


async def test_matching_by_id_then_alias(tenant: Tenant) -> None:
    given = str(uuid.uuid4())
    first = await sync(tenant, {"users": {"data": [{"id": given, "alias": "a", "name": "x"}]}})
    assert first["users"]["ids"] == [given]

    # by id: the alias can be renamed
    by_id = await sync(tenant, {"users": {"data": [{"id": given, "alias": "b"}]}})
    assert (by_id["users"]["updated"], by_id["users"]["ids"]) == (1, [given])
    assert await get_user(tenant, alias="a") is None
    # by alias, when no id is sent
    by_alias_ = await sync(tenant, {"users": {"data": [{"alias": "b", "name": "y"}]}})
    assert (by_alias_["users"]["updated"], by_alias_["users"]["ids"]) == (1, [given])
    # an upper-case id names the same record
    upper = await sync(tenant, {"users": {"data": [{"id": given.upper(), "name": "z"}]}})
    assert (upper["users"]["updated"], upper["users"]["ids"]) == (1, [given])
    assert await get_user(tenant, id=given) == {
        "id": given,
        "alias": "b",
        "name": "z",
        "version": 4,
    }


async def test_ids_follow_input_order_and_generated_ids_are_uuids(tenant: Tenant) -> None:
    [existing] = await seed_users(tenant, 1)
    given = str(uuid.uuid4())
    report = await sync(
        tenant,
        {
            "users": {
                "data": [user("new1"), {"alias": "u0", "name": "renamed"}, user("new2", id=given)]
            }
        },
    )
    ids = report["users"]["ids"]
    assert (report["users"]["inserted"], report["users"]["updated"]) == (2, 1)
    assert ids[1:] == [existing, given]
    assert is_uuid(ids[0])
    assert len(set(ids)) == 3
    new1 = await get_user(tenant, alias="new1")
    assert new1 is not None
    assert new1["id"] == ids[0]


async def test_dates_in_dd_mm_yyyy_are_stored_as_iso(tenant: Tenant) -> None:
    report = await sync(
        tenant,
        {
            "users": {"data": [user("a", birth="22/08/2004"), user("b", birth="5/3/2001")]},
            "projects": {"data": [{"alias": "p", "name": "p", "startDate": "01/02/2024"}]},
        },
    )
    assert report["totals"]["inserted"] == 3
    nodes = by_alias((await listing(tenant, "users", fields="alias birth"))["nodes"])
    assert (nodes["a"]["birth"], nodes["b"]["birth"]) == ("2004-08-22", "2001-03-05")
    [project] = (await listing(tenant, "projects", fields="startDate"))["nodes"]
    assert project["startDate"] == "2024-02-01"
    # the same date in ISO form is the same value: nothing changes
    same = await sync(tenant, {"users": {"data": [user("a", birth="2004-08-22")]}})
    assert same["totals"] == {**ZERO, "unchanged": 1}
    # and a literal in the query text is parsed the same way
    body = await tenant.gql(
        'mutation { sync(input: {users: {data: [{alias: "c", name: "c", birth: "31/12/1999"}]}})'
        " { users { inserted } } }"
    )
    assert body["data"]["sync"]["users"]["inserted"] == 1
    c = await get_user(tenant, "birth", alias="c")
    assert c == {"birth": "1999-12-31"}


# --- item errors --------------------------------------------------------------------------

VALID: dict[str, Callable[[str], Json]] = {
    "users": lambda a: user(a),
    "members": lambda a: {"alias": a, "name": a},
    "projects": lambda a: {"alias": a, "name": a},
    "components": lambda a: {"alias": a, "name": a, "project": "P"},
    "badges": lambda a: {"alias": a, "name": a, "gender": "FEMALE"},
}
PARENTS: dict[str, Json] = {"components": {"projects": {"data": [{"alias": "P", "name": "p"}]}}}
ENTITY = {
    "users": "USER",
    "members": "MEMBER",
    "projects": "PROJECT",
    "components": "COMPONENT",
    "badges": "BADGE",
}

ITEM_ERRORS = [
    ("users", {"alias": "bad", "email": "no-name@example.com"}, "UNPROCESSABLE", "name"),
    ("projects", {"alias": "bad", "number": "7"}, "UNPROCESSABLE", "name"),
    ("components", {"alias": "bad", "name": "no project"}, "UNPROCESSABLE", "project"),
    ("badges", {"alias": "bad", "name": "b", "gender": "ALIEN"}, "UNPROCESSABLE", "gender"),
    ("users", user("bad", birth="next tuesday"), "UNPROCESSABLE", "birth"),
    ("users", user("bad", birth="2024-13-01"), "UNPROCESSABLE", "birth"),
    ("users", user("bad", birth="31/02/2020"), "UNPROCESSABLE", "birth"),
    ("users", user("bad", id="not an id!"), "UNPROCESSABLE", "id"),
    ("users", {"alias": "x" * 256, "name": "long"}, "UNPROCESSABLE", "alias"),
    ("members", {"alias": "bad", "name": "m", "users": ["nobody@example.com"]},
     "UNRESOLVED_REFERENCE", "users"),
    ("components", {"alias": "bad", "name": "c", "project": "NO-SUCH-PROJECT"},
     "UNRESOLVED_REFERENCE", "project"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("plural", "bad", "code", "field"),
    ITEM_ERRORS,
    ids=[
        "user without name",
        "project without name",
        "component without project",
        "bad enum",
        "date in no format",
        "impossible ISO date",
        "impossible dd/mm date",
        "id not an id (a space)",
        "alias over 255",
        "unresolved to-many reference",
        "unresolved to-one reference",
    ],
)
async def test_item_error_is_reported_and_valid_items_apply(
    tenant: Tenant, plural: str, bad: Json, code: str, field: str
) -> None:
    make = VALID[plural]
    payload = {**PARENTS.get(plural, {}), plural: {"data": [make("ok0"), bad, make("ok2")]}}
    report = await sync(tenant, payload)
    result = report[plural]
    [error] = result["errors"]
    assert (error["entity"], error["index"], error["code"], error["field"]) == (
        ENTITY[plural],
        1,
        code,
        field,
    )
    assert error["message"]
    assert error["alias"] == bad["alias"]
    assert (result["inserted"], result["failed"]) == (2, 1)
    assert result["ids"][1] is None
    assert all(is_uuid(i) for i in (result["ids"][0], result["ids"][2]))
    assert report["totals"]["failed"] == 1
    stored = await listing(tenant, plural)
    assert stored["totalCount"] == 2
    assert {n["alias"] for n in stored["nodes"]} == {"ok0", "ok2"}


async def test_alias_of_255_characters_is_accepted(tenant: Tenant) -> None:
    report = await sync(tenant, {"users": {"data": [{"alias": "y" * 255, "name": "long"}]}})
    assert report["totals"] == {**ZERO, "inserted": 1}
    assert await get_user(tenant, "alias", alias="y" * 255) == {"alias": "y" * 255}


async def test_key_mismatch_when_id_and_alias_name_two_records(tenant: Tenant) -> None:
    a, b = await seed_users(tenant, 2)
    before = await checkpoint(tenant)
    report = await sync(
        tenant,
        {"users": {"data": [{"id": a, "alias": "u1", "name": "hijack"}, user("u2")]}},
    )
    [error] = report["users"]["errors"]
    assert (error["index"], error["code"], error["id"], error["alias"]) == (
        0,
        "KEY_MISMATCH",
        a,
        "u1",
    )
    assert report["users"]["ids"][0] is None
    assert report["users"]["inserted"] == 1
    page = await pull(tenant, before)
    assert [r["id"] for r in page["users"]["inserted"]] == [report["users"]["ids"][1]]
    assert page["users"]["updated"] == []
    assert await get_user(tenant, "id name", alias="u1") == {"id": b, "name": "user u1"}
    assert await get_user(tenant, "alias name", id=a) == {"alias": "u0", "name": "user u0"}


@pytest.mark.parametrize(
    "items",
    [
        [{"id": "ID", "name": "first"}, {"id": "ID", "name": "second"}],
        [{"id": "ID", "alias": "dup", "name": "first"}, {"alias": "dup", "name": "second"}],
        [{"alias": "dup", "name": "first"}, {"alias": "dup", "name": "second"}],
        [{"alias": "dup", "name": "first"}, {"id": "ID", "alias": "dup", "name": "second"}],
    ],
    ids=["same id", "id then its alias", "same new alias", "new alias then id with it"],
)
async def test_same_record_twice_in_one_batch(tenant: Tenant, items: list[Json]) -> None:
    given = str(uuid.uuid4())
    data = [{k: given if v == "ID" else v for k, v in item.items()} for item in items]
    report = await sync(tenant, {"users": {"data": [*data, user("other")]}})
    result = report["users"]
    [error] = result["errors"]
    assert (error["entity"], error["index"], error["code"]) == ("USER", 1, "UNPROCESSABLE")
    assert result["ids"][1] is None
    assert (result["inserted"], result["failed"]) == (2, 1)
    stored = await listing(tenant, "users", fields="id alias name")
    assert stored["totalCount"] == 2
    assert {n["name"] for n in stored["nodes"]} == {"first", "user other"}


# --- cleanSync ------------------------------------------------------------------------------


async def test_clean_sync_deletes_records_not_in_the_batch(tenant: Tenant) -> None:
    u0, u1, u2 = await seed_users(tenant, 3)
    before = await checkpoint(tenant)
    report = await sync(
        tenant, {"users": {"data": [user("u0"), user("u1"), user("u9")], "cleanSync": True}}
    )
    result = report["users"]
    assert result["cleanSync"] == "APPLIED"
    assert (result["inserted"], result["unchanged"], result["deleted"]) == (1, 2, 1)
    assert result["deletedIds"] == [u2]
    assert report["totals"]["deleted"] == 1
    page = await pull(tenant, before)
    assert page["users"]["deleted"] == [u2]
    assert [r["id"] for r in page["users"]["inserted"]] == [result["ids"][2]]
    assert await get_user(tenant, id=u2) is None
    assert await get_user(tenant, alias="u2") is None
    live = await listing(tenant, "users")
    assert {n["id"] for n in live["nodes"]} == {u0, u1, result["ids"][2]}
    everything = await listing(tenant, "users", "(includeDeleted: true)")
    assert everything["totalCount"] == 4


async def test_clean_sync_skipped_when_an_item_fails(tenant: Tenant) -> None:
    await seed_users(tenant, 3)
    report = await sync(
        tenant,
        {
            "users": {
                "data": [user("u0"), {"alias": "broken"}, user("u9")],
                "cleanSync": True,
            }
        },
    )
    result = report["users"]
    assert result["cleanSync"] == "SKIPPED_ITEM_ERRORS"
    assert (result["inserted"], result["unchanged"], result["failed"]) == (1, 1, 1)
    assert (result["deleted"], result["deletedIds"]) == (0, [])
    live = await listing(tenant, "users")
    assert {n["alias"] for n in live["nodes"]} == {"u0", "u1", "u2", "u9"}


async def test_clean_sync_refuses_a_mass_delete_unless_forced(tenant: Tenant) -> None:
    ids = await seed_users(tenant, 4)
    payload = {"users": {"data": [user("u0", name="renamed")], "cleanSync": True}}
    refused = await sync(tenant, payload)
    result = refused["users"]
    assert result["cleanSync"] == "REFUSED_MASS_DELETE"
    assert (result["updated"], result["deleted"], result["deletedIds"]) == (1, 0, [])
    assert (await listing(tenant, "users"))["totalCount"] == 4
    assert await get_user(tenant, "name", alias="u0") == {"name": "renamed"}

    forced = await sync(tenant, payload, force=True)
    result = forced["users"]
    assert result["cleanSync"] == "APPLIED"
    assert (result["unchanged"], result["deleted"]) == (1, 3)
    assert sorted(result["deletedIds"]) == sorted(ids[1:])
    assert (await listing(tenant, "users"))["totalCount"] == 1


async def test_clean_sync_deleting_exactly_half_is_applied(tenant: Tenant) -> None:
    ids = await seed_users(tenant, 4)
    report = await sync(tenant, {"users": {"data": [user("u0"), user("u1")], "cleanSync": True}})
    assert report["users"]["cleanSync"] == "APPLIED"
    assert sorted(report["users"]["deletedIds"]) == sorted(ids[2:])


@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry run"])
async def test_clean_sync_without_manage_scope_is_forbidden(tenant: Tenant, dry_run: bool) -> None:
    await seed_users(tenant, 2)
    before = await checkpoint(tenant)
    writer = await tenant.new_key("sync:write")
    payload = {
        "persons": {"data": [{"name": "would be written"}]},
        "users": {"data": [user("u0", name="changed")], "cleanSync": True},
    }
    assert await sync_refused(tenant, payload, key=writer, dry_run=dry_run) == "FORBIDDEN"
    assert await checkpoint(tenant) == before
    assert (await listing(tenant, "persons"))["totalCount"] == 0
    assert await get_user(tenant, "name", alias="u0") == {"name": "user u0"}
    assert (await listing(tenant, "users"))["totalCount"] == 2
    # the same key may sync without cleanSync
    plain = await sync(tenant, {"users": {"data": [user("u0")]}}, key=writer)
    assert plain["users"]["unchanged"] == 1


async def test_clean_sync_on_an_empty_tenant(tenant: Tenant) -> None:
    nothing = await sync(tenant, {"users": {"data": [], "cleanSync": True}})
    assert nothing["users"]["cleanSync"] == "APPLIED"
    assert nothing["totals"] == ZERO
    assert nothing["users"]["ids"] == []
    report = await sync(tenant, {"users": {"data": [user("a"), user("b")], "cleanSync": True}})
    assert report["users"]["cleanSync"] == "APPLIED"
    assert report["totals"] == {**ZERO, "inserted": 2}
    assert report["users"]["deletedIds"] == []


async def test_resurrection_after_clean_sync(tenant: Tenant) -> None:
    u0, u1, u2 = await seed_users(tenant, 3)
    client = await checkpoint(tenant)
    deleted = await sync(tenant, {"users": {"data": [user("u0"), user("u1")], "cleanSync": True}})
    assert deleted["users"]["deletedIds"] == [u2]
    page = await pull(tenant, client)
    assert page["users"]["deleted"] == [u2]
    client = page["checkpoint"]

    back = await sync(tenant, {"users": {"data": [{"id": u2, "alias": "u2", "name": "back"}]}})
    assert back["users"]["inserted"] == 1
    assert back["users"]["ids"] == [u2]
    page = await pull(tenant, client)
    assert [r["id"] for r in page["users"]["inserted"]] == [u2]
    assert (page["users"]["updated"], page["users"]["deleted"]) == ([], [])
    assert await get_user(tenant, "id name", alias="u2") == {"id": u2, "name": "back"}
    assert {n["id"] for n in (await listing(tenant, "users"))["nodes"]} == {u0, u1, u2}


async def test_alias_of_a_deleted_record(tenant: Tenant) -> None:
    """Without an id the alias names the deleted record, which comes back; with a new id it
    is a new record that takes the alias over (a deleted record holds no key)."""
    _, _, u2 = await seed_users(tenant, 3)
    await sync(tenant, {"users": {"data": [user("u0"), user("u1")], "cleanSync": True}})
    revived = await sync(tenant, {"users": {"data": [{"alias": "u2", "name": "again"}]}})
    assert (revived["users"]["inserted"], revived["users"]["ids"]) == (1, [u2])

    await sync(tenant, {"users": {"data": [user("u0"), user("u1")], "cleanSync": True}})
    client = await checkpoint(tenant)
    new_id = str(uuid.uuid4())
    report = await sync(tenant, {"users": {"data": [{"id": new_id, "alias": "u2", "name": "new"}]}})
    assert report["users"]["errors"] == []
    assert (report["users"]["inserted"], report["users"]["ids"]) == (1, [new_id])
    assert await get_user(tenant, "id name", alias="u2") == {"id": new_id, "name": "new"}
    assert await get_user(tenant, id=u2) is None
    page = await pull(tenant, client)
    assert [r["id"] for r in page["users"]["inserted"]] == [new_id]
    assert (page["users"]["updated"], page["users"]["deleted"]) == ([], [])


# --- dryRun ---------------------------------------------------------------------------------


async def test_dry_run_reports_exactly_what_the_real_run_does(tenant: Tenant) -> None:
    ids = await seed_users(tenant, 4)
    new_ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    payload = {
        "users": {
            "data": [
                user("u0", name="renamed"),
                user("u1"),
                user("n0", id=new_ids[0]),
                user("n1", id=new_ids[1]),
            ],
            "cleanSync": True,
        },
        "members": {"data": [{"id": str(uuid.uuid4()), "name": "m", "users": ["n0", "u1"]}]},
    }
    before = await checkpoint(tenant)
    dry = await sync(tenant, payload, dry_run=True)
    assert dry["checkpoint"] == before
    assert dry["users"]["cleanSync"] == "APPLIED"
    assert sorted(dry["users"]["deletedIds"]) == sorted(ids[2:])
    assert dry["totals"] == {**ZERO, "inserted": 3, "updated": 1, "unchanged": 1, "deleted": 2}

    # nothing was written
    assert await checkpoint(tenant) == before
    assert feed_is_empty(await pull(tenant, before))
    assert (await listing(tenant, "users"))["totalCount"] == 4
    assert (await listing(tenant, "members"))["totalCount"] == 0
    assert await get_user(tenant, "name", alias="u0") == {"name": "user u0"}
    assert await get_user(tenant, id=new_ids[0]) is None

    real = await sync(tenant, payload)
    assert int(real["checkpoint"]) > int(before)
    assert {k: v for k, v in real.items() if k not in ("checkpoint", "dryRun")} == {
        k: v for k, v in dry.items() if k not in ("checkpoint", "dryRun")
    }


async def test_dry_run_on_an_empty_tenant_writes_nothing(tenant: Tenant) -> None:
    payload = example("education-sync.json")
    dry = await sync(tenant, payload, dry_run=True)
    assert dry["totals"] == {**ZERO, "inserted": 3}
    assert dry["checkpoint"] == "0"
    page = await pull(tenant, None)
    assert feed_is_empty(page)
    assert page["checkpoint"] == "0"
    for plural in ("users", "members", "classrooms"):
        assert (await listing(tenant, plural))["totalCount"] == 0
    real = await sync(tenant, payload)
    assert real["totals"] == dry["totals"]


async def test_dry_run_needs_write_scope(tenant: Tenant) -> None:
    reader = await tenant.new_key("sync:read")
    code = await sync_refused(tenant, {"users": {"data": [user("a")]}}, key=reader, dry_run=True)
    assert code == "FORBIDDEN"


# --- request-level refusals ---------------------------------------------------------------


async def test_sync_needs_write_scope(tenant: Tenant) -> None:
    reader = await tenant.new_key("sync:read")
    assert await sync_refused(tenant, {"users": {"data": [user("a")]}}, key=reader) == "FORBIDDEN"
    assert (await listing(tenant, "users", fields="id"))["totalCount"] == 0
    writer = await tenant.new_key("sync:write")
    report = await sync(tenant, {"users": {"data": [user("a")]}}, key=writer)
    assert report["totals"]["inserted"] == 1


def pieces(count: int) -> Json:
    return {"data": [{"name": f"piece {i}", "assembly": "A"} for i in range(count)]}


MANUFACTURING_PARENTS: Json = {
    "projects": {"data": [{"alias": "P", "name": "p"}]},
    "components": {"data": [{"alias": "C", "name": "c", "project": "P"}]},
    "assemblies": {"data": [{"alias": "A", "name": "a", "component": "C"}]},
}


async def test_batch_over_the_default_limit_fails_the_request(tenant: Tenant) -> None:
    users = {"data": [{"name": f"u{i}"} for i in range(1001)]}
    assert await sync_refused(tenant, {"users": users}) == "BATCH_TOO_LARGE"
    payload = {
        **MANUFACTURING_PARENTS,
        "persons": {"data": [{"name": "p"}]},
        "pieces": pieces(1001),
    }
    assert await sync_refused(tenant, payload) == "BATCH_TOO_LARGE"
    assert await checkpoint(tenant) == "0"
    for plural in ("users", "persons", "projects", "assemblies", "pieces"):
        assert (await listing(tenant, plural, fields="id"))["totalCount"] == 0


async def test_batch_at_the_default_limit_is_accepted(tenant: Tenant) -> None:
    report = await sync(tenant, {"persons": {"data": [{"name": f"p{i}"} for i in range(1000)]}})
    assert report["persons"]["inserted"] == 1000
    assert (await listing(tenant, "persons", "(first: 1)", fields="id"))["totalCount"] == 1000


@pytest_asyncio.fixture(loop_scope="module")
async def small_pieces(backend: str, database_urls: dict[str, str]) -> AsyncIterator[Tenant]:
    """A server configured with a batch limit of 5 pieces (other entities: the default)."""
    limited = make_state(server_settings(database_urls[backend], batch_limits={"pieces": 5}))
    async with client_for(limited) as client:
        yield await make_tenant(limited, client, "limits")
    await limited.close()


async def test_per_entity_batch_limit(small_pieces: Tenant) -> None:
    t = small_pieces
    too_many = {**MANUFACTURING_PARENTS, "pieces": pieces(6)}
    assert await sync_refused(t, too_many) == "BATCH_TOO_LARGE"
    assert (await listing(t, "projects", fields="id"))["totalCount"] == 0
    report = await sync(t, {**MANUFACTURING_PARENTS, "pieces": pieces(5)})
    assert report["pieces"]["inserted"] == 5
    # the override is for pieces only
    others = await sync(t, {"articles": {"data": [{"number": f"a{i}"} for i in range(6)]}})
    assert others["articles"]["inserted"] == 6


async def test_company_guid_of_the_own_tenant_is_accepted(tenant: Tenant) -> None:
    report = await sync(
        tenant,
        {
            "projects": {
                "data": [
                    {"alias": "p1", "name": "p1", "companyGuid": tenant.id},
                    {"alias": "p2", "name": "p2", "companyGuid": tenant.id.upper()},
                    {"alias": "p3", "name": "p3"},
                ]
            }
        },
    )
    assert report["totals"] == {**ZERO, "inserted": 3}


async def test_company_guid_of_another_tenant_is_forbidden(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    payload = {
        "articles": {"data": [{"number": "A1", "companyGuid": tenant.id}]},
        "projects": {
            "data": [
                {"alias": "mine", "name": "ok", "companyGuid": tenant.id},
                {"alias": "theirs", "name": "no", "companyGuid": other_tenant.id},
            ]
        },
    }
    assert await sync_refused(tenant, payload) == "FORBIDDEN"
    assert await checkpoint(tenant) == "0"
    assert (await listing(tenant, "articles", fields="id"))["totalCount"] == 0
    assert (await listing(tenant, "projects", fields="id"))["totalCount"] == 0
    assert (await listing(other_tenant, "projects", fields="id"))["totalCount"] == 0


# --- tenant isolation ---------------------------------------------------------------------


async def test_same_id_and_alias_in_two_tenants_are_two_records(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    shared = str(uuid.uuid4())
    for t, name in ((tenant, "A's"), (other_tenant, "B's")):
        report = await sync(t, {"users": {"data": [{"id": shared, "alias": "same", "name": name}]}})
        assert report["totals"] == {**ZERO, "inserted": 1}
    for t, name in ((tenant, "A's"), (other_tenant, "B's")):
        expected = {"id": shared, "alias": "same", "name": name, "version": 1}
        assert await get_user(t, id=shared) == expected
        assert await get_user(t, alias="same") == expected


async def test_references_do_not_reach_another_tenant(tenant: Tenant, other_tenant: Tenant) -> None:
    report = await sync(tenant, {"users": {"data": [user("a-user", email="a@example.com")]}})
    [a_id] = report["users"]["ids"]
    attempt = await sync(
        other_tenant,
        {
            "members": {
                "data": [
                    {"name": "by id", "users": [a_id]},
                    {"name": "by alias", "users": ["a-user"]},
                    {"name": "by email", "users": ["a@example.com"]},
                ]
            }
        },
    )
    errors = attempt["members"]["errors"]
    assert [(e["index"], e["code"], e["field"]) for e in errors] == [
        (i, "UNRESOLVED_REFERENCE", "users") for i in range(3)
    ]
    assert attempt["members"]["ids"] == [None, None, None]


async def test_a_null_reference_clears_it_and_an_omitted_one_keeps_it(tenant: Tenant) -> None:
    """Even in a batch where no item names a record of that entity (nothing to look up)."""
    await seed_users(tenant, 2)
    await sync(tenant, {"members": {"data": [{"alias": "m", "name": "m", "users": ["u0", "u1"]}]}})

    async def user_ids() -> list[str]:
        [member] = (await listing(tenant, "members", fields="alias userIds"))["nodes"]
        return sorted(member["userIds"])

    assert len(await user_ids()) == 2
    kept = await sync(tenant, {"members": {"data": [{"alias": "m", "name": "renamed"}]}})
    assert kept["totals"] == {**ZERO, "updated": 1}
    assert len(await user_ids()) == 2
    cleared = await sync(tenant, {"members": {"data": [{"alias": "m", "users": None}]}})
    assert cleared["totals"] == {**ZERO, "updated": 1}
    assert await user_ids() == []


async def test_another_tenant_never_sees_the_records(tenant: Tenant, other_tenant: Tenant) -> None:
    report = await sync(tenant, example("education-sync.json"))
    [uid] = report["users"]["ids"]
    page = await pull(other_tenant, None)
    assert feed_is_empty(page)
    assert page["checkpoint"] == "0"
    for plural in ("users", "members", "classrooms"):
        assert (await listing(other_tenant, plural))["totalCount"] == 0
    assert await get_user(other_tenant, id=uid) is None
    assert await get_user(other_tenant, alias="ID456") is None
    # nor can it delete them
    wiped = await sync(other_tenant, {"users": {"data": [], "cleanSync": True}}, force=True)
    assert wiped["users"]["deletedIds"] == []
    assert await get_user(tenant, "alias", id=uid) == {"alias": "ID456"}


# --- list and get queries -------------------------------------------------------------------


async def test_users_list_pages_with_cursor(tenant: Tenant) -> None:
    ids = await seed_users(tenant, 5)
    seen: list[str] = []
    after: str | None = None
    pages = []
    while True:
        body = await tenant.gql(
            "query($after: String) { users(first: 2, after: $after) {"
            " totalCount hasNextPage endCursor nodes { id } } }",
            {"after": after},
        )
        page = body["data"]["users"]
        assert page["totalCount"] == 5
        pages.append((len(page["nodes"]), page["hasNextPage"]))
        seen += [n["id"] for n in page["nodes"]]
        if not page["hasNextPage"]:
            break
        after = page["endCursor"]
    assert pages == [(2, True), (2, True), (1, False)]
    assert sorted(seen) == sorted(ids)


async def test_list_filters_by_alias_and_include_deleted(tenant: Tenant) -> None:
    u0, _, u2 = await seed_users(tenant, 3)
    one = await listing(tenant, "users", '(alias: "u0")')
    assert (one["totalCount"], one["nodes"]) == (1, [{"id": u0, "alias": "u0"}])
    assert (await listing(tenant, "users", '(alias: "nope")'))["totalCount"] == 0
    await sync(tenant, {"users": {"data": [user("u0"), user("u1")], "cleanSync": True}})
    assert (await listing(tenant, "users", '(alias: "u2")'))["totalCount"] == 0
    deleted = await listing(tenant, "users", '(alias: "u2", includeDeleted: true)')
    assert deleted["nodes"] == [{"id": u2, "alias": "u2"}]
    assert (await listing(tenant, "users", "(includeDeleted: true)"))["totalCount"] == 3


async def test_get_by_id_or_alias_and_null_once_deleted(tenant: Tenant) -> None:
    u0, u1 = await seed_users(tenant, 2)
    expected = {"id": u1, "alias": "u1", "name": "user u1", "version": 1}
    assert await get_user(tenant, id=u1) == expected
    assert await get_user(tenant, alias="u1") == expected
    assert await get_user(tenant, id=str(uuid.uuid4())) is None
    await sync(tenant, {"users": {"data": [user("u0")], "cleanSync": True}})
    assert await get_user(tenant, id=u1) is None
    assert await get_user(tenant, alias="u1") is None
    assert await get_user(tenant, "id", id=u0) == {"id": u0}


async def test_related_objects_resolve_in_lists(tenant: Tenant) -> None:
    await sync(tenant, example("education-sync.json"))
    await sync(tenant, example("festival-sync.json"))
    body = await tenant.gql(
        "{ members { nodes { name users { email } } }"
        " classrooms { nodes { members { name } admins { name } } }"
        " badges { nodes { person { name } } }"
        " arrivals { nodes { badge { person { name } } } } }"
    )
    data = body["data"]
    assert data["members"]["nodes"] == [
        {"name": "aluno exemplo", "users": [{"email": "familiar.exemplo@email.com"}]}
    ]
    assert data["classrooms"]["nodes"] == [
        {"members": [{"name": "aluno exemplo"}], "admins": [{"name": "familiar exemplo"}]}
    ]
    assert data["badges"]["nodes"] == [{"person": {"name": "Иван Петров"}}]
    assert data["arrivals"]["nodes"] == [{"badge": {"person": {"name": "Иван Петров"}}}]


def writes_to(seen: list[str], table: str) -> list[str]:
    # WITH: PostgreSQL's counter statement, which renumbers the rows in a CTE (``app.db.bump``)
    writes = ("INSERT", "UPDATE", "WITH")
    return [s for s in seen if s.lstrip().upper().startswith(writes) and table in s]


@pytest.mark.parametrize("count", [10, 200])
async def test_each_row_is_written_once_and_numbered_in_order(tenant: Tenant, count: int) -> None:
    """A sync whose last batch is large writes its rows in one statement with their final
    change numbers (small batches are written, then numbered); either way the feed lists
    every record once, in input order, with consecutive numbers above the old checkpoint."""
    before = (await tenant.gql("{ changes { checkpoint } }"))["data"]["changes"]["checkpoint"]
    users = [{"alias": f"once-{i}", "name": f"n{i}"} for i in range(count)]
    with statements(tenant.state) as seen:
        report = await sync(tenant, {"users": {"data": users}})
    assert report["users"]["inserted"] == count
    # one upsert; small batches on PostgreSQL (key locks, not the table's) are renumbered after
    small_on_postgres = count <= 64 and tenant.state.engine.dialect.name == "postgresql"
    expected = 2 if small_on_postgres else 1
    assert len(writes_to(seen, "users")) == expected, writes_to(seen, "users")

    page = (
        await tenant.gql(
            "query($s: String) { changes(since: $s, limit: 1000) "
            "{ checkpoint users { inserted { alias } } } }",
            {"s": before},
        )
    )["data"]["changes"]
    assert [u["alias"] for u in page["users"]["inserted"]] == [u["alias"] for u in users]
    assert int(page["checkpoint"]) - int(before or 0) == count


async def test_unpaired_surrogates_are_item_errors(tenant: Tenant) -> None:
    """JSON can escape half a UTF-16 pair ("\\ud800"); no database can store it. Such a
    string is the item's error, not an internal error of the request."""
    items = [
        {"alias": "c-ok", "name": "fine"},
        {"alias": "c-name", "name": "bad \ud800"},
        {"alias": "c-tags", "name": "t", "tags": ["ok", "\udfff"]},
        {"alias": "c-alias\ud800", "name": "a"},
    ]
    body = json.dumps({"query": SYNC, "variables": {"input": {"classrooms": {"data": items}}}})
    response = await tenant.http.post(
        "/graphql",
        content=body,  # ASCII escapes, as JSON encoders send them
        headers={"Authorization": f"Bearer {tenant.key}", "Content-Type": "application/json"},
    )
    report = response.json()["data"]["sync"]["classrooms"]
    assert report["inserted"] == 1
    errors = {(e["index"], e["field"], e["code"]) for e in report["errors"]}
    assert errors == {
        (1, "name", "UNPROCESSABLE"),
        (2, "tags", "UNPROCESSABLE"),
        (3, "alias", "UNPROCESSABLE"),
    }
