"""Browsing reads (engine/records.py through SyncService) and the engine's action-log
subscription, on both backends."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from app.db import write_transaction
from app.engine.devices.actions import ActionInput, signature
from app.engine.live.action_tail import subscribe_actions
from app.engine.tenants import create_tenant
from app.engine.write.sync import Batch
from app.errors import BadRequest
from app.state import AppState
from tests.conftest import statements


def queries(executed: list[str]) -> list[str]:
    """The statements that read, without transaction control (SQLAlchemy's plain aiosqlite
    adapter sends a BEGIN of its own; the one-trip driver sends it with the first query)."""
    return [s for s in executed if s.split()[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK")]


async def new_tenant(state: AppState) -> str:
    async with write_transaction(state.engine) as conn:
        return await create_tenant(conn, f"records-{uuid.uuid4().hex[:6]}")


async def add_users(state: AppState, tenant_id: str, *names: str) -> list[str]:
    data = [{"name": n, "alias": n.lower()} for n in names]
    result = await state.service.sync(tenant_id, {"users": Batch(data=data)})
    return [str(i) for i in result.entities["users"].ids]


async def keep_only(state: AppState, tenant_id: str, user_id: str) -> None:
    """Tombstone every other user of the tenant (a forced cleanSync)."""
    batch = Batch(data=[{"id": user_id, "name": "keep"}], clean_sync=True)
    await state.service.sync(tenant_id, {"users": batch}, force=True)


async def test_pages_follow_id_order_with_the_cursor_and_count_on_demand(
    state: AppState,
) -> None:
    tenant_id = await new_tenant(state)
    ids = await add_users(state, tenant_id, "A", "B", "C", "D", "E")
    users = state.registry.entities["User"]
    seen: list[str] = []
    after = None
    with statements(state) as executed:
        while True:
            page = await state.service.records(
                tenant_id, users, first=2, after=after, alias=None, include_deleted=False
            )
            seen += [row.id for row in page.nodes]
            after = page.end_cursor
            if not page.has_next_page:
                break
    assert seen == sorted(ids)
    assert len(queries(executed)) == 3  # one statement per page, no count unless asked
    count = await state.service.count_records(tenant_id, users, alias=None, include_deleted=False)
    assert count == 5


async def test_deleted_records_are_listed_only_when_asked_and_never_got(state: AppState) -> None:
    tenant_id = await new_tenant(state)
    keep, gone = await add_users(state, tenant_id, "Keep", "Gone")
    await keep_only(state, tenant_id, keep)
    users = state.registry.entities["User"]

    async def listed(include_deleted: bool) -> list[str]:
        page = await state.service.records(
            tenant_id, users, first=10, after=None, alias=None, include_deleted=include_deleted
        )
        return [row.id for row in page.nodes]

    assert await listed(False) == [keep]
    assert sorted(await listed(True)) == sorted([keep, gone])
    assert await state.service.record(tenant_id, users, id=gone, alias=None) is None
    found = await state.service.record(tenant_id, users, id=None, alias="keep")
    assert found is not None
    assert found.id == keep


@pytest.mark.parametrize(
    ("first", "after", "message"),
    [(-1, None, "first must be"), (10, "a", "is not one this server issued")],
    ids=["negative-first", "foreign-cursor"],
)
async def test_bad_paging_arguments_are_bad_requests(
    state: AppState, first: int, after: str | None, message: str
) -> None:
    users = state.registry.entities["User"]
    with pytest.raises(BadRequest, match=message):
        await state.service.records(
            str(uuid.uuid4()), users, first=first, after=after, alias=None, include_deleted=False
        )


async def test_related_records_come_in_key_order_in_one_statement(state: AppState) -> None:
    tenant_id, other = await new_tenant(state), await new_tenant(state)
    a, b, gone = await add_users(state, tenant_id, "A", "B", "Gone")
    await keep_only(state, tenant_id, b)
    (foreign,) = await add_users(state, other, "Foreign")
    users = state.registry.entities["User"]
    with statements(state) as executed:
        rows = await state.service.related(tenant_id, users, [b, foreign, a, gone, b])
    assert len(queries(executed)) == 1
    assert [r.id if r is not None else None for r in rows] == [b, None, None, None, b]


async def test_only_restricts_every_read_and_spares_an_empty_batch(state: AppState) -> None:
    tenant_id = await new_tenant(state)
    a, gone = await add_users(state, tenant_id, "A", "Gone")
    await keep_only(state, tenant_id, a)  # gone is a tombstone
    (b,) = await add_users(state, tenant_id, "B")
    users = state.registry.entities["User"]
    only = frozenset({a, gone})
    page = await state.service.records(
        tenant_id, users, first=10, after=None, alias=None, include_deleted=True, only=only
    )
    assert [row.id for row in page.nodes] == [a]  # b is outside, gone is no live record
    assert (
        await state.service.count_records(
            tenant_id, users, alias=None, include_deleted=True, only=only
        )
        == 1
    )
    assert await state.service.record(tenant_id, users, id=None, alias="b", only=only) is None
    with statements(state) as executed:
        rows = await state.service.related(tenant_id, users, [b, b], only=only)
    assert rows == [None, None]
    assert queries(executed) == []


async def test_subscribe_actions_answers_at_once_then_relays_other_devices(
    state: AppState,
) -> None:
    tenant_id = await new_tenant(state)
    mine = await state.service.register_device(tenant_id, "mine")
    theirs = await state.service.register_device(tenant_id, "theirs")
    stream = subscribe_actions(
        state.action_tails,
        state.broker,
        tenant_id,
        after=None,
        exclude_device=mine.device_id,
        recheck_seconds=30,
    )
    try:
        first = await asyncio.wait_for(anext(stream), 5)
        assert first.items == []
        assert not first.has_more
        for device, n in ((mine, 1), (theirs, 2)):
            encoded = json.dumps({"type": "note", "n": n})
            integrity = signature(device.secret, 1, device.device_id, encoded)
            await state.service.push_actions(
                tenant_id, device.device_id, [ActionInput(1, encoded, integrity)]
            )
        page = await asyncio.wait_for(anext(stream), 5)
        assert [r.payload["n"] for r in page.items] == [2]  # its own action is not relayed
        assert page.cursor is not None
        assert page.cursor >= 2
    finally:
        await stream.aclose()
