"""Devices bound to views through HTTP (DESIGN §8 "Binding"): ``me``, ``registerDevice(view)``,
``setDeviceView``, and the action log as a view-bound credential reads it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.actions_client import Device, pull_all
from tests.api.live import WsClient, live_server
from tests.api.test_views import Replica, ids_by_alias, school
from tests.conftest import Tenant

ME = "{ me { deviceId view { name params } } }"
REGISTER = """mutation($name: String!, $view: ViewInput) {
  registerDevice(name: $name, view: $view) { deviceId token secret } }"""
SET_VIEW = "mutation($id: ID!, $view: ViewInput) { setDeviceView(deviceId: $id, view: $view) }"
SUBSCRIBE = """subscription { actions(includeOwn: true) { items { deviceId payload } } }"""


def guardian(user: str) -> dict[str, Any]:
    return {"name": "guardian", "params": {"user": user}}


async def register(tenant: Tenant, key: str, view: dict[str, Any] | None = None) -> Device:
    body = await tenant.gql(REGISTER, {"name": "phone", "view": view}, key=key)
    reg = body["data"]["registerDevice"]
    return Device(tenant.http, reg["deviceId"], reg["token"], reg["secret"])


async def refused(tenant: Tenant, query: str, variables: dict[str, Any], key: str) -> Any:
    """The first error of a request that must fail."""
    body = await tenant.gql(query, variables, key=key, expect_errors=True)
    assert body.get("data") is None or not any(body["data"].values()), body
    return body["errors"][0]


async def me(tenant: Tenant, key: str) -> dict[str, Any]:
    return dict((await tenant.gql(ME, key=key))["data"]["me"])


async def test_me_shows_the_view_of_a_bound_key_and_null_for_an_unbound_one(
    tenant: Tenant,
) -> None:
    key, _ = await tenant.view_key("guardian", user="g1")
    assert (await me(tenant, key))["view"] == guardian("g1")
    assert (await me(tenant, tenant.key))["view"] is None


async def test_a_bound_key_registers_devices_with_its_own_binding(tenant: Tenant) -> None:
    key, _ = await tenant.view_key("guardian", user="g1")
    for view in (None, guardian("g1")):  # left out, or the key's own
        device = await register(tenant, key, view)
        assert (await me(tenant, device.token)) == {
            "deviceId": device.device_id,
            "view": guardian("g1"),
        }
    error = await refused(tenant, REGISTER, {"name": "x", "view": guardian("g2")}, key)
    assert error["extensions"]["code"] == "FORBIDDEN"
    assert "bound to the view guardian" in error["message"]
    unbound = await register(tenant, tenant.key)
    assert (await me(tenant, unbound.token))["view"] is None


async def test_an_unbound_key_binds_a_device_that_then_pulls_through_the_view(
    tenant: Tenant,
) -> None:
    await school(tenant)
    device = await register(tenant, tenant.key, guardian("g1"))
    replica = Replica(tenant, device.token)
    await replica.pull()
    ids = await ids_by_alias(tenant)
    assert replica.names("users", ids) == {"g1"}
    assert replica.names("members", ids) == {"m1", "m2"}
    assert replica.names("classrooms", ids) == {"c1"}


BAD = [
    ({"name": "nope", "params": {"user": "g1"}}, "unknown view 'nope'"),
    ({"name": "guardian", "params": {"kid": "g1"}}, "no parameter 'kid'"),
    ({"name": "guardian", "params": {}}, "needs the parameter user"),
    ({"name": "guardian", "params": "g1"}, "params must be an object"),
    ({"name": "guardian", "params": {"user": ""}}, "the id or alias of a record"),
]


@pytest.mark.parametrize(
    ("view", "says"), BAD, ids=["view", "parameter", "missing", "not-object", "empty"]
)
async def test_bad_bindings_are_bad_requests_that_name_the_problem(
    tenant: Tenant, view: dict[str, Any], says: str
) -> None:
    device = await register(tenant, tenant.key)
    for query, variables in (
        (REGISTER, {"name": "x", "view": view}),
        (SET_VIEW, {"id": device.device_id, "view": view}),
    ):
        error = await refused(tenant, query, variables, tenant.key)
        assert error["extensions"]["code"] == "BAD_REQUEST", error
        assert says in error["message"], error
    assert (await me(tenant, device.token))["view"] is None  # nothing changed


async def test_set_device_view_moves_records_in_and_out_on_the_next_pull(
    tenant: Tenant,
) -> None:
    await school(tenant)
    ids = await ids_by_alias(tenant)
    device = await register(tenant, tenant.key, guardian("g1"))
    replica = Replica(tenant, device.token)
    await replica.pull()

    rebind = {"id": device.device_id, "view": guardian("g2")}
    assert (await tenant.gql(SET_VIEW, rebind))["data"]["setDeviceView"] is True
    await replica.pull()
    assert replica.names("users", ids) == {"g2"}
    assert replica.names("members", ids) == {"m2", "m3"}
    assert replica.names("classrooms", ids) == {"c2"}
    assert set(replica.deleted["members"]) == {ids["m1"]}  # m2: visible before and after

    unbind = {"id": device.device_id, "view": None}
    assert (await tenant.gql(SET_VIEW, unbind))["data"]["setDeviceView"] is True
    assert (await me(tenant, device.token))["view"] is None
    whole = Replica(tenant, device.token)  # an unbound token starts again from scratch
    await whole.pull()
    assert whole.names("users", ids) == {"g1", "g2", "t1"}


async def test_set_device_view_needs_sync_manage_and_a_known_device(tenant: Tenant) -> None:
    device = await register(tenant, tenant.key)
    variables = {"id": device.device_id, "view": guardian("g1")}
    bound, _ = await tenant.view_key("guardian", user="g1")
    writer = await tenant.new_key("sync:read", "sync:write")
    for key in (writer, bound, device.token):
        error = await refused(tenant, SET_VIEW, variables, key)
        assert error["extensions"]["code"] == "FORBIDDEN", error
    unknown = {"id": "00000000-0000-4000-8000-000000000000", "view": None}
    assert (await tenant.gql(SET_VIEW, unknown))["data"]["setDeviceView"] is False
    omitted = "mutation($id: ID!) { setDeviceView(deviceId: $id) }"
    error = await refused(tenant, omitted, {"id": device.device_id}, tenant.key)
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert "null to unbind" in error["message"]
    assert (await me(tenant, device.token))["view"] is None


async def test_a_rebinding_takes_effect_at_once_though_the_token_was_cached(
    tenant: Tenant,
) -> None:
    tenant.state.credentials.ttl = 60.0  # this test's server keeps proved credentials
    device = await register(tenant, tenant.key, guardian("g1"))
    for _ in range(2):  # the second is served from the cache
        assert (await me(tenant, device.token))["view"] == guardian("g1")
    await tenant.gql(SET_VIEW, {"id": device.device_id, "view": guardian("g2")})
    assert (await me(tenant, device.token))["view"] == guardian("g2")


async def note(device: Device, text: str) -> None:
    result = await device.push(device.actions({"type": "note", "text": text}))
    assert result["accepted"] == 1, result


def texts(actions: list[dict[str, Any]]) -> list[str]:
    return [a["payload"]["text"] for a in actions]


async def test_a_bound_credential_reads_only_its_bindings_actions(tenant: Tenant) -> None:
    g1_key, _ = await tenant.view_key("guardian", user="g1")
    g1 = await register(tenant, tenant.key, guardian("g1"))
    g1_too = await register(tenant, g1_key)  # the key's binding: the same one
    g2 = await register(tenant, tenant.key, guardian("g2"))
    whole = await register(tenant, tenant.key)
    for device, text in ((g1, "a"), (g2, "b"), (g1_too, "c"), (whole, "d")):
        await note(device, text)

    async def seen(token: str) -> list[str]:
        return texts(await pull_all(tenant.http, token, include_own=True))

    assert await seen(g1.token) == ["a", "c"]
    assert await seen(g1_key) == ["a", "c"]
    assert await seen(g2.token) == ["b"]
    assert await seen(whole.token) == ["a", "b", "c", "d"]
    assert await seen(tenant.key) == ["a", "b", "c", "d"]

    # a rebound device's next actions carry its new binding; what it logged before stays
    await tenant.gql(SET_VIEW, {"id": g2.device_id, "view": guardian("g1")})
    await note(g2, "e")
    assert await seen(g1.token) == ["a", "c", "e"]
    assert await seen(g2.token) == ["a", "c", "e"]


async def test_a_bound_subscriber_receives_only_its_bindings_actions(tenant: Tenant) -> None:
    g1 = await register(tenant, tenant.key, guardian("g1"))
    g2 = await register(tenant, tenant.key, guardian("g2"))
    creds = [{"authorization": f"Bearer {t}", "tenant": tenant.id} for t in (g1.token, g2.token)]
    async with (
        live_server(tenant.state) as host,
        WsClient.connect(host, creds[0]) as ws_g1,
        WsClient.connect(host, creds[1]) as ws_g2,
        WsClient.connect(host, {"authorization": f"Bearer {tenant.key}"}) as ws_all,
    ):
        for ws in (ws_g1, ws_g2, ws_all):
            await ws.subscribe(SUBSCRIBE)
            assert (await ws.next_data())["actions"]["items"] == []
        await note(g2, "from g2")  # first: had it leaked, g1's subscriber would get it first
        await note(g1, "from g1")
        assert texts((await ws_g1.next_data())["actions"]["items"]) == ["from g1"]
        assert texts((await ws_g2.next_data())["actions"]["items"]) == ["from g2"]
        received: list[str] = []
        while len(received) < 2:
            received += texts((await ws_all.next_data())["actions"]["items"])
        assert received == ["from g2", "from g1"]
