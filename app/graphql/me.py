"""``query me``: who the credentials are."""

from __future__ import annotations

import strawberry

from app.graphql.bindings import ViewBinding, view_binding
from app.graphql.context import require


@strawberry.type(name="Principal")
class PrincipalType:
    """The GraphQL face of ``app.auth.Principal`` (which also holds the key id)."""

    tenant_id: strawberry.ID
    tenant_name: str
    scopes: list[str]
    device_id: strawberry.ID | None = None
    view: ViewBinding | None = None


def me(info: strawberry.Info) -> PrincipalType:
    p = require(info, "sync:read")
    return PrincipalType(
        tenant_id=strawberry.ID(p.tenant_id),
        tenant_name=p.tenant_name,
        scopes=sorted(p.scopes),
        device_id=strawberry.ID(p.device_id) if p.device_id else None,
        view=view_binding(p.view),
    )
