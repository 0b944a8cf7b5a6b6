"""(e) Live subscriptions: N websocket subscribers on one tenant while a writer commits.

A fresh database is migrated and served by one ``syncgraph serve`` process of its own (a
subprocess, so that its CPU time and memory can be read from ``/proc/<pid>`` and the load
generator does not share its event loop). N subscribers (the ``websockets`` library,
graphql-transport-ws, permessage-deflate as browsers negotiate it) each open a websocket,
authenticate in ``connection_init`` and subscribe to
``changes { checkpoint users { inserted { id name } updated { id name } deleted } }``.
When all of them have their first emission, a writer commits small ``sync`` requests (one
new user each) at a fixed rate for a fixed time, each request started on schedule whatever
the previous one is doing.

Reported per N: latency from the sync response (the commit is done) to the receipt of that
commit's emission at each subscriber, p50/p99/max (an emission may arrive before the writer
has read its own response: such samples are negative), and the same from the moment the
request was sent; hub reads per commit (``syncgraph_hub_reads`` from ``/metrics``); lagging
switches; whether every subscriber received every change exactly once; the server
process's CPU seconds (``/proc/<pid>/stat``) while connecting and while writing, and its
RSS (``/proc/<pid>/status``) idle, with N subscribers, and at the end.

The subscribers and the writer run in this process (one event loop); on a small machine
they share its cores with the server and the database, so the latency includes the time
this process takes to get to each message.

``--views`` (issue #14: subscribers that share a view and parameters share one evaluation
per commit) measures instead, on a school of ``--pupils`` pupils (``bench_views``' school),
the same N subscribers twice, each run with a server process of its own: unbound (one
``sync:read`` key, from the tenant's latest checkpoint), then bound to ``guardian(user)`` for
``--guardians`` (100) guardians of 1-2 children, N / 100 keys each (so 100 cohorts), both
subscribed to the guardian's collections (users, members, classrooms). The writer renames a
child of a random keyed guardian at ``--rate`` for ``--duration``, the same schedule in both
runs. Reported per run: the fan-out of each commit (its answer to the writer -> the last
receipt among the subscribers that see it), per-emission latency, server CPU per commit,
view pulls per commit (``syncgraph_view_pulls``), and bound / unbound.

    cd /work/main && .venv/bin/python -m bench.bench_subscriptions --backend postgres
    .venv/bin/python -m bench.bench_subscriptions --views       # about 2-3 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import websockets

from app.db import make_engine, write_transaction
from app.engine.tenants import SCOPES, create_key, create_tenant
from app.engine.views.spec import check_binding
from app.engine.write.seq import current_seq
from app.engine.write.sync import Batch
from app.migrate import upgrade
from app.settings import Settings
from app.state import make_state
from bench.bench_views import School
from bench.common import (
    BenchError,
    fresh_database,
    machine_line,
    note,
    print_table,
    run_on_loop,
    ws_subscribe,
)

SYNCGRAPH = str(Path(sys.executable).with_name("syncgraph"))
SUBSCRIPTION = """subscription { changes {
  checkpoint users { inserted { id name } updated { id name } deleted } } }"""
SYNC = """mutation($input: SyncInput!) { sync(input: $input) { checkpoint } }"""
CLK_TCK = os.sysconf("SC_CLK_TCK")
S = TypeVar("S", bound="Subscriber")
DRAIN_SECONDS = 30.0
"""How long to wait, after the last write, for every subscriber to get every change."""


# --- the server process --------------------------------------------------------------------


@dataclass
class ServerProcess:
    pid: int
    host: str
    log: Path

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def memory_mib(self) -> tuple[float, float]:
        """(RSS, peak RSS) in MiB."""
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines()
        )
        return (int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024)

    async def metrics(self, http: httpx.AsyncClient) -> dict[str, float]:
        response = await http.get(f"http://{self.host}/metrics")
        values = {}
        for line in response.text.splitlines():
            if line.startswith("syncgraph_") and " " in line:
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def server_process(
    database_url: str, *, max_connections: int, logs: Path
) -> AsyncIterator[ServerProcess]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCGRAPH_")}
    env.update(
        DATABASE_URL=database_url,
        SYNCGRAPH_LOG_LEVEL="WARNING",
        # every subscriber uses the bench key; the default per-key limit is 1000
        SYNCGRAPH_MAX_CONNECTIONS_PER_KEY=str(max_connections),
    )
    log = logs / f"serve-{port}.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            SYNCGRAPH, "serve", "--port", str(port), "--no-dev", env=env, stdout=out, stderr=out
        )
    try:
        host = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as http:
            while True:
                if process.returncode is not None:
                    raise BenchError(f"the server stopped: {log.read_text()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://{host}/healthz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise BenchError("the server did not start within 60 s")
                await asyncio.sleep(0.1)
        yield ServerProcess(process.pid, host, log)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def tenant_and_key(database_url: str) -> tuple[str, str]:
    engine = make_engine(Settings(database_url=database_url, dev=False))
    try:
        async with write_transaction(engine) as conn:
            tenant_id = await create_tenant(conn, "bench-subscriptions")
            issued = await create_key(conn, tenant_id=tenant_id, scopes=SCOPES)
        return tenant_id, issued.key
    finally:
        await engine.dispose()


async def tenant_seq(database_url: str, tenant_id: str) -> int:
    """The tenant's feed position as the database has it (writes that timed out on the
    client side may still have committed)."""
    engine = make_engine(Settings(database_url=database_url, dev=False))
    try:
        async with engine.connect() as conn:
            return await current_seq(conn, tenant_id)
    finally:
        await engine.dispose()


# --- subscribers ---------------------------------------------------------------------------


@dataclass
class Subscriber:
    ws: Any
    receipts: list[tuple[str, float]] = field(default_factory=list)
    """(checkpoint, perf_counter at receipt) of every live emission."""
    rows: int = 0
    """Changed records received after the first emission."""
    first: asyncio.Event = field(default_factory=asyncio.Event)
    errors: list[str] = field(default_factory=list)

    async def read(self) -> None:
        try:
            async for raw in self.ws:
                now = time.perf_counter()
                message = orjson.loads(raw)
                kind = message.get("type")
                if kind != "next":
                    if kind not in ("ping", "pong"):
                        self.errors.append(str(message)[:300])
                    continue
                payload = message["payload"]
                if payload.get("errors"):
                    self.errors.append(str(payload["errors"])[:300])
                    continue
                changes = payload["data"]["changes"]
                if not self.first.is_set():
                    if not changes.get("hasMore"):  # the catch-up's last page
                        self.first.set()
                    continue
                self.take(changes, now)
        except websockets.ConnectionClosed as closed:
            self.errors.append(f"closed: {closed}")

    def take(self, changes: dict[str, Any], now: float) -> None:
        """A live emission of ``SUBSCRIPTION``."""
        users = changes["users"]
        self.rows += len(users["inserted"]) + len(users["updated"]) + len(users["deleted"])
        self.receipts.append((changes["checkpoint"], now))


async def connect_all(
    host: str,
    tenant_id: str,
    keys: list[str],
    make: Callable[[Any, int], S],
    *,
    compression: bool,
    concurrency: int,
    query: str = SUBSCRIPTION,
    variables: dict[str, Any] | None = None,
) -> tuple[list[S], list[asyncio.Task[None]]]:
    """One subscriber per key (``make(ws, index)``), each with its first emission."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, key: str) -> S:
        async with gate:
            ws = await ws_subscribe(host, key, tenant_id, query, variables, compression=compression)
        return make(ws, index)

    subscribers = list(await asyncio.gather(*(one(i, key) for i, key in enumerate(keys))))
    readers = [asyncio.create_task(s.read()) for s in subscribers]
    await asyncio.wait_for(asyncio.gather(*(s.first.wait() for s in subscribers)), 120)
    return subscribers, readers


