# No "from __future__ import annotations": resolver annotations name generated types.
"""``mutation pushChanges``: a client's local changes through the engine, answered with a
PushReport (conflicts carry the server's record)."""

from typing import Any

import strawberry

from app.engine.write.push import PushResult
from app.graphql.bulkinput import bulk_argument
from app.graphql.catalog import Catalog
from app.graphql.context import require
from app.graphql.inputs import push_request, to_wire


def push_field(catalog: Catalog) -> Any:
    push_input, push_report = catalog.push_input, catalog.push_report

    async def push_changes(
        info: strawberry.Info,
        input: push_input,  # type: ignore[valid-type]
    ) -> push_report:  # type: ignore[valid-type]
        principal = require(info, "sync:write")
        raw = bulk_argument(info, "input")
        wire = raw if raw is not None else to_wire(input)
        request = push_request(wire, catalog.plurals)
        result = await info.context.state.service.push(
            principal.tenant_id, request, binding=principal.view
        )
        return report(catalog, result)

    return strawberry.mutation(
        resolver=push_changes,
        description="Apply a client's local changes; conflicts come back with the server's record.",
    )


def report(catalog: Catalog, result: PushResult) -> Any:
    return catalog.push_report(
        checkpoint=str(result.checkpoint),
        applied=result.applied,
        caught_up=result.caught_up,
        conflicts=[
            catalog.conflict(
                entity=catalog.registry.entities[c.entity].enum_name,
                id=c.id,
                reason=c.reason,
                server_version=c.server_version,
                server_record=c.server_record,
            )
            for c in result.conflicts
        ],
        errors=[catalog.item_error_of(e) for e in result.errors],
    )
