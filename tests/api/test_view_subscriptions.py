"""``subscription changes`` through a view, over a real websocket (DESIGN §8): a view-bound
subscriber gets what its view shows, live — updates, old records moving in, records moving
out because of another entity's write — resumes from its last checkpoint without loss, and
subscribers with the same binding share one evaluation of the view per commit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from app.db import write_transaction
from app.engine.tenants import set_key_view
from app.engine.views import pull
from app.engine.views.spec import check_binding
from app.state import AppState
from tests.api.live import WsClient, live_server
from tests.api.test_subscriptions import BOUND, creds, emission
from tests.api.test_views import PLURALS, Replica, ids_by_alias, items, school, sync
from tests.conftest import Tenant

RECORD = "id name version"
ALL = "\n".join(
    f"{p} {{ inserted {{ {RECORD} }} updated {{ {RECORD} }} deleted }}" for p in PLURALS
)
CHANGES = f"""
subscription($since: String) {{
  changes(since: $since) {{ checkpoint hasMore fullSyncRequired fullSyncReason {ALL} }}
}}"""
CLASSROOMS_ONLY = """
subscription { changes { checkpoint classrooms { inserted { id } updated { id } deleted } } }"""


@pytest.fixture
async def host(state: AppState) -> AsyncIterator[str]:
    async with live_server(state) as address:
        yield address


class Held:
    """What a subscriber's client holds: id -> version per collection, from its emissions."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, int]] = {p: {} for p in PLURALS}
        self.deleted: dict[str, list[str]] = {p: [] for p in PLURALS}
        self.checkpoint: str | None = None

    def apply(self, page: dict[str, Any]) -> dict[str, Any]:
        assert not page["fullSyncRequired"], page
        for plural in PLURALS:
            for record in page[plural]["inserted"] + page[plural]["updated"]:
                self.records[plural][record["id"]] = record["version"]
            for id_ in page[plural]["deleted"]:
                self.deleted[plural].append(id_)
                self.records[plural].pop(id_, None)
        self.checkpoint = page["checkpoint"]
        return page

    async def catch_up(self, ws: WsClient) -> None:
        while self.apply(await emission(ws))["hasMore"]:
            pass

    async def until(self, ws: WsClient, wanted: dict[str, dict[str, int]]) -> None:
        """Apply emissions until the client holds ``wanted`` (each within ``BOUND``)."""
        while self.records != wanted:
            self.apply(await emission(ws))


