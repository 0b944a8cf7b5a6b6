"""HTTP responses sent in one write (the accelerator ``onewrite``).

uvicorn's httptools protocol writes a response's head to the socket when the app sends
``http.response.start`` and its body when the app sends ``http.response.body``: two
``send`` calls and, with ``TCP_NODELAY``, two packets for every small answer. On loopback the
kernel's work for the second packet is charged to the server: joined, a ``{ __typename }``
request took 0.15 ms of CPU instead of 0.17 (bench/README.md (g)).

``OneWriteProtocol`` is that protocol with its transport wrapped: writes made during one
turn of the event loop are kept and sent together at the end of the turn (a callback
scheduled with the first of them). An answer's head and body are sent in the same turn, so
they leave in one write; the head of a streamed answer still leaves at once, at the end of
the turn that sent it, before any later chunk. Nothing else changes: the bytes, their order,
flow control (the real transport's buffer) and closing (pending bytes are written first) are
uvicorn's. A websocket upgrade hands the real transport to the websocket protocol.

Checked by ``tests/api/test_accel_onewrite.py``: the same requests to a server with and one
without give the same bytes, in one write per answer instead of two.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

KEPT_MAX = 65_536
"""Bytes kept before they are written without waiting for the end of the turn."""
PROTOCOL = "app.accel.onewrite:OneWriteProtocol"
"""What ``syncgraph serve`` passes as uvicorn's ``http`` option (an import string: the
workers of ``--workers`` import it themselves)."""


class TurnWriter:
    """A transport whose writes in one event-loop turn go out as one (at once when they
    pass ``KEPT_MAX`` bytes, so that the real transport's flow control still sees a large
    answer as it is written)."""

    __slots__ = ("_kept", "_loop", "_pending", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None
        self._kept = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._pending is None:
            self._pending, self._kept = [bytes(data)], len(data)
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(bytes(data))
            self._kept += len(data)
        if self._kept > KEPT_MAX:
            self.flush()

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if not pending or self.transport.is_closing():
            return
        self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + (self._kept if self._pending else 0)

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._pending = None
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a ``TurnWriter``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = TurnWriter(transport, self.loop)  # type: ignore[assignment]

    def handle_websocket_upgrade(self) -> None:
        writer = self.transport
        if isinstance(writer, TurnWriter):
            writer.flush()
            self.transport = writer.transport
        super().handle_websocket_upgrade()
