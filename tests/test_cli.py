"""The ``syncgraph`` console script, run as an operator runs it: a real process, configured by
``DATABASE_URL``, JSON on stdout and messages on stderr; what it creates then works through
the API."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli import _dev_bootstrap
from app.db import make_engine, write_transaction
from app.domains import load_registry
from app.engine.tenants import SCOPES, create_key, create_tenant
from app.main import create_app
from app.migrate import upgrade
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SYNCGRAPH = Path(sys.executable).with_name("syncgraph")


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """The one JSON object a command prints."""
        assert self.code == 0, self.stderr
        [line] = self.stdout.splitlines()
        return json.loads(line)


async def syncgraph(url: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> Run:
    """The command in a process of its own, on ``url``, with ``env`` added to the
    environment (which holds no other SYNCGRAPH_ setting)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SYNCGRAPH_")}
    env = {**environment, "DATABASE_URL": url, **(env or {})}
    process = await asyncio.create_subprocess_exec(
        SYNCGRAPH,
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())


@asynccontextmanager
async def api(url: str, key: str) -> AsyncIterator[Any]:
    """A server on ``url``, and a function that sends GraphQL with ``key``."""
    app = create_app(Settings(database_url=url, dev=False))
    transport = httpx.ASGITransport(app=app)

    async def gql(query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await client.post(
            "/graphql",
            json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield gql
    finally:
        await app.state.sync.close()


def sqlite_file(directory: Path) -> str:
    return f"sqlite+aiosqlite:///{directory / 'cli.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def cli_url(request: pytest.FixtureRequest, tmp_path: Path, database_urls: dict[str, str]) -> str:
    """A fresh SQLite file, or the session's PostgreSQL database."""
    return sqlite_file(tmp_path) if request.param == "sqlite" else database_urls["postgres"]


@dataclass
class Shared:
    url: str
    tenant_id: str
    key: str
    """Holds every scope."""
    cwd: Path


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    """A SQLite file with a tenant and a key, made in-process (the commands that do this are
    tested above; every command is a process start of about a second)."""
    cwd = tmp_path_factory.mktemp("cli")
    url = sqlite_file(cwd)
    upgrade(url)

    async def setup() -> tuple[str, str]:
        engine = make_engine(Settings(database_url=url))
        try:
            async with write_transaction(engine) as conn:
                tenant_id = await create_tenant(conn, "shared")
                issued = await create_key(conn, tenant_id=tenant_id, scopes=SCOPES)
        finally:
            await engine.dispose()
        return tenant_id, issued.key

    tenant_id, key = asyncio.run(setup())
    return Shared(url, tenant_id, key, cwd)


SYNC = """mutation($input: SyncInput!) { sync(input: $input) {
  checkpoint users { inserted ids deletedIds cleanSync } } }"""


async def test_tenant_and_key_from_the_cli_work_against_the_api(
    cli_url: str, tmp_path: Path
) -> None:
    migrated = await syncgraph(cli_url, "migrate", cwd=tmp_path)
    assert migrated.code == 0, migrated.stderr
    assert migrated.stdout == ""
    assert migrated.stderr

    name = f"acme {uuid.uuid4().hex[:6]}"
    tenant = (await syncgraph(cli_url, "tenant", "create", name, cwd=tmp_path)).json()
    assert set(tenant) == {"id", "name"}
    assert tenant["name"] == name
    assert str(uuid.UUID(tenant["id"])) == tenant["id"]

    issued = (
        await syncgraph(
            cli_url,
            *("key", "create", "--tenant", tenant["id"], "--scopes", "sync:read,sync:write"),
            cwd=tmp_path,
        )
    ).json()
    assert {"id", "key", "tenantId", "scopes"} <= set(issued)
    assert issued["tenantId"] == tenant["id"]
    assert issued["scopes"] == ["sync:read", "sync:write"]

    async with api(cli_url, issued["key"]) as gql:
        me = await gql("{ me { tenantId tenantName scopes } }")
        assert me["data"]["me"] == {
            "tenantId": tenant["id"],
            "tenantName": name,
            "scopes": ["sync:read", "sync:write"],
        }
        written = await gql(SYNC, {"input": {"users": {"data": [{"name": "from the cli"}]}}})
        assert written["data"]["sync"]["users"]["inserted"] == 1
        # the key holds exactly the scopes it was given: no sync:manage
        clean = await gql(SYNC, {"input": {"users": {"data": [], "cleanSync": True}}})
        assert clean["errors"][0]["extensions"]["code"] == "FORBIDDEN"


@pytest.mark.parametrize(
    ("scopes", "tenant"),
    [("sync:read,sync:everything", "created"), ("sync:read", "unknown")],
    ids=["unknown scope", "unknown tenant"],
)
async def test_key_create_refuses_bad_input(shared: Shared, scopes: str, tenant: str) -> None:
    tenant_id = shared.tenant_id if tenant == "created" else str(uuid.uuid4())
    run = await syncgraph(
        shared.url, "key", "create", "--tenant", tenant_id, "--scopes", scopes, cwd=shared.cwd
    )
    assert run.code != 0
    assert run.stdout == ""
    assert ("scope" if tenant == "created" else tenant_id) in run.stderr
    assert "Traceback" not in run.stderr


async def test_export_schema_writes_the_committed_sdl(shared: Shared, tmp_path: Path) -> None:
    target = tmp_path / "out.graphql"
    run = await syncgraph(shared.url, "export-schema", "-o", str(target), cwd=shared.cwd)
    assert run.code == 0, run.stderr
    assert run.stdout == ""
    assert target.read_text() == (ROOT / "schema.graphql").read_text()


CHANGES = """query($since: String) { changes(since: $since) {
  checkpoint fullSyncRequired users { inserted { alias } deleted } } }"""


async def test_purge_moves_the_horizon(shared: Shared) -> None:
    """On SQLite only: ``purge`` acts on every tenant, and the session's PostgreSQL database
    is shared by every test."""
    async with api(shared.url, shared.key) as gql:
        users = [{"alias": a, "name": a} for a in ("keep", "drop")]
        first = await gql(SYNC, {"input": {"users": {"data": users}}})
        old = first["data"]["sync"]["checkpoint"]
        keep_only = {"users": {"data": users[:1], "cleanSync": True}}
        deleted = await gql(SYNC, {"input": keep_only})
        assert deleted["data"]["sync"]["users"]["cleanSync"] == "APPLIED"
        recent = deleted["data"]["sync"]["checkpoint"]

        before = await gql(CHANGES, {"since": old})
        assert before["data"]["changes"]["fullSyncRequired"] is False
        assert len(before["data"]["changes"]["users"]["deleted"]) == 1

        purged = (await syncgraph(shared.url, "purge", "--days", "0", cwd=shared.cwd)).json()
        assert purged["purged"] == 1

        stale = await gql(CHANGES, {"since": old})
        assert stale["data"]["changes"]["fullSyncRequired"] is True
        current = await gql(CHANGES, {"since": recent})
        assert current["data"]["changes"]["fullSyncRequired"] is False
        fresh = await gql(CHANGES, {"since": None})
        assert fresh["data"]["changes"]["fullSyncRequired"] is False
        assert fresh["data"]["changes"]["users"] == {"inserted": [{"alias": "keep"}], "deleted": []}
        everything = await gql("{ users(includeDeleted: true) { totalCount } }")
        assert everything["data"]["users"]["totalCount"] == 1


VIEW_CHANGES = """query($since: String) { changes(since: $since) {
  checkpoint users { inserted { alias } } members { inserted { alias } } } }"""


async def test_a_view_bound_key_from_the_cli_pulls_its_view_and_follows_set_view(
    shared: Shared,
) -> None:
    async with api(shared.url, shared.key) as gql:
        users = [{"alias": a, "name": a} for a in ("cli-g1", "cli-g2")]
        members = [
            {"alias": "cli-m1", "name": "m1", "users": ["cli-g1"]},
            {"alias": "cli-m2", "name": "m2", "users": ["cli-g2"]},
        ]
        await gql(SYNC, {"input": {"users": {"data": users}}})
        await gql(
            "mutation($input: SyncInput!) { sync(input: $input) { checkpoint } }",
            {"input": {"members": {"data": members}}},
        )
    args = ("key", "create", "--tenant", shared.tenant_id, "--scopes", "sync:read")
    made = (
        await syncgraph(
            shared.url, *args, "--view", "guardian", "--param", "user=cli-g1", cwd=shared.cwd
        )
    ).json()
    assert made["view"] == {"name": "guardian", "params": {"user": "cli-g1"}}
    async with api(shared.url, made["key"]) as gql:
        page = (await gql(VIEW_CHANGES))["data"]["changes"]
        assert [u["alias"] for u in page["users"]["inserted"]] == ["cli-g1"]
        assert [m["alias"] for m in page["members"]["inserted"]] == ["cli-m1"]
    rebind = ("key", "set-view", "--key-id", made["id"], "--view", "guardian", "--param")
    moved = (await syncgraph(shared.url, *rebind, "user=cli-g2", cwd=shared.cwd)).json()
    assert moved == {"id": made["id"], "view": {"name": "guardian", "params": {"user": "cli-g2"}}}
    async with api(shared.url, made["key"]) as gql:
        after = (await gql(VIEW_CHANGES, {"since": page["checkpoint"]}))["data"]["changes"]
        assert [m["alias"] for m in after["members"]["inserted"]] == ["cli-m2"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--view", "nosuch", "--param", "user=x"), "unknown view 'nosuch'"),
        (("--view", "guardian"), "needs the parameter user"),
        (("--view", "guardian", "--param", "usr=x"), "has no parameter 'usr'"),
        (("--view", "guardian", "--param", "user"), "write it as NAME=VALUE"),
        (("--param", "user=x"), "--param needs --view"),
    ],
)
async def test_key_create_refuses_bad_bindings(
    shared: Shared, extra: tuple[str, ...], message: str
) -> None:
    args = ("key", "create", "--tenant", shared.tenant_id, "--scopes", "sync:read", *extra)
    run = await syncgraph(shared.url, *args, cwd=shared.cwd)
    assert run.code == 2
    assert message in " ".join(run.stderr.split()), run.stderr


async def test_a_view_bound_key_cannot_manage(shared: Shared) -> None:
    args = ("key", "create", "--tenant", shared.tenant_id, "--scopes", "sync:read,sync:manage")
    run = await syncgraph(
        shared.url, *args, "--view", "guardian", "--param", "user=x", cwd=shared.cwd
    )
    assert run.code == 2
    assert "cannot hold sync:manage" in run.stderr


def test_dev_mode_prints_how_to_make_a_view_bound_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On SQLite only: dev mode bootstraps an empty database (the session's PostgreSQL
    database already has tenants). The printed command line works as printed."""
    url = sqlite_file(tmp_path)
    upgrade(url)
    _dev_bootstrap(Settings(database_url=url, dev=True), "127.0.0.1", 8000, load_registry())
    printed = capsys.readouterr().err
    [line] = [line.strip() for line in printed.splitlines() if "--view" in line]
    program, *args = shlex.split(line.replace("<alias>", "g1"))
    assert program == "syncgraph"
    issued = asyncio.run(syncgraph(url, *args, cwd=tmp_path)).json()
    assert issued["view"] == {"name": "guardian", "params": {"user": "g1"}}
    assert issued["scopes"] == ["sync:read", "sync:write"]
    assert f"created tenant {issued['tenantId']}" in printed