def changed(page: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """The page's non-empty lists: collection -> kind -> ids."""
    out: dict[str, dict[str, list[Any]]] = {}
    for plural in PLURALS:
        for kind in ("inserted", "updated", "deleted"):
            found = [r if kind == "deleted" else r["id"] for r in page[plural][kind]]
            if found:
                out.setdefault(plural, {})[kind] = found
    return out


async def pulled(tenant: Tenant, key: str) -> dict[str, dict[str, int]]:
    """What a fresh client of ``key`` holds after pulling over HTTP."""
    replica = Replica(tenant, key)
    await replica.pull()
    return replica.records


async def rebind(tenant: Tenant, key_id: str, view: str | None, **params: str) -> None:
    binding = check_binding(tenant.state.registry, view, params) if view else None
    async with write_transaction(tenant.state.engine) as conn:
        await set_key_view(conn, key_id, binding)


# --- live delivery ----------------------------------------------------------------------------


async def test_a_guardian_receives_their_childs_update_and_no_other(
    tenant: Tenant, host: str
) -> None:
    await school(tenant)
    ids = await ids_by_alias(tenant)
    key, _ = await tenant.view_key("guardian", user="g1")
    async with WsClient.connect(host, creds(tenant, key)) as ws:
        await ws.subscribe(CHANGES)
        first = await emission(ws)
        assert first["hasMore"] is False
        assert changed(first) == {
            "users": {"inserted": [ids["g1"]]},
            "members": {"inserted": [ids["m1"], ids["m2"]]},
            "classrooms": {"inserted": [ids["c1"]]},
        }
        # g2's only child changes first: that commit is nothing for g1's subscriber, so the
        # next emission is the one of g1's child
        await sync(tenant, {"members": items({"alias": "m3", "name": "Cid 2", "users": ["g2"]})})
        await sync(tenant, {"members": items({"alias": "m1", "name": "Ann 2", "users": ["g1"]})})
        page = await emission(ws)
        assert changed(page) == {"members": {"updated": [ids["m1"]]}}
        assert page["members"]["updated"] == [{"id": ids["m1"], "name": "Ann 2", "version": 2}]
        assert page["checkpoint"].count(".") == 3  # a view checkpoint


async def test_an_old_classroom_moves_in_live(tenant: Tenant, host: str) -> None:
    await school(tenant)
    ids = await ids_by_alias(tenant)
    key, _ = await tenant.view_key("guardian", user="g1")
    async with WsClient.connect(host, creds(tenant, key)) as ws:
        await ws.subscribe(CHANGES)
        await emission(ws)
        # c2 was written before the subscriber's checkpoint: linking m2 into it moves it in
        await sync(
            tenant, {"classrooms": items({"alias": "c2", "name": "2B", "members": ["m3", "m2"]})}
        )
        page = await emission(ws)
    assert changed(page) == {"classrooms": {"inserted": [ids["c2"]]}}
    assert page["classrooms"]["inserted"] == [{"id": ids["c2"], "name": "2B", "version": 2}]


async def test_a_move_out_caused_by_another_entity_reaches_a_classrooms_subscriber(
    tenant: Tenant, host: str
) -> None:
    await school(tenant)
    ids = await ids_by_alias(tenant)
    key, _ = await tenant.view_key("guardian", user="g1")
    async with WsClient.connect(host, creds(tenant, key)) as ws:
        await ws.subscribe(CLASSROOMS_ONLY)
        first = (await ws.next_data())["changes"]
        assert [c["id"] for c in first["classrooms"]["inserted"]] == [ids["c1"]]
        # the write touches only members: m1 loses its guardian, and with it c1 leaves
        await sync(tenant, {"members": items({"alias": "m1", "name": "Ann", "users": []})})
        page = (await ws.next_data(BOUND))["changes"]
    assert page["classrooms"] == {"inserted": [], "updated": [], "deleted": [ids["c1"]]}


async def test_reconnecting_with_the_last_checkpoint_catches_up_exactly(
    tenant: Tenant, host: str
) -> None:
    await school(tenant)
    ids = await ids_by_alias(tenant)
    key, _ = await tenant.view_key("guardian", user="g1")
    held = Held()
    async with WsClient.connect(host, creds(tenant, key)) as ws:
        await ws.subscribe(CHANGES)
        await held.catch_up(ws)
    # offline: an update, a move-in, a move-out (m1 and its classroom c1), a new child
    await sync(tenant, {"members": items({"alias": "m2", "name": "Bob 2", "users": ["g1", "g2"]})})
    await sync(
        tenant, {"classrooms": items({"alias": "c2", "name": "2B", "members": ["m3", "m2"]})}
    )
    await sync(tenant, {"members": items({"alias": "m1", "name": "Ann", "users": []})})
    await sync(tenant, {"members": items({"alias": "m4", "name": "Dan", "users": ["g1"]})})
    ids = await ids_by_alias(tenant)
    async with WsClient.connect(host, creds(tenant, key)) as ws:
        await ws.subscribe(CHANGES, {"since": held.checkpoint})
        page = await emission(ws)
        assert page["hasMore"] is False
        held.apply(page)
        assert changed(page) == {
            "members": {"inserted": [ids["m4"]], "updated": [ids["m2"]], "deleted": [ids["m1"]]},
            "classrooms": {"inserted": [ids["c2"]], "deleted": [ids["c1"]]},
        }
        assert held.records == await pulled(tenant, key)
        # and it is live again, from there
        await sync(tenant, {"members": items({"alias": "m4", "name": "Dan 2", "users": ["g1"]})})
        assert changed(held.apply(await emission(ws))) == {"members": {"updated": [ids["m4"]]}}
    assert held.deleted == {"users": [], "members": [ids["m1"]], "classrooms": [ids["c1"]]}


async def test_subscribers_with_one_binding_share_one_evaluation_per_commit(
    tenant: Tenant, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two keys bound to guardian(g1) and one to guardian(g2): each commit evaluates the
    view once per binding, not once per subscriber."""
    await school(tenant)
    evaluations = 0
    real_visible = pull.visible

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal evaluations
        evaluations += 1
        return await real_visible(*args, **kwargs)

    monkeypatch.setattr(pull, "visible", counted)
    keys = [(await tenant.view_key("guardian", user=user))[0] for user in ("g1", "g1", "g2")]
    async with AsyncExitStack() as stack:
        clients = []
        for key in keys:
            ws = await stack.enter_async_context(WsClient.connect(host, creds(tenant, key)))
            await ws.subscribe(CHANGES)
            await emission(ws)
            clients.append(ws)
        await asyncio.sleep(0.2)  # let the hub settle after the subscribers joined
        evaluations = 0
        for n in range(3):  # m2 is the child of g1 and g2: every subscriber gets each commit
            bob = {"alias": "m2", "name": f"Bob {n}", "users": ["g1", "g2"]}
            await sync(tenant, {"members": items(bob)})
            for ws in clients:
                assert [r["name"] for r in (await emission(ws))["members"]["updated"]] == [
                    f"Bob {n}"
                ]
        await asyncio.sleep(0.2)
    assert evaluations == 3 * 2


# --- rebinding and checkpoints ----------------------------------------------------------------


async def test_a_rebinding_is_followed_at_the_next_commit(tenant: Tenant, host: str) -> None:
    await school(tenant)
    key, key_id = await tenant.view_key("guardian", user="g1")
    held = Held()
    async with WsClient.connect(host, creds(tenant, key)) as ws:
        await ws.subscribe(CHANGES)
        await held.catch_up(ws)
        ids = await ids_by_alias(tenant)
        await rebind(tenant, key_id, "guardian", user="g2")
        await sync(tenant, {"users": items({"alias": "x", "name": "outside any view"})})
        g2_key, _ = await tenant.view_key("guardian", user="g2")
        await held.until(ws, await pulled(tenant, g2_key))
        assert set(held.records["members"]) == {ids["m2"], ids["m3"]}
        assert ids["m2"] not in held.deleted["members"]  # visible before and after

        await rebind(tenant, key_id, None)  # unbound: the client must start again
        await sync(tenant, {"users": items({"alias": "x", "name": "again"})})
        page = await emission(ws)
        assert page["fullSyncRequired"] is True
        assert page["fullSyncReason"] == "VIEW_CHANGED"
        assert (await ws.receive(BOUND))["type"] == "complete"


@pytest.mark.parametrize("bound", [True, False], ids=["bound-given-a-seq", "unbound-given-a-view"])
async def test_a_checkpoint_of_the_other_kind_asks_for_a_full_sync(
    tenant: Tenant, host: str, bound: bool
) -> None:
    await school(tenant)
    key, _ = await tenant.view_key("guardian", user="g1")
    seq_client, view_client = Held(), Held()
    for client, who in ((seq_client, tenant.key), (view_client, key)):
        async with WsClient.connect(host, creds(tenant, who)) as ws:
            await ws.subscribe(CHANGES)
            await client.catch_up(ws)
    since = seq_client.checkpoint if bound else view_client.checkpoint
    async with WsClient.connect(host, creds(tenant, key if bound else tenant.key)) as ws:
        await ws.subscribe(CHANGES, {"since": since})
        page = await emission(ws)
        assert page["fullSyncRequired"] is True
        assert page["fullSyncReason"] == "VIEW_CHANGED"
        assert page["checkpoint"] == since
        assert (await ws.receive(BOUND))["type"] == "complete"


async def test_the_view_subscribers_gauge_follows_connections(
    tenant: Tenant, host: str, state: AppState
) -> None:
    def gauge(view: str) -> float:
        sample = state.metrics.registry.get_sample_value(
            "syncgraph_view_subscribers", {"view": view}
        )
        return sample or 0.0

    await school(tenant)
    key, _ = await tenant.view_key("guardian", user="g1")
    other, _ = await tenant.view_key("teacher", user="t1")
    async with AsyncExitStack() as stack:
        for who in (key, key, other, tenant.key):
            ws = await stack.enter_async_context(WsClient.connect(host, creds(tenant, who)))
            await ws.subscribe(CHANGES)
            await emission(ws)
        assert (gauge("guardian"), gauge("teacher")) == (2, 1)
    deadline = time.monotonic() + BOUND
    while gauge("guardian") or gauge("teacher"):
        assert time.monotonic() < deadline, "view subscribers are counted down on disconnect"
        await asyncio.sleep(0.05)
