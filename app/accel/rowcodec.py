"""The row codec: reading and writing a batch's rows in the driver's own bulk forms, one
statement each, with converters generated per table (the accelerator ``rowcodec``; its plain
twin, the design, is ``app.db.rows.PlainRows``: the same rows read, the same data written).

SQLAlchemy's executemany turns every row's dict into bound parameters one value at a time
(for 1,000 rows of 20 columns, about as long as the database takes to store them). The rows
written here are complete table rows the engine has already checked, so each table gets its
upsert compiled once and the rows go to the driver as plain tuples, converted by the same
bind processors SQLAlchemy would use (so what is stored is identical):

* SQLite: ``INSERT … VALUES (?, …) ON CONFLICT (tenant_id, id) DO UPDATE SET …``, one
  ``executemany`` (one more per other set of indexed columns an update changes: see
  ``RowCodec.upsert``).
* PostgreSQL: ``INSERT … SELECT … FROM unnest($1::type[], …) ON CONFLICT … DO UPDATE SET …``:
  one statement with one array per column (multi-row VALUES or a pipelined executemany
  cost 1.6 to 1.9 times more here). JSON columns travel as ``text[]`` and are cast per row.

Reading the rows a batch names (``RowCodec.select``) takes the keys as one parameter (a JSON
array on SQLite, an array on PostgreSQL) and converts the result with SQLAlchemy's result
processors, timestamps once per distinct value.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from app.db.backend import RowForm
from app.db.rows import PRIMARY_KEY, SEQ_COLUMNS
from app.db.types import json_dumps

READ_KEYS = ("id", "alias")
"""The columns ``select_rows`` looks rows up by."""
Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class TableWriter:
    sql: str
    columns: tuple[str, ...]
    processors: tuple[Processor, ...]
    by_column: bool
    """PostgreSQL: one array per column; SQLite: one tuple per row."""

    memo: tuple[bool, ...]
    """Columns whose processed values are cached per call (all but JSON, whose values are
    mutable): a batch's rows share a handful of timestamps, flags and dates, and SQLite's
    timestamp conversion alone is a dozen-field format."""

    tuples: Callable[[Sequence[dict[str, Any]], int | None], list[tuple[Any, ...]]] | None = None
    """SQLite: (rows, base) -> parameter tuples, generated (``_compile_tuples``)."""

    steady: tuple[str, ...] = ()
    """SQLite: the indexed columns an update may leave out of its ``SET`` (``RowCodec.upsert``)."""

    sets: tuple[tuple[str, str], ...] = ()
    """SQLite: (column, its ``SET`` item) for every column the upsert overwrites."""

    keeping: dict[tuple[str, ...], str] = field(default_factory=dict)
    """SQLite: the upsert whose ``SET`` leaves out these steady columns, built on first use."""

    def sql_keeping(self, kept: tuple[str, ...]) -> str:
        sql = self.keeping.get(kept)
        if sql is None:
            head = self.sql[: self.sql.index(" DO UPDATE SET ")]
            sets = ", ".join(item for column, item in self.sets if column not in kept)
            sql = self.keeping[kept] = f"{head} DO UPDATE SET {sets}"
        return sql

    def parameters(self, rows: Sequence[dict[str, Any]], base: int | None = None) -> Any:
        """The driver's parameters; ``base``: placeholder seqs ``-k`` become ``base + k``
        (``seq.stamp``), otherwise they are written as they are."""
        if self.tuples is not None:
            return self.tuples(rows, base)
        names = self.columns
        columns = []
        for name, process, memo in zip(names, self.processors, self.memo, strict=True):
            values = [row[name] for row in rows]
            if base is not None and name in SEQ_COLUMNS:
                values = [base - v if v < 0 else v for v in values]
            if process is not None:
                values = _memoized(process, values) if memo else [process(v) for v in values]
            columns.append(values)
        if self.by_column:
            return tuple(columns)
        return list(zip(*columns, strict=True))


def _memoized(process: Callable[[Any], Any], values: list[Any]) -> list[Any]:
    # keyed with the zone too: equal instants in two zones are stored differently on SQLite
    done: dict[Any, Any] = {}
    out = []
    for value in values:
        key = (value, getattr(value, "tzinfo", None))
        try:
            out.append(done[key])
        except KeyError:
            out.append(done.setdefault(key, process(value)))
        except TypeError:  # unhashable: converted as it is
            out.append(process(value))
    return out


def _compile_tuples(
    table: sa.Table, processors: tuple[Processor, ...], memo: tuple[bool, ...]
) -> Callable[[Sequence[dict[str, Any]], int | None], list[tuple[Any, ...]]]:
    """Rows -> parameter tuples: a tuple display per row, bind processors inline, memoized
    ones keyed as ``_memoized`` keys them (timestamps with their zone); seqs renumbered as
    ``TableWriter.parameters`` says."""
    sources = [
        f"(base - {c.name}_ if base is not None and ({c.name}_ := r[{c.name!r}]) < 0 "
        f"else r[{c.name!r}])"
        if c.name in SEQ_COLUMNS
        else f"r[{c.name!r}]"
        for c in table.columns
    ]
    zoned = [isinstance(c.type, sa.DateTime) for c in table.columns]
    return _converter(
        f"<tuples {table.name}>",
        sources,
        processors,
        memo,
        zoned,
        lambda values: f"({', '.join(values)},)",
        none_through=True,
    )


def _convert_lines(i: int, source: str, *, memo: bool, zoned: bool) -> list[str]:
    """The per-row lines that set ``v{i}``: None as ``n{i}``, else processed by ``p{i}``;
    with ``memo`` the previous row's value (the same object) first, then the memo."""
    lines = [
        f"        v{i} = {source}",
        f"        if v{i} is None:",
        f"            v{i} = n{i}",
    ]
    if not memo:
        return [*lines, "        else:", f"            v{i} = p{i}(v{i})"]
    key = f"(v{i}, v{i}.tzinfo)" if zoned else f"v{i}"
    return [
        *lines,
        f"        elif v{i} is l{i}:",
        f"            v{i} = k{i}",
        "        else:",
        f"            l{i} = v{i}",
        "            try:",
        f"                v{i} = m{i}[{key}]",
        "            except KeyError:",
        f"                m{i}[{key}] = c = p{i}(v{i})",
        f"                v{i} = c",
        "            except TypeError:  # unhashable: converted as it is",
        f"                v{i} = p{i}(v{i})",
        f"            k{i} = v{i}",
    ]


