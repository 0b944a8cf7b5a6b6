"""The request edge's last word: whatever fails, the client gets a GraphQL-shaped JSON answer
with ``extensions.code`` and ``requestId`` (never a plain-text 500), in the media type it
asked for.

Three kinds of failure reach here: a database that is down or refuses (``SERVICE_UNAVAILABLE``,
503 with ``Retry-After``: the client should retry, nothing was written), text no database
stores (``BAD_REQUEST``), and anything else unexpected (``INTERNAL``, logged with the request
id). ``EdgeMiddleware`` also enforces the body limit on streamed (chunked) bodies, which
Starlette would answer in plain text.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db.failures import is_unavailable, is_unstorable_text
from app.errors import SyncError
from app.requestid import current_request_id

log = logging.getLogger("syncgraph.edge")

RETRY_AFTER_SECONDS = 5
"""What ``Retry-After`` says during an outage: long enough not to hammer a database that is
coming back, short enough that clients resume soon after it is."""

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"

STATUS = {
    "SERVICE_UNAVAILABLE": 503,
    "INTERNAL": 500,
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
}


def failure_code(exc: BaseException) -> str:
    """The ``extensions.code`` of an exception the code did not expect to raise."""
    if isinstance(exc, SyncError):
        return exc.code
    if is_unavailable(exc):
        return "SERVICE_UNAVAILABLE"
    if is_unstorable_text(exc):
        return "BAD_REQUEST"
    return "INTERNAL"


def failure_message(code: str, request_id: str, exc: BaseException | None = None) -> str:
    if code == "SERVICE_UNAVAILABLE":
        return f"the database is unavailable; retry in {RETRY_AFTER_SECONDS} s"
    if code == "BAD_REQUEST" and exc is not None and not isinstance(exc, SyncError):
        return "strings may not contain NUL characters (\\u0000)"
    if isinstance(exc, SyncError):
        return exc.message
    return f"Internal error (request id {request_id})"


def media_type(accept: str | None) -> str:
    """The media type of a JSON answer to a client sending ``accept``:
    ``application/graphql-response+json`` when it prefers that, else ``application/json``."""
    return GRAPHQL_RESPONSE if wants_graphql_response(accept) else JSON


def wants_graphql_response(accept: str | None) -> bool:
    """Whether the client prefers ``application/graphql-response+json``
    (``_wants_graphql_response``; clients send the same few values, so it is kept)."""
    return bool(accept) and _wants_graphql_response(accept)


@functools.lru_cache(maxsize=64)
def _wants_graphql_response(accept: str) -> bool:
    """Whether the client prefers ``application/graphql-response+json`` (GraphQL over HTTP):
    it is listed with a q-value above 0 and no lower than that of ``application/json``
    (Apollo sends ``application/graphql-response+json,application/json;q=0.9``)."""
    if not accept:
        return False
    weights: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        weights[media.lower()] = max(weight, weights.get(media.lower(), 0.0))
    ours = weights.get(GRAPHQL_RESPONSE, 0.0)
    return ours > 0 and ours >= weights.get(JSON, 0.0)


def error_document(message: str, code: str, request_id: str) -> dict[str, Any]:
    """A request-level error as GraphQL shapes one (no ``data``: nothing was executed)."""
    return {
        "errors": [{"message": message, "extensions": {"code": code, "requestId": request_id}}],
        "extensions": {"requestId": request_id},
    }


def error_headers(code: str, media_type: str) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", media_type.encode())]
    if code == "SERVICE_UNAVAILABLE":
        headers.append((b"retry-after", str(RETRY_AFTER_SECONDS).encode()))
    return headers


class BodyTooLarge(Exception):
    """A streamed body went over the limit (raised from ``receive``)."""


class EdgeMiddleware:
    """The outermost guard of HTTP requests: a body over the limit (declared or streamed)
    gets 413, and an exception nobody answered gets its code (503 for an outage, else 500),
    both as GraphQL JSON. Once a response has started nothing can be changed, so it is
    re-raised then."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        answer_type = media_type(headers.get(b"accept", b"").decode("latin-1"))
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._answer(send, 413, answer_type, self._too_large(), "BAD_REQUEST")
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._limited(receive), send_tracking)
        except BodyTooLarge:
            if started:
                raise
            await self._answer(send, 413, answer_type, self._too_large(), "BAD_REQUEST")
        except Exception as exc:
            if started:
                raise
            await self._fail(send, answer_type, exc)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        return limited

    def _too_large(self) -> str:
        return f"request body over {self.max_bytes} bytes"

    async def _fail(self, send: Send, media_type: str, exc: Exception) -> None:
        code = failure_code(exc)
        request_id = current_request_id()
        if code == "INTERNAL":
            log.error("unexpected error at the edge", exc_info=exc)
        else:
            log.warning("request failed: %s (%s)", code, exc)
        message = failure_message(code, request_id, exc)
        await self._answer(send, STATUS.get(code, 400), media_type, message, code)

    async def _answer(self, send: Send, status: int, media_type: str, msg: str, code: str) -> None:
        body = json.dumps(error_document(msg, code, current_request_id())).encode()
        headers = [*error_headers(code, media_type), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
