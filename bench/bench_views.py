"""Views (#14): what polling through a view costs, on a school of 100,000 pupils.

The tenant: ``--members`` pupils (``members``, 100,000 by default), half as many ``users``
(each pupil has one or two of them as guardians, drawn at random among the users of its
stage) and a classroom per 50 pupils (each pupil in exactly one). It is loaded in stages
(``--small`` pupils first, 10,000 by default, then the rest), through the engine's own
``SyncService.sync`` in 1,000-row batches, so every row is stamped as a client's would be.
``--keys`` (1,000) guardian-bound ``sync:read`` keys (``guardian(user)``) poll beside as
many unbound ``sync:read`` keys; the guardians of the first two classrooms are among them.

At each stage, against ``syncgraph serve --no-dev`` in its own process, with the same
``changes(since:)`` query over users, members and classrooms (``id version name``), after
every guardian has caught up:

* **idle polls** under wrk (16 connections, each request the next key with its own
  checkpoint), unbound keys from the tenant's latest checkpoint and bound keys from theirs,
  alternating; requests/s and the server's CPU per request;
* **after 1,000 writes** that touch none of the keyed guardians' records (1,000 other pupils
  renamed in one ``sync``): the guardians poll once each from their checkpoint of before the
  writes, one request at a time, each followed by an unbound idle poll (mean latency; as
  many guardians as ``--budget`` seconds allow), then the same polls under wrk beside
  unbound idle polls (every request evaluates the view again);
* **statements per poll**, in-process (SQLAlchemy's cursor events), with their time, and
  how the database ran the costliest (EXPLAIN).

At the last stage, **a move**: 30 pupils of the first classroom re-linked into the second
(one ``sync`` of both classrooms); every keyed guardian holding either classroom polls once,
and its answer is compared with what the data says it must see (the classroom it lost in
``deleted``, the one it gained in ``inserted``, the ones it keeps in ``updated``).

Subscribers through a view are measured by ``bench_subscriptions --views`` (its websocket
harness and server process), on this script's school.

    cd /work/main && .venv/bin/python -m bench.bench_views                    # PostgreSQL
    .venv/bin/python -m bench.bench_views --database sqlite --members 10000   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
from sqlalchemy import event

from app.db import write_transaction
from app.engine.tenants import create_key
from app.engine.views.spec import check_binding
from app.engine.write.sync import Batch
from bench.bench_polls import WRK, Figure, cpu_seconds, run_wrk, syncgraph_process
from bench.common import (
    BenchError,
    BenchServer,
    graphql_body,
    machine_line,
    ms,
    note,
    print_table,
    ratio,
    run_on_loop,
    running_server,
    statement_label,
)

PER_CLASSROOM = 50
BATCH = 1_000
WRITES = 1_000
MOVED = 30
CONNECTIONS = 16
SAMPLE = 20
"""Polls per kind whose statements are counted in-process."""
FIELDS = "id version name"
PLURALS = ("users", "members", "classrooms")
POLL = (
    "query Poll($since: String) { changes(since: $since) { checkpoint hasMore fullSyncRequired "
    + " ".join(f"{p} {{ inserted {{ {FIELDS} }} updated {{ {FIELDS} }} deleted }}" for p in PLURALS)
    + " } }"
)
UNBOUND = "unbound idle poll"
VIEW_IDLE = "view idle poll"
UNBOUND_AFTER = "unbound idle poll, after the writes"
VIEW_AFTER = f"view poll after {WRITES:,} writes"
REFERENCE = {VIEW_IDLE: UNBOUND, VIEW_AFTER: UNBOUND_AFTER}
"""What each view figure is compared with: the unbound idle poll measured beside it."""

Request = tuple[str, bytes]
"""A key and the body it posts."""


# --- the school -----------------------------------------------------------------------------


@dataclass
class School:
    """The tenant's data as the bench wrote it, by index: who guards whom, who sits where."""

    rng: random.Random = field(default_factory=lambda: random.Random(14))
    users: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    guardians: list[tuple[int, ...]] = field(default_factory=list)
    """Per pupil: its guardians (user indices)."""
    classes: list[list[int]] = field(default_factory=list)
    """Per classroom: its pupils (member indices)."""
    classrooms: list[str] = field(default_factory=list)
    children: dict[int, set[int]] = field(default_factory=dict)
    class_of: dict[int, int] = field(default_factory=dict)
    renamed: int = 0
    top: int = 0
    """The tenant's latest checkpoint."""

    def grow(self, members: int) -> dict[str, list[dict[str, Any]]]:
        """Pupils up to ``members``, users up to half as many, classrooms of 50; the new
        pupils' guardians are new users (a stage leaves the earlier guardians' views alone)."""
        u0, m0 = len(self.users), len(self.members)
        u1 = max(members // 2, u0 + 1)
        self.users += [str(uuid.uuid4()) for _ in range(u0, u1)]
        for m in range(m0, members):
            pick = tuple(self.rng.sample(range(u0, u1), self.rng.choice((1, 2))))
            self.guardians.append(pick)
            self.members.append(str(uuid.uuid4()))
            for u in pick:
                self.children.setdefault(u, set()).add(m)
        order = list(range(m0, members))
        self.rng.shuffle(order)
        c0 = len(self.classes)
        for start in range(0, len(order), PER_CLASSROOM):
            pupils = sorted(order[start : start + PER_CLASSROOM])
            self.class_of.update(dict.fromkeys(pupils, len(self.classes)))
            self.classes.append(pupils)
            self.classrooms.append(str(uuid.uuid4()))
        return {
            "users": [self.user_item(u) for u in range(u0, u1)],
            "members": [self.member_item(m) for m in range(m0, members)],
            "classrooms": [self.class_item(c) for c in range(c0, len(self.classes))],
        }

    def user_item(self, u: int) -> dict[str, Any]:
        return {"id": self.users[u], "alias": f"U-{u:06d}", "name": f"User {u}"}

    def member_item(self, m: int, name: str | None = None) -> dict[str, Any]:
        return {
            "id": self.members[m],
            "alias": f"M-{m:06d}",
            "name": name or f"Pupil {m}",
            "users": [self.users[u] for u in self.guardians[m]],
        }

    def class_item(self, c: int) -> dict[str, Any]:
        return {
            "id": self.classrooms[c],
            "alias": f"C-{c:05d}",
            "name": f"Class {c}",
            "members": [self.members[m] for m in self.classes[c]],
        }

    def visible_classes(self, u: int) -> set[str]:
        return {self.classrooms[self.class_of[m]] for m in self.children.get(u, ())}

    def keyed_guardians(self, count: int) -> list[int]:
        """The guardians of the first two classrooms (the move's), then other guardians."""
        first = sorted({u for c in (0, 1) for m in self.classes[c] for u in self.guardians[m]})
        rest = [u for u in sorted(self.children) if u not in set(first)]
        return (first + rest)[:count]

    def renames(self, keyed: set[int], count: int) -> list[dict[str, Any]]:
        """``count`` pupils none of the keyed guardians sees, each with a new name."""
        self.renamed += 1
        others = [m for m in range(len(self.members)) if keyed.isdisjoint(self.guardians[m])]
        return [self.member_item(m, f"Pupil {m} r{self.renamed}") for m in others[-count:]]

    def move(self, count: int) -> list[dict[str, Any]]:
        """``count`` pupils of classroom 0 re-linked into classroom 1: both classrooms."""
        moved = self.classes[0][:count]
        self.classes[0] = self.classes[0][count:]
        self.classes[1] = sorted(self.classes[1] + moved)
        self.class_of.update(dict.fromkeys(moved, 1))
        return [self.class_item(0), self.class_item(1)]


# --- loading and keys ---------------------------------------------------------------------


async def write(srv: BenchServer, school: School, plural: str, rows: list[dict[str, Any]]) -> None:
    """``rows`` through ``SyncService.sync`` in batches; ``school.top`` follows."""
    for start in range(0, len(rows), BATCH):
        batch = {plural: Batch(data=rows[start : start + BATCH])}
        result = await srv.state.service.sync(srv.tenant_id, batch)
        if result.total("failed"):
            raise BenchError(f"{plural}: {result.entities[plural].errors[:3]}")
        school.top = result.checkpoint


async def load(srv: BenchServer, school: School, members: int) -> tuple[int, float]:
    """The next stage: (rows written, seconds)."""
    started = time.perf_counter()
    rows = school.grow(members)
    for plural in PLURALS:
        await write(srv, school, plural, rows[plural])
    return sum(map(len, rows.values())), time.perf_counter() - started


async def vacuum(srv: BenchServer) -> None:
    """PostgreSQL: VACUUM (ANALYZE) the school's tables, which also empties the GIN indexes'
    pending lists (what autovacuum does some time after a bulk load)."""
    if srv.db.backend != "postgres":
        note("  NOTE: --vacuum is for PostgreSQL; ignored")
        return
    async with srv.state.engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.exec_driver_sql("VACUUM (ANALYZE) users, members, classrooms")


@dataclass
class Client:
    """One credential and the checkpoint it polls from."""

    key: str
    checkpoint: str | None = None
    user: int | None = None
    """The guardian it is bound to (None: an unbound key)."""


async def make_clients(
    srv: BenchServer, school: School, count: int
) -> tuple[list[Client], list[Client]]:
    """``count`` guardian-bound keys and as many unbound ``sync:read`` keys."""
    registry = srv.state.registry
    bound, unbound = [], []
    async with write_transaction(srv.state.engine) as conn:
        for u in school.keyed_guardians(count):
            view = check_binding(registry, "guardian", {"user": school.users[u]})
            issued = await create_key(
                conn, tenant_id=srv.tenant_id, scopes=("sync:read",), view=view
            )
            bound.append(Client(issued.key, user=u))
        for _ in range(len(bound)):
            issued = await create_key(conn, tenant_id=srv.tenant_id, scopes=("sync:read",))
            unbound.append(Client(issued.key))
    return bound, unbound


# --- polling --------------------------------------------------------------------------------


def body(checkpoint: str | None) -> bytes:
    return graphql_body(POLL, {"since": checkpoint})


async def poll(http: httpx.AsyncClient, key: str, content: bytes) -> dict[str, Any]:
    """One ``changes`` page, or BenchError."""
    response = await http.post(
        "/graphql",
        content=content,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    payload = orjson.loads(response.content)
    if response.status_code != 200 or payload.get("errors"):
        raise BenchError(f"HTTP {response.status_code}: {str(payload)[:600]}")
    page: dict[str, Any] = payload["data"]["changes"]
    if page["fullSyncRequired"]:
        raise BenchError(f"unexpected fullSyncRequired: {page}")
    return page


def ids(page: dict[str, Any], plural: str, kind: str) -> set[str]:
    if kind == "deleted":
        return set(page[plural]["deleted"])
    return {r["id"] for r in page[plural][kind]}


def records(page: dict[str, Any]) -> int:
    return sum(len(ids(page, p, k)) for p in PLURALS for k in ("inserted", "updated", "deleted"))


async def catch_up(base_url: str, clients: list[Client]) -> float:
    """Every client pulls until ``hasMore`` is false (CONNECTIONS at a time); seconds."""
    started = time.perf_counter()
    queue = list(reversed(clients))
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as http:

        async def worker() -> None:
            while queue:
                client = queue.pop()
                while True:
                    page = await poll(http, client.key, body(client.checkpoint))
                    client.checkpoint = page["checkpoint"]
                    if not page["hasMore"]:
                        break

        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    return time.perf_counter() - started


# --- rates under load -----------------------------------------------------------------------

LUA = """
local reqs = {}
local items = {
%s
}
init = function(args)
  for i, item in ipairs(items) do
    reqs[i] = wrk.format("POST", "/graphql", {
      ["Host"] = wrk.headers["Host"],
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. item[1],
    }, item[2])
  end
end
local n = 0
request = function()
  n = n %% #reqs + 1
  return reqs[n]
end
"""


def lua_rotating(requests: Sequence[Request]) -> str:
    """A wrk script that sends the requests in turn, each with its own key and body."""
    items = ",\n".join(f'{{"{key}", [==[{content.decode()}]==]}}' for key, content in requests)
    return LUA % items


async def httpx_rate(base_url: str, requests: Sequence[Request], seconds: float) -> float:
    """Without wrk: CONNECTIONS httpx clients in this process (slower than wrk: their
    Python competes with the server for the cores)."""
    done = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:

        async def worker(first: int) -> None:
            nonlocal done
            n = first
            while time.perf_counter() < deadline:
                key, content = requests[n % len(requests)]
                await poll(http, key, content)
                n += CONNECTIONS
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(CONNECTIONS)))
    return done / (time.perf_counter() - started)


