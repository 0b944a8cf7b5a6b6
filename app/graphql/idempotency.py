"""``Idempotency-Key`` on mutations (DESIGN §4, §7): look the key up before executing, run
the mutation with its writes parked, then store the answer and commit both at once (see
``app.engine.idempotency``); replay a stored answer for a retry."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from graphql import GraphQLError, OperationType, get_operation_ast, parse

from app.engine import idempotency
from app.engine.idempotency import KeyedRequest
from app.errors import IdempotencyKeyReused, SyncError
from app.graphql.context import Context

NOT_STORED = frozenset({"INTERNAL", "UNAUTHENTICATED"})
REUSED_MESSAGE = "this Idempotency-Key was used for a different request"


def is_mutation(query: str | None, operation_name: str | None) -> bool:
    if not query:
        return False
    try:
        operation = get_operation_ast(parse(query), operation_name)
    except GraphQLError:
        return False
    return operation is not None and operation.operation == OperationType.MUTATION


async def begin(context: Context, key: str, request_data: Any) -> GraphQLError | None:
    """Look the key up. Returns an error to answer with, or None to execute; a stored
    answer is put on the context for ``finish`` to replay."""
    principal = context.auth.principal
    assert principal is not None
    try:
        idempotency.check_key(key)
    except SyncError as exc:
        return GraphQLError(exc.message, original_error=exc)
    keyed = KeyedRequest(
        principal.tenant_id,
        key,
        idempotency.request_hash(
            request_data.query, request_data.variables, request_data.operation_name
        ),
        timedelta(hours=context.state.settings.idempotency_ttl_hours),
    )
    found = await idempotency.lookup(context.state.engine, keyed)
    if found.outcome == "reused":
        reused = IdempotencyKeyReused(REUSED_MESSAGE)
        return GraphQLError(reused.message, original_error=reused)
    if found.outcome == "replay":
        context.extensions["replay"] = found.response
    else:
        context.extensions["pending"] = keyed
    return None


@contextmanager
def running(context: Context) -> Iterator[None]:
    """Execute with the write road told about the pending key (if any)."""
    keyed: KeyedRequest | None = context.extensions.get("pending")
    if keyed is None:
        yield
        return
    with idempotency.keyed_request(keyed):
        yield


async def finish(context: Context, response: dict[str, Any]) -> dict[str, Any]:
    """Store a fresh answer with the request's writes (or roll both back), or swap in the
    stored one."""
    replay = context.extensions.pop("replay", None)
    if replay is not None:
        return _replayed(replay, response)
    keyed: KeyedRequest | None = context.extensions.pop("pending", None)
    if keyed is None:
        return response
    if keyed.taken:
        return await _answer_of_winner(context, keyed, response)
    codes = {e["extensions"]["code"] for e in response.get("errors", [])}
    if codes & NOT_STORED:
        if await idempotency.abandon(keyed):
            response = {**response, "data": None}  # its writes were rolled back with it
        return response
    stored = {k: v for k, v in response.items() if k != "extensions"}
    if await idempotency.settle(context.state.engine, keyed, stored):
        return response
    return await _answer_of_winner(context, keyed, response)


async def abandon(context: Context) -> None:
    """Roll back a request that did not reach ``finish`` (cancelled, or failed outside the
    executor): none of its writes are kept."""
    keyed: KeyedRequest | None = context.extensions.pop("pending", None)
    if keyed is not None:
        await idempotency.abandon(keyed)


def _replayed(replay: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    extensions = {**(replay.get("extensions") or {}), **response.get("extensions", {})}
    extensions["idempotentReplay"] = True
    return {**replay, "extensions": extensions}


async def _answer_of_winner(
    context: Context, keyed: KeyedRequest, response: dict[str, Any]
) -> dict[str, Any]:
    """A concurrent request with the same key committed first: answer what it stored."""
    found = await idempotency.lookup(context.state.engine, keyed)
    if found.outcome == "replay" and found.response is not None:
        return _replayed(found.response, response)
    extensions = response.get("extensions", {})
    error = {
        "message": REUSED_MESSAGE,
        "extensions": {"code": IdempotencyKeyReused.code, "requestId": extensions.get("requestId")},
    }
    return {"data": None, "errors": [error], "extensions": extensions}
