"""The ``fastpath`` and ``bulkinput`` accelerators (flat list completion, raw bulk variables)
answer exactly as the plain path does: the same requests go to an app built with them on and
one built with every accelerator off, each with a tenant of its own holding the same data,
and the JSON must be identical. Each app is built under ``accel.only``, so these hold
whatever ``SYNCGRAPH_ACCEL`` says."""

from __future__ import annotations

import copy
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app import accel
from app.accel import bulkinput, fastpath
from app.graphql.executor import SyncExecutor, executor_class
from app.main import create_app
from app.settings import Settings
from app.state import make_state
from tests.conftest import Tenant, example, make_tenant

IDS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(40)]


@pytest.fixture
async def pair(settings: Settings) -> AsyncIterator[tuple[Tenant, Tenant]]:
    """(fast, slow): two apps on the same database, one tenant each: the first built with
    the executor accelerators on, the second with none."""
    tenants = []
    states = []
    clients = []
    for fast in (True, False):
        state = make_state(settings)
        with accel.only(*(["fastpath", "bulkinput"] if fast else [])):
            app = create_app(state=state)
        transport = httpx.ASGITransport(app=app)
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
        states.append(state)
        clients.append(client)
        tenants.append(await make_tenant(state, client, "fast" if fast else "slow"))
    yield tenants[0], tenants[1]
    for client in clients:
        await client.aclose()
    for state in states:
        await state.close()


TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def scrub(body: dict[str, Any]) -> dict[str, Any]:
    """Drop what legitimately differs between the two tenants: request ids and the times
    their rows were written (whose format is checked instead)."""
    body = copy.deepcopy(body)
    body.pop("extensions", None)
    for error in body.get("errors", []):
        error.get("extensions", {}).pop("requestId", None)
        error["message"] = error["message"].split(" (request id")[0]
    return _times(body)


def _times(value: Any) -> Any:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("createdAt", "updatedAt"):
                assert TIME.match(item), item
                value[key] = "<time>"
            else:
                _times(item)
    elif isinstance(value, list):
        for item in value:
            _times(item)
    return value


async def both(pair: tuple[Tenant, Tenant], query: str, variables: Any = None) -> dict[str, Any]:
    fast, slow = pair
    a = await fast.gql(query, variables, expect_errors=True)
    b = await slow.gql(query, variables, expect_errors=True)
    assert scrub(a) == scrub(b)
    return a


SYNC = """mutation($input: SyncInput!, $dry: Boolean) { sync(input: $input, dryRun: $dry) {
  checkpoint dryRun totals { inserted updated unchanged deleted failed }
  users { ids errors { entity index id alias field code message } }
  members { ids errors { index field code message } }
  classrooms { ids cleanSync deletedIds errors { index field code message } }
  badges { ids errors { index field code message } }
  persons { ids errors { index field code message } }
}}"""


def users(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": IDS[i],
            "alias": f"u{i}",
            "name": f"user {i}",
            "email": f"u{i}@x.org",
            "birth": "02/03/2001" if i % 2 else "2001-03-02",
            "roleSet": {"teacher": i % 3 == 0},
            "active": i % 4 != 0,
        }
        for i in range(n)
    ]


def education() -> dict[str, Any]:
    """The education example with ids, so both tenants' records get the same ones."""
    payload = example("education-sync.json")
    for n, plural in enumerate(("users", "members", "classrooms")):
        for item in payload[plural]["data"]:
            item["id"] = IDS[35 + n]
    payload["users"]["data"] += users(12)
    return payload


async def seed(pair: tuple[Tenant, Tenant]) -> None:
    payload = education()
    await both(pair, SYNC, {"input": payload})
    await both(pair, SYNC, {"input": example("festival-sync.json")})


async def test_sync_reports_are_identical(pair: tuple[Tenant, Tenant]) -> None:
    await seed(pair)
    again = education()
    again["users"]["data"][3]["name"] = None  # a required field cleared: item error
    again["classrooms"]["cleanSync"] = True
    body = await both(pair, SYNC, {"input": again, "dry": True})
    assert body["data"]["sync"]["users"]["errors"][0]["code"] == "UNPROCESSABLE"
    await both(pair, SYNC, {"input": again})


@pytest.mark.parametrize(
    "bad",
    [
        {"users": {"data": [{"name": 5}]}},
        {"users": {"data": {"id": IDS[0], "name": "not a list"}}},
        {"users": {"data": [{"name": "x", "nope": 1}]}},
        {"users": {"data": [{"name": "x", "roleSet": {"admin": "yes"}}]}},
        {"users": {"cleanSync": True}},
        {"persons": {"data": [{"name": "x", "firstYear": 1}]}},
        {"badges": {"data": [{"name": "x", "gender": "ALIEN", "infant": None}]}},
        {"directions": {"data": [{"name": "x", "firstYear": 2**40}]}},
    ],
    ids=[
        "int-for-string",
        "object-for-list",
        "unknown-field",
        "bad-flag",
        "missing-data",
        "field-of-other-entity",
        "bad-enum",
        "int-overflow",
    ],
)
async def test_bad_input_answers_identically(pair: tuple[Tenant, Tenant], bad: Any) -> None:
    await both(pair, SYNC, {"input": bad})


