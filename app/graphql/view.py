"""The Strawberry view: context with credentials, error codes, request ids, orjson."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from graphql import GraphQLError, OperationDefinitionNode, get_operation_ast, parse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET

from app import accel, edge
from app.accel.fastlane import FastLane
from app.auth import TENANT_HEADERS, authenticate
from app.errors import SyncError
from app.graphiql import graphiql_response
from app.graphql import idempotency
from app.graphql.context import Context
from app.graphql.schema import SyncSchema
from app.requestid import current_request_id
from app.state import AppState

log = logging.getLogger("syncgraph.graphql")
_R = TypeVar("_R")


def error_code(error: GraphQLError) -> str:
    """The error's ``extensions.code``. An error without a path happened before execution
    (parsing, validation, coercing variables and literals): the request is at fault, so it
    is ``BAD_REQUEST`` whatever a scalar's parser raised."""
    original = error.original_error
    if isinstance(original, SyncError):
        return original.code
    if original is None:
        code = (error.extensions or {}).get("code")
        return str(code) if code else "BAD_REQUEST"
    if isinstance(original, GraphQLError):
        return error_code(original)
    if error.path is None and isinstance(original, ValueError | TypeError | ArithmeticError):
        return "BAD_REQUEST"
    return edge.failure_code(original)


def format_error(error: GraphQLError, request_id: str) -> dict[str, Any]:
    code = error_code(error)
    formatted: dict[str, Any] = dict(error.formatted)
    original = error.original_error
    # a driver's message is never shown: an executed field whose exception was not ours is
    # INTERNAL (logged with its traceback by SyncSchema.process_errors), the database down,
    # or text it refused (BAD_REQUEST)
    foreign = error.path is not None and not isinstance(original, GraphQLError | SyncError | None)
    if code in ("INTERNAL", "SERVICE_UNAVAILABLE") or foreign:
        formatted["message"] = edge.failure_message(code, request_id, original)
    extensions = dict(formatted.get("extensions") or {})
    extensions.update(code=code, requestId=request_id)
    formatted["extensions"] = extensions
    return formatted


CACHED_DOCUMENT_MAX = 16_384
"""Documents up to this many characters have their operation kind cached (clients send the
same few over and over); a longer one is parsed each time, so that 256 cache entries cannot
hold 256 bodies of the maximum size."""


def operation_kind(query: str | None, operation_name: str | None, *, max_tokens: int) -> str:
    """``query``, ``mutation`` or ``subscription`` (a bounded metric label), else ``invalid``."""
    if query is not None and len(query) <= CACHED_DOCUMENT_MAX:
        return _cached_operation_kind(query, operation_name, max_tokens)
    return _operation_kind(query, operation_name, max_tokens)


def _operation_kind(query: str | None, operation_name: str | None, max_tokens: int) -> str:
    if not query:
        return "invalid"
    try:
        document = parse(query, no_location=True, max_lexical_tokens=max_tokens)
    except GraphQLError:
        return "invalid"
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is None and len(operations) > 1:
        return "ambiguous"
    operation = get_operation_ast(document, operation_name)
    return operation.operation.value if operation else "invalid"


_cached_operation_kind = functools.lru_cache(maxsize=256)(_operation_kind)


def refuse_unservable(kind: str) -> None:
    """Refuse, before execution, what the GraphQL spec forbids running (several operations
    and no ``operationName``) and what HTTP does not serve here (subscriptions)."""
    if kind == "ambiguous":
        raise HTTPException(
            400, "the document has several operations: name the one to run in operationName"
        )
    if kind == "subscription":
        raise HTTPException(
            400, "subscriptions are served over websockets (graphql-transport-ws or graphql-ws)"
        )


RETRY = frozenset({"SERVICE_UNAVAILABLE"})


def media_type(request: Request) -> str:
    """``application/graphql-response+json`` when the client prefers it, else JSON."""
    return edge.media_type(request.headers.get("accept"))


def is_request_error(result: ExecutionResult) -> bool:
    """Nothing was executed: every error came before execution (no path) and no data."""
    errors = result.errors or []
    return result.data is None and bool(errors) and all(e.path is None for e in errors)


