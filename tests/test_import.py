"""``syncgraph import FILE`` through the installed console script, on a fresh SQLite file
and on the PostgreSQL test database: batches under the entity limits, the JSON report on
stdout with a progress bar on stderr, dry runs, cleanSync with its safeguards, item errors
(exit 1), a failing batch that stops the import and names what was applied, and the
choice of tenant. Results are checked through HTTP, as any client would see them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.db import write_transaction
from app.engine.tenants import SCOPES, create_key
from app.main import create_app
from app.migrate import upgrade
from app.settings import Settings
from app.state import make_state
from tests.conftest import Tenant, example, make_tenant

SYNCGRAPH = str(Path(sys.executable).with_name("syncgraph"))
Json = dict[str, Any]
ZERO = {"inserted": 0, "updated": 0, "unchanged": 0, "deleted": 0, "failed": 0}


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def report(self) -> Json:
        report: Json = json.loads(self.stdout)
        return report


async def syncgraph(url: str, *args: str, cwd: Path, **env: str) -> Run:
    """Run the console script with DATABASE_URL (and the given settings) in its environment."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SYNCGRAPH_") and k != "DATABASE_URL"
    }
    process = await asyncio.create_subprocess_exec(
        SYNCGRAPH,
        *args,
        cwd=cwd,
        env={**inherited, "DATABASE_URL": url, "COLUMNS": "200", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def entity(**fields: Any) -> Json:
    """One entity's part of the import report."""
    return {**ZERO, "cleanSync": None, "errors": [], **fields}


@dataclass
class Server:
    """A database, the app on it (over HTTP) and a tenant with an all-scope key."""

    url: str
    tenant: Tenant
    dir: Path

    async def run(self, *args: str, **env: str) -> Run:
        return await syncgraph(self.url, *args, cwd=self.dir, **env)

    def file(self, payload: object, name: str = "payload.json") -> str:
        path = self.dir / name
        path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
        return str(path)

    async def gql(self, query: str, variables: Json | None = None) -> Json:
        body = await self.tenant.gql(query, variables)
        data: Json = body["data"]
        return data

    async def count(self, plural: str) -> int:
        return int((await self.gql(f"{{ {plural} {{ totalCount }} }}"))[plural]["totalCount"])

    async def names(self, plural: str = "users") -> list[str]:
        data = await self.gql(f"{{ {plural}(first: 100) {{ nodes {{ name }} }} }}")
        return sorted(n["name"] for n in data[plural]["nodes"])

    async def checkpoint(self) -> str:
        return str((await self.gql("{ changes { checkpoint } }"))["changes"]["checkpoint"])


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating is the slow part)."""
    path = tmp_path_factory.mktemp("template") / "syncgraph.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@asynccontextmanager
async def serve(url: str, directory: Path, tenant_id: str | None = None) -> AsyncIterator[Server]:
    """The app on ``url``; the tenant is ``tenant_id`` (given a key here) or a new one."""
    state = make_state(Settings(database_url=url, dev=False, pool_size=2))
    transport = httpx.ASGITransport(app=create_app(state=state))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            if tenant_id is None:
                tenant = await make_tenant(state, http, "import")
            else:
                async with write_transaction(state.engine) as conn:
                    issued = await create_key(conn, tenant_id=tenant_id, scopes=SCOPES)
                tenant = Tenant(id=tenant_id, key=issued.key, http=http, state=state)
            yield Server(url, tenant, directory)
    finally:
        await state.close()


@pytest.fixture
async def sqlite(template: Path, tmp_path: Path) -> AsyncIterator[Server]:
    """A fresh SQLite file with exactly one tenant."""
    path = tmp_path / "syncgraph.db"
    shutil.copyfile(template, path)
    async with serve(f"sqlite+aiosqlite:///{path}", tmp_path) as server:
        yield server


def education_with_more_users(extra: int) -> Json:
    payload = example("education-sync.json")
    payload["users"]["data"] += [{"alias": f"U{i}", "name": f"user {i}"} for i in range(extra)]
    return payload


# --- SQLite --------------------------------------------------------------------------------


async def test_import_in_batches_with_a_dry_run_first(sqlite: Server) -> None:
    path = sqlite.file(education_with_more_users(4))
    expected = {
        # users: 5 items in batches of 2; members and classrooms: one batch each
        "batches": 5,
        "entities": {
            "users": entity(inserted=5),
            "members": entity(inserted=1),
            "classrooms": entity(inserted=1),
        },
    }

    dry = await sqlite.run("import", path, "--dry-run", SYNCGRAPH_BATCH_LIMIT="2")
    assert dry.code == 0, dry.stderr
    assert dry.report == {"dryRun": True, **expected}
    assert await sqlite.checkpoint() == "0"
    assert await sqlite.count("users") == 0

    # without --tenant: the database's only tenant
    real = await sqlite.run("import", path, SYNCGRAPH_BATCH_LIMIT="2")
    assert real.code == 0, real.stderr
    assert real.report == {"dryRun": False, **expected}
    assert "importing" in real.stderr
    assert "100%" in real.stderr
    assert await sqlite.checkpoint() == "7"
    data = await sqlite.gql(
        "{ classrooms { nodes { alias memberIds adminIds members { alias users { email } } } }"
        ' users(alias: "ID456") { nodes { id } } }'
    )
    [classroom] = data["classrooms"]["nodes"]
    [guardian] = data["users"]["nodes"]
    assert classroom["adminIds"] == [guardian["id"]]
    assert classroom["members"] == [
        {"alias": "ID123", "users": [{"email": "familiar.exemplo@email.com"}]}
    ]


async def test_clean_sync_with_its_safeguards(sqlite: Server) -> None:
    users = [{"alias": f"U{i}", "name": f"user {i}"} for i in range(4)]
    await sqlite.gql(
        "mutation($input: SyncInput!) { sync(input: $input) { checkpoint } }",
        {"input": {"users": {"data": users}}},
    )

    # one of four left: more than half would go
    one = sqlite.file({"users": {"data": users[:1]}})
    refused = await sqlite.run("import", one, "--clean-sync", "USER", "--tenant", sqlite.tenant.id)
    assert refused.code == 0, refused.stderr
    assert refused.report["entities"]["users"] == entity(
        unchanged=1, cleanSync="REFUSED_MASS_DELETE"
    )
    assert await sqlite.count("users") == 4
    forced = await sqlite.run("import", one, "--clean-sync", "users", "--force")
    assert forced.code == 0, forced.stderr
    assert forced.report["entities"]["users"] == entity(unchanged=1, deleted=3, cleanSync="APPLIED")
    assert await sqlite.names() == ["user 0"]


async def test_item_errors_are_reported_and_exit_1(sqlite: Server) -> None:
    users = [{"alias": f"U{i}", "name": f"user {i}"} for i in range(5)]
    users[3] = {"alias": "U3", "email": "nameless@example.com"}  # the name is required
    await sqlite.gql(
        "mutation($input: SyncInput!) { sync(input: $input) { checkpoint } }",
        {"input": {"users": {"data": [{"alias": "OLD", "name": "old"}]}}},
    )
    run = await sqlite.run(
        "import",
        sqlite.file({"users": {"data": users}}),
        "--clean-sync",
        "users",
        SYNCGRAPH_BATCH_LIMIT="2",
    )
    assert run.code == 1
    assert "some items failed" in run.stderr
    report = run.report["entities"]["users"]
    # the index is the item's position in the file, not in its batch
    assert [(e["index"], e["code"], e["field"]) for e in report["errors"]] == [
        (3, "UNPROCESSABLE", "name")
    ]
    assert (report["inserted"], report["failed"]) == (4, 1)
    # a failed item is no evidence that a record is gone: nothing deleted
    assert (report["deleted"], report["cleanSync"]) == (0, "SKIPPED_ITEM_ERRORS")
    assert await sqlite.names() == ["old", "user 0", "user 1", "user 2", "user 4"]


async def test_a_failing_batch_stops_the_import_and_names_what_was_applied(
    sqlite: Server,
) -> None:
    projects = [{"alias": f"P{i}", "name": f"project {i}"} for i in range(6)]
    projects[3]["companyGuid"] = str(uuid.uuid4())  # another tenant's: refuses the request
    run = await sqlite.run(
        "import", sqlite.file({"projects": {"data": projects}}), SYNCGRAPH_BATCH_LIMIT="2"
    )
    assert run.code == 1
    assert run.stdout == ""
    message = " ".join(run.stderr.split())
    assert "import stopped" in message
    assert "projects[2:4]" in message
    assert "Applied before it: projects[0:2]" in message
    assert await sqlite.names("projects") == ["project 0", "project 1"]


# --- PostgreSQL ---------------------------------------------------------------------------


async def test_import_into_a_named_tenant_on_postgres(
    database_urls: dict[str, str], tmp_path: Path
) -> None:
    url = database_urls["postgres"]
    created = await syncgraph(url, "tenant", "create", "imported", cwd=tmp_path)
    assert created.code == 0, created.stderr
    tenant_id = created.report["id"]
    assert created.report["name"] == "imported"

    async with serve(url, tmp_path, tenant_id) as server:
        path = server.file(example("festival-sync.json"))
        run = await server.run("import", path, "--tenant", tenant_id)
        assert run.code == 0, run.stderr
        assert run.report == {
            "dryRun": False,
            "batches": 5,
            "entities": {
                p: entity(inserted=1)
                for p in ("persons", "directions", "badges", "arrivals", "engagements")
            },
        }
        data = await server.gql(
            "{ badges { nodes { id personId number } }"
            " engagements { nodes { direction { name } } } }"
        )
        [badge] = data["badges"]["nodes"]
        expected = example("festival-sync.json")
        assert badge == {
            "id": expected["badges"]["data"][0]["id"],
            "personId": expected["persons"]["data"][0]["id"],
            "number": "0042",
        }
        assert data["engagements"]["nodes"] == [{"direction": {"name": "Кухня"}}]
        assert await server.checkpoint() == "5"
