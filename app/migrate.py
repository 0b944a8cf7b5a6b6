"""Alembic, driven from code.

syncgraph's own revisions live inside the package (the ``syncgraph`` branch), so a wheel
carries them. The revisions of the user's tables live in the user's folders
(``SYNCGRAPH_MIGRATION_PATHS``), each folder a branch of its own that depends on syncgraph's
revision of the day: upgrading syncgraph applies its new revisions without touching the user's.

``upgrade`` applies every head in one transaction and then compares the user's tables with
the registry (as ``alembic check`` does, for those tables alone): a table without its
migration rolls the whole upgrade back. Blocking: call it before the event loop, or in a thread.
"""

from __future__ import annotations

import asyncio
import re
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Index, MetaData
from sqlmodel import SQLModel

from app.db import migration_engine, migration_options
from app.errors import StartupError

# Inside the package, so a wheel (pip install ., pipx, a Docker image) carries its migrations.
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
CORE_BRANCH = "syncgraph"
_UNKNOWN_REVISION = re.compile(r"Can't locate revision identified by '([^']+)'")


def alembic_config(database_url: str, folders: Sequence[Path] = ()) -> Config:
    """syncgraph's script directory, with the user's ``folders`` as more version locations."""
    if not MIGRATIONS.is_dir():
        raise RuntimeError(
            f"migrations not found at {MIGRATIONS}: this install of syncgraph is incomplete; "
            "reinstall it from a wheel or a checkout (pip install .)"
        )
    locations = [MIGRATIONS / "versions", *(folder.resolve() for folder in folders)]
    cfg = Config(cmd_opts=Namespace(quiet=True))  # our commands say what was done
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "newline")
    cfg.set_main_option("version_locations", _escape("\n".join(map(str, locations))))
    cfg.set_main_option("sqlalchemy.url", _escape(database_url))
    return cfg


def check_folders(folders: Sequence[Path]) -> list[Path]:
    """The folders, each of which must exist (a typo would otherwise skip its migrations)."""
    for folder in folders:
        if not folder.is_dir():
            raise StartupError(
                f"the migration folder {folder} ({folder.resolve()}) does not exist: correct "
                "SYNCGRAPH_MIGRATION_PATHS (relative paths start at the working folder), or "
                "make its first revision with "
                f"`syncgraph makemigrations -m MESSAGE --path {folder}`"
            )
    return list(folders)


def upgrade(
    database_url: str, *, folders: Sequence[Path] = (), tables: frozenset[str] = frozenset()
) -> None:
    """Apply every head of syncgraph's and ``folders``' revisions in one transaction, then
    compare ``tables`` (the user's) with the registry: any difference is a ``StartupError``
    saying which command to run, and the upgrade is rolled back."""
    cfg = alembic_config(database_url, check_folders(folders))

    def apply(conn: Connection) -> None:
        _upgrade(cfg, conn)
        differences = drift(conn, tables)
        if differences:
            raise StartupError(_missing_migration(differences, folders))

    asyncio.run(_in_transaction(database_url, apply))


def makemigrations(
    database_url: str,
    *,
    folder: Path,
    message: str,
    tables: frozenset[str],
    folders: Sequence[Path] = (),
    label: str | None = None,
) -> Path | None:
    """Autogenerate a revision of ``tables`` (the user's, never syncgraph's) into ``folder``:
    the database is first upgraded to every head, then compared. The folder's first revision
    starts a branch (``label``, by default the folder's project name) that depends on
    syncgraph's current head. Returns the new file, or None when nothing changed."""
    folder.mkdir(parents=True, exist_ok=True)
    others = [f for f in check_folders(folders) if f.resolve() != folder.resolve()]
    cfg = alembic_config(database_url, [*others, folder])
    cfg.attributes["tables"] = tables
    placement = _placement(ScriptDirectory.from_config(cfg), folder, label)

    def generate(conn: Connection) -> Any:
        _upgrade(cfg, conn)
        return command.revision(
            cfg, message=message, autogenerate=True, version_path=str(folder), **placement
        )

    script = asyncio.run(_in_transaction(database_url, generate))
    return Path(script.path) if isinstance(script, Script) else None


def revision(database_url: str, message: str) -> None:
    """A revision of syncgraph's own tables (development: run in a process that loaded
    only the shipped domains)."""
    cfg = alembic_config(database_url)
    cfg.attributes["tables"] = frozenset(SQLModel.metadata.tables)

    def generate(conn: Connection) -> None:
        cfg.attributes["connection"] = conn
        command.revision(cfg, message=message, autogenerate=True, head=f"{CORE_BRANCH}@head")

    asyncio.run(_in_transaction(database_url, generate))


def drift(
    conn: Connection, tables: frozenset[str], metadata: MetaData = SQLModel.metadata
) -> list[Any]:
    """What autogenerate would write for ``tables``: Alembic's differences between the
    models and the database, reading those tables alone (nothing to read: no cost)."""
    if not tables:
        return []
    options = compare_options(conn, tables, metadata)
    context = MigrationContext.configure(conn, opts=options)
    return list(compare_metadata(context, metadata))


