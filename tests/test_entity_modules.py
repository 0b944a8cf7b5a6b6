"""Entity modules and their migrations at start-up, as an operator meets them: each bad setting
stops `syncgraph serve` with one message naming the module and the fix (exit 2, no traceback
unless --debug) before anything is written; an installed package's entry point is loaded; a
later syncgraph revision leaves the user's branch alone.

The modules run in `syncgraph` processes (their tables never enter this process's metadata);
the library example (examples/library) is the well-formed one."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from app.db import JSONType, json_array_index, migration_engine
from app.errors import StartupError
from app.migrate import CORE_BRANCH, alembic_config, drift, upgrade
from tests.conftest import BACKENDS, PG_ADMIN_URL, _drop_pg_database, _recreate_pg_database
from tests.package import ROOT, free_port, pg_tables
from tests.test_cli import Run, syncgraph

LIBRARY = "library_sync.models"
HEADER = """from sqlmodel import Field
from app.engine.models import SyncRow
from app.engine.registry import Ref, entity_spec
from app.engine.views.spec import IsParam, View
"""
MODULES = {
    "broken_models": 'raise RuntimeError("LIBRARY_API_KEY is not set")',
    "pupils": """
        class PupilRow(SyncRow, table=True):
            __tablename__ = "pupils"
            name: str | None = Field(default=None, max_length=255)
        ENTITIES = [entity_spec(PupilRow, name="Member", plural="pupils")]""",
    "guardians": """
        VIEWS = [View("guardian", params={"user": "users"}, rules={"users": [IsParam("user")]})]""",
    "typo": """
        class NoteRow(SyncRow, table=True):
            __tablename__ = "notes"
            book_id: str | None = Field(default=None, max_length=36)
        BOK = Ref("book", "Bok")
        ENTITIES = [entity_spec(NoteRow, name="Note", plural="notes", refs=(BOK,))]""",
    "conflicts": """
        class ConflictRow(SyncRow, table=True):
            __tablename__ = "conflicts"
            name: str | None = Field(default=None, max_length=255)
        ENTITIES = [entity_spec(ConflictRow, name="Conflict", plural="conflicts")]""",
    "empty_module": "",
}
MODULES_SETTING = "SYNCGRAPH_ENTITY_MODULES"
CASES = [
    pytest.param(
        {MODULES_SETTING: "library_sync.modls"},
        "library_sync.modls (named by SYNCGRAPH_ENTITY_MODULES) does not import: there is no "
        "module 'library_sync.modls'; install the package that provides it",
        id="no such module",
    ),
    pytest.param(
        {MODULES_SETTING: "broken_models"},
        "broken_models (named by SYNCGRAPH_ENTITY_MODULES) failed while importing: "
        "RuntimeError: LIBRARY_API_KEY is not set; fix the module",
        id="fails at import",
    ),
    pytest.param(
        {MODULES_SETTING: "pupils"},
        "entity Member/pupils (in pupils) is registered twice: Member/members (in "
        "app.domains.education) has that name or collection; rename one",
        id="entity clash",
    ),
    pytest.param(
        {MODULES_SETTING: "guardians"},
        "view 'guardian' (in guardians) is declared twice, first in app.domains.education",
        id="view clash",
    ),
    pytest.param(
        {MODULES_SETTING: "typo"},
        "Note.book (in typo) references unknown entity 'Bok': fix the name",
        id="unknown reference",
    ),
    pytest.param(
        {MODULES_SETTING: "conflicts"},
        "entity Conflict (in conflicts) makes the GraphQL type Conflict, which another type has",
        id="GraphQL type clash",
    ),
    pytest.param(
        {MODULES_SETTING: "empty_module"},
        "empty_module (named by SYNCGRAPH_ENTITY_MODULES) declares neither ENTITIES nor VIEWS",
        id="declares nothing",
    ),
    pytest.param(
        {"SYNCGRAPH_DOMAINS": "education,library"},
        "SYNCGRAPH_DOMAINS names 'library', not a shipped domain",
        id="unknown domain",
    ),
    pytest.param(
        {"SYNCGRAPH_DOMAINS": ""},
        "no entities to serve: SYNCGRAPH_DOMAINS is empty",
        id="no entities",
    ),
    pytest.param(
        {MODULES_SETTING: LIBRARY, "SYNCGRAPH_MIGRATION_PATHS": "nowhere"},
        "the migration folder nowhere",
        id="missing migration folder",
    ),
]


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("modules")
    for name, body in MODULES.items():
        (folder / f"{name}.py").write_text(HEADER + textwrap.dedent(body) + "\n")
    return folder


@pytest.fixture(scope="module")
def empty_postgres() -> Iterator[str]:
    """A PostgreSQL database that stays empty: every case below must leave it so."""
    name = f"syncgraph_modules_{os.getpid()}"
    asyncio.run(_recreate_pg_database(name))
    yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    asyncio.run(_drop_pg_database(name))


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path, empty_postgres: str) -> str:
    """A fresh SQLite file (not made yet), or the empty PostgreSQL database (asyncpg's DSN)."""
    return str(tmp_path / "sg.db") if request.param == "sqlite" else empty_postgres


@pytest.fixture
def unopened(tmp_path: Path) -> Iterator[Path]:
    """A SQLite file no command may make: a setting refused before any database connection
    opens (so on any database) leaves it unmade."""
    path = tmp_path / "unopened.db"
    yield path
    assert not path.exists()


def sqlalchemy_url(database: str) -> str:
    if database.startswith("postgresql://"):
        return database.replace("postgresql://", "postgresql+asyncpg://")
    return f"sqlite+aiosqlite:///{database}"


def tables(database: str) -> set[str]:
    if database.startswith("postgresql://"):
        return asyncio.run(pg_tables(database))
    if not Path(database).exists():
        return set()
    with sqlite3.connect(database) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}


