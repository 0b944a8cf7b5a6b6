"""The ``onewrite`` accelerator (an HTTP answer's head and body in one socket write) sends
exactly what uvicorn's own httptools protocol sends: the same app is served twice, by
uvicorn's protocol and by ``OneWriteProtocol``, and every answer must have the same status,
headers and body. Each server's socket writes are counted, so a protocol that silently
writes twice (or a plain one that already wrote once, making the accelerator pointless)
fails. A streamed answer's head must still leave before its late body, and a websocket
upgrade must still work through it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.accel.onewrite import KEPT_MAX, OneWriteProtocol, TurnWriter
from app.cli import uvicorn_protocol
from app.main import create_app
from app.state import AppState
from tests.api.live import WsClient
from tests.conftest import Tenant, make_tenant


class CountedTransport:
    """The real transport, counting the writes that reach it."""

    def __init__(self, transport: asyncio.Transport, writes: list[int]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(len(data))
        self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def counted(protocol: type[HttpToolsProtocol], writes: list[int]) -> type[HttpToolsProtocol]:
    class Counted(protocol):  # type: ignore[valid-type,misc]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(CountedTransport(transport, writes))  # type: ignore[arg-type]

    return Counted


@dataclass
class Served:
    url: str
    writes: list[int] = field(default_factory=list)


@contextlib.asynccontextmanager
async def serve(app: Any, protocol: type[HttpToolsProtocol]) -> AsyncIterator[Served]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    served = Served(f"http://127.0.0.1:{sock.getsockname()[1]}")
    config = uvicorn.Config(
        app, lifespan="off", log_level="warning", http=counted(protocol, served.writes)
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield served
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def servers(state: AppState) -> AsyncIterator[tuple[Served, Served, Tenant]]:
    """(uvicorn's protocol, ``OneWriteProtocol``) serving one app, and a tenant of it."""
    await state.start()
    app = create_app(state=state)
    async with (
        serve(app, HttpToolsProtocol) as plain,
        serve(app, OneWriteProtocol) as one,
        httpx.AsyncClient(base_url=plain.url, timeout=10) as client,
    ):
        yield plain, one, await make_tenant(state, client)


REQUEST_ID = re.compile(rb'"requestId":"[0-9a-f]+"|request id [0-9a-f]+')


def same_answer(answer: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    """What both servers must send alike: all but the date and the request's id."""
    headers = [(k, v) for k, v in answer.headers.multi_items() if k not in ("date", "x-request-id")]
    return answer.status_code, headers, REQUEST_ID.sub(b"<id>", answer.content)


def requests(tenant: Tenant) -> list[tuple[str, Callable[[httpx.AsyncClient], Any]]]:
    auth = {"authorization": f"Bearer {tenant.key}"}
    pieces = [{"alias": f"P-{i}", "name": f"piece {i}", "quantity": i} for i in range(50)]
    sync = "mutation($input: SyncInput!) { sync(input: $input) { totals { failed } } }"
    pull = "{ changes { checkpoint pieces { inserted { alias name quantity } } } }"

    def post(body: Any, headers: dict[str, str] | None = None) -> Any:
        return lambda c: c.post("/graphql", json=body, headers={**auth, **(headers or {})})

    return [
        ("health", lambda c: c.get("/healthz")),
        ("head", lambda c: c.head("/healthz")),
        ("typename", post({"query": "{ __typename }"})),
        ("write", post({"query": sync, "variables": {"input": {"pieces": {"data": pieces}}}})),
        ("pull", post({"query": pull})),
        ("no key", lambda c: c.post("/graphql", json={"query": "{ __typename }"})),
        ("bad JSON", lambda c: c.post("/graphql", content=b"{", headers=auth)),
        ("not found", lambda c: c.get("/nowhere")),
        (
            "GET query",
            lambda c: c.get("/graphql", params={"query": "{ __typename }"}, headers=auth),
        ),
    ]


async def test_answers_are_the_same_bytes_in_one_write_each(
    servers: tuple[Served, Served, Tenant],
) -> None:
    plain, one, tenant = servers
    async with (
        httpx.AsyncClient(base_url=plain.url, timeout=10) as to_plain,
        httpx.AsyncClient(base_url=one.url, timeout=10) as to_one,
    ):
        for name, send in requests(tenant):
            plain.writes.clear()
            one.writes.clear()
            expected = await send(to_plain)
            got = await send(to_one)
            assert same_answer(got) == same_answer(expected), name
            # uvicorn: the head, then the body (a HEAD request's answer has none)
            assert len(plain.writes) == (1 if name == "head" else 2), (name, plain.writes)
            assert len(one.writes) == 1, (name, one.writes)
            assert one.writes[0] == sum(plain.writes) + _date_difference(got, expected)


def _date_difference(got: httpx.Response, expected: httpx.Response) -> int:
    return len(got.headers["date"]) - len(expected.headers["date"])


async def test_one_connection_carries_answer_after_answer(
    servers: tuple[Served, Served, Tenant],
) -> None:
    """Keep-alive: each answer on one connection leaves whole before the next request."""
    _plain, one, tenant = servers
    async with httpx.AsyncClient(base_url=one.url, timeout=10) as client:
        for i in range(20):
            answer = await client.post(
                "/graphql",
                json={"query": "{ __typename }"},
                headers={"authorization": f"Bearer {tenant.key}", "x-request-id": f"r{i}"},
            )
            assert answer.json()["data"] == {"__typename": "Query"}
            assert answer.headers["x-request-id"] == f"r{i}"
    assert len(one.writes) == 20


async def late_body(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An answer whose body comes a while after its head (a stream's first event)."""
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(0.5)
    await send({"type": "http.response.body", "body": b"late", "more_body": False})


async def test_a_streamed_answers_head_leaves_before_its_body() -> None:
    async with serve(late_body, OneWriteProtocol) as one:
        host, port = one.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.3)
        assert head.startswith(b"HTTP/1.1 200 OK")
        body = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 2)
        assert b"late" in body
        writer.close()
        await writer.wait_closed()
    assert len(one.writes) == 2


async def test_websockets_upgrade_through_it(servers: tuple[Served, Served, Tenant]) -> None:
    """The upgrade hands the real transport to the websocket protocol: a subscription's
    messages go out as they come."""
    _plain, one, tenant = servers
    host = one.url.removeprefix("http://")
    creds = {"authorization": f"Bearer {tenant.key}", "tenant": tenant.id}
    async with WsClient.connect(host, creds) as client:
        await client.subscribe(
            "subscription { changes { checkpoint hasMore users { inserted { alias } } } }"
        )
        first = await client.next_data()
        assert first["changes"]["hasMore"] is False
        await tenant.gql(
            "mutation($input: SyncInput!) { sync(input: $input) { checkpoint } }",
            {"input": {"users": {"data": [{"alias": "ada", "name": "Ada"}]}}},
        )
        second = await client.next_data()
        assert [u["alias"] for u in second["changes"]["users"]["inserted"]] == ["ada"]
    assert one.writes  # the upgrade's answer and the messages, through the real transport


def test_serve_uses_it_when_it_is_on() -> None:
    """``syncgraph serve`` passes the protocol to uvicorn (as an import string, so that
    the workers of ``--workers`` load it too)."""
    from app import accel

    with accel.only("onewrite"):
        options = uvicorn_protocol()
    config = uvicorn.Config(late_body, **options)
    config.load()
    assert config.http_protocol_class is OneWriteProtocol
    with accel.only():
        assert uvicorn_protocol() == {}


class RecordedTransport:
    """What reaches the socket, write by write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


async def test_the_writes_of_one_turn_leave_together_and_a_large_answer_at_once() -> None:
    real = RecordedTransport()
    writer = TurnWriter(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    writer.write(b"head")
    writer.write(b"body")
    assert real.writes == []
    assert writer.get_write_buffer_size() == 8
    await asyncio.sleep(0)  # the end of the turn
    assert real.writes == [b"headbody"]
    big = b"x" * (KEPT_MAX + 1)
    writer.write(b"head")
    writer.write(big)  # past KEPT_MAX: written now, flow control sees it
    assert real.writes[1:] == [b"head" + big]
    writer.write(b"last")
    writer.close()  # what is kept is written before the close
    assert real.writes[2:] == [b"last"]
    assert real.closed
    await asyncio.sleep(0)
    assert len(real.writes) == 3  # the turn's own flush finds nothing left


async def test_an_aborted_connection_writes_nothing_more() -> None:
    real = RecordedTransport()
    writer = TurnWriter(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    writer.write(b"head")
    writer.abort()
    await asyncio.sleep(0)
    assert real.writes == []
    assert real.aborted
