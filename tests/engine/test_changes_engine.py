"""The delta feed at engine level: what ``read_changes`` reads, not only what it returns."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from app.db import read_transaction, write_transaction
from app.engine.read.changes import FEED_COLUMNS, parse_checkpoint, read_changes
from app.engine.registry import EntitySpec
from app.engine.tenants import create_tenant
from app.engine.write.sync import Batch
from app.errors import BadRequest
from app.state import AppState
from tests.conftest import statements


@pytest.fixture
async def tenant_id(state: AppState) -> str:
    async with write_transaction(state.engine) as conn:
        return await create_tenant(conn, f"engine-{uuid.uuid4().hex[:6]}")


async def write(state: AppState, tenant_id: str, **batches: list[dict[str, Any]]) -> int:
    result = await state.service.sync(
        tenant_id, {plural: Batch(data=items) for plural, items in batches.items()}
    )
    assert result.total("failed") == 0
    return result.checkpoint


def spec(state: AppState, plural: str) -> EntitySpec:
    return state.registry.by_plural(plural)


def tables_read(state: AppState, seen: list[str]) -> set[str]:
    names = [s.table.name for s in state.registry.ordered()]
    return {
        name
        for name in names
        for stmt in seen
        if re.search(rf'\bFROM "?{name}"?\b', stmt, flags=re.IGNORECASE)
    }


async def test_unselected_entities_cost_no_query(state: AppState, tenant_id: str) -> None:
    await write(state, tenant_id, users=[{"name": "u"}], persons=[{"name": "p"}])
    await write(state, tenant_id, projects=[{"name": "pr"}], articles=[{"number": "A1"}])

    async with read_transaction(state.engine) as conn:
        with statements(state) as one:
            page = await read_changes(
                conn, tenant_id, entities=[spec(state, "users")], since=None, limit=10
            )
        with statements(state) as two:
            await read_changes(
                conn,
                tenant_id,
                entities=[spec(state, "users"), spec(state, "persons")],
                since=None,
                limit=10,
            )

    assert list(page.entities) == ["users"]
    assert tables_read(state, one) == {"users"}
    assert tables_read(state, two) == {"users", "persons"}
    # one entity: the counter, then its rows in one read; more entities: the counter, then
    # a seq probe and a row read per selected entity (never one for an unselected entity)
    assert len(one) == 2
    assert len(two) == 1 + 2 * 2


async def test_no_entities_selected_reads_only_the_counter(state: AppState, tenant_id: str) -> None:
    top = await write(state, tenant_id, users=[{"name": "u"}])

    async with read_transaction(state.engine) as conn:
        with statements(state) as seen:
            page = await read_changes(conn, tenant_id, entities=[], since=0, limit=10)

    assert tables_read(state, seen) == set()
    assert len(seen) == 1
    assert page.checkpoint == top
    assert page.has_more is False


async def test_only_selected_columns_are_read(state: AppState, tenant_id: str) -> None:
    await write(
        state,
        tenant_id,
        users=[{"name": "ana", "email": "ana@example.org", "roleSet": {"admin": True}}],
    )
    users = spec(state, "users")

    async with read_transaction(state.engine) as conn:
        narrow = await read_changes(
            conn, tenant_id, entities=[users], since=None, limit=10, columns={"users": {"name"}}
        )
        bare = await read_changes(
            conn, tenant_id, entities=[users], since=None, limit=10, columns={"users": set()}
        )
        full = await read_changes(conn, tenant_id, entities=[users], since=None, limit=10)

    [row] = narrow.entities["users"].inserted
    assert row.name == "ana"
    assert set(row._fields) == {*FEED_COLUMNS, "created_at", "name"}
    [row] = bare.entities["users"].inserted
    assert set(row._fields) == {*FEED_COLUMNS, "created_at"}
    [row] = full.entities["users"].inserted
    assert row.email == "ana@example.org"
    assert set(row._fields) == {c.name for c in users.table.c}


async def test_column_selection_is_what_the_sql_asks_for(state: AppState, tenant_id: str) -> None:
    await write(state, tenant_id, users=[{"name": "ana", "email": "ana@example.org"}])

    async with read_transaction(state.engine) as conn:
        with statements(state) as seen:
            await read_changes(
                conn,
                tenant_id,
                entities=[spec(state, "users")],
                since=None,
                limit=10,
                columns={"users": {"name"}},
            )

    row_reads = [s for s in seen if re.search(r"\bFROM users\b", s) and "users.name" in s]
    assert len(row_reads) == 1
    assert "users.email" not in row_reads[0]
    assert "users.role_set" not in row_reads[0]


async def test_page_boundary_splits_the_seq_order_across_entities(
    state: AppState, tenant_id: str
) -> None:
    await write(state, tenant_id, persons=[{"name": "p1"}])
    await write(state, tenant_id, users=[{"name": "u1"}])
    await write(state, tenant_id, persons=[{"name": "p2"}])
    entities = [spec(state, "users"), spec(state, "persons")]

    async with read_transaction(state.engine) as conn:
        first = await read_changes(conn, tenant_id, entities=entities, since=None, limit=2)
        rest = await read_changes(
            conn, tenant_id, entities=entities, since=first.checkpoint, limit=2
        )

    assert [r.name for r in first.entities["persons"].inserted] == ["p1"]
    assert [r.name for r in first.entities["users"].inserted] == ["u1"]
    assert (first.checkpoint, first.has_more) == (2, True)
    assert [r.name for r in rest.entities["persons"].inserted] == ["p2"]
    assert rest.entities["users"].inserted == []
    assert (rest.checkpoint, rest.has_more) == (3, False)


async def test_other_tenant_is_invisible(state: AppState, tenant_id: str) -> None:
    async with write_transaction(state.engine) as conn:
        other = await create_tenant(conn, "other")
    await write(state, other, users=[{"name": "theirs"}])

    async with read_transaction(state.engine) as conn:
        page = await read_changes(
            conn, tenant_id, entities=list(state.registry.ordered()), since=None, limit=10
        )

    assert page.size == 0
    assert page.checkpoint == 0


async def test_since_and_from_date_together_are_refused(state: AppState, tenant_id: str) -> None:
    async with read_transaction(state.engine) as conn:
        with pytest.raises(BadRequest):
            await read_changes(
                conn,
                tenant_id,
                entities=[spec(state, "users")],
                since=0,
                from_date=datetime.now(UTC),
                limit=1,
            )


@pytest.mark.parametrize(
    ("text", "seq"), [(None, None), ("0", 0), ("42", 42)], ids=["null", "zero", "number"]
)
def test_parse_checkpoint(text: str | None, seq: int | None) -> None:
    assert parse_checkpoint(text) == seq


@pytest.mark.parametrize("text", ["abc", "-1", "", "1.5", "0x10", " 7", "+7", "1_000", "\u0663"])
def test_parse_checkpoint_refuses_what_the_server_never_issued(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_checkpoint(text)
