"""Request ids: taken from ``X-Request-Id`` (or ``X-msgid``), else generated; echoed in
responses and present in every log line of the request."""

from __future__ import annotations

import contextvars
import logging
import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_SAFE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
REQUEST_ID_HEADERS = (b"x-request-id", b"x-msgid")


def current_request_id() -> str:
    return _request_id.get()


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = next((headers[h].decode("latin-1") for h in REQUEST_ID_HEADERS if h in headers), "")
        # 32 hex digits as uuid4().hex gives, at a fifth of its cost
        request_id = given if _SAFE.match(given) else os.urandom(16).hex()
        token = _request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _request_id.reset(token)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger("syncgraph")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
