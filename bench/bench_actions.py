"""(c) ``pushActions`` throughput: many devices pushing signed action queues at once.

A fresh database is migrated and served by one uvicorn process of its own (``app.asgi:app``
on 127.0.0.1, started as a subprocess so that the load generator does not share its event
loop or CPU time). 100 devices are registered; each has a queue of 1,000 signed actions
(``{"type": "cart.add", ...}``, 51 bytes encoded) and pushes it as 20 chunks of 50,
in order, as a client does. All devices run at once; at most 32 pushes are in flight
(one ``httpx.AsyncClient`` with a pool of 32 connections). Request bodies are encoded and
signed before the clock starts, so the client's cost is only HTTP.

Reported: total accepted actions per second (wall clock from the first push to the last
answer), and the latency of one push (one 50-action request) at p50/p99/max. A second,
smaller run pushes ``entity.upsert`` actions (each applied to the badges table through the
push engine) to show the cost of the built-in types. Every answer is checked (all accepted,
nothing rejected) and the stored count is compared with what was sent.

``--subscribers`` runs a smaller load instead (50 devices x 5 pushes of 20 actions; ``--quick``:
10 x 3 x 20) twice on one server, each time in a fresh tenant: first as above, then with every
device also subscribed to the action log over a websocket (graphql-transport-ws, the device's
token in ``connection_init``) from before the first push until it has received every other
device's actions. Reported next to each other: push throughput and latency, the server
process's CPU seconds (``/proc``) and ``syncgraph_action_tail_reads_total`` (``/metrics``)
per commit; for the subscribed run, the delivery latency (a subscriber's receipt of a push's
last action minus the pusher's receipt of the answer) and whether every subscriber received
every other device's action exactly once, in cursor order, and none of its own.

    cd /work/main && .venv/bin/python -m bench.bench_actions --backend both
    cd /work/main && .venv/bin/python -m bench.bench_actions --backend both --subscribers
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
import websockets

from app.db import make_engine, write_transaction
from app.engine.models import Action
from app.engine.tenants import SCOPES, create_key, create_tenant
from app.migrate import upgrade
from app.settings import Settings
from bench.common import (
    BenchError,
    backends,
    fresh_database,
    machine_line,
    ms,
    note,
    print_table,
    rate,
    run_on_loop,
    ws_subscribe,
)

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONCURRENCY = 32
CHUNK = 50

REGISTER = "mutation($name: String!) { registerDevice(name: $name) { deviceId token secret } }"
SUBSCRIPTION = """subscription($after: String) { actions(after: $after) {
  cursor hasMore items { deviceId sequenceNumber type cursor } } }"""
PUSH = """mutation Push($actions: [ActionInput!]!) { pushActions(actions: $actions) {
  shouldDoFullSync accepted duplicates rejected { sequenceNumber reason } lastSequenceNumber } }"""


@dataclass(frozen=True)
class Scenario:
    name: str
    devices: int
    chunks: int
    payload: Callable[[int, int], dict[str, Any]]
    """(device index, sequence number) -> the action."""
    chunk: int = CHUNK
    """Actions per push."""

    @property
    def actions(self) -> int:
        return self.devices * self.chunks * self.chunk

    @property
    def load(self) -> str:
        return f"{self.devices}x{self.chunks}x{self.chunk}"


def cart_action(device: int, n: int) -> dict[str, Any]:
    return {"type": "cart.add", "sku": f"SKU-{device:03d}-{n % 97:02d}", "qty": n % 5 + 1}


BADGE_IDS: dict[int, list[str]] = {}


def badge_upsert(device: int, n: int) -> dict[str, Any]:
    """Each device edits its own 25 badges over and over: inserts first, then updates."""
    ids = BADGE_IDS.setdefault(device, [str(uuid.uuid4()) for _ in range(25)])
    return {
        "type": "entity.upsert",
        "entity": "badges",
        "data": {"id": ids[n % 25], "name": f"badge {device}-{n}", "feed": "FREE"},
    }


def scenarios(quick: bool) -> list[Scenario]:
    """The main load, then a small entity.upsert load (kept small: an upsert push costs 4 to
    8 times a plain one, and on SQLite a queue of 32 such writers outwaits the 30 s busy
    timeout)."""
    if quick:
        return [
            Scenario("custom", 20, 4, cart_action),
            Scenario("entity.upsert", 5, 2, badge_upsert),
        ]
    return [
        Scenario("custom", 100, 20, cart_action),
        Scenario("entity.upsert", 5, 4, badge_upsert),
    ]


# --- the device side -----------------------------------------------------------------------


@dataclass
class Device:
    device_id: str
    token: str
    secret: str

    def sign(self, sequence_number: int, encoded: str) -> str:
        message = f"{sequence_number}{self.device_id}{encoded}".encode()
        return hmac.new(self.secret.encode(), message, hashlib.sha512).hexdigest()

    def bodies(self, index: int, scenario: Scenario) -> list[bytes]:
        """The device's queue as request bodies of 50 signed actions, in order."""
        out = []
        for c in range(scenario.chunks):
            actions = []
            for n in range(c * scenario.chunk, (c + 1) * scenario.chunk):
                encoded = json.dumps(scenario.payload(index, n))
                actions.append(
                    {
                        "sequenceNumber": n,
                        "encodedAction": encoded,
                        "integrity": self.sign(n, encoded),
                    }
                )
            out.append(orjson.dumps({"query": PUSH, "variables": {"actions": actions}}))
        return out


