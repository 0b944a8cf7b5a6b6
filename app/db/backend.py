"""The backend interface: everything that differs between SQLite and PostgreSQL.

One ``Backend`` object per engine (``app.db.make_engine`` makes both), so the caches that
live as long as a database connection pool (the writer queue, the planner's statistics, the
compiled row statements) live on it. ``app.db`` looks the backend up from an engine or a
connection; nothing outside ``app/db`` asks which database it is on.
"""

from __future__ import annotations

import asyncio
import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from app.settings import Settings

Row = dict[str, Any]


class RowStore(Protocol):
    """Writes whole entity rows and reads them back by key: ``app.db.rows.PlainRows`` (the
    design) or ``app.accel.rowcodec.RowCodec`` (the same rows, generated converters)."""

    async def upsert(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        rows: Sequence[Row],
        stored: Mapping[str, Row] | None = None,
        *,
        base: int | None = None,
    ) -> None: ...

    async def select(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        tenant_id: str,
        key: str,
        values: Sequence[str],
        *,
        lock: bool = False,
        skip: tuple[str, ...] = (),
    ) -> list[Row]: ...


class Publisher(Protocol):
    """Where a listener hands the commits other processes announce (``engine.notify.Broker``)."""

    def publish(self, tenant_id: str, seq: int, *, kind: str) -> None: ...


class Listener(Protocol):
    async def stop(self) -> None: ...


STATEMENTS = 512
"""Statements a backend keeps built (``Backend.statement``)."""

Then = Callable[[sa.ColumnElement[Any]], sa.Update]
"""An UPDATE built from a counter's new value (``bump``)."""


@dataclass(frozen=True)
class Notice:
    """A commit announcement to other processes: ``kind`` of ``tenant_id`` is at the seq a
    counter bump returns (``bump``). Its payload is ``{"t":tenant,"k":kind,"s":seq}``, as
    ``notify_commit`` sends it and ``app.db.listener`` reads it."""

    tenant_id: str
    kind: str


@dataclass(frozen=True)
class RowForm:
    """How rows travel to and from one database, for code that builds its own statements
    (``app.accel.rowcodec``): told by the backend, never asked of the dialect."""

    arrays: bool
    """A batch goes as one typed array per column (``unnest``); lookups by key have a join
    and a per-key probe form. Otherwise: rows as tuples, keys as one JSON list."""
    native_floats: bool
    """The driver answers floating-point columns as Python floats (no result processor)."""


