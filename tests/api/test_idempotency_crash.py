"""``Idempotency-Key`` across crashes: a real `syncgraph serve` is killed (SIGKILL) at random
moments while clients send keyed ``sync`` and ``pushChanges`` requests and retry each one,
with the same key, until they get an answer. Every request must be applied exactly once:
the records and versions stored are those sent, once, whatever the kill interrupted (before
the commit, between the commit and the answer, in the middle of the answer).

Both backends; the loops are bounded (rounds of kills, then one server left running)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.api.test_multiprocess import SYNCGRAPH, cli, environment, free_port

Json = dict[str, Any]
ROUNDS = 8
STREAMS = 3
REQUESTS_PER_STREAM = 12
USERS_PER_SYNC = 5
SYNC = (
    "mutation($input: SyncInput!) { sync(input: $input) {"
    " checkpoint users { ids errors { code } } } }"
)
PUSH = (
    "mutation($input: PushInput!) { pushChanges(input: $input) { checkpoint applied"
    " conflicts { id reason } errors { code } } }"
)
NAMES = "query($after: String) { users(first: 1000, after: $after) { nodes { id name version } } }"


@dataclass
class Sent:
    """One keyed request and every answer it got (a retry after a kill may be a replay)."""

    key: str
    query: str
    variables: Json
    answers: list[Json] = field(default_factory=list)


@dataclass
class Server:
    """The `syncgraph serve` under test, restarted after each kill on a new port."""

    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    up: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self.process = self._spawn(port := free_port())
        self.url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http:
            for _ in range(600):
                assert self.process.poll() is None, self.log.read_text()[-3000:]
                try:
                    if (await http.get(f"{self.url}/healthz", timeout=1)).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(self.log.read_text()[-3000:])
        self.up.set()

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(  # noqa: S603
                [SYNCGRAPH, "serve", "--port", str(port), "--no-dev"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        self.up.clear()
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


async def send(server: Server, token: str, sent: Sent) -> Json:
    """Retry ``sent`` with its key until some server answers it."""
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": sent.key}
    body = {"query": sent.query, "variables": sent.variables}
    while True:
        await server.up.wait()
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                response = await http.post(f"{server.url}/graphql", json=body, headers=headers)
        except httpx.TransportError:
            await asyncio.sleep(0.01)
            continue
        assert response.status_code == 200, response.text
        answer: Json = response.json()
        sent.answers.append(answer)
        return answer


async def stream(server: Server, token: str, requests: list[Sent]) -> None:
    for sent in requests:
        await send(server, token, sent)


async def kill_at_random(server: Server, rng: random.Random) -> None:
    for _ in range(ROUNDS):
        await server.start()
        await asyncio.sleep(rng.uniform(0.05, 0.8))
        server.kill()
    await server.start()  # the last one stays up until every request is answered


def sync_request(n: int) -> Sent:
    users = [{"name": f"sync-{n}-{j}"} for j in range(USERS_PER_SYNC)]  # new ids each run
    return Sent(str(uuid.uuid4()), SYNC, {"input": {"users": {"data": users}}})


def push_request(n: int, user_id: str) -> Sent:
    change = {"id": user_id, "baseVersion": 1, "data": {"name": f"pushed-{n}"}}
    return Sent(str(uuid.uuid4()), PUSH, {"input": {"users": {"updated": [change]}}})


async def stored_users(server: Server, token: str) -> dict[str, Json]:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{server.url}/graphql",
            json={"query": NAMES},
            headers={"Authorization": f"Bearer {token}"},
        )
    return {u["id"]: u for u in response.json()["data"]["users"]["nodes"]}


async def seed(server: Server, token: str, count: int) -> list[str]:
    """Users for the pushes to update (version 1 each), written before any kill."""
    seeding = Sent(
        str(uuid.uuid4()),
        SYNC,
        {"input": {"users": {"data": [{"name": f"seed-{n}"} for n in range(count)]}}},
    )
    answer = await send(server, token, seeding)
    ids: list[str] = answer["data"]["sync"]["users"]["ids"]
    return ids


def check_sync(sent: Sent, n: int, users: dict[str, Json]) -> None:
    """Applied once: its users stored once each, at version 1, with the ids every answer
    (first or replayed) names."""
    names = [u["name"] for u in users.values() if u["name"].startswith(f"sync-{n}-")]
    assert sorted(names) == sorted(f"sync-{n}-{j}" for j in range(USERS_PER_SYNC)), sent.answers
    ids = {tuple(a["data"]["sync"]["users"]["ids"]) for a in sent.answers}
    assert len(ids) == 1, sent.answers
    assert all(users[i]["version"] == 1 for i in next(iter(ids)))


def check_push(sent: Sent, n: int, user_id: str, users: dict[str, Json]) -> None:
    """Applied once: version 2 with the pushed name, and every answer says so (a second run
    would have answered a conflict: its baseVersion is 1)."""
    assert (users[user_id]["name"], users[user_id]["version"]) == (f"pushed-{n}", 2)
    for answer in sent.answers:
        report = answer["data"]["pushChanges"]
        assert (report["applied"], report["conflicts"], report["errors"]) == (1, [], []), answer


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_every_keyed_request_applies_once_across_kills(
    backend: str, database_urls: dict[str, str], tmp_path: Path
) -> None:
    env = environment(database_urls[backend])
    tenant = cli(env, "tenant", "create", "crash")["id"]
    token = cli(env, "key", "create", "--tenant", tenant, "--scopes", "sync:read,sync:write")["key"]
    server = Server(env, tmp_path / "serve.log")
    seed_value = random.randrange(2**32)
    rng = random.Random(seed_value)
    try:
        await server.start()
        pushes = STREAMS * REQUESTS_PER_STREAM // 2
        targets = await seed(server, token, pushes)
        server.kill()
        syncs = [sync_request(n) for n in range(STREAMS * REQUESTS_PER_STREAM - pushes)]
        pushed = [push_request(n, user_id) for n, user_id in enumerate(targets)]
        mixed = [*syncs, *pushed]
        rng.shuffle(mixed)
        work = [mixed[s::STREAMS] for s in range(STREAMS)]
        await asyncio.wait_for(
            asyncio.gather(kill_at_random(server, rng), *(stream(server, token, w) for w in work)),
            timeout=300,
        )
        lost = sum(bool(s.answers[0]["extensions"].get("idempotentReplay")) for s in mixed)
        print(f"seed {seed_value}: {lost} of {len(mixed)} answers lost to a kill after commit")
        for sent in mixed:  # one more retry each, with nothing killed: always a replay
            again = await send(server, token, sent)
            assert again["extensions"].get("idempotentReplay") is True, (seed_value, again)
        users = await stored_users(server, token)
    finally:
        server.stop()
    for n, sent in enumerate(syncs):
        check_sync(sent, n, users)
    for n, (sent, user_id) in enumerate(zip(pushed, targets, strict=True)):
        check_push(sent, n, user_id, users)
    assert len(users) == pushes + len(syncs) * USERS_PER_SYNC, seed_value


async def committed(database_url: str, query: str, *args: str) -> int:
    """A count read straight from the database, as another client sees it (committed)."""
    if database_url.startswith("sqlite"):
        path = database_url.split("///", 1)[1]

        def count() -> int:
            with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
                return int(
                    conn.execute(query.replace("$1", "?").replace("$2", "?"), args).fetchone()[0]
                )

        return await asyncio.to_thread(count)
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return int(await conn.fetchval(query, *args))
    finally:
        await conn.close()


async def kill_once_written(
    server: Server, token: str, sent: Sent, written: Callable[[], Awaitable[bool]]
) -> None:
    """Send ``sent``, SIGKILL the server the moment its writes are visible to others, and
    drop whatever answer was on its way: the client saw the connection die after the commit.
    Then retry on a fresh server."""
    request = asyncio.ensure_future(send(server, token, sent))
    for _ in range(20_000):
        answered = request.done()
        if await written():
            break
        assert not answered, sent.answers  # answered, yet its writes were not committed
        await asyncio.sleep(0.001)
    else:
        raise AssertionError("the writes never became visible")
    server.kill()
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    sent.answers.clear()  # lost with the connection
    await server.start()
    retry = await send(server, token, sent)
    assert retry["extensions"].get("idempotentReplay") is True, retry


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_kill_right_after_the_commit_leaves_the_answer_to_replay(
    backend: str, database_urls: dict[str, str], tmp_path: Path
) -> None:
    """Before: the answer was stored in a transaction of its own after the mutation's; a
    kill between the two made the retry wait 30 s, answer "still running" for a minute, then
    apply the mutation again."""
    url = database_urls[backend]
    env = environment(url)
    tenant = cli(env, "tenant", "create", "crash-after-commit")["id"]
    token = cli(env, "key", "create", "--tenant", tenant, "--scopes", "sync:read,sync:write")["key"]
    server = Server(env, tmp_path / "serve.log")
    try:
        await server.start()
        targets = await seed(server, token, 3)
        for n in range(3):
            sent = sync_request(1000 + n)
            like = f"sync-{1000 + n}-%"

            async def synced(like: str = like) -> bool:
                found = await committed(url, COUNT_NAMED, tenant, like)
                return found > 0

            await kill_once_written(server, token, sent, synced)
            pushed = push_request(n, targets[n])

            async def updated(user_id: str = targets[n]) -> bool:
                return await committed(url, VERSION_OF, tenant, user_id) == 2

            await kill_once_written(server, token, pushed, updated)
        users = await stored_users(server, token)
    finally:
        server.stop()
    for n in range(3):
        named = [u for u in users.values() if u["name"].startswith(f"sync-{1000 + n}-")]
        assert sorted(u["version"] for u in named) == [1] * USERS_PER_SYNC
        assert (users[targets[n]]["name"], users[targets[n]]["version"]) == (f"pushed-{n}", 2)


COUNT_NAMED = "SELECT count(*) FROM users WHERE tenant_id = $1 AND name LIKE $2"
VERSION_OF = "SELECT coalesce(max(version), 0) FROM users WHERE tenant_id = $1 AND id = $2"
