"""Several `syncgraph serve` processes on one PostgreSQL (DESIGN §3, §5 "Scale"): a subscriber
on one process sees writes made through another (NOTIFY in the write transaction, a LISTEN
connection per process), and delivery resumes after that LISTEN connection is killed.

PostgreSQL only; a missing server fails (the ``database_urls`` fixture), never skips."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.api.actions_client import Device
from tests.api.live import WsClient

SYNCGRAPH = str(Path(sys.executable).with_name("syncgraph"))
BOUND = 5.0
USERS = """subscription($since: String) { changes(since: $since) {
  checkpoint hasMore users { inserted { id name } updated { id name } deleted } } }"""
SYNC = """mutation($input: SyncInput!) { sync(input: $input) { checkpoint users { ids } } }"""
ACTIONS = """subscription { actions { cursor hasMore items { deviceId payload } } }"""
LISTENER = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND client_port = ANY($1::int[])
  AND (query ILIKE 'LISTEN%' OR query = 'SELECT 1')"""
"""The LISTEN connection of one process (its last query is the LISTEN or the probe)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCGRAPH_")}
    env.update(
        DATABASE_URL=database_url, SYNCGRAPH_RECHECK_SECONDS="30", SYNCGRAPH_LOG_LEVEL="INFO"
    )
    return env


def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(  # noqa: S603
        [SYNCGRAPH, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@contextmanager
def servers(env: dict[str, str], logs: Path, count: int) -> Iterator[list[tuple[str, int]]]:
    """``count`` `syncgraph serve` processes; yields (host:port, pid) each; always ends them."""
    with contextlib.ExitStack() as stack:
        processes: list[subprocess.Popen[bytes]] = []
        stack.callback(_terminate, processes)
        hosts: list[tuple[str, int]] = []
        for n in range(count):
            port = free_port()
            log = stack.enter_context((logs / f"serve-{n}.log").open("wb"))
            process = subprocess.Popen(  # noqa: S603
                [SYNCGRAPH, "serve", "--port", str(port), "--no-dev"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            processes.append(process)
            hosts.append((f"127.0.0.1:{port}", process.pid))
        deadline = time.monotonic() + 30
        for n, ((host, _pid), process) in enumerate(zip(hosts, processes, strict=True)):
            while not _healthy(host):
                assert process.poll() is None, (logs / f"serve-{n}.log").read_text()
                assert time.monotonic() < deadline, (logs / f"serve-{n}.log").read_text()
                time.sleep(0.1)
        yield hosts


def _healthy(host: str) -> bool:
    try:
        return httpx.get(f"http://{host}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _terminate(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def local_ports(pid: int) -> list[int]:
    """The local TCP ports of a process's sockets (to find its PostgreSQL backends)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def listener_pids(dsn: str, pid: int) -> list[int]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return [r["pid"] for r in await conn.fetch(LISTENER, local_ports(pid))]
    finally:
        await conn.close()


async def write(http: httpx.AsyncClient, host: str, key: str, name: str) -> tuple[str, str]:
    response = await http.post(
        f"http://{host}/graphql",
        json={"query": SYNC, "variables": {"input": {"users": {"data": [{"name": name}]}}}},
        headers={"Authorization": f"Bearer {key}"},
    )
    body = response.json()
    assert response.status_code == 200, body
    assert "errors" not in body, body
    report = body["data"]["sync"]
    return report["checkpoint"], report["users"]["ids"][0]


async def receive(ws: WsClient, expected: tuple[str, str]) -> None:
    checkpoint, id_ = expected
    page = (await ws.next_data(BOUND))["changes"]
    assert [u["id"] for u in page["users"]["inserted"]] == [id_]
    assert page["checkpoint"] == checkpoint


async def test_a_subscriber_on_one_process_sees_writes_through_another(
    database_urls: dict[str, str], tmp_path: Path
) -> None:
    url = database_urls["postgres"]
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    env = environment(url)
    with servers(env, tmp_path, 2) as [(a, a_pid), (b, _b_pid)]:
        tenant = cli(env, "tenant", "create", "multiprocess")["id"]
        key = cli(env, "key", "create", "--tenant", tenant, "--scopes", "sync:read,sync:write")
        creds = {"authorization": f"Bearer {key['key']}", "tenant": tenant}

        async with httpx.AsyncClient() as http, WsClient.connect(a, creds) as ws:
            await ws.subscribe(USERS)
            first = (await ws.next_data(BOUND))["changes"]
            assert first["checkpoint"] == "0"
            assert first["hasMore"] is False

            await receive(ws, await write(http, b, key["key"], "through B"))
            await receive(ws, await write(http, a, key["key"], "through A"))

            # kill A's LISTEN connection; A reconnects and delivery resumes
            (old,) = await listener_pids(dsn, a_pid)
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                assert await conn.fetchval("SELECT pg_terminate_backend($1)", old)
            finally:
                await conn.close()
            deadline = time.monotonic() + BOUND
            while True:
                now = await listener_pids(dsn, a_pid)
                if now and old not in now:
                    break
                assert time.monotonic() < deadline, "A's listener did not reconnect"
                await asyncio.sleep(0.1)

            started = time.monotonic()
            await receive(ws, await write(http, b, key["key"], "after the outage"))
            assert time.monotonic() - started < BOUND
            await receive(ws, await write(http, b, key["key"], "and again"))


async def test_an_action_subscriber_on_one_process_gets_actions_pushed_through_another(
    database_urls: dict[str, str], tmp_path: Path
) -> None:
    """The action log tail of a process is extended by the other processes' NOTIFYs: a
    device subscribed on A receives, within seconds (not at the 30 s re-check), the actions
    another device pushes through B, and none of its own."""
    url = database_urls["postgres"]
    env = environment(url)
    with servers(env, tmp_path, 2) as [(a, _a_pid), (b, _b_pid)]:
        tenant = cli(env, "tenant", "create", "multiprocess-actions")["id"]
        key = cli(env, "key", "create", "--tenant", tenant, "--scopes", "sync:read,sync:write")
        async with httpx.AsyncClient(base_url=f"http://{b}") as on_b:
            phone = await Device.register(on_b, key["key"], "phone")
            tablet = await Device.register(on_b, key["key"], "tablet")
            creds = {"authorization": f"Bearer {tablet.token}", "tenant": tenant}
            async with WsClient.connect(a, creds) as ws:
                await ws.subscribe(ACTIONS)
                assert (await ws.next_data(BOUND))["actions"]["items"] == []
                for n in range(3):
                    started = time.monotonic()
                    await tablet.push(tablet.actions({"type": "note", "n": f"own {n}"}))
                    await phone.push(phone.actions({"type": "note", "n": n}))
                    page = (await ws.next_data(BOUND))["actions"]
                    assert [(i["deviceId"], i["payload"]["n"]) for i in page["items"]] == [
                        (phone.device_id, n)
                    ]
                    assert time.monotonic() - started < BOUND
