"""PostgreSQL (asyncpg): advisory key locks, row locks, NOTIFY/LISTEN between server
processes, array parameters for ``IN``, and the planner's statistics."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from app import accel
from app.db.backend import (
    Backend,
    Listener,
    Notice,
    Publisher,
    RowForm,
    RowStore,
    Then,
)
from app.db.listener import NOTIFY_CHANNEL, PgListener
from app.db.planner import Planner
from app.db.rows import PlainRows
from app.db.types import JSON_OPTIONS
from app.settings import Settings

KEY_LOCKS_MAX = 64
"""Above this many keys a writer locks the whole (tenant, table) instead: PostgreSQL keeps
advisory locks in a fixed shared table (about 12,000 on a default server), which a few
concurrent 1,000-item batches locking every key would exhaust ("out of shared memory")."""

PING_AFTER_IDLE_SECONDS = 10.0
"""A pooled connection idle longer than this is pinged before use (see ``_check_on_checkout``)."""


class PostgresBackend(Backend):
    row_form = RowForm(arrays=True, native_floats=True)
    several_processes = True
    indexes_json_arrays = True  # GIN
    reads_in_background = True

    def __init__(self) -> None:
        self.planner = Planner()
        self.rows = self._row_store()
        self.pooled = False
        """Behind a transaction pooler: no statement state between transactions."""
        self.listen_url: str | None = None
        self.connect_timeout = 10.0

    @classmethod
    def migration_engine(cls, database_url: str) -> AsyncEngine:
        """The server's driver options (URL numbers, a pooler), without the statement
        timeout: a migration's DDL may take long on big tables."""
        url, options = connection_options(Settings(database_url=database_url))
        options["command_timeout"] = None
        return create_async_engine(url, poolclass=NullPool, connect_args=options)

    def _row_store(self) -> RowStore:
        if accel.enabled("rowcodec"):  # imported only then: the plain path never loads it
            from app.accel.rowcodec import RowCodec

            return RowCodec(self.row_form, probe=self.planner.read_form)
        return PlainRows(self.insert, self.in_values, locking=self.locking)

    def create_engine(self, settings: Settings) -> AsyncEngine:
        url, connect_args = connection_options(settings)
        self.pooled = connect_args.get("statement_cache_size") == 0
        self.listen_url = settings.listen_url or settings.database_url
        self.connect_timeout = float(connect_args["timeout"])
        engine = create_async_engine(
            url,
            pool_size=settings.pool_size,
            max_overflow=max(settings.pool_size // 2, 1),
            connect_args=connect_args,
            **JSON_OPTIONS,
        )
        _check_on_checkout(engine)
        return engine

    @asynccontextmanager
    async def write_transaction(self, engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        async with engine.connect() as conn, conn.begin():
            yield conn

    def single_read_options(self) -> dict[str, Any]:
        # Through a transaction pooler a statement outside a transaction may be parsed on one
        # server connection and executed on another: reads then stay in a transaction.
        return {} if self.pooled else {"isolation_level": "AUTOCOMMIT"}

    def snapshot_options(self) -> dict[str, Any]:
        return {"isolation_level": "REPEATABLE READ"}

    async def favour_index_scans(self, conn: AsyncConnection) -> None:
        """The planner does not charge for detoasting: it may scan 2,000 classrooms' JSON
        arrays (6,000 buffers, 8-22 ms) rather than probe their GIN index (0.1 ms), on small
        differences in its statistics (bench/README.md (h))."""
        await conn.execute(_INDEX_SCANS)

    def insert(self, table: sa.Table) -> Any:
        return postgresql.insert(table)

    def array_overlaps_parameter(
        self, column: sa.Column[Any], name: str, *, tenant: sa.BindParameter[Any]
    ) -> Any:
        """``id = ANY(ARRAY(…))`` of the ids of the rows whose column matches ``jsonb ?|
        text[]``, found through the GIN index alone, then kept when of ``tenant``. Asked
        directly beside the tenant's own condition, the planner reads the tenant's range and
        tests every row's array (it does not charge for detoasting them: 407 buffers and
        0.5-1 ms for 200 classrooms, against 15 buffers and 0.1 ms). ``OFFSET 0`` keeps the
        tenant's condition out of the inner query, where it would lead the planner back to
        that range; the ``ARRAY`` is computed once (an InitPlan), where a semi-join let
        stale statistics pick a nested loop running the inner query per row (90 ms)."""
        table = column.table
        rows = table.alias()
        text_array = postgresql.ARRAY(sa.Text)
        names = sa.cast(sa.bindparam(name, type_=text_array), text_array)
        found = (
            sa.select(rows.c.tenant_id, rows.c.id)
            .where(rows.c[column.name].op("?|")(names))
            .offset(0)
            .subquery()
        )
        ids = sa.select(found.c.id).where(found.c.tenant_id == tenant).scalar_subquery()
        return table.c.id == sa.any_(sa.func.array(ids))

    def in_values(self, column: sa.ColumnElement[Any], values: list[Any]) -> Any:
        """One bound array, unnested in a subquery: no parameter-count limit, and the planner
        hashes it or probes the index (``= ANY($1)`` with a parameter array is searched
        linearly for every row, seconds for 1,000 keys)."""
        array = sa.cast(sa.literal(values, postgresql.ARRAY(sa.Text)), postgresql.ARRAY(sa.Text))
        return column.in_(sa.select(sa.func.unnest(array)).scalar_subquery())

    def in_parameter(self, column: sa.ColumnElement[Any], name: str) -> Any:
        text_array = postgresql.ARRAY(sa.Text)
        array = sa.cast(sa.bindparam(name, type_=text_array), text_array)
        return column.in_(sa.select(sa.func.unnest(array)).scalar_subquery())

    def locking(self, query: sa.Select[Any], key: sa.ColumnElement[Any]) -> sa.Select[Any]:
        """Locks in byte order (``COLLATE "C"``), the order callers sort their keys in."""
        return query.order_by(key.collate("C")).with_for_update()

    async def bump(
        self,
        conn: AsyncConnection,
        counter: sa.Update,
        then: Sequence[Then],
        *,
        key: Hashable,
        params: Mapping[str, Any],
        notice: Notice | None,
    ) -> int:
        """One statement: the counter row stays locked for one round trip and the commit,
        not for the time a busy event loop takes to send each next statement (every other
        writer of the tenant queues on that lock meanwhile). The bump is a CTE; each UPDATE
        of ``then`` is a data-modifying CTE, which PostgreSQL runs to completion though
        nothing reads it; the SELECT returns the value and, for ``notice``, calls
        ``pg_notify`` with it. All of them see one snapshot: ``then`` must not touch the
        counter's table, and sees another transaction's rows only as committed (every row
        it renumbers is this transaction's own, still locked, so none can be missed)."""

        def build() -> sa.Select[Any]:
            bumped = counter.cte("bump")
            (value,) = bumped.c
            top = sa.select(value).scalar_subquery()
            steps = [then_(top).cte(f"then_{n}") for n, then_ in enumerate(then)]
            columns: list[sa.ColumnElement[Any]] = [value]
            if notice is not None:
                tenant = sa.bindparam("notice_tenant", type_=sa.Text)
                columns.append(sa.func.pg_notify(NOTIFY_CHANNEL, _payload(tenant, notice, value)))
            return sa.select(*columns).select_from(bumped).add_cte(*steps)

        query = self.statement(("bump", key, notice.kind if notice else None), build)
        values = {**params, "notice_tenant": notice.tenant_id} if notice else params
        return int((await conn.execute(query, values)).scalar_one())

    def locks_table(self, keys: int) -> bool:
        return keys > KEY_LOCKS_MAX

    async def lock_keys(
        self, conn: AsyncConnection, scope: str, keys: list[str], *, exclusive: bool
    ) -> bool:
        if exclusive or len(keys) > KEY_LOCKS_MAX:
            await conn.execute(_LOCK, {"k": _lock_id(scope)})
            return True
        hashes = sorted({_lock_id(f"{scope}:{key}") for key in keys})
        if hashes:
            await conn.execute(_LOCK_SHARED_THEN_EACH, {"k": _lock_id(scope), "keys": hashes})
        else:
            await conn.execute(_LOCK_SHARED, {"k": _lock_id(scope)})
        return False

    async def notify_commit(
        self, conn: AsyncConnection, tenant_id: str, kind: str, seq: int
    ) -> None:
        """The NOTIFY is delivered only at COMMIT (never for a rollback). The payload only
        wakes hubs (far under NOTIFY's 8000-byte limit)."""
        tenant = sa.literal(tenant_id, sa.Text)
        payload = _payload(tenant, Notice(tenant_id, kind), sa.literal(int(seq), sa.BigInteger))
        await conn.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, payload)))

    def listen(
        self, engine: AsyncEngine, broker: Publisher, on_reconnect: Callable[[], None]
    ) -> Listener | None:
        """LISTEN on a connection of its own (asyncpg's, outside the pool), through
        SYNCGRAPH_LISTEN_URL when set (a pooler in transaction mode would deliver nothing)."""
        url, options = split_url(self.listen_url or engine.url.render_as_string(False))
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        listener = PgListener(
            dsn, broker, on_reconnect, timeout=options.get("timeout", self.connect_timeout)
        )
        listener.start()
        return listener

    def analyze_soon(
        self, engine: AsyncEngine, table: sa.Table, rows: int
    ) -> asyncio.Task[None] | None:
        return self.planner.analyze_soon(engine, table, rows)

    async def settle(self) -> None:
        await self.planner.settle()


