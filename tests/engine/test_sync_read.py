"""``sync`` reads a batch's stored rows while it normalizes the items: the keys come from
the raw items (``raw_keys``). Whatever those keys miss is read after normalization, so a
record is never taken for a new one (and overwritten) because the early read missed it."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

import app.engine.write.sync as sync_module
from app import accel
from app.accel.rowcodec import table_reader
from app.db import (
    analyze_soon,
    backend_of,
    planner,
    read_transaction,
    select_rows,
    settle,
    upsert_rows,
    write_transaction,
)
from app.db.postgres import PostgresBackend
from app.domains import load_registry
from app.engine.tenants import create_tenant
from app.engine.write.items import normalize_items, raw_keys
from app.engine.write.rows import defaults, write_columns
from app.engine.write.seq import SeqAllocator
from app.engine.write.sync import Batch
from app.migrate import upgrade
from app.settings import Settings
from app.state import AppState, make_state
from tests.conftest import _drop_pg_database, _recreate_pg_database, statements


@pytest.fixture
async def tenant_id(state: AppState) -> str:
    return await tenant_id_in(state)


async def tenant_id_in(state: AppState) -> str:
    async with write_transaction(state.engine) as conn:
        return await create_tenant(conn, f"read-{uuid.uuid4().hex[:6]}")


async def users(state: AppState, tenant_id: str) -> list[dict[str, Any]]:
    table = state.registry.by_plural("users").table
    async with read_transaction(state.engine) as conn:
        rows = await conn.execute(
            table.select().where(table.c.tenant_id == tenant_id).order_by(table.c.alias)
        )
        return [dict(row._mapping) for row in rows]


def test_raw_keys_cover_every_key_normalization_gives() -> None:
    """Canonical ids and upper-case UUIDs alike; aliases as given; items that fail
    normalization still count (their keys are harmless extra reads)."""
    upper = str(uuid.uuid4())
    raw = [
        {"id": upper.upper(), "alias": "A"},
        {"id": "{" + str(uuid.uuid4()) + "}", "name": "n"},  # braces: no id (an item error)
        {"alias": "only-alias"},
        {"id": "not an id!", "alias": "bad"},
        {"id": str(uuid.uuid4()), "alias": "\ud800"},  # unpaired surrogate: not sent anywhere
        {"id": 7},
        "not an object",
    ]
    spec = load_registry().by_plural("users")
    items, errors = normalize_items(spec, raw)  # type: ignore[arg-type]
    ids, aliases = raw_keys(raw)
    assert {i.id for i in items if i.id} <= set(ids)
    assert {i.alias for i in items if i.alias} <= set(aliases)
    assert upper in ids
    assert "not an id!" not in ids
    assert "\ud800" not in aliases
    assert "bad" in aliases
    assert len(errors) == 5


async def test_rows_the_early_read_missed_are_read_before_planning(
    state: AppState, tenant_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await state.service.sync(
        tenant_id,
        {"users": Batch(data=[{"alias": f"u{i}", "name": f"n{i}"} for i in range(3)])},
    )
    ids = first.entities["users"].ids
    before = await users(state, tenant_id)

    # an early read that finds nothing: every row must come from the second read
    monkeypatch.setattr(sync_module, "raw_keys", lambda raw: ([], []))
    second = await state.service.sync(
        tenant_id,
        {
            "users": Batch(
                data=[
                    {"id": ids[0], "name": "renamed"},  # by id
                    {"alias": "u1", "email": "u1@example.org"},  # by alias
                    {"id": str(ids[2]).upper()},  # by id, upper-case, unchanged
                ]
            )
        },
    )
    report = second.entities["users"]
    assert (report.inserted, report.updated, report.unchanged, report.failed) == (0, 2, 1, 0)
    assert report.ids == ids
    after = await users(state, tenant_id)
    assert [row["id"] for row in after] == [row["id"] for row in before]
    # merged into the stored rows, not written over them as new records
    assert [(r["name"], r["email"], r["version"]) for r in after] == [
        ("renamed", None, 2),
        ("n1", "u1@example.org", 2),
        ("n2", None, 1),
    ]
    assert after[0]["created_seq"] == before[0]["created_seq"]


async def test_the_rows_are_read_while_the_items_are_normalized(
    state: AppState, backend: str, tenant_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the row read is on its way before normalization starts (the database
    reads while Python works); on SQLite it is done first (its thread would wait for the
    GIL on every row)."""
    await state.service.sync(tenant_id, {"users": Batch(data=[{"alias": "a", "name": "n"}])})
    table = state.registry.by_plural("users").table.name
    reads_seen: list[int] = []

    def normalize(*args: Any, **kwargs: Any) -> Any:
        reads_seen.append(sum(1 for s in seen if s.lstrip().startswith("SELECT") and table in s))
        return normalize_items(*args, **kwargs)

    monkeypatch.setattr(sync_module, "normalize_items", normalize)
    with statements(state) as seen:
        result = await state.service.sync(
            tenant_id, {"users": Batch(data=[{"alias": "a", "name": "m"}])}
        )
    assert result.entities["users"].updated == 1
    assert reads_seen == [1]  # sent (PostgreSQL) or done (SQLite) before the items


