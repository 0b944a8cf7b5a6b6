"""The action log tail answers exactly what a read of the log would, whatever the position,
page size, excluded device, and however far it has been trimmed."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from app.db import write_transaction
from app.engine.devices.actions import ACTIONS, ActionPage
from app.engine.live import action_tail
from app.engine.live.action_tail import ActionTails
from app.engine.tenants import create_tenant
from app.engine.write.seq import TENANTS
from app.state import AppState


async def append(state: AppState, tenant_id: str, devices: list[str], count: int) -> int:
    """``count`` actions from random devices, committed as the log's next positions."""
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