def http_status(
    request: Request, response: Any, result: ExecutionResult, data: dict[str, Any]
) -> dict[str, Any]:
    """Set the HTTP status an answer gets. With ``application/json``: 200 for whatever was
    executed (401/403 set by the auth checks stand), 503 with ``Retry-After`` when the
    database was unavailable. With ``application/graphql-response+json`` (GraphQL over
    HTTP): besides, 400 for a request that failed before execution, and an answer with a
    4xx/5xx status carries no ``data`` (the specification's rule: no data, not 2xx)."""
    codes = {e["extensions"]["code"] for e in data.get("errors", [])}
    if codes & RETRY:
        response.status_code = 503
        response.headers["retry-after"] = str(edge.RETRY_AFTER_SECONDS)
    if media_type(request) != edge.GRAPHQL_RESPONSE:
        return data
    if is_request_error(result) and (response.status_code or 200) < 400:
        response.status_code = 400
    if (response.status_code or 200) >= 400 and data.get("data") is None:
        return {k: v for k, v in data.items() if k != "data"}
    return data


class TextFrameWebSocketAdapter(ASGIWebSocketAdapter):
    """GraphQL over websockets is text frames (graphql-ws clients and browsers refuse binary
    ones); HTTP bodies stay orjson bytes."""

    async def send_json(self, message: Mapping[str, object]) -> None:
        try:
            await self.ws.send_text(orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS).decode())
        except WebSocketDisconnect as exc:
            raise WebSocketDisconnected from exc


