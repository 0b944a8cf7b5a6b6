"""Your own entities, from the outside (README "Your own entities"): syncgraph's wheel in a fresh
venv, the lending-library example (examples/library) installed beside it, and only the commands
its README shows — makemigrations, migrate, serve, key create --view, export-schema."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PG_ADMIN_URL, _drop_pg_database, _recreate_pg_database
from tests.package import (
    BOUND,
    ROOT,
    Installed,
    pg_tables,
    pip_install,
    serving,
    user_environment,
)

EXAMPLE = ROOT / "examples" / "library"
SYNC = "mutation($input: SyncInput!) { sync(input: $input) { totals { inserted failed } } }"
PUSH = """mutation($input: PushInput!) {
  pushChanges(input: $input) { applied conflicts { id } errors { code } } }"""
L2 = '{ loans(alias: "l2") { nodes { id version } } }'
PULL = """{ changes(since: null) { hasMore borrowers { inserted { alias } }
  loans { inserted { alias book { title } } } books { inserted { alias title } } } }"""
LENDING = {
    "books": {"data": [{"alias": a, "title": a.title()} for a in ("dune", "emma", "ulysses")]},
    "borrowers": {"data": [{"alias": "ana", "name": "Ana"}, {"alias": "ben", "name": "Ben"}]},
    "loans": {
        "data": [
            {"alias": "l1", "book": "dune", "borrower": "ana", "lentOn": "2026-11-30"},
            {"alias": "l2", "book": "emma", "borrower": "ben"},
        ]
    },
}
ANAS_PHONE = {  # what the view borrower(borrower: ana) holds
    "hasMore": False,
    "borrowers": {"inserted": [{"alias": "ana"}]},
    "loans": {"inserted": [{"alias": "l1", "book": {"title": "Dune"}}]},
    "books": {"inserted": [{"alias": "dune", "title": "Dune"}]},
}


@dataclass
class Library:
    """The example project in a folder of its own, installed (editable) in the venv; commands
    run in that folder with the settings its README gives."""

    installed: Installed
    folder: Path
    env: dict[str, str]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603
            [str(self.installed.bin / "syncgraph"), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=self.env,
            cwd=self.folder,
        )

    def ok(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args))

    def tenant_and_admin(self) -> tuple[str, str]:
        tenant = self.json("tenant", "create", "Town library")["id"]
        scopes = "sync:read,sync:write,sync:manage"
        return tenant, self.json("key", "create", "--tenant", tenant, "--scopes", scopes)["key"]

    def borrower_key(self, tenant: str, alias: str) -> str:
        key = self.json(
            "key", "create", "--tenant", tenant, "--scopes", "sync:read", "--view", "borrower",
            "--param", f"borrower={alias}",
        )  # fmt: skip
        return str(key["key"])

    def serving(self) -> AbstractContextManager[tuple[str, Callable[[], str]]]:
        return serving(self.installed, self.folder, self.env)


MakeLibrary = Callable[..., Library]


@pytest.fixture
def make_library(installed: Installed, tmp_path: Path) -> MakeLibrary:
    """The example copied (with its committed migrations, or an empty migrations folder for
    makemigrations to fill) and installed in the venv, this test's copy replacing any other."""

    def make(*, database_url: str, migrations: bool, **settings: str) -> Library:
        folder = tmp_path / "library"
        shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        if not migrations:
            for revision in (folder / "migrations").glob("*.py"):
                revision.unlink()
        pip_install(installed, "--no-deps", "-e", folder)
        env = user_environment(
            DATABASE_URL=database_url,
            SYNCGRAPH_ENTITY_MODULES="library_sync.models",
            SYNCGRAPH_MIGRATION_PATHS="migrations",
            **settings,
        )
        return Library(installed, folder, env)

    return make


