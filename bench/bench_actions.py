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

    cd /work/main && .venv/bin/python -m bench.bench_actions --backend both
"""

from __future__ import annotations

import argparse
import asyncio
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa

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
    run,
)

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 32
CHUNK = 50

REGISTER = "mutation($name: String!) { registerDevice(name: $name) { deviceId token secret } }"
PUSH = """mutation Push($actions: [ActionInput!]!) { pushActions(actions: $actions) {
  shouldDoFullSync accepted duplicates rejected { sequenceNumber reason } lastSequenceNumber } }"""


@dataclass(frozen=True)
class Scenario:
    name: str
    devices: int
    chunks: int
    payload: Callable[[int, int], dict[str, Any]]
    """(device index, sequence number) -> the action."""

    @property
    def actions(self) -> int:
        return self.devices * self.chunks * CHUNK


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
            for n in range(c * CHUNK, (c + 1) * CHUNK):
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
            f"{self.scenario.devices}x{self.scenario.chunks}x{CHUNK}",
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
    queues = [d.bodies(i, scenario) for i, d in enumerate(devices)]
    gate = asyncio.Semaphore(CONCURRENCY)
    latencies: list[float] = []

    async def drain(device: Device, bodies: list[bytes]) -> None:
        for c, body in enumerate(bodies):
            async with gate:
                start = time.perf_counter()
                result = (await post(http, body, device.token))["pushActions"]
                latencies.append(time.perf_counter() - start)
            if result["accepted"] != CHUNK or result["rejected"]:
                raise BenchError(f"device {device.device_id} chunk {c}: {result}")
        if result["lastSequenceNumber"] != len(bodies) * CHUNK - 1:
            raise BenchError(f"device {device.device_id} ended at {result}")

    start = time.perf_counter()
    await asyncio.gather(*(drain(d, q) for d, q in zip(devices, queues, strict=True)))
    return time.perf_counter() - start, latencies


# --- the server ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def uvicorn_process(database_url: str) -> AsyncIterator[str]:
    """``uvicorn app.asgi:app`` in a process of its own; yields its base URL."""
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
            yield base
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
    async with fresh_database(backend) as db:
        await asyncio.to_thread(upgrade, db.url)
        async with uvicorn_process(db.url) as base:
            limits = httpx.Limits(
                max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY
            )
            async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
                _, warm_key = await _tenant_key(db.url)
                await push_all(http, warm_key, Scenario("warm-up", 8, 2, cart_action))
                for scenario in sorted(planned, key=lambda s: s.actions):
                    tenant_id, key = await _tenant_key(db.url)
                    note(f"{backend}: {scenario.name}, {scenario.actions:,} actions ...")
                    wall, latencies = await push_all(http, key, scenario)
                    stored = await _stored(db.url, tenant_id)
                    if stored != scenario.actions:
                        raise BenchError(f"{stored} actions stored, {scenario.actions} sent")
                    outcomes.append(Outcome(scenario, wall, latencies, stored))
    return sorted(outcomes, key=lambda o: planned.index(o.scenario))


async def main(args: argparse.Namespace) -> None:
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


if __name__ == "__main__":
    run(main, __doc__.splitlines()[0] if __doc__ else "pushActions benchmark")
