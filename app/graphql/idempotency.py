"""``Idempotency-Key`` on mutations: claim before executing, store the answer after,
replay it for a retry (DESIGN §4)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from graphql import GraphQLError, OperationType, get_operation_ast, parse

from app.engine import idempotency
from app.errors import IdempotencyKeyReused, SyncError
from app.graphql.context import Context

NOT_STORED = frozenset({"INTERNAL", "UNAUTHENTICATED", "SERVICE_UNAVAILABLE"})


@dataclass
class Pending:
    tenant_id: str
    key: str


def is_mutation(query: str | None, operation_name: str | None) -> bool:
    if not query:
        return False
    try:
        operation = get_operation_ast(parse(query), operation_name)
    except GraphQLError:
        return False
    return operation is not None and operation.operation == OperationType.MUTATION


async def begin(context: Context, key: str, request_data: Any) -> GraphQLError | None:
    """Claim the key. Returns an error to answer with, or None to execute; a stored answer
    is put on the context for ``finish`` to replay."""
    principal = context.auth.principal
    assert principal is not None
    state = context.state
    digest = idempotency.request_hash(
        request_data.query, request_data.variables, request_data.operation_name
    )
    ttl = timedelta(hours=state.settings.idempotency_ttl_hours)
    try:
        found = await idempotency.claim(state.engine, principal.tenant_id, key, digest, ttl=ttl)
    except SyncError as exc:
        return GraphQLError(exc.message, original_error=exc)
    if found.outcome == "reused":
        reused = IdempotencyKeyReused("this Idempotency-Key was used for a different request")
        return GraphQLError(reused.message, original_error=reused)
    if found.outcome == "replay":
        context.extensions["replay"] = found.response
    else:
        context.extensions["pending"] = Pending(principal.tenant_id, key)
    return None


async def finish(context: Context, response: dict[str, Any]) -> dict[str, Any]:
    """Store a fresh answer (or release the key), or swap in the stored one."""
    replay = context.extensions.pop("replay", None)
    if replay is not None:
        extensions = {**(replay.get("extensions") or {}), **response.get("extensions", {})}
        extensions["idempotentReplay"] = True
        return {**replay, "extensions": extensions}
    pending: Pending | None = context.extensions.pop("pending", None)
    if pending is None:
        return response
    codes = {e["extensions"]["code"] for e in response.get("errors", [])}
    engine = context.state.engine
    if codes & NOT_STORED:
        await idempotency.release(engine, pending.tenant_id, pending.key)
    else:
        stored = {k: v for k, v in response.items() if k != "extensions"}
        await idempotency.store(engine, pending.tenant_id, pending.key, stored)
    return response


async def abandon(context: Context) -> None:
    pending: Pending | None = context.extensions.pop("pending", None)
    if pending is not None:
        await idempotency.release(context.state.engine, pending.tenant_id, pending.key)