# --- the writer ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Commit:
    sent: float
    answered: float
    checkpoint: str
    number: int
    """Its place in the writer's schedule."""


WRITE_TIMEOUT = 60.0
"""Seconds a write may take before it counts as failed (a saturated server takes long)."""


def new_user(n: int) -> dict[str, Any]:
    return {"users": {"data": [{"name": f"u{n}"}]}}


async def write_for(
    http: httpx.AsyncClient,
    host: str,
    key: str,
    *,
    rate: float,
    seconds: float,
    inputs: Callable[[int], dict[str, Any]] = new_user,
) -> tuple[list[Commit], list[str]]:
    """``rate`` sync requests per second for ``seconds`` (the n-th with ``inputs(n)``, by
    default one new user), each on schedule; the commits in seq order, and the writes that
    failed."""
    commits: list[Commit] = []
    failed: list[str] = []

    async def one(n: int) -> None:
        body = {"query": SYNC, "variables": {"input": inputs(n)}}
        sent = time.perf_counter()
        try:
            response = await http.post(
                f"http://{host}/graphql",
                content=orjson.dumps(body),
                headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
                timeout=WRITE_TIMEOUT,
            )
        except httpx.HTTPError as exc:
            failed.append(f"{type(exc).__name__} after {time.perf_counter() - sent:.0f} s")
            return
        answered = time.perf_counter()
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            payload = {"errors": response.text[:200]}
        if response.status_code != 200 or payload.get("errors"):
            failed.append(f"HTTP {response.status_code} {str(payload)[:200]}")
            return
        commits.append(Commit(sent, answered, payload["data"]["sync"]["checkpoint"], n))

    start = time.perf_counter()
    tasks = []
    for n in range(round(rate * seconds)):
        await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(n)))
    await asyncio.gather(*tasks)
    return sorted(commits, key=lambda c: int(c.checkpoint)), failed


