"""syncgraph behind PgBouncer in transaction pooling mode (README "Behind PgBouncer"): the
test starts PgBouncer (Debian's package; ``.ci/run`` installs it) on a free loopback port in
front of the local PostgreSQL, then runs the CLI and two `syncgraph serve` processes through
it (``SYNCGRAPH_DB_POOLER=transaction``; LISTEN on the direct ``SYNCGRAPH_LISTEN_URL``):
sync, changes, push, actions and subscriptions across processes, and a short concurrent
soak, with no failure. A missing PgBouncer fails, never skips."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.db.postgres import connection_options, split_url
from app.settings import Settings
from tests.api.actions_client import Device
from tests.api.live import WsClient
from tests.api.test_multiprocess import (
    ACTIONS,
    BOUND,
    USERS,
    cli,
    environment,
    free_port,
    receive,
    servers,
    write,
)

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
SOAK_CLIENTS = 6
SOAK_ROUNDS = 15
CHANGES = (
    "query($since: String) { changes(since: $since) { checkpoint users { inserted { id } } } }"
)
PUSH = "mutation($input: PushInput!) { pushChanges(input: $input) { applied conflicts { id } } }"
CONFIG = """[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/userlist.txt
pool_mode = transaction
max_client_conn = 400
default_pool_size = 8
ignore_startup_parameters = extra_float_digits
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
"""


@contextmanager
def pgbouncer(direct_url: str) -> Iterator[str]:
    """PgBouncer in transaction mode in front of ``direct_url``'s server; yields the same
    database's URL through it. Stopped by its PID at the end."""
    assert Path(PGBOUNCER).exists(), "PgBouncer is missing: apt-get install -y pgbouncer"
    with (
        tempfile.TemporaryDirectory(prefix="syncgraph-pgbouncer-") as name,
        _running(direct_url, Path(name)) as url,
    ):
        yield url


@contextmanager
def _running(direct_url: str, workdir: Path) -> Iterator[str]:
    url = split_url(direct_url)[0]
    listen = free_port()
    (workdir / "userlist.txt").write_text(f'"{url.username}" ""\n')
    config = workdir / "pgbouncer.ini"
    config.write_text(
        CONFIG.format(host=url.host, port=url.port or 5432, listen=listen, dir=workdir)
    )
    command = [PGBOUNCER, str(config)]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        shutil.chown(workdir, "postgres")
        for path in workdir.iterdir():
            shutil.chown(path, "postgres")
        command = [PGBOUNCER, "-u", "postgres", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        _wait_listening(listen, process, workdir)
        yield url.set(port=listen).render_as_string(hide_password=False)
    finally:
        process.terminate()
        process.wait(timeout=20)


def _wait_listening(port: int, process: subprocess.Popen[bytes], workdir: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, (workdir / "pgbouncer.log").read_text()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, (workdir / "pgbouncer.log").read_text()
        time.sleep(0.05)


@pytest.fixture
def pooled_env(database_urls: dict[str, str]) -> Iterator[dict[str, str]]:
    direct = database_urls["postgres"]
    with pgbouncer(direct) as pooled:
        env = environment(pooled)
        env.update(SYNCGRAPH_DB_POOLER="transaction", SYNCGRAPH_LISTEN_URL=direct)
        yield env


def test_the_cli_works_through_pgbouncer(pooled_env: dict[str, str]) -> None:
    """Before: ``prepared statement "__asyncpg_stmt_1__" already exists``. The driver options
    in the URL work too (``?statement_cache_size=0`` arrived as a string and crashed)."""
    by_url = {k: v for k, v in pooled_env.items() if k != "SYNCGRAPH_DB_POOLER"}
    by_url["DATABASE_URL"] += "?statement_cache_size=0"
    for env in (pooled_env, by_url):
        for _ in range(3):  # the same statements again, on whichever server connection
            tenant = cli(env, "tenant", "create", "pooled")["id"]
            key = cli(env, "key", "create", "--tenant", tenant, "--scopes", "sync:read")
            assert key["key"].startswith("sgk_")


async def test_two_servers_behind_pgbouncer(pooled_env: dict[str, str], tmp_path: Path) -> None:
    env = pooled_env
    with servers(env, tmp_path, 2) as [(a, _a), (b, _b)]:
        tenant = cli(env, "tenant", "create", "pooled")["id"]
        key = cli(env, "key", "create", "--tenant", tenant, "--scopes", "sync:read,sync:write")
        token = key["key"]
        creds = {"authorization": f"Bearer {token}", "tenant": tenant}
        async with httpx.AsyncClient(timeout=30) as http:
            async with WsClient.connect(a, creds) as ws:
                await ws.subscribe(USERS)
                assert (await ws.next_data(BOUND))["changes"]["checkpoint"] == "0"
                # a write through B reaches A's subscriber through the direct LISTEN, well
                # before the 30 s re-check
                for n in range(3):
                    await receive(ws, await write(http, b, token, f"through B {n}"))
                await receive(ws, await write(http, a, token, "through A"))
            await check_changes_and_push(http, a, b, token)
            await check_actions(a, b, token, tenant)
            await soak(http, [a, b], token)


async def gql(http: httpx.AsyncClient, host: str, token: str, query: str, **variables: Any) -> Any:
    response = await http.post(
        f"http://{host}/graphql",
        json={"query": query, "variables": variables},
        headers={"Authorization": f"Bearer {token}"},
    )
    body = response.json()
    assert response.status_code == 200, body
    assert "errors" not in body, body
    return body["data"]


async def check_changes_and_push(http: httpx.AsyncClient, a: str, b: str, token: str) -> None:
    page = (await gql(http, b, token, CHANGES, since=None))["changes"]
    ids = [u["id"] for u in page["users"]["inserted"]]
    assert len(ids) == 4
    change = {"id": ids[0], "baseVersion": 1, "data": {"name": "pushed through A"}}
    report = await gql(http, a, token, PUSH, input={"users": {"updated": [change]}})
    assert report["pushChanges"] == {"applied": 1, "conflicts": []}
    again = await gql(http, b, token, PUSH, input={"users": {"updated": [change]}})
    assert again["pushChanges"]["conflicts"] == [{"id": ids[0]}]  # B sees A's write


async def check_actions(a: str, b: str, token: str, tenant: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{b}") as on_b:
        phone = await Device.register(on_b, token, "phone")
        tablet = await Device.register(on_b, token, "tablet")
        creds = {"authorization": f"Bearer {tablet.token}", "tenant": tenant}
        async with WsClient.connect(a, creds) as ws:
            await ws.subscribe(ACTIONS)
            assert (await ws.next_data(BOUND))["actions"]["items"] == []
            for n in range(3):
                await phone.push(phone.actions({"type": "note", "n": n}))
                page = (await ws.next_data(BOUND))["actions"]
                assert [i["payload"]["n"] for i in page["items"]] == [n]


async def soak(http: httpx.AsyncClient, hosts: list[str], token: str) -> None:
    """Concurrent writers and readers on both processes, some with an Idempotency-Key:
    every request answers without error and every write is stored once."""
    before = (await gql(http, hosts[0], token, CHANGES, since=None))["changes"]["checkpoint"]

    async def client(n: int) -> None:
        for r in range(SOAK_ROUNDS):
            host = hosts[(n + r) % 2]
            headers = {"Authorization": f"Bearer {token}"}
            if r % 3 == 0:
                headers["Idempotency-Key"] = str(uuid.uuid4())
            data = [{"name": f"s{n}-{r}"}]
            body = {"query": SOAK_SYNC, "variables": {"input": {"users": {"data": data}}}}
            response = await http.post(f"http://{host}/graphql", json=body, headers=headers)
            assert response.status_code == 200, response.text
            assert "errors" not in response.json(), response.text
            await gql(http, host, token, CHANGES, since=before)

    await asyncio.gather(*(client(n) for n in range(SOAK_CLIENTS)))
    page = (await gql(http, hosts[1], token, CHANGES, since=before))["changes"]
    names = sorted(u["id"] for u in page["users"]["inserted"])
    assert len(names) == len(set(names)) == SOAK_CLIENTS * SOAK_ROUNDS


SOAK_SYNC = "mutation($input: SyncInput!) { sync(input: $input) { checkpoint } }"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {"timeout": 10.0, "command_timeout": 60.0}),
        (
            "?statement_cache_size=0&sslmode=disable",
            {
                "timeout": 10.0,
                "command_timeout": 60.0,
                "statement_cache_size": 0,
                "prepared_statement_cache_size": 0,
            },
        ),
        ("?command_timeout=2.5&timeout=3", {"timeout": 3.0, "command_timeout": 2.5}),
    ],
    ids=["plain", "statement-cache-off", "timeouts-in-url"],
)
def test_driver_numbers_in_the_url_reach_asyncpg_as_numbers(
    query: str, expected: dict[str, Any]
) -> None:
    settings = Settings(database_url=f"postgresql+asyncpg://u@h/db{query}")
    url, options = connection_options(settings)
    assert options == expected
    assert dict(url.query) == ({"sslmode": "disable"} if "sslmode" in query else {})


def test_the_pooler_setting_turns_statement_caches_off() -> None:
    settings = Settings(database_url="postgresql+asyncpg://u@h/db", db_pooler="transaction")
    options = connection_options(settings)[1]
    assert (options["statement_cache_size"], options["prepared_statement_cache_size"]) == (0, 0)


def test_a_driver_option_that_is_not_a_number_is_refused_clearly() -> None:
    settings = Settings(database_url="postgresql+asyncpg://u@h/db?statement_cache_size=off")
    with pytest.raises(ValueError, match="statement_cache_size must be a number, not 'off'"):
        connection_options(settings)


def test_every_advisory_lock_is_transaction_scoped() -> None:
    """A session-scoped advisory lock would stay on whichever server connection PgBouncer
    lent, after the transaction that took it, and be released by nobody."""
    app_dir = Path(__file__).resolve().parent.parent / "app"
    sources = "\n".join(p.read_text() for p in app_dir.rglob("*.py"))
    assert "pg_advisory_xact_lock" in sources
    for session_scoped in ("pg_advisory_lock", "pg_try_advisory_lock", "pg_advisory_unlock"):
        assert session_scoped not in sources