def planner_of(conn: AsyncConnection) -> planner.Planner:
    backend = backend_of(conn)
    assert isinstance(backend, PostgresBackend)
    return backend.planner


@pytest.fixture
async def pg_state(database_urls: dict[str, str]) -> AsyncIterator[AppState]:
    state = make_state(Settings(database_url=database_urls["postgres"], dev=False, pool_size=2))
    yield state
    await state.close()


async def explain(conn: AsyncConnection, sql: str, params: tuple[Any, ...]) -> dict[str, Any]:
    plan = await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
    return dict(plan.scalar_one()[0]["Plan"])


def rows_visited(root: dict[str, Any], table: str) -> int:
    """Rows the scans of ``table`` touched: returned or filtered out, times their loops."""
    return sum(
        (n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0)) * n.get("Actual Loops", 1)
        for n in _nodes(root)
        if n["Node Type"].endswith("Scan") and n.get("Relation Name") == table
    )


@pytest.mark.parametrize("probe", [False, True], ids=["join", "probe"])
async def test_postgres_reads_a_new_tenants_batch_in_one_pass(
    pg_state: AppState, probe: bool
) -> None:
    """The table's statistics know the tenants analyzed so far; a new tenant's rows look
    like none. A plain per-key plan then probes an index on the tenant alone and filters the
    tenant's rows for every key (quadratic: 200 ms for 1,000 keys at 5,000 rows, growing with
    each batch). Both lookup forms must visit each row a bounded number of times."""

    async def tenant_with_users(count: int) -> tuple[str, list[str]]:
        async with write_transaction(pg_state.engine) as conn:
            tenant_id = await create_tenant(conn, f"plan-{uuid.uuid4().hex[:6]}")
        for start in range(0, count, 1000):
            data = [{"alias": f"u{i}", "name": "n"} for i in range(start, start + 1000)]
            result = await pg_state.service.sync(tenant_id, {"users": Batch(data=data)})
            assert result.total("failed") == 0
        table = pg_state.registry.by_plural("users").table
        async with read_transaction(pg_state.engine) as conn:
            ids = await conn.execute(sa.select(table.c.id).where(table.c.tenant_id == tenant_id))
            return tenant_id, sorted(ids.scalars())

    await tenant_with_users(2000)
    async with write_transaction(pg_state.engine) as conn:
        await conn.exec_driver_sql("ANALYZE users")
    tenant_id, ids = await tenant_with_users(3000)
    keys = ids[::3]
    table = pg_state.registry.by_plural("users").table
    async with write_transaction(pg_state.engine) as conn:
        sql = table_reader(PostgresBackend.row_form, conn.dialect, table).sql("id", True, probe)
        root = await explain(conn, sql, (tenant_id, keys))
    assert root["Actual Rows"] == len(keys)
    assert rows_visited(root, "users") <= 2 * len(ids)