async def start(
    database: str, modules: Path, settings: dict[str, str], *args: str, site: Path | None = None
) -> Run:
    """``syncgraph serve`` (or ``args``) with ``settings``; the modules, the library example
    and ``site`` (installed packages' metadata) importable."""
    paths = [modules, ROOT / "examples" / "library", *([site] if site else [])]
    pythonpath = [*map(str, paths), os.environ.get("PYTHONPATH", "")]
    env = {**settings, "PYTHONPATH": os.pathsep.join(p for p in pythonpath if p)}
    command = args or ("serve", "--port", str(free_port()))
    return await syncgraph(sqlalchemy_url(database), *command, cwd=modules, env=env)


@pytest.mark.parametrize(("settings", "message"), CASES)
async def test_a_bad_setting_stops_the_start_with_one_message(
    unopened: Path, modules: Path, settings: dict[str, str], message: str
) -> None:
    run = await start(str(unopened), modules, settings)
    assert run.code == 2, run.stderr
    assert message in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr  # one message, no traceback


async def test_a_table_without_a_migration_stops_the_start_and_writes_nothing(
    database: str, modules: Path
) -> None:
    """Here the database is opened: syncgraph's migrations and the comparison run in one
    transaction, rolled back when a table of yours has no migration."""
    run = await start(database, modules, {MODULES_SETTING: LIBRARY})
    assert run.code == 2, run.stderr
    assert (
        "your entities' tables differ from their migrations (books: no migration; borrowers: "
        "no migration; loans: no migration): run `syncgraph makemigrations -m MESSAGE --path "
        "migrations` and set SYNCGRAPH_MIGRATION_PATHS=migrations, then `syncgraph migrate`"
    ) in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert await asyncio.to_thread(tables, database) == set()


async def test_debug_shows_the_traceback_too(unopened: Path, modules: Path) -> None:
    settings = {MODULES_SETTING: "broken_models"}
    run = await start(str(unopened), modules, settings, "migrate", "--debug")
    assert run.code == 2
    assert "Traceback" in run.stderr
    assert 'raise RuntimeError("LIBRARY_API_KEY is not set")' in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: broken_models")


def dist_info(folder: Path, package: str, points: dict[str, str]) -> Path:
    """What ``pip install`` leaves of a package announcing entity modules: its metadata."""
    info = folder / f"{package}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {module}\n" for name, module in points.items())
    (info / "entry_points.txt").write_text(f"[syncgraph.entities]\n{lines}")
    return folder


async def test_an_installed_packages_entry_point_is_loaded(modules: Path, tmp_path: Path) -> None:
    site = dist_info(tmp_path / "site", "library_sync", {"library": LIBRARY})
    out = tmp_path / "schema.graphql"
    run = await start(
        str(tmp_path / "sg.db"), modules, {}, "export-schema", "-o", str(out), site=site
    )
    assert run.code == 0, run.stderr
    sdl = out.read_text()
    assert "\ntype Loan {" in sdl
    assert "\ntype Classroom {" in sdl  # beside the shipped domains