async def check_quiet(base_url: str, requests: Sequence[Request]) -> None:
    """A few of the requests as the loader sends them: each answers no record."""
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as http:
        for key, content in (requests[0], requests[len(requests) // 2], requests[-1]):
            page = await poll(http, key, content)
            if records(page) or page["hasMore"]:
                raise BenchError(f"a poll that should be quiet answered records: {page}")


async def rates(
    base_url: str,
    pid: int,
    contenders: dict[str, list[Request]],
    *,
    seconds: float,
    repeat: int,
) -> dict[str, Figure]:
    """Requests/s and server CPU per request of each contender, alternating, ``repeat``
    rounds; each contender's requests are checked before and after its load."""
    figures = {label: Figure(label) for label in contenders}
    for _round in range(repeat):
        for label, requests in contenders.items():
            note(f"    wrk: {label}")
            await check_quiet(base_url, requests)
            cpu = cpu_seconds(pid)
            if WRK:
                rate = await run_wrk(base_url, lua_rotating(requests), seconds, what=label)
            else:
                rate = await httpx_rate(base_url, requests, seconds)
            figures[label].rates.append(rate)
            figures[label].cpu_ms.append((cpu_seconds(pid) - cpu) * 1000 / max(rate * seconds, 1))
            await check_quiet(base_url, requests)
    return figures


# --- one request at a time ------------------------------------------------------------------


async def latencies(
    base_url: str, pairs: Sequence[tuple[Client, Request, Request]], *, budget: float
) -> tuple[list[float], list[float]]:
    """Each pair in turn, one request at a time: the bound client's request (its new
    checkpoint kept), then an unbound one; seconds of each. Stops after ``budget`` s."""
    bound, unbound = [], []
    deadline = time.perf_counter() + budget
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as http:
        await poll(http, *pairs[0][2])  # the connection is open before the clock starts
        for client, view_request, unbound_request in pairs:
            started = time.perf_counter()
            page = await poll(http, *view_request)
            bound.append(time.perf_counter() - started)
            if records(page) or page["hasMore"]:
                raise BenchError(f"the writes touched a keyed guardian's view: {page}")
            client.checkpoint = page["checkpoint"]
            started = time.perf_counter()
            await poll(http, *unbound_request)
            unbound.append(time.perf_counter() - started)
            if time.perf_counter() > deadline:
                break
    return bound, unbound


# --- statements, in-process -----------------------------------------------------------------


class Statements:
    """The statements the in-process server runs (SQLAlchemy's cursor events), with their
    time: label -> [calls, seconds] over the last ``per_poll``."""

    def __init__(self, srv: BenchServer) -> None:
        self.srv = srv
        self.seen: dict[str, list[float]] = {}
        self.polls = 1
        self.last: dict[str, tuple[str, Any]] = {}
        """Label -> the statement's text and parameters, as last run (for EXPLAIN)."""
        engine = srv.state.engine.sync_engine
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: sa.Connection, *_: Any) -> None:
        conn.info["bench_views_t0"] = time.perf_counter()

    def _after(
        self, conn: sa.Connection, _cursor: Any, statement: str, parameters: Any, *_: Any
    ) -> None:
        elapsed = time.perf_counter() - conn.info.pop("bench_views_t0")
        label = statement_label(statement, 110)
        entry = self.seen.setdefault(label, [0, 0.0])
        entry[0] += 1
        entry[1] += elapsed
        self.last[label] = (statement, parameters)

    async def per_poll(self, requests: Sequence[Request]) -> tuple[float, float, float]:
        """Each request once through the in-process server: (statements, SQL seconds,
        request seconds) per poll, and ``seen`` holds their statements."""
        for key, content in requests:  # the credential cache warm, as under load
            await poll(self.srv.http, key, content)
        self.seen = {}
        started = time.perf_counter()
        for key, content in requests:
            await poll(self.srv.http, key, content)
        elapsed = time.perf_counter() - started
        n = self.polls = len(requests)
        calls = sum(c for c, _ in self.seen.values())
        return calls / n, sum(t for _, t in self.seen.values()) / n, elapsed / n

    def table(self) -> list[list[str]]:
        """The last ``per_poll``'s statements, the costliest first."""
        ranked = sorted(self.seen.items(), key=lambda kv: -kv[1][1])
        return [[label, f"{n / self.polls:.1f}", ms(t / n)] for label, (n, t) in ranked]

    async def plans(self, top: int = 2) -> list[str]:
        """How the database runs the last ``per_poll``'s ``top`` costliest statements (as
        last run): PostgreSQL's EXPLAIN ANALYZE (its scans, buffers and time), SQLite's
        query plan."""
        ranked = sorted(self.seen.items(), key=lambda kv: -kv[1][1])[:top]
        postgres = self.srv.db.backend == "postgres"
        prefix = "EXPLAIN (ANALYZE, BUFFERS) " if postgres else "EXPLAIN QUERY PLAN "
        out = []
        async with self.srv.state.engine.connect() as conn:
            for label, _ in ranked:
                statement, parameters = self.last[label]
                result = await conn.exec_driver_sql(prefix + statement, parameters)
                lines = [str(row[-1]).strip() for row in result]
                if postgres:  # the scans and their buffers (not the planner's), and the time
                    cut = lines.index("Planning:") if "Planning:" in lines else len(lines)
                    scans = [line for line in lines[:cut] if "Scan" in line or "Buffers" in line]
                    lines = scans + [line for line in lines if line.startswith("Execution")]
                out.append(f"{label}\n      " + "\n      ".join(lines))
        return out


# --- the run --------------------------------------------------------------------------------


@dataclass
class Stage:
    """What one stage measured."""

    members: int
    figures: dict[str, Figure]
    bound_ms: list[float]
    unbound_ms: list[float]
    statements: dict[str, tuple[float, float, float]]
    detail: list[list[str]]
    """The statements of a poll after the writes: label, calls per poll, ms per call."""
    plans: list[str]
    """How the database ran the costliest of them."""


async def measure_stage(
    srv: BenchServer,
    counter: Statements,
    served: tuple[str, int],
    school: School,
    clients: tuple[list[Client], list[Client]],
    args: argparse.Namespace,
) -> Stage:
    """Idle polls; then the writes and the polls after them, under load and one at a time.
    Every guardian's checkpoint is the tenant's latest (``top``) when it starts."""
    (base_url, pid), (bound, unbound) = served, clients
    idle = [(c.key, body(str(school.top))) for c in unbound]
    view_idle = [(c.key, body(c.checkpoint)) for c in bound]
    contenders = {UNBOUND: idle, VIEW_IDLE: view_idle}
    figures = await rates(base_url, pid, contenders, seconds=args.seconds, repeat=args.repeat)
    statements = {label: await counter.per_poll(r[:SAMPLE]) for label, r in contenders.items()}
    note(f"  {WRITES:,} writes to pupils no keyed guardian sees")
    keyed = {c.user for c in bound if c.user is not None}
    await write(srv, school, "members", school.renames(keyed, WRITES))
    idle = [(c.key, body(str(school.top))) for c in unbound]
    note("  guardians poll once from before the writes, beside unbound idle polls")
    pairs = list(zip(bound, view_idle, idle, strict=True))
    bound_s, unbound_s = await latencies(base_url, pairs, budget=args.budget)
    contenders = {UNBOUND_AFTER: idle, VIEW_AFTER: view_idle}
    figures |= await rates(base_url, pid, contenders, seconds=args.seconds, repeat=args.repeat)
    statements[VIEW_AFTER] = await counter.per_poll(view_idle[:SAMPLE])
    return Stage(
        len(school.members),
        figures,
        [s * 1000 for s in bound_s],
        [s * 1000 for s in unbound_s],
        statements,
        counter.table(),
        await counter.plans(),
    )


@dataclass
class Move:
    concerned: int
    concerned_ok: int
    others: int
    others_ok: int
    seconds: float
    wrong: list[str]


async def measure_move(
    srv: BenchServer, base_url: str, school: School, bound: list[Client]
) -> Move:
    """Classroom 0 loses MOVED pupils to classroom 1; every keyed guardian who holds either
    classroom polls once."""
    moving = {school.classrooms[0], school.classrooms[1]}
    before = {c.key: school.visible_classes(c.user or 0) for c in bound}
    touched = [c for c in bound if moving & before[c.key]]  # after: the same guardians
    await catch_up(base_url, touched)  # each from the tenant's latest checkpoint
    await write(srv, school, "classrooms", school.move(MOVED))
    started = time.perf_counter()
    pages: dict[str, dict[str, Any]] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as http:
        queue = list(touched)

        async def worker() -> None:
            while queue:
                client = queue.pop()
                pages[client.key] = await poll(http, client.key, body(client.checkpoint))

        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    move = Move(0, 0, 0, 0, time.perf_counter() - started, [])
    for client in touched:
        held, now = before[client.key], school.visible_classes(client.user or 0)
        expected = {"inserted": now - held, "updated": now & held & moving, "deleted": held - now}
        page = pages[client.key]
        seen = {kind: ids(page, "classrooms", kind) for kind in expected}
        others = sum(len(ids(page, p, k)) for p in ("users", "members") for k in expected)
        ok = seen == expected and not others and not page["hasMore"]
        if held != now:
            move.concerned += 1
            move.concerned_ok += ok
        else:
            move.others += 1
            move.others_ok += ok
        if not ok and len(move.wrong) < 3:
            move.wrong.append(f"user {client.user}: expected {expected}, got {page}")
    return move


async def bench(database: str, args: argparse.Namespace) -> None:
    note(f"[{database}] a fresh database")
    stages = [args.small, args.members] if 0 < args.small < args.members else [args.members]
    school = School()
    results: list[Stage] = []
    loads: list[list[str]] = []
    async with running_server(database) as srv, AsyncExitStack() as stack:
        version = await srv.database_version()
        counter = Statements(srv)
        served: tuple[str, int] | None = None
        clients: tuple[list[Client], list[Client]] = ([], [])
        for members in stages:
            note(f"  loading up to {members:,} pupils")
            rows, seconds = await load(srv, school, members)
            if args.vacuum:
                await vacuum(srv)
            if served is None:
                clients = await make_clients(srv, school, args.keys)
                process = await stack.enter_async_context(
                    syncgraph_process(srv.db.url, workers=1, extra_env={})
                )
                served = (process.base_url, process.pid)
            note(f"  {len(clients[0]):,} guardians catch up")
            caught_up = await catch_up(served[0], clients[0])
            loads.append(
                [
                    f"{members:,}",
                    f"{rows:,}",
                    f"{seconds:.1f}",
                    f"{rows / seconds:,.0f}",
                    f"{caught_up:.1f}",
                ]
            )
            results.append(await measure_stage(srv, counter, served, school, clients, args))
        assert served is not None
        move = await measure_move(srv, served[0], school, clients[0])
    print_results(database, version, loads, len(clients[0]), results, move)


# --- output ---------------------------------------------------------------------------------


def print_results(
    database: str,
    version: str,
    loads: list[list[str]],
    keys: int,
    stages: list[Stage],
    move: Move,
) -> None:
    title = f"[{database}] {version}: the load (SyncService.sync, {BATCH:,}-row batches)"
    caught_up = f"{keys:,} guardians' polls, s"
    print_table(title, ["pupils", "rows written", "s", "rows/s", caught_up], loads)
    print(
        f"(then every guardian polls, {CONNECTIONS} at a time: from null at the first stage, "
        "from its checkpoint after the load at the next)"
    )
    for stage in stages:
        print_stage(database, stage)
    print_targets(database, stages, move)


def print_stage(database: str, stage: Stage) -> None:
    loader = f"wrk -t1 -c{CONNECTIONS}" if WRK else f"httpx, {CONNECTIONS} connections"
    rows = []
    for label, figure in stage.figures.items():
        unbound = stage.figures[REFERENCE.get(label, label)]
        cpu_ratio = min(figure.cpu_ms) / min(unbound.cpu_ms)
        rows.append([label, *figure.cells(), ratio(figure.best / unbound.best), ratio(cpu_ratio)])
    print_table(
        f"[{database}] {stage.members:,} pupils: polls under load ({loader}, syncgraph serve)",
        ["request", "req/s", "spread", "CPU ms/req", "rate ÷ unbound beside", "CPU ÷ unbound"],
        rows,
    )
    mean_b, mean_u = statistics.fmean(stage.bound_ms), statistics.fmean(stage.unbound_ms)
    print_table(
        f"[{database}] {stage.members:,} pupils: one request at a time, alternating",
        ["request", "polls", "mean ms", "median ms", "÷ unbound"],
        [
            [
                VIEW_AFTER,
                len(stage.bound_ms),
                f"{mean_b:.2f}",
                _median(stage.bound_ms),
                ratio(mean_b / mean_u),
            ],
            [UNBOUND, len(stage.unbound_ms), f"{mean_u:.2f}", _median(stage.unbound_ms), "1.00x"],
        ],
    )
    rows = [
        [label, f"{n:.1f}", f"{sql * 1000:.2f}", f"{total * 1000:.2f}"]
        for label, (n, sql, total) in stage.statements.items()
    ]
    print_table(
        f"[{database}] {stage.members:,} pupils: per poll, in-process ({SAMPLE} polls each)",
        ["request", "statements", "SQL ms", "request ms"],
        rows,
    )
    print_table(
        f"[{database}] {stage.members:,} pupils: the statements of a {VIEW_AFTER}",
        ["statement", "calls/poll", "ms/call"],
        stage.detail,
    )
    print("\nhow the database ran the costliest (EXPLAIN, as last run):")
    for plan in stage.plans:
        print(f"  {plan}")


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}"


