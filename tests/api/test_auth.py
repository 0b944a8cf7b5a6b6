"""Credentials, tenants and scopes through HTTP (DESIGN §4, §7 "HTTP", "Scopes")."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import sqlalchemy as sa

from app.db import write_transaction
from app.engine.tenants import KEYS, SCOPES, create_key, hash_secret
from tests.conftest import Tenant

ME = "{ me { tenantId tenantName scopes deviceId } }"
CHANGES = "{ changes { checkpoint users { inserted { id name } } } }"
SYNC = """mutation($input: SyncInput!) { sync(input: $input, force: true) {
  checkpoint totals { inserted deleted } users { ids cleanSync } } }"""
INTROSPECTION = "{ __schema { queryType { name } } }"


async def post(
    tenant: Tenant, query: str, headers: dict[str, str], variables: dict[str, Any] | None = None
) -> httpx.Response:
    """A request with exactly ``headers`` (no default credentials)."""
    return await tenant.http.post(
        "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
    )


def bearer(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


def only_error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body.get("data") is None, body
    [error] = body["errors"]
    return dict(error)


def error_code(response: httpx.Response) -> str:
    return str(only_error(response)["extensions"]["code"])


async def system_key(tenant: Tenant, *scopes: str) -> str:
    async with write_transaction(tenant.state.engine) as conn:
        issued = await create_key(conn, tenant_id=None, scopes=scopes or SCOPES, system=True)
    return issued.key


async def user_names(tenant: Tenant) -> list[str]:
    body = await tenant.gql(CHANGES)
    return sorted(r["name"] for r in body["data"]["changes"]["users"]["inserted"])


def users_input(*names: str, clean: bool = False) -> dict[str, Any]:
    return {"input": {"users": {"data": [{"name": n} for n in names], "cleanSync": clean}}}


# --- authentication -------------------------------------------------------------------------


BAD_CREDENTIALS = {
    "missing": {},
    "unknown-key": {"Authorization": "Bearer sgk_not-a-key"},
    "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
    "bearer-empty": {"Authorization": "Bearer"},
    "bearer-blank": {"Authorization": "Bearer    "},
    "no-scheme": {"Authorization": "sgk_key-without-scheme"},
}


async def test_missing_or_bad_credentials_are_401(tenant: Tenant) -> None:
    for case, headers in BAD_CREDENTIALS.items():
        response = await post(tenant, ME, headers)
        assert response.status_code == 401, case
        assert error_code(response) == "UNAUTHENTICATED", case
        assert response.json()["extensions"]["requestId"], case


async def test_bad_credentials_read_nothing(tenant: Tenant) -> None:
    await tenant.gql(SYNC, users_input("secret"))
    response = await post(tenant, CHANGES, {"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert "secret" not in response.text


async def test_a_revoked_key_is_401(tenant: Tenant) -> None:
    """Revoked through the server (its credential cache then forgets at once): see
    test_credential_cache.py for a revocation made in the database behind its back."""
    key = await tenant.new_key("sync:read")
    await tenant.gql(ME, key=key)
    async with write_transaction(tenant.state.engine) as conn:
        key_id = (
            await conn.execute(sa.select(KEYS.c.id).where(KEYS.c.key_hash == hash_secret(key)))
        ).scalar_one()
    assert await tenant.state.service.revoke_key(key_id)

    response = await post(tenant, ME, bearer(key))

    assert response.status_code == 401
    assert error_code(response) == "UNAUTHENTICATED"


async def test_scheme_is_case_insensitive(tenant: Tenant) -> None:
    response = await post(tenant, ME, {"Authorization": f"bearer {tenant.key}"})
    assert response.status_code == 200
    assert response.json()["data"]["me"]["tenantId"] == tenant.id


async def test_introspection_needs_no_credentials(tenant: Tenant) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = await post(tenant, INTROSPECTION, headers)
        assert response.status_code == 200, headers
        assert response.json()["data"] == {"__schema": {"queryType": {"name": "Query"}}}


# --- tenants ---------------------------------------------------------------------------------


async def test_tenant_key_with_another_tenants_header_is_403(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    await other_tenant.gql(SYNC, users_input("theirs"))
    for header in ("X-Tenant-Id", "community-id"):
        response = await post(tenant, CHANGES, bearer(tenant.key, **{header: other_tenant.id}))
        assert response.status_code == 403, header
        assert error_code(response) == "FORBIDDEN"
        assert "theirs" not in response.text


async def test_tenant_key_with_its_own_tenant_header(tenant: Tenant) -> None:
    for header in ("X-Tenant-Id", "community-id"):
        for value in (tenant.id, tenant.id.upper()):
            response = await post(tenant, ME, bearer(tenant.key, **{header: value}))
            assert response.status_code == 200, (header, value, response.text)
            assert response.json()["data"]["me"]["tenantId"] == tenant.id


async def test_tenant_header_that_is_not_a_uuid_is_400(tenant: Tenant) -> None:
    for value in ("acme", "123", "not-a-uuid-at-all"):
        response = await post(tenant, ME, bearer(tenant.key, **{"X-Tenant-Id": value}))
        assert response.status_code == 400, value
        assert error_code(response) == "BAD_REQUEST", value


async def test_system_key_acts_for_the_tenant_in_the_header(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    key = await system_key(tenant)

    me = await tenant.gql(ME, key=key, headers={"X-Tenant-Id": tenant.id})
    await tenant.gql(SYNC, users_input("via system"), key=key, headers={"X-Tenant-Id": tenant.id})
    other_me = await tenant.gql(ME, key=key, headers={"community-id": other_tenant.id})

    assert me["data"]["me"]["tenantId"] == tenant.id
    assert me["data"]["me"]["tenantName"].startswith("a-")
    assert other_me["data"]["me"]["tenantId"] == other_tenant.id
    assert await user_names(tenant) == ["via system"]
    assert await user_names(other_tenant) == []


async def test_system_key_without_tenant_header_is_bad_request(tenant: Tenant) -> None:
    key = await system_key(tenant)
    response = await post(tenant, ME, bearer(key))
    assert error_code(response) == "BAD_REQUEST"
    assert "X-Tenant-Id" in only_error(response)["message"]


async def test_system_key_for_an_unknown_tenant_is_forbidden(tenant: Tenant) -> None:
    key = await system_key(tenant)
    response = await post(tenant, ME, bearer(key, **{"X-Tenant-Id": str(uuid.uuid4())}))
    assert response.status_code == 403
    assert error_code(response) == "FORBIDDEN"


async def test_system_key_keeps_its_scopes(tenant: Tenant) -> None:
    key = await system_key(tenant, "sync:read")
    headers = {"X-Tenant-Id": tenant.id}
    await tenant.gql(CHANGES, key=key, headers=headers)

    body = await tenant.gql(SYNC, users_input("x"), key=key, headers=headers, expect_errors=True)

    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert await user_names(tenant) == []


# --- me and scopes --------------------------------------------------------------------------


async def test_me_describes_the_caller(tenant: Tenant) -> None:
    read_key = await tenant.new_key("sync:read")

    full = (await tenant.gql(ME))["data"]["me"]
    reader = (await tenant.gql(ME, key=read_key))["data"]["me"]

    assert full["tenantId"] == tenant.id
    assert full["tenantName"].startswith("a-")
    assert sorted(full["scopes"]) == sorted(SCOPES)
    assert full["deviceId"] is None
    assert reader == {**full, "scopes": ["sync:read"]}


async def test_manage_key_can_read_write_and_clean(tenant: Tenant) -> None:
    key = await tenant.new_key("sync:manage")
    await tenant.gql(SYNC, users_input("a", "b"), key=key)

    body = await tenant.gql(SYNC, users_input("c", clean=True), key=key)

    assert body["data"]["sync"]["users"]["cleanSync"] == "APPLIED"
    assert body["data"]["sync"]["totals"]["deleted"] == 2
    assert (await tenant.gql(CHANGES, key=key))["data"]["changes"]["users"]["inserted"][0][
        "name"
    ] == "c"


async def test_write_key_can_read_and_sync_but_not_clean(tenant: Tenant) -> None:
    key = await tenant.new_key("sync:write")
    await tenant.gql(SYNC, users_input("a"), key=key)
    await tenant.gql(CHANGES, key=key)

    response = await tenant.post(SYNC, users_input("b", clean=True), key=key)

    assert response.status_code == 200
    assert error_code(response) == "FORBIDDEN"
    assert await user_names(tenant) == ["a"]


async def test_read_key_cannot_sync(tenant: Tenant) -> None:
    key = await tenant.new_key("sync:read")

    for clean in (False, True):
        response = await tenant.post(SYNC, users_input("x", clean=clean), key=key)

        assert response.status_code == 200  # an executed operation; the error is in the body
        assert error_code(response) == "FORBIDDEN"
        assert "sync:write" in only_error(response)["message"]
    assert await user_names(tenant) == []


async def test_read_key_can_read(tenant: Tenant) -> None:
    await tenant.gql(SYNC, users_input("a"))
    key = await tenant.new_key("sync:read")

    changes = await tenant.gql(CHANGES, key=key)
    listing = await tenant.gql("{ users { totalCount nodes { name } } }", key=key)

    assert [r["name"] for r in changes["data"]["changes"]["users"]["inserted"]] == ["a"]
    assert listing["data"]["users"] == {"totalCount": 1, "nodes": [{"name": "a"}]}