def _payload(
    tenant: sa.ColumnElement[str], notice: Notice, seq: sa.ColumnElement[Any]
) -> sa.ColumnElement[str]:
    """``{"t":"<tenant>","k":"<kind>","s":<seq>}``, built by the server (``seq`` may be a
    value only the statement knows); the tenant id (``tenant``, a parameter) and the kind
    travel as parameters, never as SQL text."""

    def text(value: str) -> sa.ColumnElement[str]:
        return sa.literal(value, sa.Text)

    head = text('{"t":"') + tenant + text('","k":"') + text(notice.kind) + text('","s":')
    return head + sa.cast(seq, sa.Text) + text("}")


_INDEX_SCANS = sa.text("SET LOCAL enable_seqscan = off")
_LOCK = sa.text("SELECT pg_advisory_xact_lock(CAST(:k AS bigint))")
_LOCK_SHARED = sa.text("SELECT pg_advisory_xact_lock_shared(CAST(:k AS bigint))")
_LOCK_SHARED_THEN_EACH = sa.text(
    "SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:keys AS bigint[])) AS k"
    " WHERE (SELECT pg_advisory_xact_lock_shared(CAST(:k AS bigint))) IS NOT NULL"
)
"""The scope's shared lock, then each key's, in one round trip. The uncorrelated subquery is
an InitPlan in the plan's one-time filter, which the executor evaluates before it reads the
first row (``Result`` checks its constant qualification first), so the shared lock is always
taken first; unnest yields the array in order, and the key locks are taken row by row in that
order (``tests/engine/test_locks.py`` reads the plan)."""