def print_targets(database: str, stages: list[Stage], move: Move) -> None:
    rows = []
    for stage in stages:
        figures = stage.figures
        idle = figures[VIEW_IDLE].best / figures[UNBOUND].best
        rows.append(
            [
                f"idle poll, view ÷ unbound rate, {stage.members:,} pupils",
                "≥ 0.67x",
                ratio(idle),
                _met(idle >= 0.67),
            ]
        )
    for stage in stages:
        after = statistics.fmean(stage.bound_ms) / statistics.fmean(stage.unbound_ms)
        rows.append(
            [
                f"poll after writes ÷ unbound idle poll (latency), {stage.members:,} pupils",
                "≤ 3x",
                ratio(after),
                _met(after <= 3),
            ]
        )
    rows.append(
        [
            f"move of {MOVED} pupils: concerned guardians who saw it in one poll",
            "all",
            f"{move.concerned_ok} of {move.concerned}",
            _met(move.concerned_ok == move.concerned),
        ]
    )
    rows.append(
        [
            "the others holding either classroom: saw it updated in one poll",
            "all",
            f"{move.others_ok} of {move.others}",
            _met(move.others_ok == move.others),
        ]
    )
    rows.append(["subscribers: see bench_subscriptions --views", "—", "—", "—"])
    print_table(f"[{database}] targets (issue #14)", ["figure", "target", "measured", ""], rows)
    print(f"the move's polls: {move.concerned + move.others} in {move.seconds:.1f} s")
    for wrong in move.wrong:
        print(f"  WRONG: {wrong[:800]}")


