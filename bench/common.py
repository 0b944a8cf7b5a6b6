"""Shared benchmark plumbing: a real uvicorn server on a fresh database, timing, tables.

``running_server(backend)`` creates a fresh database (a SQLite file in a temp dir, or a
PostgreSQL database created on ``SYNCGRAPH_BENCH_PG`` and dropped afterwards), migrates it,
creates a tenant with an all-scopes key, and serves ``create_app`` with uvicorn on
127.0.0.1 (a socket bound to port 0) in the caller's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import sqlalchemy as sa
import uvicorn
import websockets
from sqlalchemy import event
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

from app.db import write_transaction
from app.engine.tenants import SCOPES, create_key, create_tenant
from app.main import create_app
from app.migrate import upgrade
from app.settings import Settings
from app.state import AppState, make_state

PG_ADMIN_URL = os.environ.get("SYNCGRAPH_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ("sqlite", "postgres")

RouteFactory = Callable[[AppState, str], list[BaseRoute]]
"""Extra routes for the served app, given its state and the bench tenant's id."""


class BenchError(RuntimeError):
    """The server answered something the benchmark did not expect."""


# --- databases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    backend: str
    url: str
    """SQLAlchemy URL, as the server takes it."""
    driver_target: str
    """What the raw driver connects to: a file path (SQLite) or an asyncpg DSN."""


@asynccontextmanager
async def _sqlite_database() -> AsyncIterator[Database]:
    with tempfile.TemporaryDirectory(prefix="syncgraph-bench-") as tmp:
        path = Path(tmp) / "bench.db"
        yield Database("sqlite", f"sqlite+aiosqlite:///{path}", str(path))


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def _postgres_database() -> AsyncIterator[Database]:
    name = f"syncgraph_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    dsn = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    try:
        yield Database("postgres", dsn.replace("postgresql://", "postgresql+asyncpg://", 1), dsn)
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fresh_database(backend: str) -> Any:
    """An async context manager yielding an empty, not yet migrated ``Database``."""
    if backend == "sqlite":
        return _sqlite_database()
    if backend == "postgres":
        return _postgres_database()
    raise ValueError(f"unknown backend {backend!r}")


# --- the server ---------------------------------------------------------------------------


@dataclass
class BenchServer:
    db: Database
    state: AppState
    app: Starlette
    base_url: str
    tenant_id: str
    key: str
    http: httpx.AsyncClient

    async def graphql(self, body: bytes) -> dict[str, Any]:
        """POST a pre-encoded GraphQL request; the ``data`` of a clean answer."""
        response = await self.http.post("/graphql", content=body)
        payload = orjson.loads(response.content)
        if response.status_code != 200 or payload.get("errors"):
            raise BenchError(f"HTTP {response.status_code}: {str(payload)[:600]}")
        return dict(payload["data"])

    async def database_version(self) -> str:
        query = "SELECT sqlite_version()" if self.db.backend == "sqlite" else "SHOW server_version"
        async with self.state.engine.connect() as conn:
            version = (await conn.execute(sa.text(query))).scalar_one()
        return f"{'SQLite' if self.db.backend == 'sqlite' else 'PostgreSQL'} {version}"

    async def new_tenant(self, name: str) -> str:
        """Another tenant in the same database (for raw-driver writes beside the server's)."""
        async with write_transaction(self.state.engine) as conn:
            return await create_tenant(conn, f"{name}-{uuid.uuid4().hex[:6]}")


def graphql_body(query: str, variables: dict[str, Any] | None = None) -> bytes:
    return orjson.dumps({"query": query, "variables": variables or {}})


async def _tenant_and_key(state: AppState) -> tuple[str, str]:
    async with write_transaction(state.engine) as conn:
        tenant_id = await create_tenant(conn, f"bench-{uuid.uuid4().hex[:6]}")
        issued = await create_key(conn, tenant_id=tenant_id, scopes=SCOPES)
    return tenant_id, issued.key


def _bound_socket() -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto is TCP;
    # with proto 0, Nagle + delayed ACK add ~40 ms to every response.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[str]:
    """Run uvicorn in this event loop on a free port; yields the base URL."""
    sock = _bound_socket()
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                await task
                raise BenchError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@asynccontextmanager
async def running_server(
    backend: str, *, routes: RouteFactory | None = None
) -> AsyncIterator[BenchServer]:
    """A migrated fresh database, a tenant and key, and uvicorn serving the app."""
    async with AsyncExitStack() as stack:
        db = await stack.enter_async_context(fresh_database(backend))
        await asyncio.to_thread(upgrade, db.url)
        state = make_state(Settings(database_url=db.url, dev=False, log_level="WARNING"))
        stack.push_async_callback(state.close)  # idempotent; the lifespan closes it too
        tenant_id, key = await _tenant_and_key(state)
        app = create_app(state=state)
        for route in routes(state, tenant_id) if routes else []:
            app.router.routes.insert(0, route)
        base_url = await stack.enter_async_context(serve(app))
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=base_url,
                timeout=300,
                headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
            )
        )
        yield BenchServer(db, state, app, base_url, tenant_id, key, http)