def _lock_id(name: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True
    )


def _check_on_checkout(engine: AsyncEngine) -> None:
    """A checked-out connection is alive, without a round trip per request (``pool_pre_ping``
    cost one on every checkout, a fifth of an idle poll). A connection the server closed
    (a restart, ``pg_terminate_backend``, an idle timeout) is known to asyncpg as soon as
    the socket closes: it is replaced at once. Only a connection that sat idle for
    ``PING_AFTER_IDLE_SECONDS`` (where a silently dropped peer could hide) is pinged. Raising
    ``DisconnectionError`` makes the pool discard the connection and check out another."""

    @event.listens_for(engine.sync_engine, "checkin")
    def idle_from(_dbapi: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def check(dbapi: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        if dbapi.driver_connection.is_closed():
            raise exc.DisconnectionError("the server closed this connection")
        idle_since = record.info.get("idle_since")
        if idle_since is not None and time.monotonic() - idle_since > PING_AFTER_IDLE_SECONDS:
            try:
                dbapi.ping()
            except Exception as error:  # any failure: this connection is not usable
                raise exc.DisconnectionError(f"ping failed: {error}") from error


ASYNCPG_NUMBERS: dict[str, type[int] | type[float]] = {
    "statement_cache_size": int,
    "max_cached_statement_lifetime": int,
    "max_cacheable_statement_size": int,
    "prepared_statement_cache_size": int,
    "command_timeout": float,
    "timeout": float,
}
"""Driver options a DATABASE_URL may carry in its query string; the URL gives strings, the
driver compares them with numbers."""


def split_url(database_url: str) -> tuple[sa.URL, dict[str, Any]]:
    """The URL without the numeric driver options of its query string, and those options
    as numbers (``?statement_cache_size=0`` arrives as ``"0"``)."""
    url = sa.make_url(database_url)
    query = dict(url.query)
    options: dict[str, Any] = {}
    for name, kind in ASYNCPG_NUMBERS.items():
        if name in query:
            value = query.pop(name)
            try:
                options[name] = kind(value if isinstance(value, str) else value[-1])
            except ValueError:
                raise ValueError(f"DATABASE_URL: {name} must be a number, not {value!r}") from None
    return url.set(query=query), options


def connection_options(settings: Settings) -> tuple[sa.URL, dict[str, Any]]:
    """The engine's URL and asyncpg connect arguments: the timeouts, and for a transaction
    pooler (``SYNCGRAPH_DB_POOLER=transaction`` or ``?statement_cache_size=0``) statements
    that keep no server-side state between transactions."""
    url, options = split_url(settings.database_url)
    options.setdefault("timeout", settings.db_connect_timeout)
    options.setdefault("command_timeout", settings.db_statement_timeout or None)
    if settings.db_pooler == "transaction":
        options["statement_cache_size"] = 0
    if options.get("statement_cache_size") == 0:
        # asyncpg then parses each statement unnamed, and SQLAlchemy must not keep those
        # (the next Parse replaces an unnamed statement): nothing lives past a transaction,
        # so no name can collide on a server connection another process used before.
        options["prepared_statement_cache_size"] = 0
    return url, options