async def test_an_entry_point_that_does_not_import_names_its_package(
    unopened: Path, modules: Path, tmp_path: Path
) -> None:
    site = dist_info(tmp_path / "site", "gadgets", {"gadgets": "gadgets_sync.models"})
    run = await start(str(unopened), modules, {}, site=site)
    assert run.code == 2, run.stderr
    assert (
        "gadgets_sync.models (named by the syncgraph.entities entry point 'gadgets' of gadgets) "
        "does not import: there is no module 'gadgets_sync'; reinstall gadgets, or uninstall it "
        "(pip uninstall gadgets)"
    ) in run.stderr


REVISION = '''"""{table}"""
import sqlalchemy as sa
from alembic import op

revision = {revision!r}
down_revision = {down!r}
branch_labels = {labels!r}
depends_on = {depends!r}


def upgrade() -> None:
    op.create_table({table!r}, sa.Column("id", sa.String(36), primary_key=True))


def downgrade() -> None:
    op.drop_table({table!r})
'''


def write_revision(folder: Path, revision: str, table: str, **links: object) -> Path:
    folder.mkdir(exist_ok=True)
    links = {"down": None, "labels": None, "depends": None, **links}
    text = REVISION.format(revision=revision, table=table, **links)
    (folder / f"{revision}_{table}.py").write_text(text)
    return folder


@pytest.fixture
def fresh_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own (SQLAlchemy's URL)."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    name = f"syncgraph_fresh_{uuid.uuid4().hex[:12]}"
    asyncio.run(_recreate_pg_database(name))
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    yield f"{base}/{name}"
    asyncio.run(_drop_pg_database(name))


async def query(url: str, sql: str) -> set[tuple[object, ...]]:
    """The rows of ``sql`` (none for a statement that returns none)."""
    engine = migration_engine(url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(sa.text(sql))
            return {tuple(row) for row in result} if result.returns_rows else set()
    finally:
        await engine.dispose()


def core_head(url: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(url)).get_revision(f"{CORE_BRANCH}@head")
    assert head is not None
    return head.revision


async def test_a_later_syncgraph_revision_leaves_your_branch_alone(
    fresh_url: str, tmp_path: Path
) -> None:
    """Your branch depends on syncgraph's head of the day; a revision syncgraph ships later
    (here in a folder of its own, after that head) applies without touching yours."""
    core = core_head(fresh_url)
    yours = write_revision(tmp_path / "yours", "a1", "your_notes", labels=("yours",), depends=core)
    await asyncio.to_thread(upgrade, fresh_url, folders=[yours])
    await query(fresh_url, "INSERT INTO your_notes (id) VALUES ('kept')")
    later = write_revision(tmp_path / "later", "c2", "core_later", down=core)

    await asyncio.to_thread(upgrade, fresh_url, folders=[yours, later])
    assert await query(fresh_url, "SELECT version_num FROM alembic_version") == {("a1",), ("c2",)}
    assert await query(fresh_url, "SELECT id FROM your_notes") == {("kept",)}
    assert await query(fresh_url, "SELECT count(*) FROM core_later") == {(0,)}


async def test_a_database_at_a_revision_no_folder_holds_is_refused(
    fresh_url: str, tmp_path: Path
) -> None:
    yours = write_revision(
        tmp_path / "yours", "a1", "your_notes", labels=("yours",), depends=core_head(fresh_url)
    )
    await asyncio.to_thread(upgrade, fresh_url, folders=[yours])
    with pytest.raises(StartupError, match="at revision a1, which none of the migration folders"):
        await asyncio.to_thread(upgrade, fresh_url)


def shelves(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "shelves",
        metadata,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("book_ids", JSONType, nullable=False),
    )


async def test_an_index_for_postgresql_alone_is_compared_there_alone(fresh_url: str) -> None:
    """A view rule over a to-many reference indexes it with GIN on PostgreSQL alone
    (``json_array_index``): the comparison wants the index there, and on SQLite takes the
    plain one that the same revision (made on PostgreSQL) leaves for no difference."""
    models = sa.MetaData()
    json_array_index("ix_shelves_book_ids_gin", shelves(models).c.book_ids)
    bare = shelves(sa.MetaData())
    engine = migration_engine(fresh_url)

    def compare(conn: sa.Connection) -> list[str]:
        return [d[0] for d in drift(conn, frozenset({"shelves"}), models)]

    try:
        async with engine.begin() as conn:
            await conn.run_sync(bare.create)
            before = await conn.run_sync(compare)
            gin = sa.Index("ix_shelves_book_ids_gin", bare.c.book_ids, postgresql_using="gin")
            await conn.run_sync(gin.create)
            after = await conn.run_sync(compare)
    finally:
        await engine.dispose()
    assert before == ([] if fresh_url.startswith("sqlite") else ["add_index"])
    assert after == []
