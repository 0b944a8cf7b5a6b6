"""The action log tail answers exactly what a read of the log would, whatever the position,
page size, excluded device, and however far it has been trimmed."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from app.db import read_transaction, write_transaction
from app.engine.devices.actions import ACTIONS, ActionPage, read_actions
from app.engine.live import action_tail
from app.engine.live.action_tail import ActionTails
from app.engine.tenants import create_tenant
from app.engine.write.seq import TENANTS
from app.state import AppState


async def append(
    state: AppState,
    tenant_id: str,
    devices: list[str],
    count: int,
    bindings: tuple[str | None, ...] = (None,),
) -> int:
    """``count`` actions from random devices (stored with random ``bindings``), committed
    as the log's next positions."""
    rng = random.Random(count)
    async with write_transaction(state.engine) as conn:
        top = (
            await conn.execute(sa.select(TENANTS.c.action_seq).where(TENANTS.c.id == tenant_id))
        ).scalar_one()
        rows = [
            {
                "id": str(uuid.uuid4()),
                "tenant_id": tenant_id,
                "device_id": rng.choice(devices),
                "sequence_number": top + n,
                "type": "note",
                "payload": {"n": top + n},
                "received_at": datetime.now(UTC),
                "seq": top + n + 1,
                "binding": rng.choice(bindings),
            }
            for n in range(count)
        ]
        await conn.execute(sa.insert(ACTIONS), rows)
        await conn.execute(
            sa.update(TENANTS).where(TENANTS.c.id == tenant_id).values(action_seq=top + count)
        )
    return int(top + count)


def shape(page: ActionPage) -> tuple[list[int], int | None, bool]:
    return [int(r.seq) for r in page.items], page.cursor, page.has_more


@pytest.mark.parametrize("capacity", [1000, 7])
async def test_the_tail_answers_as_the_log_does(
    state: AppState, monkeypatch: pytest.MonkeyPatch, capacity: int
) -> None:
    monkeypatch.setattr(action_tail, "CAPACITY", capacity)
    async with write_transaction(state.engine) as conn:
        tenant_id = await create_tenant(conn, f"tail-{uuid.uuid4().hex[:6]}")
    devices = [(await state.service.register_device(tenant_id, f"d{n}")).device_id for n in "abc"]
    tails = ActionTails(state.engine, state.metrics)
    leave = tails.join(tenant_id)
    try:
        top = await append(state, tenant_id, devices, 5)
        await tails.page(tenant_id, after=None, limit=10, exclude_device=None, known_top=None)
        compared = 0
        for batch in (1, 3, 12):
            top = await append(state, tenant_id, devices, batch)
            for after in range(top + 1):
                for limit in (1, 2, 5, 100):
                    for exclude in (None, *devices):
                        mine = await tails.page(
                            tenant_id,
                            after=after,
                            limit=limit,
                            exclude_device=exclude,
                            known_top=top,
                        )
                        theirs = await state.service.actions(
                            tenant_id, after=after, limit=limit, exclude_device=exclude
                        )
                        assert shape(mine) == shape(theirs), (after, limit, exclude)
                        compared += 1
        assert compared > 500
    finally:
        leave()


async def test_the_tail_filters_by_binding_as_the_log_does(state: AppState) -> None:
    async with write_transaction(state.engine) as conn:
        tenant_id = await create_tenant(conn, f"tail-{uuid.uuid4().hex[:6]}")
    devices = [(await state.service.register_device(tenant_id, f"d{n}")).device_id for n in "ab"]
    bindings = (None, "b" * 64, "c" * 64)
    tails = ActionTails(state.engine, state.metrics)
    leave = tails.join(tenant_id)
    try:
        await tails.page(tenant_id, after=None, limit=10, exclude_device=None, known_top=None)
        top = await append(state, tenant_id, devices, 20, bindings)
        seen: set[str | None] = set()
        for after in range(top + 1):
            for limit in (1, 3, 100):
                for exclude, binding in itertools.product((None, devices[0]), bindings):
                    mine = await tails.page(
                        tenant_id,
                        after=after,
                        limit=limit,
                        exclude_device=exclude,
                        known_top=top,
                        binding=binding,
                    )
                    async with read_transaction(state.engine) as conn:
                        theirs = await read_actions(
                            conn,
                            tenant_id,
                            after=after,
                            limit=limit,
                            exclude_device=exclude,
                            binding=binding,
                        )
                    assert shape(mine) == shape(theirs), (after, limit, exclude, binding)
                    seen.update(r.binding for r in mine.items)
                    assert binding is None or {r.binding for r in mine.items} <= {binding}
        assert seen == set(bindings)
    finally:
        leave()