class SyncGraphQL(GraphQL[Context, None]):
    websocket_adapter_class = TextFrameWebSocketAdapter

    def __init__(self, state: AppState, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = state
        self.fast_lane: FastLane | None = None
        if accel.enabled("fastlane") and isinstance(self.schema, SyncSchema):
            # the lane validates as the schema's extensions do: GraphQL's rules and its limits
            limits = self.schema.validation_limits
            self.fast_lane = FastLane(self, max_tokens=state.settings.max_tokens, rules=limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive=receive)
        response = await self.answer(request, self.run)
        assert response is not None
        await response(scope, receive, send)

    async def answer(
        self, request: Request, produce: Callable[[Request], Awaitable[Response | None]]
    ) -> Response | None:
        """``produce``'s response to an HTTP request (the view's ``run``, or the fast lane's
        ``answer``), with the failures outside the executor answered as GraphQL errors."""
        try:
            return await produce(request)
        except HTTPException as exc:  # malformed or not GraphQL: 4xx with a GraphQL error body
            return self.refused(request, exc)
        except edge.BodyTooLarge:  # EdgeMiddleware answers it
            raise
        except Exception as exc:  # e.g. the database down while authenticating
            return self.failed(request, exc)

    def refused(self, request: Request, exc: HTTPException) -> Response:
        self.state.metrics.errors.labels("BAD_REQUEST").inc()
        body = edge.error_document(exc.reason, "BAD_REQUEST", current_request_id())
        return Response(self.encode_json(body), exc.status_code, media_type=media_type(request))

    def failed(self, request: Request, exc: Exception) -> Response:
        """An exception raised outside the executor, answered with its code (the database
        being unavailable is 503 with ``Retry-After``)."""
        code = edge.failure_code(exc)
        request_id = current_request_id()
        if code == "INTERNAL":
            log.error("unexpected error before execution", exc_info=exc)
        else:
            log.warning("request failed: %s (%s)", code, exc)
        self.state.metrics.errors.labels(code).inc()
        body = edge.error_document(edge.failure_message(code, request_id, exc), code, request_id)
        headers = {"retry-after": str(edge.RETRY_AFTER_SECONDS)} if code in RETRY else None
        status = edge.STATUS.get(code, 400)
        return Response(self.encode_json(body), status, headers, media_type(request))

    def parse_json(self, data: str | bytes) -> Any:
        parsed = super().parse_json(data)
        if not isinstance(parsed, dict | list):
            raise HTTPException(400, "the request body must be a JSON object")
        return parsed

    async def execute_operation(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        request_data: GraphQLRequestData | list[GraphQLRequestData],
        context: Context,
        root_value: None,
        sub_response: Any,
    ) -> Any:
        self.count_requests(request_data)
        return await super().execute_operation(
            request, request_adapter, request_data, context, root_value, sub_response
        )

    def count_requests(self, data: GraphQLRequestData | list[GraphQLRequestData]) -> None:
        limit = self.state.settings.max_tokens
        for one in data if isinstance(data, list) else [data]:
            kind = operation_kind(one.query, one.operation_name, max_tokens=limit)
            self.state.metrics.requests.labels(kind).inc()

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        headers = request.headers
        tenant = next((headers[h] for h in TENANT_HEADERS if h in headers), None)
        auth = await authenticate(
            self.state.engine,
            authorization=headers.get("authorization"),
            tenant=tenant,
            cache=self.state.credentials,
        )
        context = Context(
            request=request,
            response=response,
            state=self.state,
            auth=auth,
            request_id=current_request_id(),
        )
        request.state.sync_context = context
        return context

    async def on_ws_connect(self, context: Context) -> Any:
        """Credentials from ``connection_init`` ({"authorization", "tenant"}); a refused
        connection closes with 4403 and never gets an ack."""
        params = context.connection_params if isinstance(context.connection_params, dict) else {}
        authorization = params.get("authorization") or params.get("Authorization")
        if authorization:
            tenant = params.get("tenant") or params.get("tenantId")
            context.auth = await authenticate(
                self.state.engine,
                authorization=str(authorization),
                tenant=tenant,
                cache=self.state.credentials,
            )
        principal = context.auth.principal
        if principal is None:
            error = context.auth.error
            raise ConnectionRejectionError(
                {
                    "message": error.message if error else "credentials required",
                    "code": error.code if error else "UNAUTHENTICATED",
                }
            )
        key = principal.key_id or principal.device_id or principal.tenant_id
        open_now = self.state.connections.get(key, 0)
        if open_now >= self.state.settings.max_connections_per_key:
            raise ConnectionRejectionError(
                {"message": "too many open connections for this credential", "code": "RATE_LIMITED"}
            )
        self.state.connections[key] = open_now + 1
        context.extensions["connection_key"] = key
        return {"tenant": principal.tenant_id}

    async def run(self, request: Any, context: Any = UNSET, root_value: Any = UNSET) -> Any:
        try:
            response = await super().run(request, context, root_value)
        finally:
            if isinstance(request, WebSocket):
                self._forget_connection(request)
            else:
                await self.forget_pending(request)
        return self.with_media_type(request, response)

    async def forget_pending(self, request: Request) -> None:
        """A keyed request cut short (client gone) must not keep its transaction open."""
        sync_context = getattr(request.state, "sync_context", None)
        if sync_context is not None:
            await idempotency.abandon(sync_context)

    def with_media_type(self, request: Request, response: _R) -> _R:
        """A JSON answer in the media type the client prefers (``media_type``)."""
        if isinstance(response, Response) and response.headers.get("content-type") == edge.JSON:
            response.headers["content-type"] = media_type(request)
        return response

    def _forget_connection(self, websocket: WebSocket) -> None:
        context = getattr(websocket.state, "sync_context", None)
        key = context.extensions.pop("connection_key", None) if context else None
        if key is not None:
            left = self.state.connections.get(key, 1) - 1
            if left > 0:
                self.state.connections[key] = left
            else:
                self.state.connections.pop(key, None)

    async def execute_single(
        self,
        request: Request,
        request_adapter: Any,
        sub_response: Any,
        context: Context,
        root_value: Any,
        request_data: Any,
    ) -> ExecutionResult:
        refuse_unservable(
            operation_kind(
                request_data.query,
                request_data.operation_name,
                max_tokens=self.state.settings.max_tokens,
            )
        )
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
            with idempotency.running(context):
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
        if context is not None and isinstance(request, Request):
            data = http_status(request, context.response, result, data)
        return data  # type: ignore[return-value]

    def _handle_errors(self, errors: list[GraphQLError], response_data: Any) -> None:
        # Logged in process_result (INTERNAL only); expected errors are answers, not logs.
        return None

    def encode_json(self, data: object) -> bytes:
        try:
            return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:  # an unpaired surrogate echoed back (an item error's alias):
            # the standard library writes it as the same escape ("\\ud800") the client sent
            return json.dumps(data, separators=(",", ":"), default=str).encode()

    def decode_json(self, data: str | bytes) -> object:
        """orjson parses a 1,000-item sync body in half the time; what it refuses but the
        standard library takes (escaped lone surrogates, integers over 64 bits) is parsed
        as before, and answered per item or per field rather than as a malformed body."""
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        try:
            return json.loads(data)
        except UnicodeDecodeError:
            raise HTTPException(400, "the request body is not valid UTF-8") from None
        except RecursionError:
            raise HTTPException(400, "the request body is nested too deeply") from None

    async def render_graphql_ide(self, request: Request) -> Response:
        return graphiql_response(request)
