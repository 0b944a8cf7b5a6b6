"""The credential cache (``app.auth.CredentialCache``) and the bound on revocations it
promises (README "Credentials"): a credential revoked through the server stops working at
once in this process and, on PostgreSQL, within moments in every other process (NOTIFY); one
revoked in the database behind the server's back works at most ``credential_cache_seconds``
longer."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from app.auth import CredentialCache, Principal
from app.db import write_transaction
from app.engine.devices.devices import DEVICES
from app.engine.tenants import KEYS, hash_secret
from app.settings import Settings
from app.state import credential_cache_seconds, make_state
from tests.api.actions_client import Device
from tests.api.test_multiprocess import BOUND, cli, environment, servers
from tests.conftest import Tenant

ME = "{ me { tenantId deviceId scopes } }"
REMOVE = "mutation($id: ID!) { removeDevice(deviceId: $id) }"
PRINCIPAL = Principal("t1", "one", frozenset({"sync:read"}), key_id="k1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the cache itself ----------------------------------------------------------------------


def test_an_entry_is_served_for_the_cache_time_and_not_a_moment_longer() -> None:
    clock = Clock()
    cache = CredentialCache(5.0, clock=clock)
    cache.put("sgk_a", None, PRINCIPAL, cache.generation)
    clock.now += 4.999
    assert cache.get("sgk_a", None) == PRINCIPAL
    clock.now += 0.001
    assert cache.get("sgk_a", None) is None


def test_another_token_or_tenant_header_is_another_lookup() -> None:
    cache = CredentialCache(5.0)
    cache.put("sgk_a", None, PRINCIPAL, cache.generation)
    assert cache.get("sgk_b", None) is None
    assert cache.get("sgk_a", "t2") is None
    assert cache.get("sgk_a", None) == PRINCIPAL


def test_revoke_forgets_everything_even_a_lookup_in_flight() -> None:
    cache = CredentialCache(5.0)
    cache.put("sgk_a", None, PRINCIPAL, cache.generation)
    started = cache.generation  # a lookup reads the database now ...
    cache.revoke()  # ... while a credential is revoked
    cache.put("sgk_b", None, PRINCIPAL, started)  # its answer may be stale: not kept
    assert cache.get("sgk_a", None) is None
    assert cache.get("sgk_b", None) is None
    cache.put("sgk_b", None, PRINCIPAL, cache.generation)
    assert cache.get("sgk_b", None) == PRINCIPAL


def test_off_keeps_nothing_and_full_drops_the_oldest() -> None:
    off = CredentialCache(0)
    off.put("sgk_a", None, PRINCIPAL, off.generation)
    assert off.get("sgk_a", None) is None
    small = CredentialCache(5.0, max_entries=2)
    for token in ("sgk_1", "sgk_2", "sgk_3"):
        small.put(token, None, PRINCIPAL, small.generation)
    assert [small.get(t, None) is not None for t in ("sgk_1", "sgk_2", "sgk_3")] == [
        False,
        True,
        True,
    ]


def test_only_hashes_of_credentials_are_kept() -> None:
    cache = CredentialCache(5.0)
    cache.put("sgk_secret", None, PRINCIPAL, cache.generation)
    assert "sgk_secret" not in repr(cache._entries)
    assert (hash_secret("sgk_secret"), None) in cache._entries


# --- through the API, both backends --------------------------------------------------------


@pytest.fixture
def clock(tenant: Tenant) -> Clock:
    """The tenant's server with its credential cache on (5 s, on SQLite too) and a clock the
    test moves."""
    clock = Clock()
    tenant.state.credentials.ttl = 5.0
    tenant.state.credentials.clock = clock
    return clock


def test_the_cache_is_on_by_default(database_urls: dict[str, str]) -> None:
    pg, lite = (Settings(database_url=database_urls[b]) for b in ("postgres", "sqlite"))
    assert (credential_cache_seconds(pg), credential_cache_seconds(lite)) == (5.0, 5.0)
    chosen = Settings(database_url=database_urls["sqlite"], credential_cache_seconds=2)
    assert credential_cache_seconds(chosen) == 2


async def test_a_removed_device_is_refused_at_once_though_its_token_was_cached(
    tenant: Tenant, clock: Clock
) -> None:
    device = await Device.register(tenant.http, tenant.key, "phone")
    for _ in range(2):  # the second is served from the cache
        assert (await device.gql(ME))["data"]["me"]["deviceId"] == device.device_id

    assert (await tenant.gql(REMOVE, {"id": device.device_id}))["data"]["removeDevice"]

    response = await device.post(ME)
    assert response.status_code == 401
    assert "removed" in response.json()["errors"][0]["message"]


async def test_a_keyed_removal_is_heard_by_the_cache(tenant: Tenant, clock: Clock) -> None:
    """Under an Idempotency-Key the removal commits after its answer is stored (the write
    edge's parked transaction): the cache forgets then, and the token is refused at once."""
    device = await Device.register(tenant.http, tenant.key, "phone")
    assert (await device.gql(ME))["data"]["me"]["deviceId"] == device.device_id
    before = tenant.state.credentials.generation
    removed = await tenant.gql(
        REMOVE, {"id": device.device_id}, headers={"Idempotency-Key": "remove-phone"}
    )
    assert removed["data"]["removeDevice"] is True
    assert tenant.state.credentials.generation > before
    response = await device.post(ME)
    assert response.status_code == 401


async def test_a_key_revoked_behind_the_servers_back_works_at_most_the_cache_time(
    tenant: Tenant, clock: Clock
) -> None:
    key = await tenant.new_key("sync:read")
    await tenant.gql(ME, key=key)
    async with write_transaction(tenant.state.engine) as conn:  # not through the server
        await conn.execute(
            sa.update(KEYS)
            .where(KEYS.c.key_hash == hash_secret(key))
            .values(revoked_at=datetime.now(UTC))
        )
    clock.now += 5.0 - 0.01
    assert (await tenant.post(ME, key=key)).status_code == 200
    clock.now += 0.01
    assert (await tenant.post(ME, key=key)).status_code == 401


async def test_a_key_revoked_by_another_process_is_refused_within_the_cache_time(
    tenant: Tenant, clock: Clock
) -> None:
    """On SQLite at once: no process hears another's commits, but the files' stat says one
    wrote (ForeignWrites); on PostgreSQL each process hears the NOTIFY (test_multiprocess),
    and without it the cache time bounds the wait."""
    key = await tenant.new_key("sync:read")
    await tenant.gql(ME, key=key)
    other = make_state(tenant.state.settings)  # another engine: another process's writes
    try:
        async with write_transaction(other.engine) as conn:
            await conn.execute(
                sa.update(KEYS)
                .where(KEYS.c.key_hash == hash_secret(key))
                .values(revoked_at=datetime.now(UTC))
            )
    finally:
        await other.close()
    refused_now = (await tenant.post(ME, key=key)).status_code == 401
    assert refused_now == (tenant.state.settings.database_url.startswith("sqlite"))
    clock.now += 5.0
    assert (await tenant.post(ME, key=key)).status_code == 401


async def test_a_cached_key_still_cannot_read_another_tenant(
    tenant: Tenant, other_tenant: Tenant, clock: Clock
) -> None:
    await tenant.gql(ME)  # cached, for no tenant header
    response = await tenant.post(ME, headers={"X-Tenant-Id": other_tenant.id})
    assert response.status_code == 403
    assert response.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def test_a_failed_lookup_is_not_cached_so_a_new_device_works_at_once(
    tenant: Tenant, clock: Clock
) -> None:
    response = await tenant.post(ME, key="sgd_not-yet")
    assert response.status_code == 401
    device = await Device.register(tenant.http, tenant.key, "new")
    async with write_transaction(tenant.state.engine) as conn:
        await conn.execute(
            sa.update(DEVICES)
            .where(DEVICES.c.id == device.device_id)
            .values(token_hash=hash_secret("sgd_not-yet"))
        )
    assert (await tenant.post(ME, key="sgd_not-yet")).status_code == 200


# --- another process (PostgreSQL) -----------------------------------------------------------


async def test_a_device_removed_through_one_process_is_refused_by_another_within_the_bound(
    database_urls: dict[str, str], tmp_path: Path
) -> None:
    """With a cache time far longer than the bound, only the NOTIFY can explain it."""
    env = environment(database_urls["postgres"])
    env["SYNCGRAPH_CREDENTIAL_CACHE_SECONDS"] = "60"
    with servers(env, tmp_path, 2) as [(a, _a_pid), (b, _b_pid)]:
        tenant = cli(env, "tenant", "create", "revocation")["id"]
        key = cli(env, "key", "create", "--tenant", tenant, "--scopes", "sync:manage")["key"]
        async with (
            httpx.AsyncClient(base_url=f"http://{a}") as on_a,
            httpx.AsyncClient(base_url=f"http://{b}") as on_b,
        ):
            device = await Device.register(on_a, key, "phone")
            for _ in range(2):
                assert (await device.gql(ME))["data"]["me"]["deviceId"] == device.device_id

            removed = await on_b.post(
                "/graphql",
                json={"query": REMOVE, "variables": {"id": device.device_id}},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert removed.json()["data"] == {"removeDevice": True}

            deadline = time.monotonic() + BOUND
            while (await device.post(ME)).status_code != 401:
                assert time.monotonic() < deadline, "process A still accepts the removed device"