class Backend(ABC):
    """One database's answers to the questions the engine must not ask itself."""

    row_form: ClassVar[RowForm]
    """How rows travel (see ``RowForm``)."""
    alters_by_copy: ClassVar[bool] = False
    """Whether a schema change rebuilds the table (SQLite: Alembic's batch mode)."""
    indexes_json_arrays: ClassVar[bool] = False
    """Whether an index can answer ``array_overlaps_parameter`` (``json_array_index``)."""

    @classmethod
    def migration_engine(cls, database_url: str) -> AsyncEngine:
        """An engine for Alembic: no pool, the server's driver options."""
        return create_async_engine(database_url, poolclass=NullPool)

    several_processes: ClassVar[bool]
    """Whether several server processes may share the database (their commits reach each
    other's hubs)."""
    reads_in_background: ClassVar[bool]
    """Whether a read sent now runs while this thread computes (the database works in
    another process), rather than competing with it for the GIL (a driver thread)."""
    rows: RowStore

    # connection set-up and transactions

    @abstractmethod
    def create_engine(self, settings: Settings) -> AsyncEngine:
        """The engine with this database's pool options and connection set-up."""

    @abstractmethod
    def write_transaction(
        self, engine: AsyncEngine
    ) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection inside one write transaction, committed when the block exits cleanly."""

    @abstractmethod
    def single_read_options(self) -> dict[str, Any]:
        """Execution options for reads outside a transaction (no BEGIN, no ROLLBACK)."""

    def snapshot_options(self) -> dict[str, Any]:
        """Execution options for a read transaction whose statements all see one snapshot
        (SQLite's read transactions do already)."""
        return {}

    def others_wrote(self) -> bool:
        """Whether another process may have committed since this process last asked, for
        databases whose processes are not told of each other's commits (SQLite). Where they
        are (PostgreSQL's NOTIFY, ``listen``), False."""
        return False

    async def favour_index_scans(self, conn: AsyncConnection) -> None:
        """For the rest of the transaction, plan with index scans where there is one (SQLite
        plans from its indexes without statistics of sizes: nothing to do)."""
        return None

    # statements

    @abstractmethod
    def array_overlaps_parameter(
        self, column: sa.Column[Any], name: str, *, tenant: sa.BindParameter[Any]
    ) -> Any:
        """Whether the JSON array of strings in ``column`` holds any of the list given as
        parameter ``name`` at execution (for rows of the ``tenant`` parameter's tenant)."""

    @abstractmethod
    def insert(self, table: sa.Table) -> Any:
        """INSERT with ``on_conflict_do_update`` / ``on_conflict_do_nothing``."""

    @abstractmethod
    def in_values(self, column: sa.ColumnElement[Any], values: list[Any]) -> Any:
        """``column IN values`` in the form this database plans well for many values."""

    @abstractmethod
    def in_parameter(self, column: sa.ColumnElement[Any], name: str) -> Any:
        """``column IN`` the list given as parameter ``name`` at execution, in the form of
        ``in_values`` (for a statement built once: ``statement``)."""

    def statement(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The statement ``build`` makes, built once per ``key`` for this database (one
        made with ``in_parameter`` differs from one database to another). The most recent
        ``STATEMENTS`` are kept: keys may come from what clients select."""
        statements = self._statements
        made = statements.pop(key, None)
        if made is None:
            made = build()
            if len(statements) >= STATEMENTS:
                del statements[next(iter(statements))]
        statements[key] = made
        return made

    @functools.cached_property
    def _statements(self) -> dict[Hashable, Any]:
        return {}

    @abstractmethod
    def locking(self, query: sa.Select[Any], key: sa.ColumnElement[Any]) -> sa.Select[Any]:
        """``query`` taking row locks in ``key`` order, where the database has row locks."""

    @abstractmethod
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
        """Run ``counter`` (an UPDATE … RETURNING one integer: a counter's new value), then
        each UPDATE of ``then`` built from that value, then announce ``notice`` with it (at
        commit); return the value. ``key`` and ``params``: see ``app.db.bump``."""

    # concurrency

    @abstractmethod
    def locks_table(self, keys: int) -> bool:
        """Whether a writer of ``keys`` keys holds its (tenant, table) alone."""

    @abstractmethod
    async def lock_keys(
        self, conn: AsyncConnection, scope: str, keys: list[str], *, exclusive: bool
    ) -> bool:
        """Transaction-scoped locks for writing rows of one scope (see ``app.db.lock_keys``)."""

    # notification

    @abstractmethod
    async def notify_commit(
        self, conn: AsyncConnection, tenant_id: str, kind: str, seq: int
    ) -> None:
        """Tell other processes about this transaction's commit (at commit)."""

    @abstractmethod
    def listen(
        self, engine: AsyncEngine, broker: Publisher, on_reconnect: Callable[[], None]
    ) -> Listener | None:
        """Start hearing other processes' commits (None: there are none to hear)."""

    # planner statistics

    @abstractmethod
    def analyze_soon(
        self, engine: AsyncEngine, table: sa.Table, rows: int
    ) -> asyncio.Task[None] | None:
        """After a commit that wrote ``rows`` rows of ``table``: refresh the planner's
        statistics in the background if they are missing and the write was a bulk one."""

    @abstractmethod
    async def settle(self) -> None:
        """Wait for the background work ``analyze_soon`` started (before disposing)."""
