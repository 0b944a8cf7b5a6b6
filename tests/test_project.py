"""Project-level guards: the committed SDL, migrations vs models, import direction."""

from __future__ import annotations

import ast
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlmodel import SQLModel

from app.db import migration_options
from app.graphql.export import schema_sdl
from app.state import AppState

ROOT = Path(__file__).resolve().parent.parent


def test_schema_graphql_matches_the_code() -> None:
    committed = (ROOT / "schema.graphql").read_text()
    assert committed == schema_sdl(), "schema.graphql drifted: run `syncgraph export-schema`"


async def test_migrations_match_the_models(state: AppState) -> None:
    """Like `alembic check`: the migrated database has exactly the models' tables."""

    def compare(conn: Connection) -> list[object]:
        opts = {"compare_type": True, **migration_options(conn)}
        context = MigrationContext.configure(conn, opts=opts)  # type: ignore[arg-type]
        return list(compare_metadata(context, SQLModel.metadata))

    async with state.engine.connect() as conn:
        diff = await conn.run_sync(compare)
    assert diff == [], f"models and migrations differ: {diff}"


def _imported_modules(path: Path) -> list[str]:
    """Every module a source file imports, at any depth (``import x``, ``from x import y``)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_graphql_imports_no_sqlalchemy() -> None:
    """The GraphQL layer is thin: reads and writes are the engine's, so no SQL is built here."""
    paths = sorted((ROOT / "app" / "graphql").rglob("*.py"))
    assert paths, "app/graphql has no modules: the check would pass vacuously"
    offenders = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in paths
        for name in _imported_modules(path)
        if name.split(".")[0] in ("sqlalchemy", "sqlmodel")
    ]
    assert offenders == [], "; ".join(offenders)


def test_engine_imports_no_transport() -> None:
    """Data flows one way: the engine never imports GraphQL or HTTP code."""
    for path in (ROOT / "app" / "engine").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(("strawberry", "starlette", "app.graphql")), (
                    f"{path.name} imports {name}"
                )


DIALECT_NAMES = {"sqlite", "postgresql", "postgres"}
DATABASE_ROOMS = ("app/db/",)
"""Where the differences between the databases live (the accelerators are told by it)."""
NOT_ASKING = {
    "app/migrations/versions/": "revisions Alembic generated, with per-dialect column types",
    "app/accel/onetrip.py": "a SQLite DBAPI built on SQLAlchemy's aiosqlite adapter; it asks "
    "nothing: only the SQLite backend plugs it in",
}


def _asks_which_database(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "name":
            inner = node.value
            if isinstance(inner, ast.Attribute) and inner.attr == "dialect":
                found.append(f"line {node.lineno}: dialect.name")
        elif isinstance(node, ast.Constant) and node.value in DIALECT_NAMES:
            found.append(f"line {node.lineno}: {node.value!r}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                modules = [f"{node.module}.{a.name}" for a in node.names]
            found += [
                f"line {node.lineno}: imports {m}"
                for m in modules
                if m.startswith("sqlalchemy.dialects")
            ]
    return found


def test_only_the_database_package_asks_which_database_it_is_on() -> None:
    """Dialect differences live in ``app/db`` (and the accelerators): no module elsewhere
    reads ``dialect.name``, compares with a database's name or imports a SQLAlchemy dialect."""
    offenders = {}
    for path in sorted((ROOT / "app").rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name.startswith(DATABASE_ROOMS) or name.startswith(tuple(NOT_ASKING)):
            continue
        found = _asks_which_database(ast.parse(path.read_text()))
        if found:
            offenders[name] = found
    assert offenders == {}, "move these into app/db (a backend method)"


def test_the_guard_sees_each_way_of_asking() -> None:
    source = (
        "from sqlalchemy.dialects import postgresql\n"
        "import sqlalchemy.dialects.sqlite\n"
        "if conn.dialect.name == 'postgresql': pass\n"
        'if engine.sync_engine.dialect.name != "sqlite": pass\n'
    )
    assert len(_asks_which_database(ast.parse(source))) == 6


FUNCTION_LINES = 50
"""A function that does not fit this is a pipeline of steps waiting to be named."""


def test_no_function_is_longer_than_fifty_lines() -> None:
    long = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        if "migrations" in path.parts:  # Alembic's generated revisions
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert long == [], "split these into named steps: " + "; ".join(long)
