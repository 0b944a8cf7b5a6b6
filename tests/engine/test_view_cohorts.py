"""View-bound subscribers (``app.engine.live.cohorts``): one that stops taking its pages is
switched to pulls of its own and resumes from its last emission, nothing lost, nothing twice;
the hub follows the current binding of each subscriber's key or device."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from app.db import write_transaction
from app.engine.devices.devices import DEVICES
from app.engine.live import cohorts
from app.engine.live.cohorts import Credential, current_bindings, subscribe_view_changes
from app.engine.read.changes import ChangePage
from app.engine.tenants import create_key
from app.engine.views.spec import check_binding
from app.state import AppState
from tests.api.test_views import PLURALS, ids_by_alias, items, school, sync
from tests.conftest import Tenant

BOUND = 5.0


def changed(page: ChangePage) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for plural, changes in page.entities.items():
        for kind in ("inserted", "updated", "deleted"):
            found: list[Any] = getattr(changes, kind)
            if found:
                out.setdefault(plural, {})[kind] = [r if kind == "deleted" else r.id for r in found]
    return out


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def lagging(state: AppState) -> float:
    return state.metrics.registry.get_sample_value("syncgraph_lagging_subscribers_total") or 0


async def test_a_lagging_subscriber_catches_up_from_its_last_emission(
    tenant: Tenant, state: AppState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cohorts, "QUEUE_SIZE", 1)
    await school(tenant)
    ids = await ids_by_alias(tenant)
    _, key_id = await tenant.view_key("guardian", user="g1")
    stream = subscribe_view_changes(
        state.hubs,
        tenant.id,
        binding=check_binding(state.registry, "guardian", {"user": "g1"}),
        credential=Credential(key_id, None),
        entities=[s for s in state.registry.ordered() if s.plural in PLURALS],
        since=None,
    )
    try:
        assert (await anext(stream)).size == 4  # g1, m1, m2, c1
        live = asyncio.ensure_future(anext(stream))  # it joins its cohort and waits
        await sync(tenant, {"members": items({"alias": "m1", "name": "A1", "users": ["g1"]})})
        assert changed(await asyncio.wait_for(live, BOUND)) == {"members": {"updated": [ids["m1"]]}}
        (subscriber,) = state.hubs.view_hubs[tenant.id].subscribers
        before = lagging(state)
        # it takes nothing more: one page waits, the next overflows its queue
        await sync(tenant, {"members": items({"alias": "m2", "name": "B2", "users": ["g1"]})})
        await until(lambda: subscriber.queue.qsize() == 1, "the page should be waiting")
        await sync(tenant, {"members": items({"alias": "m1", "name": "A1", "users": []})})
        await until(lambda: lagging(state) > before, "the subscriber should have lagged")
        page = await asyncio.wait_for(anext(stream), BOUND)
        assert changed(page) == {
            "members": {"updated": [ids["m2"]], "deleted": [ids["m1"]]},
            "classrooms": {"deleted": [ids["c1"]]},
        }
        live = asyncio.ensure_future(anext(stream))  # and it is live again
        await sync(tenant, {"members": items({"alias": "m2", "name": "B3", "users": ["g1"]})})
        assert changed(await asyncio.wait_for(live, BOUND)) == {"members": {"updated": [ids["m2"]]}}
    finally:
        await stream.aclose()


async def test_the_hub_reads_the_bindings_of_keys_and_devices(
    tenant: Tenant, state: AppState
) -> None:
    """What a rebinding is noticed by: a key's and a device's current binding, and none for
    a credential that has no row."""
    binding = check_binding(state.registry, "guardian", {"user": "g1"})
    _, key_id = await tenant.view_key("guardian", user="g1")
    bound = (await state.service.register_device(tenant.id, "bound")).device_id
    unbound = (await state.service.register_device(tenant.id, "unbound")).device_id
    async with write_transaction(state.engine) as conn:
        await conn.execute(
            sa.update(DEVICES).where(DEVICES.c.id == bound).values(view=binding.as_json())
        )
        plain = (await create_key(conn, tenant_id=tenant.id, scopes=("sync:read",))).id
    wanted = {
        Credential(key_id, None),
        Credential(plain, None),
        Credential(None, bound),
        Credential(None, unbound),
        Credential("no-such-key", None),
    }
    async with state.engine.connect() as conn:
        found = await current_bindings(conn, wanted)
    assert found == {
        Credential(key_id, None): binding,
        Credential(plain, None): None,
        Credential(None, bound): binding,
        Credential(None, unbound): None,
    }