async def post(http: httpx.AsyncClient, body: bytes, token: str) -> dict[str, Any]:
    response = await http.post(
        "/graphql",
        content=body,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    payload = orjson.loads(response.content)
    if response.status_code != 200 or payload.get("errors"):
        raise BenchError(f"HTTP {response.status_code}: {str(payload)[:600]}")
    return dict(payload["data"])


async def register(http: httpx.AsyncClient, key: str, count: int) -> list[Device]:
    async def one(i: int) -> Device:
        body = orjson.dumps({"query": REGISTER, "variables": {"name": f"bench-{i}"}})
        reg = (await post(http, body, key))["registerDevice"]
        return Device(reg["deviceId"], reg["token"], reg["secret"])

    return list(await asyncio.gather(*(one(i) for i in range(count))))


@dataclass
class Outcome:
    scenario: Scenario
    wall: float
    latencies: list[float]
    stored: int

    def row(self, backend: str) -> list[object]:
        lat = sorted(self.latencies)
        p99 = statistics.quantiles(lat, n=100, method="inclusive")[98] if len(lat) > 1 else lat[0]
        return [
            backend,
            self.scenario.name,
            self.scenario.load,
            f"{self.scenario.actions:,}",
            f"{self.wall:.2f}",
            rate(self.scenario.actions, self.wall),
            ms(statistics.median(lat)),
            ms(p99),
            ms(lat[-1]),
        ]


async def push_all(
    http: httpx.AsyncClient, key: str, scenario: Scenario
) -> tuple[float, list[float]]:
    """Every device pushes its queue in order; at most CONCURRENCY pushes in flight."""
    devices = await register(http, key, scenario.devices)
    pushed = await push_devices(http, devices, scenario)
    return pushed.wall, pushed.latencies


@dataclass
class Pushed:
    wall: float
    latencies: list[float]
    answered: dict[tuple[str, int], float]
    """(device id, chunk index) -> ``perf_counter`` when the push's answer was read."""


async def push_devices(
    http: httpx.AsyncClient, devices: list[Device], scenario: Scenario
) -> Pushed:
    """Each device pushes its queue (``scenario.chunks`` pushes of ``scenario.chunk``
    actions) in order, all devices at once; at most CONCURRENCY pushes in flight."""
    queues = [d.bodies(i, scenario) for i, d in enumerate(devices)]
    gate = asyncio.Semaphore(CONCURRENCY)
    latencies: list[float] = []
    answered: dict[tuple[str, int], float] = {}

    async def drain(device: Device, bodies: list[bytes]) -> None:
        for c, body in enumerate(bodies):
            async with gate:
                start = time.perf_counter()
                result = (await post(http, body, device.token))["pushActions"]
                end = time.perf_counter()
                latencies.append(end - start)
                answered[device.device_id, c] = end
            if result["accepted"] != scenario.chunk or result["rejected"]:
                raise BenchError(f"device {device.device_id} chunk {c}: {result}")
        if result["lastSequenceNumber"] != len(bodies) * scenario.chunk - 1:
            raise BenchError(f"device {device.device_id} ended at {result}")

    start = time.perf_counter()
    await asyncio.gather(*(drain(d, q) for d, q in zip(devices, queues, strict=True)))
    return Pushed(time.perf_counter() - start, latencies, answered)


# --- subscribers (--subscribers) ------------------------------------------------------------


@dataclass
class Subscriber:
    """One device's ``actions`` subscription (graphql-transport-ws, the device's token)."""

    device: Device
    ws: Any
    expected: int
    """Actions of the other devices it should receive."""
    receipts: dict[tuple[str, int], float] = field(default_factory=dict)
    """(device id, sequence number) -> ``perf_counter`` at the first receipt."""
    duplicates: int = 0
    own: int = 0
    """Its own device's actions (the server excludes them: should stay 0)."""
    out_of_order: int = 0
    """Items whose cursor was not above the previous item's."""
    emissions: int = 0
    """Emissions after the first (the first answers the subscription at once)."""
    errors: list[str] = field(default_factory=list)
    first: asyncio.Event = field(default_factory=asyncio.Event)
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    last_cursor: int = 0

    async def read(self) -> None:
        try:
            async for raw in self.ws:
                now = time.perf_counter()
                message = orjson.loads(raw)
                kind = message.get("type")
                if kind == "ping":
                    await self.ws.send(orjson.dumps({"type": "pong"}).decode())
                    continue
                if kind != "next":
                    if kind != "pong":
                        self.errors.append(str(message)[:300])
                    continue
                payload = message["payload"]
                if payload.get("errors"):
                    self.errors.append(str(payload["errors"])[:300])
                    continue
                if self.first.is_set():
                    self.emissions += 1
                self.first.set()
                for item in payload["data"]["actions"]["items"]:
                    key = (item["deviceId"], item["sequenceNumber"])
                    if key[0] == self.device.device_id:
                        self.own += 1
                    elif key in self.receipts:
                        self.duplicates += 1
                    else:
                        self.receipts[key] = now
                    cursor = int(item["cursor"])
                    if cursor <= self.last_cursor:
                        self.out_of_order += 1
                    self.last_cursor = cursor
                if len(self.receipts) >= self.expected:
                    self.complete.set()
        except websockets.ConnectionClosed as closed:
            self.errors.append(f"closed: {closed}")


async def subscribe(host: str, tenant_id: str, device: Device, expected: int) -> Subscriber:
    try:
        ws = await ws_subscribe(
            host,
            device.token,
            tenant_id,
            SUBSCRIPTION,
            {"after": None},
            compression=True,  # as browsers and the websockets client negotiate by default
            timeout=30,
        )
    except BenchError as exc:
        raise BenchError(f"device {device.device_id}: {exc}") from None
    return Subscriber(device, ws, expected)


@dataclass
class Delivery:
    """What the subscribers of one run received."""

    subscribers: int
    pushes: int
    latencies: list[float]
    """Per (push, other device's subscriber): receipt of the push's last action - the
    pusher's receipt of its answer (negative when the emission came first)."""
    complete: int
    """Subscribers that got every other device's action exactly once (and none of their own)."""
    missing: int
    duplicates: int
    own: int
    out_of_order: int
    emissions: int
    tail_reads: float
    errors: list[str]
    drain: float
    """Seconds from the last push's answer until every subscriber had everything."""


def delivery(
    subscribers: list[Subscriber],
    pushed: Pushed,
    scenario: Scenario,
    tail_reads: float,
    drain: float,
    errors: list[str],
) -> Delivery:
    latencies: list[float] = []
    for (device_id, c), answered in pushed.answered.items():
        numbers = range(c * scenario.chunk, (c + 1) * scenario.chunk)
        for s in subscribers:
            if s.device.device_id == device_id:
                continue
            times = [s.receipts.get((device_id, n)) for n in numbers]
            if all(t is not None for t in times):
                latencies.append(max(t for t in times if t is not None) - answered)
    complete = sum(
        1
        for s in subscribers
        if len(s.receipts) == s.expected and not (s.duplicates or s.own or s.out_of_order)
    )
    return Delivery(
        subscribers=len(subscribers),
        pushes=len(pushed.answered),
        latencies=latencies,
        complete=complete,
        missing=sum(s.expected - len(s.receipts) for s in subscribers),
        duplicates=sum(s.duplicates for s in subscribers),
        own=sum(s.own for s in subscribers),
        out_of_order=sum(s.out_of_order for s in subscribers),
        emissions=sum(s.emissions for s in subscribers),
        tail_reads=tail_reads,
        errors=errors + [e for s in subscribers for e in s.errors][:5],
        drain=drain,
    )


# --- the server ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """The served ``uvicorn`` process."""

    base: str
    pid: int
    log: Any
    """Its stdout and stderr (a temporary file)."""

    @property
    def host(self) -> str:
        return self.base.removeprefix("http://")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds so far (``/proc/<pid>/stat``)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    async def metrics(self, http: httpx.AsyncClient) -> dict[str, float]:
        """``/metrics``: every unlabelled ``syncgraph_`` sample."""
        text = (await http.get(f"{self.base}/metrics")).text
        values = {}
        for line in text.splitlines():
            if line.startswith("syncgraph_") and "{" not in line and " " in line:
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def error_lines(self) -> list[str]:
        """ERROR and Traceback lines of the server's log so far (read without moving the
        file offset the server writes at)."""
        size = os.fstat(self.log.fileno()).st_size
        text = os.pread(self.log.fileno(), size, 0).decode(errors="replace")
        return [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line]


@asynccontextmanager
async def uvicorn_process(database_url: str) -> AsyncIterator[Server]:
    """``uvicorn app.asgi:app`` in a process of its own."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCGRAPH_")}
    env.update(DATABASE_URL=database_url, SYNCGRAPH_DEV="false", SYNCGRAPH_LOG_LEVEL="WARNING")
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(  # noqa: ASYNC220, S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.asgi:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            await _wait_ready(base, proc, log)
            yield Server(base, proc.pid, log)
        except BaseException:
            log.seek(0)
            note("server log (tail):\n" + log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)


async def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Any) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(base_url=base, timeout=2) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                raise BenchError(f"uvicorn exited: {log.read().decode()[-2000:]}")
            try:
                if (await http.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise BenchError("uvicorn did not become ready in 30 s")


async def _tenant_key(url: str) -> tuple[str, str]:
    engine = make_engine(Settings(database_url=url, dev=False))
    try:
        async with write_transaction(engine) as conn:
            tenant_id = await create_tenant(conn, f"bench-actions-{uuid.uuid4().hex[:6]}")
            issued = await create_key(conn, tenant_id=tenant_id, scopes=SCOPES)
        return tenant_id, issued.key
    finally:
        await engine.dispose()


async def _stored(url: str, tenant_id: str) -> int:
    table = Action.__table__  # type: ignore[attr-defined]
    engine = make_engine(Settings(database_url=url, dev=False))
    try:
        async with engine.connect() as conn:
            query = sa.select(sa.func.count()).where(table.c.tenant_id == tenant_id)
            return int((await conn.execute(query)).scalar_one())
    finally:
        await engine.dispose()


# --- one backend -----------------------------------------------------------------------------


async def bench_backend(backend: str, quick: bool) -> list[Outcome]:
    """Each scenario in a tenant of its own on one server, the short ones first; the
    outcomes come back in the order of ``scenarios``."""
    planned = scenarios(quick)
    outcomes: list[Outcome] = []
    async with warm_server(backend) as (db_url, _server, http):
        for scenario in sorted(planned, key=lambda s: s.actions):
            tenant_id, key = await _tenant_key(db_url)
            note(f"{backend}: {scenario.name}, {scenario.actions:,} actions ...")
            wall, latencies = await push_all(http, key, scenario)
            stored = await _stored(db_url, tenant_id)
            if stored != scenario.actions:
                raise BenchError(f"{stored} actions stored, {scenario.actions} sent")
            outcomes.append(Outcome(scenario, wall, latencies, stored))
    return sorted(outcomes, key=lambda o: planned.index(o.scenario))


@asynccontextmanager
async def warm_server(backend: str) -> AsyncIterator[tuple[str, Any, httpx.AsyncClient]]:
    """A fresh migrated database served by one uvicorn process, a client for it, and one
    small warm-up load already pushed: (database URL, server, client)."""
    async with fresh_database(backend) as db:
        await asyncio.to_thread(upgrade, db.url)
        async with uvicorn_process(db.url) as server:
            limits = httpx.Limits(
                max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY
            )
            async with httpx.AsyncClient(base_url=server.base, timeout=120, limits=limits) as http:
                _, warm_key = await _tenant_key(db.url)
                await push_all(http, warm_key, Scenario("warm-up", 8, 2, cart_action))
                yield db.url, server, http


# --- subscribers mode ----------------------------------------------------------------------

DRAIN_SECONDS = 30.0
"""How long to wait, after the last push's answer, for every subscriber to have everything."""
TAIL_READS = "syncgraph_action_tail_reads_total"


def subscriber_scenario(quick: bool) -> Scenario:
    """Smaller than the default load: every push is delivered to every other device, so the
    client handles (devices - 1) times the actions it pushes."""
    if quick:
        return Scenario("custom", 10, 3, cart_action, chunk=20)
    return Scenario("custom", 50, 5, cart_action, chunk=20)


@dataclass
class Run:
    scenario: Scenario
    subscribed: bool
    pushed: Pushed
    tail_reads: float
    server_cpu: float
    client_cpu: float
    delivery: Delivery | None


async def measure(
    http: httpx.AsyncClient, server: Server, url: str, scenario: Scenario, *, subscribed: bool
) -> Run:
    """One load in a fresh tenant; with ``subscribed``, every device also keeps an
    ``actions`` subscription open from before its first push until it has every other
    device's actions (or DRAIN_SECONDS after the last answer)."""
    tenant_id, key = await _tenant_key(url)
    devices = await register(http, key, scenario.devices)
    subscribers: list[Subscriber] = []
    readers: list[asyncio.Task[None]] = []
    try:
        if subscribed:
            expected = (scenario.devices - 1) * scenario.chunks * scenario.chunk
            subscribers = list(
                await asyncio.gather(
                    *(subscribe(server.host, tenant_id, d, expected) for d in devices)
                )
            )
            readers = [asyncio.create_task(s.read()) for s in subscribers]
            await asyncio.wait_for(asyncio.gather(*(s.first.wait() for s in subscribers)), 60)
        errors_before = len(server.error_lines())
        before = await server.metrics(http)
        cpu, client = server.cpu_seconds(), time.process_time()
        pushed = await push_devices(http, devices, scenario)
        drain = 0.0
        if subscribed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(s.complete.wait() for s in subscribers)), DRAIN_SECONDS
                )
            drain = time.perf_counter() - max(pushed.answered.values())
        cpu, client = server.cpu_seconds() - cpu, time.process_time() - client
        tail_reads = (await server.metrics(http)).get(TAIL_READS, 0.0) - before.get(TAIL_READS, 0.0)
        server_errors = server.error_lines()[errors_before:]
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.gather(*(s.ws.close() for s in subscribers), return_exceptions=True)
    stored = await _stored(url, tenant_id)
    if stored != scenario.actions:
        raise BenchError(f"{stored} actions stored, {scenario.actions} sent")
    received = (
        delivery(subscribers, pushed, scenario, tail_reads, drain, server_errors[:3])
        if subscribed
        else None
    )
    return Run(scenario, subscribed, pushed, tail_reads, cpu, client, received)