PULL = """query($since: String, $limit: Int, $withMembers: Boolean!) {
  changes(since: $since, limit: $limit) {
    checkpoint hasMore fullSyncRequired
    users { inserted { ...U } updated { ...U } deleted }
    people: persons { inserted { __typename id name gender birthDate vegan } }
    badges { inserted { id name role feed person { name } personId __typename } }
    members @include(if: $withMembers) {
      inserted { name userIds users { email roleSet { guardian } } }
    }
    classrooms { inserted { n: name tags memberIds adminIds admins { alias } } }
  }
}
fragment U on User { id alias version name email birth active invite roleSet { teacher }
  ... on User { __typename } createdAt @skip(if: false) }"""


async def test_pulls_are_identical(pair: tuple[Tenant, Tenant]) -> None:
    await seed(pair)
    for limit in (3, 1000):
        since = None
        while True:
            body = await both(pair, PULL, {"since": since, "limit": limit, "withMembers": True})
            page = body["data"]["changes"]
            since = page["checkpoint"]
            if not page["hasMore"]:
                break


async def test_fast_path_keeps_key_order_and_time_format(pair: tuple[Tenant, Tenant]) -> None:
    fast, _slow = pair
    await fast.gql(SYNC, {"input": {"users": {"data": users(3)}}})
    query = "{ users { nodes { id createdAt updatedAt version } } }"
    fast_body = await fast.gql(query)
    nodes = fast_body["data"]["users"]["nodes"]
    assert [list(n) for n in nodes] == [["id", "createdAt", "updatedAt", "version"]] * 3
    assert all(n["createdAt"].endswith("Z") for n in nodes)


async def test_errors_and_lists_are_identical(pair: tuple[Tenant, Tenant]) -> None:
    await seed(pair)
    await both(pair, '{ changes(since: "abc") { checkpoint } }')
    await both(pair, "{ users(first: 5) { totalCount hasNextPage nodes { id name alias } } }")
    await both(pair, '{ user(alias: "u3") { id name roleSet { teacher staff } } }')


PUSH = """mutation($input: PushInput!) { pushChanges(input: $input) {
  applied conflicts { entity id reason serverVersion }
  errors { entity index field code message } } }"""


async def test_push_reports_are_identical(pair: tuple[Tenant, Tenant]) -> None:
    await seed(pair)
    push = {
        "since": "0",
        "conflictPolicy": "REJECT",
        "users": {
            "updated": [
                {"id": IDS[1], "data": {"name": "renamed"}, "changedAt": "2030-01-01T00:00:00Z"}
            ],
            "inserted": [
                {"id": IDS[30], "data": {"name": "new", "birth": "01/01/2000"}},
                {"id": IDS[31], "data": {}},
            ],
            "deleted": [{"id": IDS[32]}],
        },
    }
    await both(pair, PUSH, {"input": push})
    push["conflictPolicy"] = "LAST_WRITE_WINS"
    push["since"] = None
    await both(pair, PUSH, {"input": push})
    await both(pair, PUSH, {"input": {"users": {"updated": [{"id": 7}]}}})


async def test_the_fast_paths_are_taken(
    pair: tuple[Tenant, Tenant], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Equal answers prove nothing if the fast app silently took the slow path."""
    flat_lists: list[int] = []
    taken: list[list[str]] = []
    real_flat = fastpath._complete_flat
    real_take = bulkinput.take_bulk_variables

    def count_flat(plans: Any, plan: Any, items: list[Any]) -> Any:
        flat_lists.append(len(items))
        return real_flat(plans, plan, items)

    def count_take(*args: Any, **kwargs: Any) -> Any:
        result = real_take(*args, **kwargs)
        taken.append(sorted(args[4]))
        return result

    monkeypatch.setattr(fastpath, "_complete_flat", count_flat)
    monkeypatch.setattr(bulkinput, "take_bulk_variables", count_take)
    fast, slow = pair
    await fast.gql(SYNC, {"input": {"users": {"data": users(5)}}})
    assert taken == [["input"]]
    await fast.gql("{ changes { users { inserted { id name } } } }")
    assert 5 in flat_lists
    flat_lists.clear()
    await slow.gql("{ changes { users { inserted { id name } } } }")
    assert flat_lists == []
    taken.clear()
    await slow.gql(SYNC, {"input": {"users": {"data": users(5)}}})
    assert taken == []


@pytest.mark.parametrize(
    ("fast_path", "names", "expected"),
    [
        (True, ["fastpath", "bulkinput"], {"FastExecutor", "BulkInputExecutor"}),
        (True, ["fastpath"], {"FastExecutor"}),
        (True, ["bulkinput"], {"BulkInputExecutor"}),
        (True, [], set()),
        (False, ["fastpath", "bulkinput"], set()),
    ],
    ids=["both", "fastpath", "bulkinput", "none", "fast_path-setting-off"],
)
def test_the_switch_and_the_setting_choose_the_executor(
    settings: Settings, fast_path: bool, names: list[str], expected: set[str]
) -> None:
    with accel.only(*names):
        made = executor_class(settings.model_copy(update={"fast_path": fast_path}))
    assert issubclass(made, SyncExecutor)
    used = {c.__name__ for c in made.__mro__} & {"FastExecutor", "BulkInputExecutor"}
    assert used == expected


def test_each_schema_gets_its_own_caches(settings: Settings) -> None:
    """The accelerators' caches live on the executor class made for one schema."""
    with accel.only("fastpath", "bulkinput"):
        first, second = executor_class(settings), executor_class(settings)
    assert first.plans is not second.plans  # type: ignore[attr-defined]
    assert first.checker is not second.checker  # type: ignore[attr-defined]
