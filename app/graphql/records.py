# No "from __future__ import annotations": resolver annotations name generated types.
"""The list and get queries of each entity (``users``, ``user``): reads in the engine
(``SyncService.records``/``record``), adapted to connections here.

Through a view (``principal.view``) both show only the records the view shows: a list
evaluates the view once for its page and its ``totalCount``; a get of an invisible record is
null, as for a deleted one; ``includeDeleted`` adds nothing (a view shows live records
only, so no tombstone is listed through it)."""

from typing import Any

import strawberry

from app.engine.registry import EntitySpec
from app.graphql.catalog import EntityTypes
from app.graphql.context import require, visible_only


def list_field(t: EntityTypes) -> Any:
    connection, spec = t.connection, t.spec

    async def list_records(
        info: strawberry.Info,
        first: int | None = 50,
        after: str | None = None,
        alias: str | None = None,
        include_deleted: bool | None = False,
    ) -> connection:  # type: ignore[valid-type]
        principal = require(info, "sync:read")
        service = info.context.state.service
        only = await visible_only(info.context, principal, spec)
        page = await service.records(
            principal.tenant_id,
            spec,
            first=50 if first is None else first,
            after=after,
            alias=alias,
            include_deleted=bool(include_deleted),
            only=only,
        )
        result = connection(
            nodes=page.nodes, end_cursor=page.end_cursor, has_next_page=page.has_next_page
        )

        async def count() -> int:  # read only when totalCount is selected
            return int(
                await service.count_records(
                    principal.tenant_id,
                    spec,
                    alias=alias,
                    include_deleted=bool(include_deleted),
                    only=only,
                )
            )

        result.count = count
        return result

    return strawberry.field(resolver=list_records, description=f"Browse {spec.plural}.")


def get_field(t: EntityTypes) -> Any:
    spec = t.spec

    async def get_record(
        info: strawberry.Info,
        id: strawberry.ID | None = None,
        alias: str | None = None,
    ) -> t.object | None:  # type: ignore[name-defined]
        principal = require(info, "sync:read")
        only = await visible_only(info.context, principal, spec)
        return await info.context.state.service.record(
            principal.tenant_id, spec, id=id, alias=alias, only=only
        )

    return strawberry.field(resolver=get_record, description=f"One {spec.name} by id or alias.")


def singular_field(spec: EntitySpec) -> str:
    return spec.name[0].lower() + spec.name[1:]
