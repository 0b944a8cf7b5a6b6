# No "from __future__ import annotations": resolver annotations name generated types.
"""``mutation resync``: re-send records to every puller after out-of-band writes."""

from typing import Any

import strawberry

from app.graphql.catalog import Catalog
from app.graphql.context import require_key
from app.graphql.reports import ResyncResultType


def resync_field(catalog: Catalog) -> Any:
    entity_enum = catalog.entity_enum

    async def resync(
        info: strawberry.Info,
        object_type: entity_enum,  # type: ignore[valid-type]
        object_ids: list[strawberry.ID] | None = None,
    ) -> ResyncResultType:
        principal = require_key(info, "sync:manage")
        result = await info.context.state.service.resync(
            principal.tenant_id,
            catalog.spec_of(object_type),
            None if object_ids is None else list(object_ids),
        )
        return ResyncResultType(
            checkpoint=str(result.checkpoint),
            resynced=result.resynced,
            not_found=[strawberry.ID(i) for i in result.not_found],
        )

    return strawberry.mutation(
        resolver=resync,
        description="Re-send records to every puller and subscriber (version unchanged), "
        "after out-of-band writes; without objectIds, the whole entity.",
    )