def _converter(
    label: str,
    sources: list[str],
    processors: tuple[Processor, ...],
    memo: tuple[bool, ...],
    zoned: list[bool],
    build: Callable[[list[str]], str],
    *,
    none_through: bool = False,
) -> Callable[..., list[Any]]:
    """Generated ``convert(rows, base=None) -> list``: for each row, the column values
    (``sources``: expressions of ``r``), each processor applied inline, memoized ones once
    per distinct value in a call (a value that is the previous row's object needs no lookup);
    ``build`` makes the expression appended per row from the value expressions. None stays
    None, or with ``none_through`` becomes what the processor makes of it (bind processors:
    a JSON column's None is the JSON ``null``)."""
    env: dict[str, Any] = {"UNSEEN": object()}
    lines = ["def convert(rows, base=None):"]
    for i, p in enumerate(processors):
        if p is not None and memo[i]:
            lines += [f"    m{i} = {{}}", f"    l{i} = k{i} = UNSEEN"]
    lines += ["    out = []", "    append = out.append", "    for r in rows:"]
    values = []
    for i, (source, process) in enumerate(zip(sources, processors, strict=True)):
        if process is None:
            values.append(source)
            continue
        env[f"p{i}"] = process
        env[f"n{i}"] = process(None) if none_through else None
        lines += _convert_lines(i, source, memo=memo[i], zoned=zoned[i])
        values.append(f"v{i}")
    lines += [f"        append({build(values)})", "    return out"]
    exec(compile("\n".join(lines), label, "exec"), env)  # noqa: S102
    convert: Callable[..., list[Any]] = env["convert"]
    return convert


