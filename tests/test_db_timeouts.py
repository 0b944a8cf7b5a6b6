"""Connect and statement timeouts towards PostgreSQL (SYNCGRAPH_DB_CONNECT_TIMEOUT,
SYNCGRAPH_DB_STATEMENT_TIMEOUT): a database that stalls, rather than refuses, makes work
fail after the configured time instead of hanging. Each case runs in a task given far more
time than the configured bound; the task must end by itself, with the timeout's error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from app.db import make_engine, read_transaction, single_read
from app.db.postgres import split_url
from app.main import create_app
from app.settings import Settings

SAFETY = 60.0
"""Only so that a regression fails instead of hanging the suite; the bounds are seconds."""


async def ends_with(work: Awaitable[Any], error: type[BaseException]) -> BaseException:
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=SAFETY)
    if not done:
        task.cancel()
        pytest.fail("the database call hung past every configured timeout")
    exc = task.exception()
    assert isinstance(exc, error), repr(exc)
    return exc


class Stall:
    """A loopback TCP proxy to PostgreSQL that can stop answering (``freeze``): what a
    database behind a dead link looks like. Frozen from the start, it accepts and never
    answers."""

    def __init__(self, host: str, port: int, *, frozen: bool = False) -> None:
        self.upstream = (host, port)
        self.frozen = asyncio.Event()
        if frozen:
            self.frozen.set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Stall]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            for task in self._tasks:
                task.cancel()
            for writer in self._writers:
                writer.close()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    def freeze(self) -> None:
        self.frozen.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self.frozen.is_set():
            return  # accepted, never answered (closed when the stall ends)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers.append(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            if self.frozen.is_set():
                await asyncio.Event().wait()  # the link is dead: nothing goes through
            sink.write(data)
            await sink.drain()


def through(stall: Stall, database_url: str, **options: Any) -> Settings:
    url = split_url(database_url)[0].set(host="127.0.0.1", port=stall.port)
    return Settings(
        database_url=url.render_as_string(hide_password=False), dev=False, pool_size=2, **options
    )


def upstream(database_url: str) -> tuple[str, int]:
    url = split_url(database_url)[0]
    return str(url.host), int(url.port or 5432)


async def test_connecting_to_a_silent_server_fails_after_the_connect_timeout(
    database_urls: dict[str, str],
) -> None:
    async with Stall(*upstream(database_urls["postgres"]), frozen=True).running() as stall:
        engine = make_engine(through(stall, database_urls["postgres"], db_connect_timeout=0.5))
        try:

            async def read() -> None:
                async with single_read(engine) as conn:
                    await conn.execute(sa.text("SELECT 1"))

            await ends_with(read(), TimeoutError)
        finally:
            await engine.dispose()


async def test_a_statement_over_the_statement_timeout_is_cancelled(
    database_urls: dict[str, str],
) -> None:
    settings = Settings(database_url=database_urls["postgres"], dev=False, db_statement_timeout=0.3)
    engine = make_engine(settings)
    try:

        async def sleep() -> None:
            async with read_transaction(engine) as conn:
                await conn.execute(sa.text("SELECT pg_sleep(30)"))

        await ends_with(sleep(), TimeoutError)
        async with read_transaction(engine) as conn:  # the engine goes on working
            sleeping = await conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'"
                    " AND datname = current_database()"
                )
            )
            assert sleeping.scalar_one() == 0  # cancelled on the server too, not left running
    finally:
        await engine.dispose()


async def test_a_database_that_stalls_mid_session_fails_requests_instead_of_hanging(
    database_urls: dict[str, str],
) -> None:
    """Connected and answering, then silent: the next request (authentication reads the
    key) ends after the statement or connect timeout, with an error answer."""
    async with Stall(*upstream(database_urls["postgres"])).running() as stall:
        settings = through(
            stall, database_urls["postgres"], db_connect_timeout=0.5, db_statement_timeout=0.5
        )
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as http,
        ):
            query = {"query": "{ changes { checkpoint } }"}
            headers = {"Authorization": "Bearer sgk_unknown-key"}
            answered = await http.post("/graphql", json=query, headers=headers)
            assert answered.status_code == 401  # the database answers: an unknown key
            stall.freeze()
            stalled = await ends_with(_post_or_raise(http, query, headers), _Answered)
            assert stalled.args[0] >= 500, stalled.args


class _Answered(Exception):
    """The request got an answer (its status in ``args[0]``)."""


async def _post_or_raise(http: httpx.AsyncClient, query: Any, headers: dict[str, str]) -> None:
    try:
        response = await http.post("/graphql", json=query, headers=headers)
    except Exception as exc:  # the app let the error out: no answer at all
        raise _Answered(599, repr(exc)) from exc
    raise _Answered(response.status_code)
