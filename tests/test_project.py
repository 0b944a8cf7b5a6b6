"""Project-level guards: the committed SDL, migrations vs models, import direction."""

from __future__ import annotations

import ast
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlmodel import SQLModel

from app.graphql.export import schema_sdl
from app.state import AppState

ROOT = Path(__file__).resolve().parent.parent


def test_schema_graphql_matches_the_code() -> None:
    committed = (ROOT / "schema.graphql").read_text()
    assert committed == schema_sdl(), "schema.graphql drifted: run `syncgraph export-schema`"


async def test_migrations_match_the_models(state: AppState) -> None:
    """Like `alembic check`: the migrated database has exactly the models' tables."""

    def compare(conn: Connection) -> list[object]:
        opts = {"compare_type": True, "render_as_batch": conn.dialect.name == "sqlite"}
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
