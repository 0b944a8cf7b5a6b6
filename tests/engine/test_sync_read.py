"""``sync`` reads a batch's stored rows while it normalizes the items: the keys come from
the raw items (``raw_keys``). Whatever those keys miss is read after normalization, so a
record is never taken for a new one (and overwritten) because the early read missed it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import app.engine.sync as sync_module
from app.db import read_transaction, write_transaction
from app.domains import load_registry
from app.engine.items import normalize_items, raw_keys
from app.engine.sync import Batch
from app.engine.tenants import create_tenant
from app.state import AppState
from tests.conftest import statements


@pytest.fixture
async def tenant_id(state: AppState) -> str:
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
    """Canonical ids, upper-case and brace-less forms alike; aliases as given; items that
    fail normalization still count (their keys are harmless extra reads)."""
    upper = str(uuid.uuid4())
    raw = [
        {"id": upper.upper(), "alias": "A"},
        {"id": "{" + str(uuid.uuid4()) + "}", "name": "n"},
        {"alias": "only-alias"},
        {"id": "not-a-uuid", "alias": "bad"},
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
    assert "not-a-uuid" not in ids
    assert "\ud800" not in aliases
    assert "bad" in aliases
    assert len(errors) == 4


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