# --- one run -------------------------------------------------------------------------------


@dataclass
class Result:
    subscribers: int
    commits: int
    rate: float
    failed_writes: int
    connect_seconds: float
    from_commit: list[float]
    from_request: list[float]
    hub_reads: float
    lagging: float
    fanout_mean: float
    complete: int
    missing_rows: int
    extra_emissions: int
    errors: list[str]
    cpu_connect: float
    cpu_write: float
    write_seconds: float
    rss_idle: float
    rss_connected: float
    rss_end: float
    rss_peak: float
    client_cpu: float
    """This process's CPU seconds (subscribers and writer) over the same stretch."""


def first_traceback(log: Path) -> list[str]:
    """The server log's error lines and its first traceback, if any."""
    lines = log.read_text(errors="replace").splitlines()
    errors = [i for i, line in enumerate(lines) if "ERROR" in line]
    if not errors:
        return []
    start = errors[0]
    end = next(
        (i for i in range(start + 2, len(lines)) if lines[i][:1] not in (" ", "T", "")),
        len(lines),
    )
    return [f"{len(errors)} ERROR lines in the server log; the first:", *lines[start:end]]


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def run_one(
    database_url: str,
    count: int,
    args: argparse.Namespace,
    logs: Path,
) -> Result:
    tenant_id, key = await tenant_and_key(database_url)
    async with (
        server_process(database_url, max_connections=count + 100, logs=logs) as server,
        httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1000)) as http,
    ):
        rss_idle, _ = server.memory_mib()
        cpu0 = server.cpu_seconds()
        started = time.perf_counter()
        subscribers, readers = await connect_all(
            server.host,
            tenant_id,
            [key] * count,
            lambda ws, _: Subscriber(ws),
            compression=not args.no_compression,
            concurrency=args.connect_concurrency,
        )
        connect_seconds = time.perf_counter() - started
        await asyncio.sleep(1.0)  # let the server settle
        cpu1 = server.cpu_seconds()
        client1 = time.process_time()
        rss_connected, _ = server.memory_mib()
        before = await server.metrics(http)
        note(f"  {count} subscribers connected in {connect_seconds:.1f} s; writing")

        write_started = time.perf_counter()
        commits, failed = await write_for(
            http, server.host, key, rate=args.rate, seconds=args.duration
        )
        last = str(await tenant_seq(database_url, tenant_id))
        deadline = time.perf_counter() + DRAIN_SECONDS
        while time.perf_counter() < deadline:
            if all(s.receipts and s.receipts[-1][0] == last for s in subscribers):
                break
            await asyncio.sleep(0.05)
        write_seconds = time.perf_counter() - write_started
        cpu2 = server.cpu_seconds()
        client2 = time.process_time()
        after = await server.metrics(http)
        rss_end, rss_peak = server.memory_mib()
        server_errors = first_traceback(server.log)

        for s in subscribers:
            await s.ws.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    by_checkpoint = {c.checkpoint: c for c in commits}
    from_commit, from_request = [], []
    extra = 0
    for s in subscribers:
        for checkpoint, received in s.receipts:
            commit = by_checkpoint.get(checkpoint)
            if commit is None:
                extra += 1  # a write that timed out here, or a page spanning several commits
                continue
            from_commit.append(received - commit.answered)
            from_request.append(received - commit.sent)
    expected = int(last)  # one new user per committed write (seq starts at 0)
    missing = sum(max(0, expected - s.rows) for s in subscribers)
    errors = [e for s in subscribers for e in s.errors if not e.startswith("closed: sent 1000")]
    errors = [f"{len(failed)} writes failed: {failed[:2]}"] * bool(failed) + errors
    if server_errors:
        note("\n".join(server_errors))
        errors.insert(0, server_errors[0])

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    fanout_count = delta("syncgraph_fanout_seconds_count")
    return Result(
        subscribers=count,
        commits=len(commits),
        rate=len(commits) / (commits[-1].sent - commits[0].sent) if len(commits) > 1 else 0.0,
        failed_writes=len(failed),
        connect_seconds=connect_seconds,
        from_commit=from_commit,
        from_request=from_request,
        hub_reads=delta("syncgraph_hub_reads_total"),
        lagging=delta("syncgraph_lagging_subscribers_total"),
        fanout_mean=delta("syncgraph_fanout_seconds_sum") / fanout_count if fanout_count else 0,
        complete=sum(1 for s in subscribers if s.rows == expected),
        missing_rows=missing,
        extra_emissions=extra,
        errors=errors[:5],
        cpu_connect=cpu1 - cpu0,
        cpu_write=cpu2 - cpu1,
        write_seconds=write_seconds,
        rss_idle=rss_idle,
        rss_connected=rss_connected,
        rss_end=rss_end,
        rss_peak=rss_peak,
        client_cpu=client2 - client1,
    )


