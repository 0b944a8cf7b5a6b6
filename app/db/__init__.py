"""The database: engines, transactions, and every place where SQLite and PostgreSQL differ.

The public surface is these functions; each asks the engine's ``Backend`` (``backend.py``;
``sqlite.py`` and ``postgres.py``), made with the engine by ``make_engine``. Nothing outside
this package asks which database it is on.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.db.backend import Backend, Listener, Notice, Publisher, Row, Then
from app.db.listener import NOTIFY_CHANNEL
from app.db.postgres import KEY_LOCKS_MAX, PostgresBackend
from app.db.sqlite import SqliteBackend
from app.db.types import JSONType, json_dumps, json_loads
from app.settings import Settings

__all__ = [
    "KEY_LOCKS_MAX",
    "NOTIFY_CHANNEL",
    "Backend",
    "JSONType",
    "Notice",
    "Then",
    "analyze_soon",
    "array_overlaps_parameter",
    "backend_of",
    "bump",
    "dialect_insert",
    "favour_index_scans",
    "in_parameter",
    "in_values",
    "json_array_index",
    "json_dumps",
    "json_loads",
    "listen",
    "lock_keys",
    "locks_table",
    "make_engine",
    "migrate_json_array_index",
    "migration_engine",
    "migration_options",
    "notify_commit",
    "others_wrote",
    "read_transaction",
    "reads_in_background",
    "select_rows",
    "serves_several_processes",
    "settle",
    "single_read",
    "snapshot_transaction",
    "statement",
    "upsert_rows",
    "write_transaction",
]

_BACKENDS: dict[str, type[Backend]] = {"sqlite": SqliteBackend, "postgresql": PostgresBackend}
"""By SQLAlchemy dialect name (the URL's scheme before ``+``)."""
_OWNERS: weakref.WeakKeyDictionary[sa.Engine, Backend] = weakref.WeakKeyDictionary()
"""Each engine's backend, for as long as the engine lives."""


def _backend_class(database_url: str) -> type[Backend]:
    return _BACKENDS[sa.make_url(database_url).get_backend_name()]


def make_engine(settings: Settings) -> AsyncEngine:
    """One engine per process, with its backend (pool options and connection set-up:
    SQLite gets WAL, a busy timeout and explicit BEGINs)."""
    backend = _backend_class(settings.database_url)()
    engine = backend.create_engine(settings)
    _OWNERS[engine.sync_engine] = backend
    return engine


def backend_of(bind: AsyncEngine | AsyncConnection) -> Backend:
    """The backend of ``bind``'s engine (one made outside ``make_engine`` gets one on first
    use)."""
    sync_engine = bind.sync_engine if isinstance(bind, AsyncEngine) else bind.engine.sync_engine
    backend = _OWNERS.get(sync_engine)
    if backend is None:
        backend = _OWNERS[sync_engine] = _BACKENDS[sync_engine.dialect.name]()
    return backend


def migration_engine(database_url: str) -> AsyncEngine:
    """An engine for Alembic on ``database_url`` (no pool, the server's driver options)."""
    return _backend_class(database_url).migration_engine(database_url)


def migration_options(connection: sa.Connection) -> dict[str, Any]:
    """Alembic's ``context.configure`` options that depend on the database."""
    dialect = connection.dialect.name

    def include_object(item: Any, _name: Any, type_: str, reflected: bool, _other: Any) -> bool:
        """Indexes made for one database only (``Index.ddl_if``) are not expected on another."""
        condition = getattr(item, "_ddl_if", None)
        if type_ != "index" or reflected or condition is None or condition.dialect is None:
            return True
        return bool(condition.dialect == dialect)

    return {
        "render_as_batch": _BACKENDS[dialect].alters_by_copy,
        "include_object": include_object,
    }


def serves_several_processes(database_url: str) -> bool:
    """Whether several server processes may share this database (``serve --workers``)."""
    return _backend_class(database_url).several_processes


# transactions


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection inside one write transaction, committed when the block exits cleanly
    (SQLite: queued behind this process's other writers, and holding the write lock from
    its first statement)."""
    async with backend_of(engine).write_transaction(engine) as conn:
        yield conn


@asynccontextmanager
async def read_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection inside one read transaction (one snapshot on SQLite)."""
    async with engine.connect() as conn, conn.begin():
        yield conn


@asynccontextmanager
async def snapshot_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read transaction whose statements all see one snapshot of the database (PostgreSQL:
    REPEATABLE READ; SQLite's read transactions are snapshots already)."""
    async with engine.connect() as conn:
        options = backend_of(engine).snapshot_options()
        if options:
            await conn.execution_options(**options)
        async with conn.begin():
            yield conn


@asynccontextmanager
async def single_read(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for reads that need no common snapshot (authentication's one query),
    outside a transaction, which saves the BEGIN and ROLLBACK round trips (on SQLite: each
    statement then is a transaction of its own)."""
    async with engine.connect() as conn:
        await conn.execution_options(**backend_of(engine).single_read_options())
        yield conn


# statements


def dialect_insert(conn: AsyncConnection, table: sa.Table) -> Any:
    """INSERT with ON CONFLICT support for the connection's database."""
    return backend_of(conn).insert(table)


def array_overlaps_parameter(
    conn: AsyncConnection, column: sa.Column[Any], name: str, *, tenant: sa.BindParameter[Any]
) -> Any:
    """Whether the JSON array of strings in ``column`` (a to-many reference) holds any of
    the list given as parameter ``name`` when the statement runs (PostgreSQL: ``?|``, which
    a GIN index answers; SQLite: ``json_each``); for statements built once (``statement``).
    ``tenant``: the statement's tenant parameter, which the statement also filters on (the
    PostgreSQL form finds the rows through the index first, then keeps the tenant's)."""
    return backend_of(conn).array_overlaps_parameter(column, name, tenant=tenant)


async def favour_index_scans(conn: AsyncConnection) -> None:
    """For the rest of ``conn``'s transaction, use an index wherever one applies (PostgreSQL:
    ``enable_seqscan`` off; a view's evaluation is a handful of index probes)."""
    await backend_of(conn).favour_index_scans(conn)


def json_array_index(name: str, column: sa.Column[Any]) -> sa.Index:
    """An index for ``array_overlaps_parameter`` on a JSON array column, where the database has one:
    GIN on PostgreSQL; none on SQLite (``json_each`` reads the rows). Migrations and the
    models-vs-migrations check skip it on other databases (``migration_options``).
    ``fastupdate`` off: with it on, a bulk load's entries wait in the index's pending list,
    which every probe scans in full until a vacuum (bench/README.md (h): 470 buffers and
    3-12 ms per probe after loading 100,000 rows, against 4 buffers and 0.07 ms)."""
    index = sa.Index(name, column, postgresql_using="gin", postgresql_with={"fastupdate": "off"})
    return index.ddl_if(dialect="postgresql")


def migrate_json_array_index(
    op: Any, name: str, table: str, column: str, *, drop: bool = False
) -> None:
    """A migration's ``json_array_index``: created (or dropped) where the database has
    such an index (PostgreSQL), nothing elsewhere."""
    if not _BACKENDS[op.get_bind().dialect.name].indexes_json_arrays:
        return
    if drop:
        op.drop_index(name, table)
        return
    options = {"postgresql_using": "gin", "postgresql_with": {"fastupdate": "off"}}
    op.create_index(name, table, [column], unique=False, **options)


def in_values(conn: AsyncConnection, column: sa.ColumnElement[Any], values: list[Any]) -> Any:
    """``column IN values``, in the form the database plans well for many values (PostgreSQL:
    one array parameter, unnested)."""
    return backend_of(conn).in_values(column, values)


def in_parameter(conn: AsyncConnection, column: sa.ColumnElement[Any], name: str) -> Any:
    """``column IN`` the list passed as parameter ``name`` when the statement runs, in the
    form of ``in_values``; for statements built once (``statement``)."""
    return backend_of(conn).in_parameter(column, name)


def statement(conn: AsyncConnection, key: Hashable, build: Callable[[], Any]) -> Any:
    """What ``build`` makes (a statement of parameters), built once per ``key`` and
    database: SQLAlchemy's building of a statement costs more than running it, which
    matters on a request that writes one record."""
    return backend_of(conn).statement(key, build)


async def bump(
    conn: AsyncConnection,
    counter: sa.Update,
    then: Sequence[Then] = (),
    *,
    key: Hashable,
    params: Mapping[str, Any],
    notice: Notice | None = None,
) -> int:
    """Take numbers from a counter row, last before commit: run ``counter`` (an UPDATE …
    RETURNING one integer: the counter's new value), then each UPDATE of ``then`` built from
    that value (renumbering placeholders), then announce ``notice`` with the value (as
    ``notify_commit``: delivered at COMMIT only); return the value. On PostgreSQL all of it
    is one statement, so the counter row stays locked for one round trip and the commit.

    ``counter`` and ``then`` are built from named parameters (``sa.bindparam``), whose values
    are ``params``, and are the same statements whenever ``key`` is: what is sent is built
    once per key (``statement``; a write of one record spent a quarter of its time building
    this statement)."""
    backend = backend_of(conn)
    return await backend.bump(conn, counter, then, key=key, params=params, notice=notice)


async def upsert_rows(
    conn: AsyncConnection,
    table: sa.Table,
    rows: Sequence[Row],
    stored: Mapping[str, Row] | None = None,
    *,
    base: int | None = None,
) -> None:
    """Insert or overwrite whole rows (every column given) keyed by (tenant_id, id); ``base``:
    the seqs are final, placeholder ``-k`` written as ``base + k`` (``seq.stamp``).
    ``stored``: the rows as the database holds them now, by id (a hint that lets the writer
    leave unchanged indexed columns alone; the caller holds the write lock since reading
    them)."""
    await backend_of(conn).rows.upsert(conn, table, rows, stored, base=base)


async def select_rows(
    conn: AsyncConnection,
    table: sa.Table,
    tenant_id: str,
    key: str,
    values: Sequence[str],
    *,
    lock: bool = False,
    skip: tuple[str, ...] = (),
) -> list[Row]:
    """The rows of one tenant whose ``key`` column (``id``, ``alias``) is in ``values``
    (``lock``: row locks where the database has them, taken in key order), without the
    ``skip`` columns."""
    rows = backend_of(conn).rows
    return await rows.select(conn, table, tenant_id, key, values, lock=lock, skip=skip)


def reads_in_background(conn: AsyncConnection) -> bool:
    """Whether a read sent now proceeds while this thread computes (PostgreSQL: the server
    works apart; SQLite's driver thread would instead wait for the GIL on every row)."""
    return backend_of(conn).reads_in_background


# concurrency


def locks_table(conn: AsyncConnection, keys: int) -> bool:
    """Whether a writer of ``keys`` keys holds its (tenant, table) alone: always on SQLite
    (one writer at a time), and on PostgreSQL above ``KEY_LOCKS_MAX`` keys."""
    return backend_of(conn).locks_table(keys)


async def lock_keys(
    conn: AsyncConnection, scope: str, keys: list[str], *, exclusive: bool = False
) -> bool:
    """Transaction-scoped locks for writing rows of one (tenant, table) ``scope``
    (PostgreSQL advisory locks). A writer of a few keys holds the scope shared and each
    ``scope:key`` exclusively, taken in hash order so concurrent writers never wait on each
    other in a cycle; a writer of many keys, or of the whole table (``exclusive``: cleanSync,
    resync, purge), holds the scope exclusively. Every engine write to an entity row happens
    under one of these. SQLite needs none: its write transactions run one at a time.

    Returns whether this transaction now has the scope to itself."""
    return await backend_of(conn).lock_keys(conn, scope, keys, exclusive=exclusive)


# notification


async def notify_commit(conn: AsyncConnection, tenant_id: str, kind: str, seq: int) -> None:
    """Tell other processes about this transaction's commit. On PostgreSQL the NOTIFY is
    delivered only at COMMIT (never for a rollback); SQLite has only one process's broker."""
    await backend_of(conn).notify_commit(conn, tenant_id, kind, seq)


def others_wrote(engine: AsyncEngine) -> Callable[[], bool]:
    """A check of whether another process may have written the database since it last
    answered: what this process caches of the database (credentials, tenants' latest seqs)
    must then be read again. SQLite: the files' stat changed other than by this process's
    commits; PostgreSQL: never (every commit is announced by NOTIFY, see ``listen``)."""
    return backend_of(engine).others_wrote


def listen(
    engine: AsyncEngine, broker: Publisher, on_reconnect: Callable[[], None]
) -> Listener | None:
    """Start handing other processes' commits to ``broker`` (None: no other process can
    write this database); ``on_reconnect`` runs whenever notifications may have been lost."""
    return backend_of(engine).listen(engine, broker, on_reconnect)


# planner statistics


def analyze_soon(engine: AsyncEngine, table: sa.Table, rows: int) -> asyncio.Task[None] | None:
    """After a commit that wrote ``rows`` rows of ``table``: refresh the planner's statistics
    in the background if it has none and the write was a bulk one (PostgreSQL)."""
    return backend_of(engine).analyze_soon(engine, table, rows)


async def settle(engine: AsyncEngine) -> None:
    """Wait for the engine's background statistics work (before disposing of it)."""
    await backend_of(engine).settle()