async def test_postgres_probes_each_key_once_the_table_has_statistics(
    pg_state: AppState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without statistics every index that starts with the tenant looks alike to the planner,
    so the lookup joins; once ANALYZE has run, one probe of the key's own index per key.
    Either way the same rows come back, locked."""
    monkeypatch.setattr(planner, "RECHECK", 0.0)
    users = pg_state.registry.by_plural("users")
    name = f"scratch_{uuid.uuid4().hex[:8]}"
    scratch = sa.Table(
        name, sa.MetaData(), *(sa.Column(c.name, c.type) for c in users.table.columns)
    )
    tenant_id = str(uuid.uuid4())
    seqs = SeqAllocator(tenant_id)
    now = datetime.now(UTC)
    rows = [
        write_columns(
            {**defaults(users), "id": str(uuid.uuid4()), "alias": f"u{i}", "name": "n"},
            None,
            seqs.take(),
            tenant_id,
            now,
        )
        for i in range(2000)
    ]
    keys = sorted(row["id"] for row in rows)[::4]
    async with write_transaction(pg_state.engine) as conn:
        await conn.exec_driver_sql(f'CREATE TABLE "{name}" (LIKE users INCLUDING INDEXES)')
    try:
        forms = []
        for analyze in (False, True):
            async with write_transaction(pg_state.engine) as conn:
                if analyze:
                    await conn.exec_driver_sql(f'ANALYZE "{name}"')
                else:
                    await upsert_rows(conn, scratch, rows)
            async with write_transaction(pg_state.engine) as conn:
                probe = await planner_of(conn).read_form(conn, scratch)
                found = await select_rows(conn, scratch, tenant_id, "id", keys, lock=True)
                sql = table_reader(PostgresBackend.row_form, conn.dialect, scratch).sql(
                    "id", True, probe
                )
                root = await explain(conn, sql, (tenant_id, keys))
            assert sorted(r["id"] for r in found) == keys
            assert [r["name"] for r in found] == ["n"] * len(keys)
            probes = [n for n in _nodes(root) if n["Node Type"] == "Index Scan"]
            forms.append((probe, [(n["Actual Loops"], n["Actual Rows"]) for n in probes]))
            assert rows_visited(root, name) <= 2 * len(rows)
        assert forms[0][0] is False
        assert forms[1] == (True, [(len(keys), 1)])
    finally:
        async with write_transaction(pg_state.engine) as conn:
            await conn.exec_driver_sql(f'DROP TABLE "{name}"')


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def test_a_bulk_sync_into_a_table_without_statistics_analyzes_it(
    database_urls: dict[str, str],
) -> None:
    """A fresh installation's first import: autovacuum would analyze the table a minute
    later; the server does it right after the first bulk commit, so the next batches read by
    key probes. Small writes leave it to autovacuum."""
    name = f"syncgraph_stats_{os.getpid()}"
    await _recreate_pg_database(name)
    url = database_urls["postgres"].rsplit("/", 1)[0] + "/" + name
    await asyncio.to_thread(upgrade, url)
    state = make_state(Settings(database_url=url, dev=False, pool_size=2))
    table = state.registry.by_plural("users").table

    async def has_statistics() -> bool:
        async with state.engine.connect() as conn:
            found = await conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stats WHERE tablename = 'users' AND attname = 'tenant_id'"
            )
            return bool(found.scalar())

    try:
        async with write_transaction(state.engine) as conn:
            tenant_id = await create_tenant(conn, "fresh")
        few = [{"alias": f"f{i}", "name": "n"} for i in range(10)]
        await state.service.sync(tenant_id, {"users": Batch(data=few)})
        await settle(state.engine)
        assert not await has_statistics()
        async with state.engine.connect() as conn:
            assert not await planner_of(conn).read_form(conn, table)

        many = [{"alias": f"m{i}", "name": "n"} for i in range(planner.ANALYZE_AFTER)]
        await state.service.sync(tenant_id, {"users": Batch(data=many)})
        await settle(state.engine)
        assert await has_statistics()
        async with state.engine.connect() as conn:
            assert await planner_of(conn).read_form(conn, table)  # at once, not after RECHECK
    finally:
        await state.close()
        await _drop_pg_database(name)


async def test_an_analyze_that_fails_is_logged_and_changes_nothing(
    pg_state: AppState, caplog: pytest.LogCaptureFixture
) -> None:
    """ANALYZE needs the table's owner; without that privilege (here: no such table) the
    server logs a warning and keeps reading with the join form."""
    ghost = sa.Table(f"ghost_{uuid.uuid4().hex[:8]}", sa.MetaData(), sa.Column("tenant_id"))
    task = analyze_soon(pg_state.engine, ghost, planner.ANALYZE_AFTER)
    assert task is not None
    with caplog.at_level("WARNING", logger="syncgraph.stats"):
        await task
    assert f"ANALYZE {ghost.name} failed" in caplog.text
    async with pg_state.engine.connect() as conn:
        assert not await planner_of(conn).read_form(conn, ghost)
    assert analyze_soon(pg_state.engine, ghost, planner.ANALYZE_AFTER - 1) is None
    assert analyze_soon(pg_state.engine, ghost, planner.ANALYZE_AFTER) is None  # once


@pytest.fixture
async def codec_state(settings: Settings) -> AsyncIterator[AppState]:
    """A state whose engine writes rows with the accelerator ``rowcodec``, whatever
    ``SYNCGRAPH_ACCEL`` says (the tests that take it are about it)."""
    with accel.only(*accel.active(), "rowcodec"):
        state = make_state(settings)
    yield state
    await state.close()


async def test_an_update_leaves_unchanged_indexed_columns_out_of_its_write(
    codec_state: AppState,
) -> None:
    """SQLite rewrites the index entries of every column an update sets, so the row codec
    writes rows that keep their alias and email without them; rows that change either get
    the full write. Every value ends up as sent, on both backends."""
    state = codec_state
    tenant_id = await tenant_id_in(state)
    first = [{"alias": f"u{i}", "name": f"n{i}", "email": f"u{i}@x.org"} for i in range(6)]
    await state.service.sync(tenant_id, {"users": Batch(data=first)})
    second = [{**item, "name": f"renamed{i}"} for i, item in enumerate(first)]
    second[1] = {"alias": "u1", "name": "renamed1", "email": "new@x.org"}
    ids = {row["alias"]: row["id"] for row in await users(state, tenant_id)}
    second[2] = {"id": ids["u2"], "alias": "u2-new", "name": "renamed2", "email": "u2@x.org"}
    with statements(state) as seen:
        result = await state.service.sync(tenant_id, {"users": Batch(data=second)})
    assert result.total("updated") == 6
    rows = await users(state, tenant_id)
    assert [(r["alias"], r["name"], r["email"]) for r in rows] == [
        ("u0", "renamed0", "u0@x.org"),
        ("u1", "renamed1", "new@x.org"),
        ("u2-new", "renamed2", "u2@x.org"),
        ("u3", "renamed3", "u3@x.org"),
        ("u4", "renamed4", "u4@x.org"),
        ("u5", "renamed5", "u5@x.org"),
    ]
    writes = [s for s in seen if s.startswith("INSERT INTO users")]
    if state.engine.dialect.name == "sqlite":
        # rows that keep both columns / change the email / change the alias
        sets = sorted(w.split(" DO UPDATE SET ")[1] for w in writes)
        assert len(writes) == 3
        assert sum("alias = excluded.alias" in s for s in sets) == 1
        assert sum("email = excluded.email" in s for s in sets) == 1
        assert all("name = excluded.name" in s for s in sets)
    else:
        assert len(writes) == 1  # PostgreSQL rewrites every index entry anyway (no HOT update)