def raise_open_files(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def report(results: list[Result], args: argparse.Namespace, backend: str) -> None:
    rows = []
    for r in results:
        rows.append(
            [
                f"{r.subscribers:,}",
                f"{r.commits} ({r.rate:.1f}/s)"
                + (f", {r.failed_writes} failed" if r.failed_writes else ""),
                fmt_ms(quantile(r.from_commit, 0.5)),
                fmt_ms(quantile(r.from_commit, 0.99)),
                fmt_ms(max(r.from_commit, default=float("nan"))),
                fmt_ms(quantile(r.from_request, 0.5)),
                fmt_ms(quantile(r.from_request, 0.99)),
                f"{r.hub_reads / max(r.commits, 1):.2f}",
                f"{r.lagging:.0f}",
                f"{r.complete:,}/{r.subscribers:,}",
            ]
        )
    print_table(
        f"Live subscriptions on {backend}: latency from commit to receipt (ms), "
        f"{args.rate:g} one-user syncs/s for {args.duration:g} s",
        (
            "subscribers",
            "commits",
            "p50",
            "p99",
            "max",
            "p50 from request",
            "p99 from request",
            "hub reads/commit",
            "lag switches",
            f"got every change ({DRAIN_SECONDS:g} s)",
        ),
        rows,
    )
    rows = []
    for r in results:
        rows.append(
            [
                f"{r.subscribers:,}",
                f"{r.connect_seconds:.1f}",
                f"{r.cpu_connect:.1f}",
                f"{r.cpu_write:.1f} ({r.cpu_write / r.write_seconds:.0%} of a core)",
                f"{r.cpu_write / max(r.commits, 1) * 1000:,.0f}",
                fmt_ms(r.fanout_mean),
                f"{r.rss_idle:,.0f}",
                f"{r.rss_connected:,.0f}",
                f"{(r.rss_connected - r.rss_idle) * 1024 / r.subscribers:,.0f}",
                f"{r.rss_end:,.0f} (peak {r.rss_peak:,.0f})",
                f"{r.client_cpu:.1f}",
            ]
        )
    print_table(
        "The server process (CPU seconds and RSS from /proc)",
        (
            "subscribers",
            "connect s",
            "CPU connecting s",
            "CPU while writing s",
            "CPU ms/commit",
            "hub fan-out ms",
            "RSS idle MiB",
            "RSS connected MiB",
            "KiB/subscriber",
            "RSS end MiB",
            "bench client CPU s",
        ),
        rows,
    )
    for r in results:
        if r.missing_rows or r.errors or r.extra_emissions or r.failed_writes:
            print(
                f"  {r.subscribers:,} subscribers: {r.missing_rows} changes not received "
                f"{DRAIN_SECONDS:g} s after the last write, "
                f"{r.extra_emissions} emissions not matched to an answered write, "
                f"errors: {r.errors}"
            )
    print(f"\n{machine_line()}")
    sys.stdout.flush()


# --- through a view (issue #14, ``--views``) -------------------------------------------------

PLURALS = ("users", "members", "classrooms")
SCHOOL_SUBSCRIPTION = (
    "subscription($since: String) { changes(since: $since) { checkpoint hasMore "
    + " ".join(f"{p} {{ inserted {{ id name }} updated {{ id name }} deleted }}" for p in PLURALS)
    + " } }"
)
"""A guardian's phone: the guardian, their children, their classrooms (unbound: everyone)."""
LOAD_BATCH = 1_000


@dataclass
class SchoolSubscriber(Subscriber):
    guardian: int | None = None
    """The guardian its key is bound to (a user index); None: an unbound key."""
    got: dict[int, float] = field(default_factory=dict)
    """Write number -> perf_counter at the receipt of the first emission carrying it."""
    latest: dict[int, int] = field(default_factory=dict)
    """Pupil -> the write number of the last name received for it (emissions come in commit
    order, which need not be the writes' order)."""
    emissions: int = 0

    def take(self, changes: dict[str, Any], now: float) -> None:
        self.emissions += 1
        members = changes["members"]
        for record in members["inserted"] + members["updated"]:
            pupil, number = renamed(record["name"])
            if number is not None:
                self.got.setdefault(number, now)
                self.latest[pupil] = number


def renamed(name: str) -> tuple[int, int | None]:
    """(pupil, write number) of a pupil's name: ``Pupil <m>`` as loaded, then ``Pupil <m>
    w<n>`` after the n-th write."""
    words = name.split()
    return int(words[1]), int(words[2][1:]) if len(words) > 2 else None


@dataclass
class SchoolSetup:
    """The school tenant, its keys, and the writer's schedule (the same for both runs)."""

    tenant_id: str
    writer_key: str
    reader_key: str
    """One unbound ``sync:read`` key for every unbound subscriber."""
    bound_keys: list[str]
    guardian_of_key: list[int]
    school: School
    schedule: list[int]
    """The pupil the n-th write renames: a child of a random guardian among the keyed ones."""

    def rename(self, n: int) -> dict[str, Any]:
        pupil = self.schedule[n % len(self.schedule)]
        return {"members": {"data": [self.school.member_item(pupil, f"Pupil {pupil} w{n}")]}}

    def sees(self, subscriber: SchoolSubscriber, pupil: int) -> bool:
        guardian = subscriber.guardian
        return guardian is None or guardian in self.school.guardians[pupil]


async def load_school(database_url: str, args: argparse.Namespace, count: int) -> SchoolSetup:
    """A school of ``--pupils`` pupils (``bench_views``' ``School``: 1-2 guardians each,
    classrooms of 50) loaded through ``SyncService.sync``; ``count`` keys bound to
    ``guardian(user)`` for ``--guardians`` guardians of 1-2 children (as many keys each)."""
    state = make_state(Settings(database_url=database_url, dev=False, log_level="WARNING"))
    try:
        async with write_transaction(state.engine) as conn:
            tenant_id = await create_tenant(conn, "bench-subscriptions-views")
            writer = await create_key(conn, tenant_id=tenant_id, scopes=SCOPES)
            reader = await create_key(conn, tenant_id=tenant_id, scopes=("sync:read",))
        school = School()
        rows = school.grow(args.pupils)
        for plural in PLURALS:
            for start in range(0, len(rows[plural]), LOAD_BATCH):
                batch = {plural: Batch(data=rows[plural][start : start + LOAD_BATCH])}
                result = await state.service.sync(tenant_id, batch)
                if result.total("failed"):
                    raise BenchError(f"{plural}: {result.entities[plural].errors[:3]}")
        if database_url.startswith("postgresql"):
            async with state.engine.connect() as conn:
                autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await autocommit.exec_driver_sql("ANALYZE users, members, classrooms")
        few = [u for u in sorted(school.children) if len(school.children[u]) <= 2]
        guardians = school.rng.sample(few, min(args.guardians, len(few)))
        per = max(1, count // len(guardians))
        of_key = [u for u in guardians for _ in range(per)][:count]
        bound = []
        async with write_transaction(state.engine) as conn:
            for u in of_key:
                view = check_binding(state.registry, "guardian", {"user": school.users[u]})
                issued = await create_key(
                    conn, tenant_id=tenant_id, scopes=("sync:read",), view=view
                )
                bound.append(issued.key)
    finally:
        await state.close()
    rng = random.Random(1415)
    schedule = [
        rng.choice(sorted(school.children[rng.choice(guardians)]))
        for _ in range(round(args.rate * args.duration) + 1)
    ]
    return SchoolSetup(tenant_id, writer.key, reader.key, bound, of_key, school, schedule)


@dataclass
class FanOut:
    mode: str
    subscribers: int
    commits: int
    rate: float
    failed_writes: int
    connect_seconds: float
    per_commit: list[float]
    """Per commit: its answer to the writer -> the last receipt among the subscribers that
    see it (commits every such subscriber received on their own)."""
    superseded: int
    """Commits whose pupil was renamed again before some subscriber got an emission of it."""
    per_emission: list[float]
    emissions: int
    cpu_connect: float
    cpu_write: float
    write_seconds: float
    view_pulls: float
    hub_reads: float
    lagging: float
    complete: int
    errors: list[str]


async def run_school(
    database_url: str, setup: SchoolSetup, *, bound: bool, args: argparse.Namespace, logs: Path
) -> FanOut:
    """One server process, ``len(setup.bound_keys)`` subscribers (bound: each through its
    guardian's view; unbound: all on one key, from the tenant's latest checkpoint), and
    ``--rate`` renames per second for ``--duration`` seconds."""
    count = len(setup.bound_keys)
    keys = setup.bound_keys if bound else [setup.reader_key] * count
    since = None if bound else {"since": str(await tenant_seq(database_url, setup.tenant_id))}
    first_write = 0 if bound else len(setup.schedule)  # names differ between the two runs

    def make(ws: Any, index: int) -> SchoolSubscriber:
        return SchoolSubscriber(ws, guardian=setup.guardian_of_key[index] if bound else None)

    async with (
        server_process(database_url, max_connections=count + 100, logs=logs) as server,
        httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=1000)) as http,
    ):
        cpu0 = server.cpu_seconds()
        started = time.perf_counter()
        subscribers, readers = await connect_all(
            server.host,
            setup.tenant_id,
            keys,
            make,
            compression=not args.no_compression,
            concurrency=args.connect_concurrency,
            query=SCHOOL_SUBSCRIPTION,
            variables=since,
        )
        connect_seconds = time.perf_counter() - started
        await asyncio.sleep(1.0)  # let the server settle
        cpu1 = server.cpu_seconds()
        before = await server.metrics(http)
        note(f"  {'bound' if bound else 'unbound'}: {count} subscribers in {connect_seconds:.1f} s")

        write_started = time.perf_counter()
        commits, failed = await write_for(
            http,
            server.host,
            setup.writer_key,
            rate=args.rate,
            seconds=args.duration,
            inputs=lambda n: setup.rename(first_write + n),
        )
        commits = [replace(c, number=first_write + c.number) for c in commits]
        last: dict[int, int] = {}
        for commit in commits:  # in seq order: the name each renamed pupil has now
            last[setup.schedule[commit.number % len(setup.schedule)]] = commit.number

        def current(s: SchoolSubscriber) -> bool:
            return all(
                s.latest.get(pupil) == number
                for pupil, number in last.items()
                if setup.sees(s, pupil)
            )

        deadline = time.perf_counter() + DRAIN_SECONDS
        while time.perf_counter() < deadline and not all(map(current, subscribers)):
            await asyncio.sleep(0.05)
        write_seconds = time.perf_counter() - write_started
        cpu2 = server.cpu_seconds()
        after = await server.metrics(http)
        server_errors = first_traceback(server.log)
        for s in subscribers:
            await s.ws.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    per_commit, per_emission, superseded = [], [], 0
    for commit in commits:
        pupil = setup.schedule[commit.number % len(setup.schedule)]
        audience = [s for s in subscribers if setup.sees(s, pupil)]
        receipts = [s.got.get(commit.number) for s in audience]
        per_emission += [t - commit.answered for t in receipts if t is not None]
        if None in receipts:
            superseded += 1
        else:
            per_commit.append(max(t for t in receipts if t is not None) - commit.answered)
    errors = [e for s in subscribers for e in s.errors if not e.startswith("closed: sent 1000")]
    errors = [f"{len(failed)} writes failed: {failed[:2]}"] * bool(failed) + errors
    if server_errors:
        note("\n".join(server_errors))
        errors.insert(0, server_errors[0])

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    return FanOut(
        mode=f"bound, {len(set(setup.guardian_of_key))} guardians" if bound else "unbound",
        subscribers=count,
        commits=len(commits),
        rate=len(commits) / (commits[-1].sent - commits[0].sent) if len(commits) > 1 else 0.0,
        failed_writes=len(failed),
        connect_seconds=connect_seconds,
        per_commit=per_commit,
        superseded=superseded,
        per_emission=per_emission,
        emissions=sum(s.emissions for s in subscribers),
        cpu_connect=cpu1 - cpu0,
        cpu_write=cpu2 - cpu1,
        write_seconds=write_seconds,
        view_pulls=delta('syncgraph_view_pulls_total{view="guardian"}'),
        hub_reads=delta("syncgraph_hub_reads_total"),
        lagging=delta("syncgraph_lagging_subscribers_total"),
        complete=sum(map(current, subscribers)),
        errors=errors[:5],
    )


