"""Per-request DataLoaders: related records in one ``IN`` query per batch, never per row
(the query is the engine's ``SyncService.related``).

Through a view (``principal.view``) a loader resolves only the records the view shows: each
batch evaluates the view for its entity once (a handful of statements per batch, however
many records it serves), so a to-one related object outside the view is null and a to-many
list leaves it out, like a deleted one; the raw keys (``userIds``) stay as stored. Such a
loader keeps no cache: a websocket connection shares one context between its operations,
and a record that moved out since must not come back from an earlier one."""

from __future__ import annotations

from typing import Any

import strawberry
from strawberry.dataloader import DataLoader

from app.graphql.context import visible_only


def loader_for(info: strawberry.Info, entity: str) -> DataLoader[str, Any]:
    ctx = info.context
    loader = ctx.loaders.get(entity)
    if loader is None:
        spec = ctx.state.registry.entities[entity]
        principal = ctx.auth.principal
        service = ctx.state.service

        async def load(keys: list[str]) -> list[Any]:
            only = await visible_only(ctx, principal, spec)
            return await service.related(principal.tenant_id, spec, keys, only=only)

        cache = principal.view is None
        loader = ctx.loaders[entity] = DataLoader(load_fn=load, cache=cache)
    return loader
