"""PostgreSQL LISTEN on a dedicated connection (outside the pool): NOTIFYs from every server
process wake this process's hubs. Reconnects with backoff; after a reconnect every hub
re-checks, since notifications sent during the outage are lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from app.db.backend import Publisher

NOTIFY_CHANNEL = "syncgraph"
log = logging.getLogger("syncgraph.listener")
PROBE_SECONDS = 10.0


class PgListener:
    def __init__(
        self,
        dsn: str,
        broker: Publisher,
        on_reconnect: Callable[[], None],
        *,
        timeout: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self.broker = broker
        self.on_reconnect = on_reconnect
        self.connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.conn: asyncpg.Connection | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.conn is not None and not self.conn.is_closed():
            self.conn.terminate()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
            self.broker.publish(str(message["t"]), int(message["s"]), kind=str(message["k"]))
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed notification: %r", payload[:200])

    async def _run(self) -> None:
        """Connect (with backoff while the database refuses), listen until the connection is
        lost, and again; the backoff starts afresh after every connection that worked."""
        while True:
            try:
                await self._connect()
                await self._listen()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("listener connection lost: %s; reconnecting", exc)
            self.connected.clear()
            if self.conn is not None and not self.conn.is_closed():
                self.conn.terminate()
            await asyncio.sleep(0.1)  # a connection that fails at once must not spin

    async def _connect(self) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(
                (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
            ),
            wait=wait_exponential(multiplier=0.1, max=5.0),
            before_sleep=lambda state: log.warning(
                "listener cannot connect: %s; retrying",
                state.outcome.exception() if state.outcome else None,
            ),
        ):
            with attempt:
                self.conn = await asyncpg.connect(self.dsn, timeout=self.timeout)

    async def _listen(self) -> None:
        self._lost.clear()
        assert self.conn is not None
        self.conn.add_termination_listener(lambda _c: self._lost.set())
        await self.conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        self.connected.set()
        self.on_reconnect()
        while not self._lost.is_set():
            try:
                await asyncio.wait_for(self._lost.wait(), PROBE_SECONDS)
            except TimeoutError:  # a cheap probe finds half-open connections
                await asyncio.wait_for(self.conn.execute("SELECT 1"), 5)
        raise OSError("the listener connection was terminated")
