"""The driver-level reader turns result rows into what SQLAlchemy's own result processors
would make of them, for every entity table on both dialects."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import Dialect

from app.accel.rowcodec import table_reader, table_writer
from app.db.postgres import PostgresBackend
from app.db.sqlite import SqliteBackend
from app.domains import load_registry

DIALECTS = {"sqlite": sqlite.aiosqlite.dialect(), "postgres": postgresql.asyncpg.dialect()}
FORMS = {"sqlite": SqliteBackend.row_form, "postgres": PostgresBackend.row_form}


def stored(column: sa.Column[Any], dialect: Dialect, k: int) -> Any:
    """A value as the driver hands it back (k picks one of a few, with repeats and None)."""
    if k % 5 == 4 and column.nullable:
        return None
    kind = column.type
    sqlite_ = dialect.name == "sqlite"
    if isinstance(kind, sa.DateTime):
        moment = datetime(2026, 1, 1 + k % 3, 8, 30, k % 2, 123456, tzinfo=UTC)
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite_ else moment
    if isinstance(kind, sa.Date):
        day = date(2004, 8, 1 + k % 7)
        return day.isoformat() if sqlite_ else day
    if isinstance(kind, sa.Boolean):
        return (k % 2) if sqlite_ else bool(k % 2)
    if isinstance(kind, sa.JSON):
        value = {"k": k, "flags": [True, None]} if k % 2 else [f"x{k}"]
        return json.dumps(value) if sqlite_ else value
    if isinstance(kind, sa.Float):
        return k + 0.5
    if isinstance(kind, sa.Integer):
        return k
    return f"v{k % 4}"


def expected(column: sa.Column[Any], dialect: Dialect, value: Any) -> Any:
    if isinstance(column.type, sa.Float) and dialect.name == "postgresql":
        return value  # asyncpg returns float8 as float
    process = column.type.dialect_impl(dialect).result_processor(dialect, None)
    return value if process is None else process(value)


@pytest.mark.parametrize("dialect_name", list(DIALECTS))
def test_the_compiled_reader_converts_as_sqlalchemy_does(dialect_name: str) -> None:
    dialect = DIALECTS[dialect_name]
    for spec in load_registry().entities.values():
        table = spec.table
        result = [tuple(stored(c, dialect, k) for c in table.columns) for k in range(12)]
        want = [
            {c.name: expected(c, dialect, v) for c, v in zip(table.columns, row, strict=True)}
            for row in result
        ]
        got = table_reader(FORMS[dialect_name], dialect, table).rows(result)
        assert got == want, spec.name
        # values a call memoized are equal, and mutable ones (JSON) are never shared
        json_columns = [c.name for c in table.columns if isinstance(c.type, sa.JSON)]
        for name in json_columns:
            seen = [id(row[name]) for row in got if row[name] is not None]
            assert len(seen) == len(set(seen)), (spec.name, name)


def test_the_compiled_sqlite_writer_binds_as_sqlalchemy_does() -> None:
    """Parameter tuples as the columns' bind processors make them, one by one; two equal
    instants in different zones are not confused (SQLite stores them differently), nor are
    a row's values with the previous row's when they are the same objects."""
    dialect = DIALECTS["sqlite"]
    paris = timezone(timedelta(hours=1))
    for spec in load_registry().entities.values():
        table = spec.table
        rows = []
        for k in range(12):
            row = {}
            for c in table.columns:
                value = stored(c, DIALECTS["postgres"], k)  # Python values, as the engine has
                if isinstance(c.type, sa.DateTime) and value is not None and k < 6:
                    value = value.astimezone(paris)
                row[c.name] = value
            rows += [row, dict(row)]  # the next row holds the same objects
        writer = table_writer(FORMS["sqlite"], dialect, table)
        for column, process in zip(table.columns, writer.processors, strict=True):
            sqlalchemys = column.type.dialect_impl(dialect).bind_processor(dialect)
            assert (process is None) == (sqlalchemys is None)
        want = [
            tuple(
                row[name] if process is None else process(row[name])
                for name, process in zip(writer.columns, writer.processors, strict=True)
            )
            for row in rows
        ]
        assert writer.parameters(rows) == want, spec.name


@pytest.mark.parametrize("dialect_name", list(DIALECTS))
def test_the_writer_renumbers_placeholder_seqs_only_when_given_a_base(dialect_name: str) -> None:
    """``seq.stamp`` writes deferred rows with their final seqs: placeholder ``-k`` becomes
    ``base + k``, a seq that is already final (a created_seq kept from the stored row) stays;
    without a base (a row written before the stamp) the placeholders are written as they are."""
    dialect = DIALECTS[dialect_name]
    table = load_registry().by_plural("pieces").table
    rows = []
    for k, (seq, created) in enumerate([(-1, -1), (-2, 7), (-3, -3)]):
        row = {c.name: stored(c, DIALECTS["postgres"], k) for c in table.columns}
        rows.append({**row, "seq": seq, "created_seq": created})
    writer = table_writer(FORMS[dialect_name], dialect, table)

    def seqs(parameters: Any) -> list[tuple[int, int]]:
        seq, created = writer.columns.index("seq"), writer.columns.index("created_seq")
        if writer.by_column:
            return list(zip(parameters[seq], parameters[created], strict=True))
        return [(p[seq], p[created]) for p in parameters]

    assert seqs(writer.parameters(rows, 100)) == [(101, 101), (102, 7), (103, 103)]
    assert seqs(writer.parameters(rows)) == [(-1, -1), (-2, 7), (-3, -3)]
    assert [r["seq"] for r in rows] == [-1, -2, -3]  # the rows themselves are left alone