def _met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


# --- command line ---------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("postgres", "sqlite", "both"), default="postgres")
    parser.add_argument("--members", type=int, default=100_000, help="pupils at the end")
    parser.add_argument(
        "--small",
        type=int,
        default=10_000,
        help="pupils at the first measured stage (0 or >= --members: one stage)",
    )
    parser.add_argument("--keys", type=int, default=1_000, help="guardian-bound keys")
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk seconds per figure")
    parser.add_argument("--repeat", type=int, default=2, help="wrk rounds per figure")
    parser.add_argument(
        "--budget",
        type=float,
        default=30.0,
        help="seconds for the one-at-a-time polls of a stage (fewer guardians if it runs out)",
    )
    parser.add_argument(
        "--vacuum",
        action="store_true",
        help="PostgreSQL: VACUUM (ANALYZE) after each load (empties the GIN pending lists)",
    )
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    print(
        f"views: {args.members:,} pupils, {args.members // 2:,} users, "
        f"{-(-args.members // PER_CLASSROOM):,} classrooms, {args.keys:,} guardian keys; "
        f"{machine_line()}"
    )
    if not WRK:
        note("NOTE: wrk not found (apt-get install -y wrk): loading with httpx from this process")
    for database in ("postgres", "sqlite") if args.database == "both" else (args.database,):
        await bench(database, args)


def cli(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    started = time.perf_counter()
    run_on_loop(main(args), args.loop)
    note(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    cli()