def report_views(runs: list[tuple[FanOut, FanOut]], args: argparse.Namespace) -> None:
    rows = []
    for pair in runs:
        for r in pair:
            per = max(r.commits, 1)
            rows.append(
                [
                    r.mode,
                    f"{r.subscribers:,}",
                    f"{r.commits} ({r.rate:.1f}/s)"
                    + (f", {r.failed_writes} failed" if r.failed_writes else ""),
                    f"{r.emissions / per:,.1f}",
                    fmt_ms(quantile(r.per_commit, 0.5)),
                    fmt_ms(quantile(r.per_commit, 0.99)),
                    fmt_ms(max(r.per_commit, default=float("nan"))),
                    f"{r.superseded}",
                    fmt_ms(quantile(r.per_emission, 0.5)),
                    fmt_ms(quantile(r.per_emission, 0.99)),
                    f"{r.cpu_write / per * 1000:,.0f} ({r.cpu_write / r.write_seconds:.0%})",
                    f"{r.view_pulls / per:.1f}",
                    f"{r.hub_reads / per:.2f}",
                    f"{r.lagging:.0f}",
                    f"{r.complete:,}/{r.subscribers:,}",
                    f"{r.connect_seconds:.1f} ({r.cpu_connect:.1f})",
                ]
            )
    print_table(
        f"Fan-out through a view on {args.backend}: {args.rate:g} renames/s of a keyed guardian's "
        f"child for {args.duration:g} s, school of {args.pupils:,} pupils (ms)",
        (
            "subscribers",
            "N",
            "commits",
            "emissions/commit",
            "fan-out p50",
            "fan-out p99",
            "fan-out max",
            "superseded",
            "emission p50",
            "emission p99",
            "CPU ms/commit (core)",
            "view pulls/commit",
            "hub reads/commit",
            "lag switches",
            f"current ({DRAIN_SECONDS:g} s)",
            "connect s (CPU s)",
        ),
        rows,
    )
    rows = []
    for unbound, bound in runs:
        ratios = [
            quantile(bound.per_commit, q) / quantile(unbound.per_commit, q) for q in (0.5, 0.99)
        ]
        ratios.append(
            (bound.cpu_write / max(bound.commits, 1))
            / (unbound.cpu_write / max(unbound.commits, 1))
        )
        met = all(x <= 1.5 for x in ratios)
        rows.append(
            [f"{bound.subscribers:,}", *(f"{x:.2f}x" for x in ratios), "met" if met else "NOT met"]
        )
    print_table(
        "Bound / unbound (target: within 1.5x)",
        ("N", "fan-out p50", "fan-out p99", "CPU/commit", "1.5x target"),
        rows,
    )
    for pair in runs:
        for r in pair:
            if r.errors or r.complete < r.subscribers:
                print(f"  {r.mode}: {r.subscribers - r.complete} not current, errors: {r.errors}")
    print(
        "\nfan-out: the writer's receipt of a commit's answer -> the last receipt of it among the "
        "subscribers that see it; superseded: commits whose pupil was renamed again before an "
        "emission carried them (not in the fan-out figures)"
    )
    print(f"\n{machine_line()}")
    sys.stdout.flush()


