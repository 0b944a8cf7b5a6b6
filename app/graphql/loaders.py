"""Per-request DataLoaders: related records in one ``IN`` query per batch, never per row
(the query is the engine's ``SyncService.related``)."""

from __future__ import annotations

from typing import Any

import strawberry
from strawberry.dataloader import DataLoader


def loader_for(info: strawberry.Info, entity: str) -> DataLoader[str, Any]:
    ctx = info.context
    loader = ctx.loaders.get(entity)
    if loader is None:
        spec = ctx.state.registry.entities[entity]
        tenant_id = ctx.auth.principal.tenant_id
        service = ctx.state.service

        async def load(keys: list[str]) -> list[Any]:
            return await service.related(tenant_id, spec, keys)

        loader = ctx.loaders[entity] = DataLoader(load_fn=load)
    return loader