async def bench_subscribers(backend: str, quick: bool) -> list[Run]:
    """On one server: the load without subscribers, then the same load with one
    subscription per device, each in a tenant of its own."""
    scenario = subscriber_scenario(quick)
    runs = []
    async with warm_server(backend) as (db_url, server, http):
        warm = Scenario("warm-up", 4, 2, cart_action, chunk=scenario.chunk)
        await measure(http, server, db_url, warm, subscribed=True)
        for subscribed in (False, True):
            what = "with" if subscribed else "without"
            note(f"{backend}: {scenario.actions:,} actions {what} subscribers ...")
            runs.append(await measure(http, server, db_url, scenario, subscribed=subscribed))
    return runs


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def report_subscribers(results: list[tuple[str, list[Run]]]) -> None:
    rows = []
    for backend, runs in results:
        base = runs[0]
        for r in runs:
            lat = r.pushed.latencies
            commits = len(r.pushed.answered)
            vs = r.scenario.actions / r.pushed.wall / (base.scenario.actions / base.pushed.wall)
            rows.append(
                [
                    backend,
                    f"{r.scenario.devices} (1 per device)" if r.subscribed else "none",
                    r.scenario.load,
                    f"{r.scenario.actions:,}",
                    f"{r.pushed.wall:.2f}",
                    rate(r.scenario.actions, r.pushed.wall),
                    ms(statistics.median(lat)),
                    ms(percentile(lat, 0.99)),
                    ms(max(lat)),
                    f"{vs:.2f}x",
                    f"{r.server_cpu:.1f}",
                    f"{r.server_cpu / commits * 1000:.1f}",
                    f"{r.client_cpu:.1f}",
                    f"{r.tail_reads:.0f} / {commits}",
                ]
            )
    scenario = results[0][1][0].scenario
    print_table(
        f"pushActions without and with an actions subscription per device: {scenario.devices} "
        f"devices x {scenario.chunks} pushes of {scenario.chunk} actions (smaller than the "
        f"default run), {CONCURRENCY} pushes in flight, one uvicorn process, a fresh tenant each",
        [
            "backend",
            "subscribers",
            "load",
            "total",
            "wall s",
            "actions/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "vs none",
            "server CPU s",
            "CPU ms/push",
            "bench CPU s",
            "tail reads / commits",
        ],
        rows,
    )
    rows = []
    problems = []
    for backend, runs in results:
        for r in runs:
            d = r.delivery
            if d is None:
                continue
            per_subscriber = (r.scenario.devices - 1) * r.scenario.chunks
            rows.append(
                [
                    backend,
                    f"{d.subscribers}",
                    f"{d.pushes} x {d.subscribers - 1}",
                    f"{len(d.latencies):,}",
                    ms(percentile(d.latencies, 0.5)),
                    ms(percentile(d.latencies, 0.99)),
                    ms(max(d.latencies, default=float("nan"))),
                    f"{d.drain:.2f}",
                    f"{d.emissions / d.subscribers:.0f} / {per_subscriber}",
                    f"{d.complete}/{d.subscribers}",
                    f"{d.tail_reads / d.pushes:.2f}",
                ]
            )
            if d.missing or d.duplicates or d.own or d.out_of_order or d.errors:
                problems.append(
                    f"  {backend}: {d.missing} actions missing after {DRAIN_SECONDS:g} s, "
                    f"{d.duplicates} received twice, {d.own} of the subscriber's own device, "
                    f"{d.out_of_order} out of order; errors: {d.errors}"
                )
    print_table(
        "Delivery: receipt of a push's last action at each other device's subscriber - the "
        "pusher's receipt of the answer (ms; this process reads both)",
        [
            "backend",
            "subscribers",
            "pushes x receivers",
            "samples",
            "p50 ms",
            "p99 ms",
            "max ms",
            "last delivered s",
            "emissions / pushes of others (each)",
            "every action once",
            "tail reads/commit",
        ],
        rows,
    )
    for line in problems:
        print(line)