def compare_options(
    conn: Connection, tables: frozenset[str], metadata: MetaData = SQLModel.metadata
) -> dict[str, Any]:
    """Alembic options that compare ``tables`` alone: other tables (syncgraph's, another
    folder's) are neither read nor written into a revision."""
    options = migration_options(conn)
    by_database = options["include_object"]

    def include_name(name: str | None, type_: str, parents: dict[str, str | None]) -> bool:
        if type_ == "schema":
            return True
        return (name if type_ == "table" else parents.get("table_name")) in tables

    def include_object(item: Any, name: Any, type_: str, reflected: bool, other: Any) -> bool:
        table = item if type_ == "table" else item.table
        if table.name not in tables:
            return False
        if type_ == "index" and reflected and other is None:
            # An index the models make for another database only (a GIN index that a
            # revision generated on PostgreSQL also made here, as a plain one) is no extra.
            model = _model_index(metadata, table.name, name)
            return model is None or bool(by_database(model, name, type_, False, None))
        return bool(by_database(item, name, type_, reflected, other))

    return {
        **options,
        "compare_type": True,
        "include_name": include_name,
        "include_object": include_object,
    }


def _model_index(metadata: MetaData, table: str, name: str) -> Index | None:
    model = metadata.tables.get(table)
    return next((i for i in model.indexes if i.name == name), None) if model is not None else None


async def _in_transaction(database_url: str, fn: Any) -> Any:
    """``fn(connection)`` inside one transaction, committed if it returns."""
    engine = migration_engine(database_url)
    try:
        async with engine.connect() as conn, conn.begin():
            return await conn.run_sync(fn)
    finally:
        await engine.dispose()


def _upgrade(cfg: Config, conn: Connection) -> None:
    cfg.attributes["connection"] = conn
    cfg.attributes.setdefault("tables", frozenset())
    try:
        command.upgrade(cfg, "heads")
    except CommandError as exc:
        unknown = _UNKNOWN_REVISION.search(str(exc))
        if unknown is None:
            raise
        raise StartupError(
            f"the database is at revision {unknown[1]}, which none of the migration folders "
            "holds: add the folder with that revision to SYNCGRAPH_MIGRATION_PATHS"
        ) from exc


def _placement(script: ScriptDirectory, folder: Path, label: str | None) -> dict[str, Any]:
    """Where the folder's next revision goes: after the folder's head, or (its first) on a
    new branch of its own that depends on syncgraph's head."""
    heads = [
        head
        for head in script.get_revisions("heads")
        if head is not None and Path(head.path).parent.resolve() == folder.resolve()
    ]
    if len(heads) > 1:
        names = ", ".join(h.revision for h in heads)
        raise StartupError(f"{folder} has several heads ({names}): merge them (alembic merge)")
    if heads:
        return {"head": heads[0].revision}
    label = label or _default_label(folder)
    taken = {name for s in script.walk_revisions() for name in s.branch_labels}
    if label in taken:
        raise StartupError(f"the branch label {label!r} is taken: choose another with --label")
    core = script.get_revision(f"{CORE_BRANCH}@head")
    assert core is not None
    return {"head": "base", "branch_label": label, "depends_on": core.revision}


def _default_label(folder: Path) -> str:
    """``examples/library/migrations`` -> ``library``."""
    folder = folder.resolve()
    name = folder.parent.name if folder.name in ("migrations", "versions") else folder.name
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "own"


def _missing_migration(differences: list[Any], folders: Sequence[Path]) -> str:
    if len(folders) == 1:
        fix = f"run `syncgraph makemigrations -m MESSAGE --path {folders[0]}`"
    elif folders:
        where = " or ".join(map(str, folders))
        fix = f"run `syncgraph makemigrations -m MESSAGE --path DIR` (DIR: {where})"
    else:
        fix = (
            "run `syncgraph makemigrations -m MESSAGE --path migrations` and set "
            "SYNCGRAPH_MIGRATION_PATHS=migrations"
        )
    return (
        f"your entities' tables differ from their migrations ({_summary(differences)}): "
        f"{fix}, then `syncgraph migrate`. Nothing was written."
    )


def _summary(differences: list[Any]) -> str:
    """``books: no migration; loans: add_column due_on``: per table, Alembic's operations
    (a table with no migration at all is named alone)."""
    changes: dict[str, list[str]] = {}
    for difference in differences:
        first = difference[0] if isinstance(difference, list) else difference
        table, change = _change(first)
        changes.setdefault(table, []).append(change)
    return "; ".join(
        f"{table}: no migration" if "add_table" in listed else f"{table}: {', '.join(listed)}"
        for table, listed in changes.items()
    )


def _change(difference: tuple[Any, ...]) -> tuple[str, str]:
    """(table, ``add_column due_on``) of one of Alembic's differences."""
    op = difference[0]
    if op.endswith("_table"):
        return difference[1].name, op
    if op.endswith("_column"):
        return difference[2], f"{op} {difference[3].name}"
    if op.startswith("modify_"):
        return difference[2], f"{op} {difference[3]}"
    item = difference[1]
    return item.table.name, f"{op} {item.name}"


def _escape(value: str) -> str:
    """A value for Alembic's ini-style options (``%`` is interpolation there)."""
    return value.replace("%", "%%")
