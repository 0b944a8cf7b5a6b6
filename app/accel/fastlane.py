"""A POST of a document the server has already validated, answered past Strawberry's
request pipeline.

**Plain twin**: Strawberry's HTTP view (``SyncGraphQL.run``: the request adapter, body and
content-type parsing, ``Schema.execute`` with its extension runner, parsing and validation
caches, then ``process_result`` and ``create_response``). For a poll that finds nothing new
that pipeline was most of the request: about 0.2 ms of a 0.3 ms answer.

**What it takes**: a ``POST`` with an ``application/json`` body that is one operation
(``query``, optional ``variables``, ``operationName``, ``extensions``), no
``Idempotency-Key``, no streaming ``Accept``, whose document (with that operation name) is a
query or a mutation that parsed and validated before with the schema's own rules. Everything
else (GET, batches, subscriptions, malformed bodies, documents that fail validation, keyed
requests, documents longer than ``CACHED_DOCUMENT_MAX``) is handed back to the plain path,
which answers it as it always has; so is any request the lane cannot read.

**What it keeps**: the view's own steps, called as the plain path calls them: the context
(credentials), the request metric, graphql-core's ``execute`` with the schema's executor
class (the ``fastpath`` and ``bulkinput`` accelerators), the schema's error processing (field
suggestions removed, unexpected errors logged), ``process_result`` (error codes, request id,
status), ``create_response`` and the media type. ``tests/api/test_accel_fastlane.py`` sends
the same requests to an app with the lane and one without and compares status, headers and
bodies.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from inspect import isawaitable
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from graphql import (
    DocumentNode,
    GraphQLError,
    OperationType,
    get_operation_ast,
    parse,
    specified_rules,
    validate,
)
from graphql import execute as graphql_execute
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.execution.is_awaitable import optimized_is_awaitable
from strawberry.types import ExecutionResult

from app import edge

if TYPE_CHECKING:
    from app.graphql.view import SyncGraphQL

CACHED_DOCUMENT_MAX = 16_384
"""Longer documents are not kept (256 entries of the largest body would be a lot of memory)."""
DOCUMENTS = 256
KEYS = frozenset({"query", "variables", "operationName", "extensions"})
STREAMING = ("multipart/mixed", "text/event-stream")


class SubResponse:
    """What resolvers and ``process_result`` set on the response (``context.response``):
    its status and headers, as on the view's (a Starlette ``Response`` with no body)."""

    __slots__ = ("headers", "status_code")

    def __init__(self) -> None:
        self.status_code: int | None = None
        self.headers = MutableHeaders()


class Operation(NamedTuple):
    """What a request's body asks for (GraphQL over HTTP's request parameters)."""

    query: str
    variables: dict[str, Any] | None
    name: str | None
    """``operationName``."""
    extensions: dict[str, Any] | None


@dataclass(frozen=True)
class Prepared:
    """A document that parsed and validated, and the kind of the operation it runs."""

    document: DocumentNode
    kind: str


class FastLaneMiddleware:
    """Takes the lane's requests where they enter the app, after the request id and the
    edge (which limits the body) and before Starlette's exception middleware, router and
    route; hands every other request on, with the body it read, to the rest of the app."""

    def __init__(self, app: ASGIApp, *, lane: FastLane, path: str = "/graphql") -> None:
        self.app = app
        self.lane = lane
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive=receive)
        response = await self.lane.view.answer(request, self.lane.answer)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, _replay(request, receive), send)