def gql(base: str, key: str, query: str, variables: dict[str, Any] | None = None) -> Any:
    response = httpx.post(
        f"{base}/graphql",
        json={"query": query, "variables": variables or {}},
        headers={"Authorization": f"Bearer {key}"},
        timeout=BOUND,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def test_a_library_from_its_first_migration_to_a_borrowers_phone(
    make_library: MakeLibrary, tmp_path: Path
) -> None:
    """SQLite, the library alone (SYNCGRAPH_DOMAINS empty): the README's commands in order,
    then a field added to loans (a second migration; the data stays)."""
    database = tmp_path / "library.db"
    library = make_library(
        database_url=f"sqlite+aiosqlite:///{database}", migrations=False, SYNCGRAPH_DOMAINS=""
    )
    refused = library.cli("serve")
    assert refused.returncode == 2, refused.stderr
    assert "books: no migration" in refused.stderr
    assert "syncgraph makemigrations -m MESSAGE --path migrations" in refused.stderr
    assert _sqlite_tables(database) == set()

    library.ok("makemigrations", "-m", "books, borrowers and loans", "--path", "migrations")
    [first] = (library.folder / "migrations").glob("*.py")
    revision = first.read_text()
    assert re.findall(r"op\.create_table\('(\w+)'", revision) == ["books", "borrowers", "loans"]
    assert "branch_labels: str | Sequence[str] | None = ('library',)" in revision
    library.ok("migrate")
    tenant, admin = library.tenant_and_admin()
    with library.serving() as (base, _output):
        synced = gql(base, admin, SYNC, {"input": LENDING})
        phone = gql(base, library.borrower_key(tenant, "ana"), PULL)
    assert synced["sync"]["totals"] == {"inserted": 7, "failed": 0}
    assert phone["changes"] == ANAS_PHONE

    library.ok("export-schema", "-o", "schema.graphql")
    sdl = (library.folder / "schema.graphql").read_text()
    assert all(f"\ntype {name} {{" in sdl for name in ("Book", "Borrower", "Loan"))
    assert "  borrower: Borrower\n" in sdl  # Loan.borrower, resolved
    assert "\ntype User {" not in sdl  # no shipped domain
    _add_a_due_date(library, admin)


def _add_a_due_date(library: Library, admin: str) -> None:
    """A field added to a model: refused until its migration exists, then served, with the
    rows synced before it kept."""
    models = library.folder / "library_sync" / "models.py"
    field = "    returned: bool | None = False\n"
    models.write_text(models.read_text().replace(field, f"{field}    due_on: date | None = None\n"))
    refused = library.cli("migrate")
    assert refused.returncode == 2, refused.stderr
    assert "loans: add_column due_on" in refused.stderr

    library.ok("makemigrations", "-m", "loans: due date", "--path", "migrations")
    assert len(list((library.folder / "migrations").glob("*.py"))) == 2
    library.ok("migrate")
    with library.serving() as (base, _output):
        [l2] = gql(base, admin, L2)["loans"]["nodes"]
        change = {"id": l2["id"], "baseVersion": l2["version"], "data": {"dueOn": "2026-12-24"}}
        pushed = gql(base, admin, PUSH, {"input": {"loans": {"updated": [change]}}})
        loans = gql(base, admin, "{ loans { nodes { alias dueOn lentOn book { title } } } }")
    assert pushed["pushChanges"] == {"applied": 1, "conflicts": [], "errors": []}
    listed = loans["loans"]["nodes"]
    assert sorted(listed, key=lambda node: node["alias"]) == [
        {"alias": "l1", "dueOn": None, "lentOn": "2026-11-30", "book": {"title": "Dune"}},
        {"alias": "l2", "dueOn": "2026-12-24", "lentOn": None, "book": {"title": "Emma"}},
    ]


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database (its asyncpg DSN), dropped afterwards."""
    name = f"syncgraph_own_{os.getpid()}"
    asyncio.run(_recreate_pg_database(name))
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(_drop_pg_database(name))


def test_the_library_beside_the_shipped_domains_on_postgresql(
    make_library: MakeLibrary, pg_database: str
) -> None:
    """PostgreSQL, every shipped domain on: the example's committed migrations (made on
    SQLite) apply and match its models, and the view serves a borrower's phone."""
    url = pg_database.replace("postgresql://", "postgresql+asyncpg://")
    library = make_library(database_url=url, migrations=True)
    library.ok("migrate")
    assert {"books", "borrowers", "loans", "users", "badges"} <= asyncio.run(pg_tables(pg_database))
    tenant, admin = library.tenant_and_admin()
    with library.serving() as (base, _output):
        gql(base, admin, SYNC, {"input": LENDING})
        phone = gql(base, library.borrower_key(tenant, "ana"), PULL)
        users = gql(base, admin, "{ users { totalCount } }")
    assert phone["changes"] == ANAS_PHONE
    assert users == {"users": {"totalCount": 0}}


def _sqlite_tables(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
