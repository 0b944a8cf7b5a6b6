"""Statements built once (``app.db.statement``): each database keeps the most recent
``STATEMENTS``, so that keys coming from what clients select cannot grow it without bound,
and a kept statement runs with each request's own parameters."""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa

from app.db import in_parameter, statement
from app.db.backend import STATEMENTS
from app.engine.models import Tenant as TenantRow
from app.state import AppState
from tests.conftest import Tenant


async def test_a_statement_is_built_once_and_the_least_recent_go_first(state: AppState) -> None:
    built: list[Any] = []

    def build(n: int) -> Any:
        made = sa.select(sa.literal(n))
        built.append(n)
        return made

    async with state.engine.connect() as conn:
        first = statement(conn, ("t", 0), lambda: build(0))
        assert statement(conn, ("t", 0), lambda: build(0)) is first
        for n in range(1, STATEMENTS + 10):
            statement(conn, ("t", n), functools.partial(build, n))
            statement(conn, ("t", 0), lambda: build(0))  # kept recent: never evicted
        assert built.count(0) == 1
        statement(conn, ("t", 1), lambda: build(1))  # one of the oldest: built again
        assert built.count(1) == 2


async def test_a_kept_statement_answers_each_tenant_with_its_own_rows(
    tenant: Tenant, other_tenant: Tenant
) -> None:
    t = TenantRow.__table__  # type: ignore[attr-defined]

    def build(conn: Any) -> Any:
        return sa.select(t.c.id).where(in_parameter(conn, t.c.id, "ids"))

    async with tenant.state.engine.connect() as conn:
        query = statement(conn, "tenants-by-id", lambda: build(conn))
        for side in (tenant, other_tenant, tenant):
            rows = (await conn.execute(query, {"ids": [side.id]})).scalars().all()
            assert rows == [side.id]
        both = (await conn.execute(query, {"ids": [tenant.id, other_tenant.id]})).scalars()
        assert sorted(both) == sorted([tenant.id, other_tenant.id])