def table_writer(form: RowForm, dialect: Dialect, table: sa.Table) -> TableWriter:
    """The upsert of ``table``'s rows, compiled for ``dialect`` in the backend's ``form``
    (not cached: ``RowCodec`` keeps the engine's)."""
    return _build(form, dialect, table)


def _build(form: RowForm, dialect: Dialect, table: sa.Table) -> TableWriter:
    quote = dialect.identifier_preparer.quote
    columns = tuple(c.name for c in table.columns)
    names = ", ".join(quote(c) for c in columns)
    keys = ", ".join(quote(k) for k in PRIMARY_KEY)
    sets = tuple((c, f"{quote(c)} = excluded.{quote(c)}") for c in columns if c not in PRIMARY_KEY)
    updates = ", ".join(item for _, item in sets)
    target = dialect.identifier_preparer.format_table(table)
    conflict = f"ON CONFLICT ({keys}) DO UPDATE SET {updates}"
    processors = tuple(_processor(dialect, c) for c in table.columns)
    memo = tuple(not _is_json(c.type) for c in table.columns)
    if form.arrays:
        arrays, selected = [], []
        for i, column in enumerate(table.columns, start=1):
            json = _is_json(column.type)
            element = "TEXT" if json else column.type.compile(dialect=dialect)
            arrays.append(f"${i}::{element}[]")
            value = f"u.{quote(column.name)}"
            selected.append(f"CAST({value} AS JSONB)" if json else value)
        sql = (
            f"INSERT INTO {target} ({names}) SELECT {', '.join(selected)} "
            f"FROM unnest({', '.join(arrays)}) AS u({names}) {conflict}"
        )
        return TableWriter(sql, columns, processors, by_column=True, memo=memo)
    marks = ", ".join("?" for _ in columns)
    sql = f"INSERT INTO {target} ({names}) VALUES ({marks}) {conflict}"
    tuples = _compile_tuples(table, processors, memo)
    return TableWriter(
        sql,
        columns,
        processors,
        by_column=False,
        memo=memo,
        tuples=tuples,
        steady=_steady_columns(table),
        sets=sets,
    )


def _steady_columns(table: sa.Table) -> tuple[str, ...]:
    """Indexed columns a write may leave as they are: all but the key and the change feed's
    own (``seq`` and ``updated_at`` change with every write)."""
    indexed = {c.name for index in table.indexes for c in index.columns}
    return tuple(c.name for c in table.columns if c.name in indexed - _ALWAYS_WRITTEN)


_ALWAYS_WRITTEN = {*PRIMARY_KEY, "seq", "updated_at"}


def _is_json(type_: sa.types.TypeEngine[Any]) -> bool:
    return isinstance(type_, sa.JSON)


def _processor(dialect: Dialect, column: sa.Column[Any]) -> Processor:
    """SQLAlchemy's own conversion for the column (it handles None itself)."""
    return column.type.dialect_impl(dialect).bind_processor(dialect)


def _same(new: Any, old: Any) -> bool:
    """Whether a value is certainly stored as it is (same type, equal)."""
    return new is old or (type(new) is type(old) and new == old)


@dataclass(frozen=True)
class TableReader:
    columns: tuple[str, ...]
    processors: tuple[Processor, ...]
    memo: tuple[bool, ...]
    by_key: dict[tuple[str, bool, bool], str]
    """(key column, lock, probe) -> SQL (``probe``: PostgreSQL's per-key form)"""
    postgres: bool
    rows: Callable[[Sequence[Sequence[Any]]], list[dict[str, Any]]]
    """Result rows -> dicts, converted by the result processors (``_compile_rows``)."""

    def sql(self, key: str, lock: bool, probe: bool = False) -> str:
        return self.by_key[(key, lock, probe and self.postgres)]


