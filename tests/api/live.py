"""A real uvicorn server in the test's own event loop, and a websocket client speaking
graphql-transport-ws or the legacy graphql-ws protocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
import websockets

from app.cli import uvicorn_protocol
from app.main import create_app
from app.state import AppState


@contextlib.asynccontextmanager
async def live_server(state: AppState) -> AsyncIterator[str]:
    """Serve ``state``'s app on 127.0.0.1 (a free port); yields the base URL."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only then (else ~40 ms per response).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(  # uvicorn's protocol as ``syncgraph serve`` chooses it
        create_app(state=state), lifespan="off", log_level="warning", **uvicorn_protocol()
    )
    server = uvicorn.Server(config)
    await state.start()
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


class WsClient:
    """A minimal graphql-transport-ws / graphql-ws client for tests."""

    def __init__(self, ws: Any, protocol: str) -> None:
        self.ws = ws
        self.protocol = protocol
        self.next_id = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, host: str, payload: dict[str, Any], protocol: str = "graphql-transport-ws"
    ) -> AsyncIterator[WsClient]:
        async with websockets.connect(f"ws://{host}/graphql", subprotocols=[protocol]) as ws:
            client = cls(ws, protocol)
            await client.send({"type": "connection_init", "payload": payload})
            ack = await client.receive(timeout=5)
            assert ack["type"] == "connection_ack", ack
            yield client

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def receive(self, timeout: float = 5.0) -> dict[str, Any]:
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if message.get("type") not in ("ka", "ping", "pong"):
                return dict(message)

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None) -> str:
        self.next_id += 1
        op_id = str(self.next_id)
        kind = "subscribe" if self.protocol == "graphql-transport-ws" else "start"
        payload = {"query": query, "variables": variables or {}}
        await self.send({"id": op_id, "type": kind, "payload": payload})
        return op_id

    async def next_data(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next emission's ``data`` (fails on an error message)."""
        message = await self.receive(timeout)
        assert message["type"] in ("next", "data"), message
        assert not message["payload"].get("errors"), message
        return dict(message["payload"]["data"])