# --- timing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Wall-clock samples of one measured thing, in seconds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def total(self) -> float:
        return sum(self.samples)


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    """Seconds one call of ``fn`` took."""
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def median_of(fn: Callable[[], Awaitable[object]], *, runs: int, warmup: int = 1) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``runs`` times timed."""
    for _ in range(warmup):
        await fn()
    return Timing(tuple([await timed(fn) for _ in range(runs)]))


async def timed_pair(
    a: Callable[[], Awaitable[object]],
    b: Callable[[], Awaitable[object]],
    *,
    runs: int,
    warmup: int = 1,
) -> tuple[Timing, Timing]:
    """Time two things alternately (a, b, a, b, …) so drift and noise hit both alike."""
    for _ in range(warmup):
        await a()
        await b()
    ta, tb = [], []
    for _ in range(runs):
        ta.append(await timed(a))
        tb.append(await timed(b))
    return Timing(tuple(ta)), Timing(tuple(tb))


class Budget:
    """A wall-clock budget shared by the parts of a run: each part may use an even share of
    what is left, so fast parts leave time for slow ones. ``seconds=None``: no limit."""

    def __init__(self, seconds: float | None, parts: int) -> None:
        self.end = time.perf_counter() + seconds if seconds else None
        self.parts_left = parts

    def next_part(self) -> float | None:
        """The ``perf_counter`` deadline of the next part (None without a budget)."""
        if self.end is None:
            return None
        now = time.perf_counter()
        share = max(self.end - now, 0.0) / max(self.parts_left, 1)
        self.parts_left -= 1
        return now + share


@dataclass(frozen=True)
class Split:
    """Where one request's time went (seconds); the four parts add up to ``total``."""

    total: float
    execute: float
    """Inside Strawberry's ``schema.execute``: parse, validation, input coercion and
    conversion, resolvers, output completion."""
    engine: float
    """Inside the ``SyncService`` call the resolver makes (``sync`` or ``changes``)."""
    engine_sql: float
    """Statements run during the engine call (driver and database, as SQLAlchemy sees them)."""
    sql: float = 0.0
    """Every statement of the request (authentication's included)."""

    @property
    def transport(self) -> float:
        """HTTP, middleware, authentication (its queries included), JSON in and out."""
        return self.total - self.execute

    @property
    def graphql(self) -> float:
        return self.execute - self.engine

    @property
    def engine_python(self) -> float:
        return self.engine - self.engine_sql


class Probe:
    """Bench-only timers wrapped around the served app's objects (one request at a time):
    ``schema.execute`` of the GraphQL view, ``SyncService.sync``/``changes``, and every SQL
    statement (SQLAlchemy cursor events). Adds two ``perf_counter`` calls per hook."""

    def __init__(self, app: Starlette, state: AppState) -> None:
        self.times = {"execute": 0.0, "engine": 0.0, "sql": 0.0, "engine_sql": 0.0}
        self.statements: dict[str, list[float]] = {}
        """Statement label -> [calls, seconds], over the probe's whole life."""
        view = next(r.endpoint for r in app.routes if isinstance(r, Route) and r.path == "/graphql")
        self._wrap(view.schema, "execute", "execute")
        for name in ("sync", "changes"):
            self._wrap(state.service, name, "engine")
        self._listen(state.engine.sync_engine)

    def _wrap(self, obj: object, name: str, bucket: str) -> None:
        original = getattr(obj, name)

        async def timed_call(*args: Any, **kwargs: Any) -> Any:
            start, sql = time.perf_counter(), self.times["sql"]
            try:
                return await original(*args, **kwargs)
            finally:
                self.times[bucket] += time.perf_counter() - start
                if bucket == "engine":
                    self.times["engine_sql"] += self.times["sql"] - sql

        setattr(obj, name, timed_call)

    def _listen(self, engine: sa.Engine) -> None:
        def before(conn: sa.Connection, *_: Any) -> None:
            conn.info["bench_t0"] = time.perf_counter()

        def after(conn: sa.Connection, _cursor: Any, statement: str, *_: Any) -> None:
            elapsed = time.perf_counter() - conn.info.pop("bench_t0")
            self.times["sql"] += elapsed
            entry = self.statements.setdefault(statement_label(statement), [0, 0.0])
            entry[0] += 1
            entry[1] += elapsed

        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)

    async def measure(self, fn: Callable[[], Awaitable[object]]) -> Split:
        """Run one request and split its time."""
        self.times = dict.fromkeys(self.times, 0.0)
        total = await timed(fn)
        t = self.times
        return Split(total, t["execute"], t["engine"], t["engine_sql"], t["sql"])