def _compile_rows(
    columns: tuple[str, ...], processors: tuple[Processor, ...], memo: tuple[bool, ...]
) -> Callable[[Sequence[Sequence[Any]]], list[dict[str, Any]]]:
    """Result rows -> dicts: a dict display per row (no per-column lists, no zips),
    result processors inline (``_converter``); raw result values need no zone in the key."""
    return _converter(
        "<rows>",
        [f"r[{i}]" for i in range(len(columns))],
        processors,
        memo,
        [False] * len(columns),
        lambda values: (
            "{" + ", ".join(f"{name!r}: {v}" for name, v in zip(columns, values, strict=True)) + "}"
        ),
    )


def table_reader(
    form: RowForm, dialect: Dialect, table: sa.Table, skip: tuple[str, ...] = ()
) -> TableReader:
    """The reader of ``table``'s rows, without the ``skip`` columns (not cached: ``RowCodec``
    keeps the engine's)."""
    return _build_reader(form, dialect, table, READ_KEYS, skip)


def _postgres_lookups(
    quote: Callable[[str], str], target: str, names: str, selected: str, key: str, lock: bool
) -> tuple[str, str]:
    """The join and the probe form of a lookup by ``key`` (see ``_build_reader``)."""
    join = (
        f"SELECT {names} FROM {target} WHERE tenant_id = $1 "
        f"AND {quote(key)} IN (SELECT unnest($2::text[]))"
    )
    if lock:  # row locks in key order, as the probe form (byte order = the
        # callers' sorted order): overlapping writers cannot deadlock
        join += f' ORDER BY {quote(key)} COLLATE "C" FOR UPDATE'
    row = (
        f"SELECT {names} FROM {target} WHERE tenant_id = (SELECT $1::text) "
        f"AND {quote(key)} = k.key LIMIT 1"  # LIMIT: not flattened into a join
    )
    if lock:  # row locks in key order (the keys are sorted)
        row += " FOR UPDATE"
    probe = f"SELECT {selected} FROM unnest($2::text[]) AS k(key) CROSS JOIN LATERAL ({row}) AS t"
    return join, probe


def _build_reader(
    form: RowForm,
    dialect: Dialect,
    table: sa.Table,
    keys: Sequence[str],
    skip: tuple[str, ...] = (),
) -> TableReader:
    """The lookups by key; where the backend's form takes arrays (PostgreSQL), in two forms:

    * join: ``key IN (SELECT unnest($2))``; the planner picks a hash join over the tenant's
      rows or index probes, by its statistics;
    * probe: one primary-key (or unique alias) probe per key, in a lateral subquery whose
      tenant is hidden from the planner (``(SELECT $1)``), so that a tenant the statistics do
      not know yet (a new one: its rows look like none) is estimated as an average one, and
      an index on the tenant alone never looks as cheap as the key's own index. 5 instead of
      12 ms for 1,000 keys at 20,000 rows, and it does not grow with the tenant.

    The probe form needs statistics for the table (``app.db.planner``): without any, every
    index that starts with the tenant looks alike, and a probe may walk the tenant's rows once
    per key (quadratic: 200 ms for 1,000 keys at 2,000 rows)."""
    quote = dialect.identifier_preparer.quote
    target = dialect.identifier_preparer.format_table(table)
    read = [c for c in table.columns if c.name not in skip]
    columns = tuple(c.name for c in read)
    names = ", ".join(quote(c) for c in columns)
    selected = ", ".join(f"t.{quote(c)}" for c in columns)
    postgres = form.arrays
    by_key: dict[tuple[str, bool, bool], str] = {}
    for key in keys:
        for lock in (False, True):
            if postgres:
                join, probe = _postgres_lookups(quote, target, names, selected, key, lock)
                by_key[(key, lock, False)] = join
                by_key[(key, lock, True)] = probe
            else:  # no ORDER BY: SQLite would walk the primary key instead of the index
                by_key[(key, lock, False)] = (
                    f"SELECT {names} FROM {target} WHERE tenant_id = ? "
                    f"AND {quote(key)} IN (SELECT value FROM json_each(?))"
                )
    processors = tuple(_result_processor(form, dialect, c) for c in read)
    memo = tuple(not _is_json(c.type) for c in read)
    rows = _compile_rows(columns, processors, memo)
    return TableReader(columns, processors, memo, by_key, postgres, rows)


