"""Concurrent writers and pullers on PostgreSQL: a puller that loops ``since = checkpoint``
ends with exactly the database's state and never receives the same change twice (DESIGN §3
"Checkpoints, no missed changes").

PostgreSQL only (SQLite serialises every writer); it uses the postgres URL directly, so a
missing server fails in the ``database_urls`` fixture instead of skipping.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.main import create_app
from app.settings import Settings
from app.state import AppState, make_state
from tests.api.actions_client import Device, upsert
from tests.conftest import Tenant, make_tenant

WRITERS = 4
REQUESTS_PER_WRITER = 15
PULLERS = 3
PAGE = 10
SHARED_USERS = 6
SHARED_PER_REQUEST = 3
"""Each request writes three of the shared users, in random order, so requests overlap
heavily: the first writes of a shared id race to insert it, later ones lock the same rows in
different input orders (no deadlock, no double insert)."""
NEW_PER_REQUEST = 3

SYNC = """mutation($input: SyncInput!) { sync(input: $input, force: true) {
  totals { failed } users { errors { code message } } persons { errors { code message } } } }"""
PULL = """query($since: String, $limit: Int) { changes(since: $since, limit: $limit) {
  checkpoint hasMore fullSyncRequired
  users { inserted { id version name } updated { id version name } deleted }
  persons { inserted { id version name } updated { id version name } deleted }
} }"""
ENTITIES = ("users", "persons")


@asynccontextmanager
async def server(url: str, name: str) -> AsyncIterator[tuple[AppState, httpx.AsyncClient]]:
    """One server process of its own (engine, pool, app) sharing the database."""
    state = make_state(Settings(database_url=url, dev=False, pool_size=6))
    transport = httpx.ASGITransport(app=create_app(state=state))
    try:
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{name}") as client:
            yield state, client
    finally:
        await state.close()


async def gql(
    client: httpx.AsyncClient, key: str, query: str, variables: dict[str, Any]
) -> dict[str, Any]:
    response = await client.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {key}"},
    )
    body = response.json()
    assert response.status_code == 200, body
    assert "errors" not in body, body["errors"]
    data: dict[str, Any] = body["data"]
    return data


@dataclass
class Replica:
    """A client's local copy, built only from pulled pages."""

    records: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    seen: set[tuple[str, str, int | str]] = field(default_factory=set)
    pages: int = 0

    def apply(self, page: dict[str, Any]) -> None:
        self.pages += 1
        for plural in ENTITIES:
            changes = page[plural]
            for kind in ("inserted", "updated"):
                for record in changes[kind]:
                    key = (plural, record["id"])
                    if kind == "inserted":  # (an update may name a record that a paged
                        # snapshot never delivered: it was changed past the page's cutoff)
                        assert key not in self.records, f"inserted again: {record}"
                    self.see((plural, record["id"], record["version"]))
                    self.records[key] = (record["version"], record["name"])
            for id_ in changes["deleted"]:
                self.see((plural, id_, "deleted"))
                self.records.pop((plural, id_), None)

    def see(self, change: tuple[str, str, int | str]) -> None:
        assert change not in self.seen, f"received twice: {change}"
        self.seen.add(change)


async def pull_until_current(
    client: httpx.AsyncClient, key: str, replica: Replica, since: str | None, limit: int
) -> str | None:
    while True:
        page = (await gql(client, key, PULL, {"since": since, "limit": limit}))["changes"]
        assert page["fullSyncRequired"] is False
        replica.apply(page)
        since = page["checkpoint"]
        if not page["hasMore"]:
            return since


async def puller(client: httpx.AsyncClient, key: str, writers_done: asyncio.Event) -> Replica:
    replica = Replica()
    since: str | None = None
    while not writers_done.is_set():
        since = await pull_until_current(client, key, replica, since, PAGE)
        await asyncio.sleep(0.02)
    await pull_until_current(client, key, replica, since, PAGE)  # started after the last commit
    return replica


async def writer(client: httpx.AsyncClient, key: str, number: int, shared: list[str]) -> None:
    rng = random.Random(number)
    for request in range(REQUESTS_PER_WRITER):
        name = f"w{number}-r{request}"
        users = [{"id": id_, "name": name} for id_ in rng.sample(shared, SHARED_PER_REQUEST)]
        users += [{"name": f"{name}-new{i}"} for i in range(NEW_PER_REQUEST)]
        persons: dict[str, Any] = {"data": [{"name": name}]}
        if number == 0 and request % 5 == 4:
            persons["cleanSync"] = True  # tombstones every live person but this one
        batches = {"users": {"data": users}, "persons": persons}
        data = await gql(client, key, SYNC, {"input": batches})
        assert data["sync"]["totals"]["failed"] == 0, data


async def final_state(
    client: httpx.AsyncClient, key: str
) -> dict[tuple[str, str], tuple[int, str]]:
    snapshot = Replica()
    await pull_until_current(client, key, snapshot, None, 1000)
    return snapshot.records