def _replay(request: Request, receive: Receive) -> Receive:
    """``receive`` for the rest of the app: the body the lane read (if it read it), then
    whatever the server sends next (a disconnect)."""
    body: bytes | None = getattr(request, "_body", None)
    if body is None:
        return receive
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class FastLane:
    """One per view; ``answer`` returns None for a request the plain path must take."""

    def __init__(self, view: SyncGraphQL, *, max_tokens: int, rules: list[Any]) -> None:
        self.view = view
        self.schema = view.schema
        self.graphql_schema = view.schema._schema  # type: ignore[attr-defined]
        self.executor_class = view.schema.execution_context_class  # type: ignore[attr-defined]
        self.max_tokens = max_tokens
        self.rules = [*specified_rules, *rules]
        self.prepared = functools.lru_cache(maxsize=DOCUMENTS)(self._prepare)
        self.counted: dict[str, Any] = {}
        """The request metric's counter per operation kind."""
        self.served = 0
        """Requests this lane answered (tests check that it did)."""

    async def answer(self, request: Request) -> Response | None:
        """The answer to a POST (``FastLaneMiddleware`` sends no other)."""
        if not _takes(request.headers):
            return None
        operation = _operation(await request.body())
        if operation is None or len(operation.query) > CACHED_DOCUMENT_MAX:
            return None
        prepared = self.prepared(operation.query, operation.name)
        if prepared is None:
            return None
        self.served += 1
        return await self._run(request, prepared, operation)

    def _prepare(self, query: str, operation_name: str | None) -> Prepared | None:
        """The document, when the plain path would run it: it parses, validates, and names
        one query or mutation. None sends the request (and its errors) to the plain path."""
        try:
            document = parse(query, max_tokens=self.max_tokens)
        except GraphQLError:
            return None
        operation = get_operation_ast(document, operation_name)
        if operation is None or operation.operation == OperationType.SUBSCRIPTION:
            return None
        if validate(self.graphql_schema, document, self.rules):
            return None
        return Prepared(document, operation.operation.value)

    async def _run(self, request: Request, prepared: Prepared, operation: Operation) -> Response:
        view = self.view
        sub_response = SubResponse()
        context = await view.get_context(request, response=sub_response)
        counted = self.counted.get(prepared.kind)
        if counted is None:
            counted = self.counted[prepared.kind] = view.state.metrics.requests.labels(
                prepared.kind
            )
        counted.inc()
        try:
            result = await self._execute(prepared, operation, context)
        finally:
            await view.forget_pending(request)
        data = await view.process_result(request, result)
        # as the view's create_response, in the media type the client prefers
        accept = request.headers.get("accept")
        status = sub_response.status_code or 200
        response = Response(view.encode_json(data), status, media_type=edge.media_type(accept))
        response.headers.raw.extend(sub_response.headers.raw)
        return response

    async def _execute(
        self, prepared: Prepared, operation: Operation, context: Any
    ) -> ExecutionResult:
        """graphql-core's execution as ``Schema.execute`` runs it (no resolve middleware:
        the schema's extensions have none), with its error handling."""
        try:
            outcome = graphql_execute(
                self.graphql_schema,
                prepared.document,
                context_value=context,
                variable_values=operation.variables,
                operation_name=operation.name,
                executor_class=self.executor_class,
                is_awaitable=optimized_is_awaitable,  # type: ignore[arg-type]
                operation_extensions=operation.extensions,
            )
            if isawaitable(outcome):
                outcome = await outcome
            data, errors = outcome.data, outcome.errors
        except Exception as exc:  # as Schema.execute: an error answer, not a 500
            data, errors = None, [exc if isinstance(exc, GraphQLError) else _coerce(exc)]
        if errors:
            self.schema._process_errors(errors)
        return ExecutionResult(data=data, errors=errors, extensions={})


def _takes(headers: Any) -> bool:
    content_type = headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        return False
    if "idempotency-key" in headers:
        return False
    accept = headers.get("accept", "")
    return not any(kind in accept for kind in STREAMING)


def _operation(body: bytes) -> Operation | None:
    """The operation, when the body is exactly one; else None (the plain path parses it
    again and answers what is wrong with it)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not data.keys() <= KEYS:
        return None
    query = data.get("query")
    variables = data.get("variables")
    operation_name = data.get("operationName")
    extensions = data.get("extensions")
    if not isinstance(query, str):
        return None
    if variables is not None and not isinstance(variables, dict):
        return None
    if operation_name is not None and not isinstance(operation_name, str):
        return None
    if extensions is not None and not isinstance(extensions, dict):
        return None
    return Operation(query, variables, operation_name, extensions)


def _coerce(exc: Exception) -> GraphQLError:
    return GraphQLError(str(exc), original_error=exc)