def statement_label(sql: str, width: int = 96) -> str:
    """A short, recognisable form of a statement (column lists elided)."""
    text = " ".join(sql[:800].split())
    text = re.sub(r"^SELECT ([^,]{1,40}), .*? FROM ", r"SELECT \1, … FROM ", text)
    if text.startswith("INSERT INTO "):
        table = text.split()[2]
        text = f"INSERT INTO {table} (…) VALUES (…)"
        text += " ON CONFLICT DO UPDATE" if "ON CONFLICT" in sql else ""
    return text if len(text) <= width else text[: width - 1] + "…"


def print_statements(title: str, probe: Probe, top: int = 8) -> None:
    """The statements that took the most time over the probe's life."""
    ranked = sorted(probe.statements.items(), key=lambda kv: -kv[1][1])[:top]
    rows = [[label, f"{int(n):,}", f"{t:.2f}", ms(t / n)] for label, (n, t) in ranked]
    print_table(title, ("statement", "calls", "total s", "ms/call"), rows)


def mean_split(splits: Sequence[Split]) -> Split:
    n = max(len(splits), 1)
    return Split(
        sum(s.total for s in splits) / n,
        sum(s.execute for s in splits) / n,
        sum(s.engine for s in splits) / n,
        sum(s.engine_sql for s in splits) / n,
        sum(s.sql for s in splits) / n,
    )


SPLIT_HEADERS = ("request", "HTTP+auth+JSON", "GraphQL layer", "engine Python", "engine SQL")


def split_cells(split: Split) -> list[str]:
    """The split in ms, with each part's share of the request."""
    parts = (split.transport, split.graphql, split.engine_python, split.engine_sql)
    share = [f"{ms(p)} ({p / split.total:.0%})" for p in parts] if split.total else ["-"] * 4
    return [ms(split.total), *share]


# --- output -------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds > 0 else "-"


def ratio(value: float) -> str:
    return f"{value:.2f}x"


def _is_number(text: str) -> bool:
    return text[:1].isdigit() or (text[:1] == "-" and text[1:2].isdigit())


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """An aligned table: numbers right, text left."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if _is_number(v) else v.ljust(w) for v, w in zip(values, widths, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print(f"\n{title}")
    print(line(list(headers)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row))
    sys.stdout.flush()


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def code_version() -> str:
    """The checked-out commit, read from .git without running git (uncommitted changes in
    the working tree are measured too)."""
    git = Path(__file__).resolve().parent.parent / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:10]
        ref = head.removeprefix("ref: ")
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:10]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line[:10]
    except OSError:
        pass
    return "unknown"


def machine_line() -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    try:
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    except RuntimeError:
        loop = "none"
    return (
        f"commit {code_version()}; python {platform.python_version()}, {os.cpu_count()} cores, "
        f"SQLite {sqlite3.sqlite_version}, {loop} event loop, load average {load}"
    )


# --- command line -------------------------------------------------------------------------


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgres", "both"),
        default="both",
        help="database backend(s) to run against (default: both)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a fraction of the rows and runs (smoke check)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=150.0,
        help="wall-clock seconds for the whole run; a part that would overrun stops early "
        "and is flagged (0: no limit; default 150)",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop for server and client; auto (default) is what uvicorn picks for "
        "`syncgraph serve`: uvloop when it is installed, as with uvicorn[standard]",
    )
    return parser.parse_args(argv)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop the server would run on (uvicorn's ``loop="auto"``: uvloop if present)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def run_on_loop(coro: Coroutine[Any, Any, Any], choice: str = "auto") -> Any:
    """``asyncio.run`` on the chosen loop (see ``loop_factory``)."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(coro)


def backends(choice: str) -> list[str]:
    return list(BACKENDS) if choice == "both" else [choice]


def run(main: Callable[[argparse.Namespace], Coroutine[Any, Any, None]], description: str) -> None:
    args = parse_args(description)
    started = time.perf_counter()
    run_on_loop(main(args), args.loop)
    note(f"done in {time.perf_counter() - started:.1f} s")


async def ws_subscribe(
    host: str,
    token: str,
    tenant_id: str,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    compression: bool = False,
    timeout: float = 60,
) -> Any:
    """A graphql-transport-ws connection authenticated in ``connection_init`` with one
    subscription (id "1") started; the ``websockets`` client connection."""
    ws = await websockets.connect(
        f"ws://{host}/graphql",
        subprotocols=[websockets.Subprotocol("graphql-transport-ws")],
        compression="deflate" if compression else None,
        open_timeout=timeout,
        ping_interval=None,
        max_queue=None,
    )
    init = {"authorization": f"Bearer {token}", "tenant": tenant_id}
    await ws.send(orjson.dumps({"type": "connection_init", "payload": init}).decode())
    ack = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
    if ack.get("type") != "connection_ack":
        await ws.close()
        raise BenchError(f"no connection_ack: {ack}")
    payload: dict[str, Any] = {"query": query}
    if variables is not None:
        payload["variables"] = variables
    await ws.send(orjson.dumps({"id": "1", "type": "subscribe", "payload": payload}).decode())
    return ws