async def test_concurrent_pullers_end_with_the_database_state(
    database_urls: dict[str, str],
) -> None:
    url = database_urls["postgres"]
    async with (
        server(url, "writers") as (state, writers_http),
        server(url, "pullers") as (_pullers_state, pullers_http),
    ):
        tenant: Tenant = await make_tenant(state, writers_http, "concurrent")
        shared = [str(uuid.uuid4()) for _ in range(SHARED_USERS)]
        done = asyncio.Event()

        async def all_writers() -> None:
            try:
                await asyncio.gather(
                    *(writer(writers_http, tenant.key, n, shared) for n in range(WRITERS))
                )
            finally:
                done.set()

        async with asyncio.timeout(25), asyncio.TaskGroup() as group:
            pulling = [
                group.create_task(puller(pullers_http, tenant.key, done)) for _ in range(PULLERS)
            ]
            await all_writers()
        replicas = [task.result() for task in pulling]
        expected = await final_state(pullers_http, tenant.key)

    assert {plural for plural, _ in expected} == {"users", "persons"}
    users = SHARED_USERS + WRITERS * REQUESTS_PER_WRITER * NEW_PER_REQUEST
    assert len([k for k in expected if k[0] == "users"]) == users
    assert 0 < len([k for k in expected if k[0] == "persons"]) < WRITERS * REQUESTS_PER_WRITER
    for replica in replicas:
        assert replica.records == expected
        assert replica.pages > 10  # it really pulled while the writers wrote


BIG = 1000
LARGE_REQUESTS = 2
"""Items per entity in a large request: far over the per-key advisory lock limit."""


async def test_large_and_small_writers_on_one_tenant(database_urls: dict[str, str]) -> None:
    """Large batches hold their (tenant, table) alone and write their rows once, at stamp
    time; small ones lock single keys. Both kinds run concurrently on overlapping records
    without deadlocks or lost writes."""
    url = database_urls["postgres"]
    async with server(url, "mixed") as (state, http):
        tenant: Tenant = await make_tenant(state, http, "mixed")
        shared = [str(uuid.uuid4()) for _ in range(SHARED_USERS)]
        seed = {"users": {"data": [{"id": i, "name": "seed"} for i in shared]}}
        await gql(http, tenant.key, SYNC, {"input": seed})

        async def large(number: int, request: int) -> None:
            name = f"big{number}-{request}"
            users = [{"alias": f"{name}-u{i}", "name": name} for i in range(BIG - 1)]
            users.append({"id": shared[number % SHARED_USERS], "name": name})
            persons = [{"alias": f"{name}-p{i}", "name": name} for i in range(BIG)]
            batches = {"users": {"data": users}, "persons": {"data": persons}}
            data = await gql(http, tenant.key, SYNC, {"input": batches})
            assert data["sync"]["totals"]["failed"] == 0, data

        async def small(number: int) -> None:
            await writer(http, tenant.key, 100 + number, shared)

        async with asyncio.timeout(60), asyncio.TaskGroup() as group:
            for number in range(4):
                group.create_task(small(number))
                for request in range(LARGE_REQUESTS):
                    group.create_task(large(number, request))
        records = await final_state(http, tenant.key)

    users = [k for k in records if k[0] == "users"]
    persons = [k for k in records if k[0] == "persons"]
    small_new = 4 * REQUESTS_PER_WRITER * NEW_PER_REQUEST
    assert len(users) == SHARED_USERS + 4 * LARGE_REQUESTS * (BIG - 1) + small_new
    assert len(persons) == 4 * LARGE_REQUESTS * BIG + 4 * REQUESTS_PER_WRITER
    versions = [records[("users", i)][0] for i in shared]
    assert sum(versions) > SHARED_USERS  # the shared users were really updated


async def test_device_actions_and_large_syncs_do_not_deadlock(
    database_urls: dict[str, str],
) -> None:
    """A device's entity actions apply in the device's order, which may name persons before
    users; large syncs lock users, then persons. The push locks what its actions write in
    the registry's order first, so neither waits for the other in a cycle (PostgreSQL would
    abort one of them after a second)."""
    url = database_urls["postgres"]
    async with server(url, "devices") as (state, http):
        tenant: Tenant = await make_tenant(state, http, "devices")
        devices = [await Device.register(http, tenant.key, f"d{n}") for n in range(4)]

        async def device_pushes(device: Device, number: int) -> None:
            for request in range(6):
                person = {"id": str(uuid.uuid4()), "name": f"p{number}-{request}"}
                user = {"id": str(uuid.uuid4()), "name": f"u{number}-{request}"}
                payloads = [upsert("persons", person), upsert("users", user)]
                result = await device.push(device.actions(*payloads))
                assert result["accepted"] == 2, result

        async def large(number: int) -> None:
            for request in range(2):
                name = f"big{number}-{request}"
                users = [{"alias": f"{name}-u{i}", "name": name} for i in range(BIG // 4)]
                persons = [{"alias": f"{name}-p{i}", "name": name} for i in range(BIG // 4)]
                batches = {"users": {"data": users}, "persons": {"data": persons}}
                data = await gql(http, tenant.key, SYNC, {"input": batches})
                assert data["sync"]["totals"]["failed"] == 0, data

        async with asyncio.timeout(60), asyncio.TaskGroup() as group:
            for number, device in enumerate(devices):
                group.create_task(device_pushes(device, number))
                group.create_task(large(number))
        records = await final_state(http, tenant.key)

    assert len([k for k in records if k[0] == "users"]) == 4 * 6 + 4 * 2 * (BIG // 4)
    assert len([k for k in records if k[0] == "persons"]) == 4 * 6 + 4 * 2 * (BIG // 4)
