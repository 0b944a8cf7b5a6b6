"""Shared fixtures: every test runs on SQLite and on PostgreSQL (a missing PostgreSQL is a
failure, never a skip), each in a tenant of its own."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import event

from app.db import write_transaction
from app.engine.tenants import SCOPES, create_key, create_tenant
from app.engine.views.spec import check_binding
from app.main import create_app
from app.migrate import upgrade
from app.settings import Settings
from app.state import AppState, make_state
from tests.package import Installed, install

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "examples"
PG_ADMIN_URL = os.environ.get("SYNCGRAPH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgres"]


def example(name: str) -> dict[str, Any]:
    path = EXAMPLES / name
    if not path.exists():  # the examples also live in the repo for clones without shared/
        path = Path(__file__).resolve().parent / "examples" / name
    return json.loads(path.read_text())


async def _recreate_pg_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """One wheel of this checkout in one fresh venv for the session: tests/test_package.py and
    tests/test_own_entities.py run it from the outside (the build takes a minute)."""
    return install(tmp_path_factory.mktemp("package"))


@pytest.fixture(scope="session")
def database_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One migrated database per backend for the session (dropped at the end); tests
    isolate by tenant."""
    sqlite_file = tmp_path_factory.mktemp("db") / "syncgraph.db"
    pg_name = f"syncgraph_test_{os.getpid()}"
    try:
        asyncio.run(_recreate_pg_database(pg_name))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is required for the tests ({PG_ADMIN_URL}): {exc}")
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    urls = {"sqlite": f"sqlite+aiosqlite:///{sqlite_file}", "postgres": f"{base}/{pg_name}"}
    for url in urls.values():
        upgrade(url)
    yield urls
    asyncio.run(_drop_pg_database(pg_name))


async def _drop_pg_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, database_urls: dict[str, str]) -> Settings:
    # No credential cache: the test app runs without its lifespan (no LISTEN), so it could
    # not hear a revocation by another process (the CLI); tests/api/test_credential_cache.py
    # turns it on, and real `serve` processes (test_multiprocess) have it on by default.
    return Settings(
        database_url=database_urls[backend], dev=False, pool_size=5, credential_cache_seconds=0
    )


@pytest.fixture
async def state(settings: Settings) -> AsyncIterator[AppState]:
    app_state = make_state(settings)
    yield app_state
    await app_state.close()


@dataclass
class Tenant:
    """A tenant of its own for one test, with a key holding every scope."""

    id: str
    key: str
    http: httpx.AsyncClient
    state: AppState

    async def gql(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        expect_errors: bool = False,
    ) -> dict[str, Any]:
        response = await self.post(query, variables, key=key, headers=headers)
        body = response.json()
        if not expect_errors:
            assert response.status_code == 200, body
            assert "errors" not in body, body["errors"]
        return body

    async def post(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        all_headers = {"Authorization": f"Bearer {key or self.key}", **(headers or {})}
        return await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=all_headers
        )

    async def new_key(self, *scopes: str) -> str:
        async with write_transaction(self.state.engine) as conn:
            issued = await create_key(conn, tenant_id=self.id, scopes=scopes)
        return issued.key

    async def view_key(
        self, view: str, scopes: tuple[str, ...] = ("sync:read", "sync:write"), **params: str
    ) -> tuple[str, str]:
        """A key bound to ``view`` with ``params``: (key, key id)."""
        binding = check_binding(self.state.registry, view, params)
        async with write_transaction(self.state.engine) as conn:
            issued = await create_key(conn, tenant_id=self.id, scopes=scopes, view=binding)
        return issued.key, issued.id


@pytest.fixture
async def http(state: AppState) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(state=state)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def make_tenant(state: AppState, http: httpx.AsyncClient, name: str = "t") -> Tenant:
    async with write_transaction(state.engine) as conn:
        tenant_id = await create_tenant(conn, f"{name}-{uuid.uuid4().hex[:6]}")
        issued = await create_key(conn, tenant_id=tenant_id, scopes=SCOPES)
    return Tenant(id=tenant_id, key=issued.key, http=http, state=state)


@pytest.fixture
async def tenant(state: AppState, http: httpx.AsyncClient) -> Tenant:
    return await make_tenant(state, http, "a")


@pytest.fixture
async def other_tenant(state: AppState, http: httpx.AsyncClient) -> Tenant:
    return await make_tenant(state, http, "b")


@contextmanager
def statements(state: AppState) -> Iterator[list[str]]:
    """Every SQL statement the app runs inside the block."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(state.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(state.engine.sync_engine, "before_cursor_execute", record)
