"""The per-request context and the credential checks resolvers start with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import strawberry

from app.auth import AuthResult, Principal
from app.engine.registry import EntitySpec
from app.errors import Forbidden, Unauthenticated

if TYPE_CHECKING:
    from app.state import AppState


@dataclass
class Context:
    request: Any
    response: Any
    state: AppState
    auth: AuthResult
    request_id: str
    connection_params: dict[str, Any] | None = None
    loaders: dict[str, Any] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)
    bulk_inputs: dict[str, Any] = field(default_factory=dict)
    """Bulk variables taken raw by the bulkinput accelerator (app/accel/bulkinput.py)."""


def _status(info: strawberry.Info, code: int) -> None:
    response = getattr(info.context, "response", None)
    if response is not None and getattr(response, "status_code", None) in (None, 200):
        response.status_code = code


def require(info: strawberry.Info, scope: str = "sync:read") -> Principal:
    """The caller's principal, if it holds ``scope``; else raise with the HTTP status set."""
    ctx: Context = info.context
    if ctx.auth.principal is None:
        error = ctx.auth.error or Unauthenticated("credentials required")
        _status(
            info,
            401
            if isinstance(error, Unauthenticated)
            else 403
            if isinstance(error, Forbidden)
            else 400,
        )
        raise error
    if not ctx.auth.principal.allows(scope):
        raise Forbidden(f"this operation needs the scope {scope}")
    return ctx.auth.principal


def require_key(info: strawberry.Info, scope: str) -> Principal:
    """Like ``require`` but refuses device tokens (they may only read and use actions)."""
    principal = require(info, scope)
    if principal.device_id is not None:
        raise Forbidden("a device token cannot do this; use an API key")
    return principal


async def visible_only(
    ctx: Context, principal: Principal, spec: EntitySpec
) -> frozenset[str] | None:
    """The ids of ``spec``'s records the principal's view shows now, which a read through
    the view is restricted to; None for an unbound credential (nothing is evaluated: its
    reads cost what they always did)."""
    if principal.view is None:
        return None
    return await ctx.state.service.visible_ids(principal.tenant_id, principal.view, spec)