async def main_views(args: argparse.Namespace) -> None:
    counts = [int(c) for c in args.subscribers.split(",") if c.strip()]
    raise_open_files(max(counts) * 2 + 1000)
    runs = []
    with tempfile.TemporaryDirectory(prefix="syncgraph-bench-subs-") as tmp:
        for count in counts:
            note(f"{args.backend}: {count} subscribers, through a view and not")
            async with fresh_database(args.backend) as db:
                await asyncio.to_thread(upgrade, db.url)
                setup = await load_school(db.url, args, count)
                unbound = await run_school(db.url, setup, bound=False, args=args, logs=Path(tmp))
                bound = await run_school(db.url, setup, bound=True, args=args, logs=Path(tmp))
                runs.append((unbound, bound))
    report_views(runs, args)


async def main(args: argparse.Namespace) -> None:
    counts = [int(c) for c in args.subscribers.split(",") if c.strip()]
    limit = raise_open_files(max(counts) * 2 + 1000)
    if limit < max(counts) * 2 + 200:
        raise BenchError(f"the open-files limit is {limit}: too low for {max(counts)} sockets")
    results = []
    with tempfile.TemporaryDirectory(prefix="syncgraph-bench-subs-") as tmp:
        for count in counts:
            note(f"{args.backend}: {count} subscribers")
            async with fresh_database(args.backend) as db:
                await asyncio.to_thread(upgrade, db.url)
                results.append(await run_one(db.url, count, args, Path(tmp)))
    report(results, args, args.backend)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument(
        "--subscribers",
        help="comma list of subscriber counts, one run each (default 1000,5000; --views: 1000)",
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of writes (30)")
    parser.add_argument("--rate", type=float, default=10.0, help="commits per second (10)")
    parser.add_argument(
        "--connect-concurrency", type=int, default=50, help="handshakes in flight (50)"
    )
    parser.add_argument(
        "--no-compression", action="store_true", help="do not offer permessage-deflate"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke check: 100 subscribers, 5 s of writes"
    )
    parser.add_argument(
        "--views",
        action="store_true",
        help="the view figure: N subscribers bound to guardian(user), as many per guardian, "
        "beside N unbound ones, on a school, while a child of a keyed guardian is renamed",
    )
    parser.add_argument("--pupils", type=int, default=10_000, help="--views: pupils (10,000)")
    parser.add_argument(
        "--guardians", type=int, default=100, help="--views: distinct guardians (100)"
    )
    args = parser.parse_args()
    args.subscribers = args.subscribers or ("1000" if args.views else "1000,5000")
    if args.quick:
        args.subscribers, args.duration = "100", 5.0
    return args


if __name__ == "__main__":
    arguments = parse_args()
    began = time.perf_counter()
    run_on_loop(main_views(arguments) if arguments.views else main(arguments))
    note(f"done in {time.perf_counter() - began:.1f} s")