def _result_processor(form: RowForm, dialect: Dialect, column: sa.Column[Any]) -> Processor:
    if isinstance(column.type, sa.Float) and form.native_floats:
        return None  # the driver answers float8 as float (the processor wants the type's OID)
    return column.type.dialect_impl(dialect).result_processor(dialect, None)


Probe = Callable[[AsyncConnection, sa.Table], Awaitable[bool]]


class RowCodec:
    """One engine's compiled writers and readers, built on first use per table from the
    engine's own dialect (its JSON serializer included); ``probe``: whether a table's
    lookups may take PostgreSQL's per-key probe form (``app.db.planner``), None elsewhere."""

    def __init__(self, form: RowForm, *, probe: Probe | None) -> None:
        self.form, self.probe = form, probe
        self.writers: weakref.WeakKeyDictionary[sa.Table, TableWriter] = weakref.WeakKeyDictionary()
        self.readers: weakref.WeakKeyDictionary[sa.Table, dict[tuple[str, ...], TableReader]] = (
            weakref.WeakKeyDictionary()
        )

    def writer(self, dialect: Dialect, table: sa.Table) -> TableWriter:
        writer = self.writers.get(table)
        if writer is None:
            writer = self.writers[table] = _build(self.form, dialect, table)
        return writer

    def reader(self, dialect: Dialect, table: sa.Table, skip: tuple[str, ...]) -> TableReader:
        per_skip = self.readers.setdefault(table, {})
        reader = per_skip.get(skip)
        if reader is None:
            reader = per_skip[skip] = _build_reader(self.form, dialect, table, READ_KEYS, skip)
        return reader

    async def upsert(
        self,
        conn: AsyncConnection,
        table: sa.Table,
        rows: Sequence[dict[str, Any]],
        stored: Mapping[str, dict[str, Any]] | None = None,
        *,
        base: int | None = None,
    ) -> None:
        """Insert or overwrite whole rows (every column given) in one statement; ``base``:
        the seqs are final, placeholder ``-k`` written as ``base + k`` (``seq.stamp``).

        ``stored``: the rows as they are in the database now, by id (rows not in it may be
        new). SQLite then leaves an indexed column (the alias, lookup fields) out of an
        update that keeps its stored value: it rewrites the index entries of every column
        it sets, changed or not, and with scattered aliases the alias index alone is nearly
        half of a 1,000-row update (15 → 8 ms). Rows are grouped by the columns they keep:
        new rows, and rows that change every such column, get the full ``SET``.
        The caller must hold the write lock since reading ``stored`` (SQLite: every write
        transaction does)."""
        if not rows:
            return
        writer = self.writer(conn.dialect, table)
        if not stored or not writer.steady:
            await conn.exec_driver_sql(writer.sql, writer.parameters(rows, base))
            return
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        steady = writer.steady
        for row in rows:
            old = stored.get(row["id"])
            kept = () if old is None else tuple(c for c in steady if _same(row[c], old[c]))
            groups.setdefault(kept, []).append(row)
        for kept, group in groups.items():
            await conn.exec_driver_sql(writer.sql_keeping(kept), writer.parameters(group, base))

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
    ) -> list[dict[str, Any]]:
        """The rows of one tenant whose ``key`` column (``id``, ``alias``) is in ``values``
        (``lock``: row locks on PostgreSQL, taken in key order), without the ``skip``
        columns."""
        reader = self.reader(conn.dialect, table, skip)
        keys: Any
        if reader.postgres:
            probe = self.probe is not None and await self.probe(conn, table)
            sql, keys = reader.sql(key, lock, probe), sorted(set(values))
        else:
            sql, keys = reader.sql(key, lock), json_dumps(list(values))
        result = await conn.exec_driver_sql(sql, (tenant_id, keys))
        return reader.rows(result.all())
