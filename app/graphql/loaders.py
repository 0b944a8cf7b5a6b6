"""Per-request DataLoaders: related records in one ``IN`` query per batch, never per row."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import strawberry
from strawberry.dataloader import DataLoader

from app.engine.references import in_values


def loader_for(info: strawberry.Info, entity: str) -> DataLoader[str, Any]:
    ctx = info.context
    loader = ctx.loaders.get(entity)
    if loader is None:
        spec = ctx.state.registry.entities[entity]
        tenant_id = ctx.auth.principal.tenant_id
        engine = ctx.state.engine

        async def load(keys: list[str]) -> list[Any]:
            t = spec.table
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(
                        sa.select(t).where(
                            t.c.tenant_id == tenant_id,
                            t.c.deleted_at.is_(None),
                            in_values(conn, t.c.id, list(keys)),
                        )
                    )
                ).all()
            found = {row.id: row for row in rows}
            return [found.get(k) for k in keys]

        loader = ctx.loaders[entity] = DataLoader(load_fn=load)
    return loader