async def main(args: argparse.Namespace) -> None:
    if args.subscribers:
        results = [(b, await bench_subscribers(b, args.quick)) for b in backends(args.backend)]
        report_subscribers(results)
        print(machine_line())
        return
    rows = []
    for backend in backends(args.backend):
        rows += [o.row(backend) for o in await bench_backend(backend, args.quick)]
    print_table(
        f"pushActions: devices x chunks x 50 signed actions, {CONCURRENCY} pushes in flight, "
        "one uvicorn process",
        [
            "backend",
            "actions",
            "load",
            "total",
            "wall s",
            "actions/s",
            "p50 ms",
            "p99 ms",
            "max ms",
        ],
        rows,
    )
    print(machine_line())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else "pushActions benchmark"
    )
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgres", "both"),
        default="both",
        help="database backend(s) to run against (default: both)",
    )
    parser.add_argument("--quick", action="store_true", help="a smaller load (smoke check)")
    parser.add_argument(
        "--budget", type=float, default=150.0, help="accepted like the other scripts; not used"
    )
    parser.add_argument(
        "--subscribers",
        action="store_true",
        help="instead of the default loads: 50 devices x 5 pushes of 20 actions, without "
        "and then with an actions subscription per device (delivery latency, counts, "
        "tail reads per commit)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    started = time.perf_counter()
    run_on_loop(main(parse_args()))
    note(f"done in {time.perf_counter() - started:.1f} s")
