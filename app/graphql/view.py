"""The Strawberry view: context with credentials, error codes, request ids, orjson."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from graphql import GraphQLError
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse
from strawberry.types import ExecutionResult

from app.auth import TENANT_HEADERS, authenticate
from app.errors import SyncError
from app.graphiql import graphiql_response
from app.graphql import idempotency
from app.graphql.context import Context
from app.requestid import current_request_id
from app.state import AppState

log = logging.getLogger("syncgraph.graphql")


def error_code(error: GraphQLError) -> str:
    original = error.original_error
    if isinstance(original, SyncError):
        return original.code
    if original is None:
        code = (error.extensions or {}).get("code")
        return str(code) if code else "BAD_REQUEST"
    if isinstance(original, GraphQLError):
        return error_code(original)
    return "INTERNAL"


def format_error(error: GraphQLError, request_id: str) -> dict[str, Any]:
    code = error_code(error)
    formatted: dict[str, Any] = dict(error.formatted)
    if code == "INTERNAL":
        log.error("internal error", exc_info=error.original_error)
        formatted["message"] = f"Internal error (request id {request_id})"
    extensions = dict(formatted.get("extensions") or {})
    extensions.update(code=code, requestId=request_id)
    formatted["extensions"] = extensions
    return formatted


class SyncGraphQL(GraphQL[Context, None]):
    def __init__(self, state: AppState, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = state

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        headers = request.headers
        tenant = next((headers[h] for h in TENANT_HEADERS if h in headers), None)
        auth = await authenticate(
            self.state.engine, authorization=headers.get("authorization"), tenant=tenant
        )
        context = Context(
            request=request,
            response=response,
            state=self.state,
            auth=auth,
            request_id=current_request_id(),
        )
        if isinstance(request, Request):
            request.state.sync_context = context
        return context

    async def execute_single(
        self,
        request: Request,
        request_adapter: Any,
        sub_response: Any,
        context: Context,
        root_value: Any,
        request_data: Any,
    ) -> ExecutionResult:
        key = request.headers.get("idempotency-key")
        if (
            key is None
            or context.auth.principal is None
            or not idempotency.is_mutation(request_data.query, request_data.operation_name)
        ):
            return await super().execute_single(
                request, request_adapter, sub_response, context, root_value, request_data
            )
        error = await idempotency.begin(context, key, request_data)
        if error is not None:
            return ExecutionResult(data=None, errors=[error])
        if "replay" in context.extensions:
            return ExecutionResult(data=None, errors=None)
        try:
            return await super().execute_single(
                request, request_adapter, sub_response, context, root_value, request_data
            )
        except BaseException:
            await idempotency.abandon(context)
            raise

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        request_id = current_request_id()
        data: dict[str, Any] = {"data": result.data}
        if result.errors:
            data["errors"] = [format_error(e, request_id) for e in result.errors]
            for e in data["errors"]:
                self.state.metrics.errors.labels(e["extensions"]["code"]).inc()
        extensions = dict(result.extensions or {})
        extensions["requestId"] = request_id
        data["extensions"] = extensions
        context = getattr(request.state, "sync_context", None)
        if context is not None and context.extensions:
            data = await idempotency.finish(context, data)
        return data  # type: ignore[return-value]

    def _handle_errors(self, errors: list[GraphQLError], response_data: Any) -> None:
        # Logged in process_result (INTERNAL only); expected errors are answers, not logs.
        return None

    def encode_json(self, data: object) -> bytes:
        return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)

    async def render_graphql_ide(self, request: Request) -> Response:
        return graphiql_response(request)
