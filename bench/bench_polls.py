"""Polls at peer speed (#15): requests/s of the commonest sync traffic, side by side with
PostGraphile 5 in one run.

The server under test is what production runs: ``syncgraph serve --no-dev`` in its own
process (``--workers`` chooses how many; one by default), on a fresh database holding 1,000
pieces. The load is ``wrk`` (Debian's ``wrk`` package) with 16 connections on loopback, one
thread, ``--seconds`` per figure (5 by default); without wrk the benchmark says so and loads
with httpx from this process instead (slower: the loader then competes with the server).

Figures (requests/s, and milliseconds of server CPU per request from /proc):

* ``/healthz``: a plain Starlette endpoint in the same process, the floor of the stack;
* ``{ __typename }`` with credentials (an all-scopes API key);
* the idle poll: ``changes(since: <latest>)`` over one entity selecting 3 fields, nothing new;
* a poll returning 100 changed records (``since`` 100 seqs behind), same 3 fields;
* a one-record ``sync`` changing one piece's name (every request a new value, one commit).

On PostgreSQL PostGraphile 5 (``bench/postgraphile``, installed with ``npm ci`` on first use,
as ``bench_changes`` does) serves the same database in its own process and answers the same
questions: ``{ __typename }``; the poll as the filtered list a client would page with,
``pieces(condition: {tenantId}, orderBy: SEQ_ASC, after: <cursor>)``, where the cursor is
the last piece (nothing new) or the 900th (100 records); and the one-row update mutation
``updatePiece`` of the same table. Ratio = syncgraph ÷ PostGraphile (1.00x = parity).

The contenders are measured alternately, ``--repeat`` times each (2 by default); the table
shows the best rate of each and the spread, because the machine is shared.

    cd /work/main && .venv/bin/python -m bench.bench_polls --backend both
    .venv/bin/python -m bench.bench_polls --backend postgres --workers 1,2,3   # scaling
    .venv/bin/python -m bench.bench_polls --backend postgres --profile          # py-spy
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

from bench.bench_changes import install_postgraphile, postgraphile_server, postgraphile_version
from bench.bench_sync import SYNC
from bench.common import (
    BenchError,
    BenchServer,
    backends,
    graphql_body,
    machine_line,
    note,
    parse_args,
    print_table,
    ratio,
    run_on_loop,
    running_server,
)
from bench.data import PIECES, create_assembly, items, new_ids

RECORDS = 1_000
CHANGED = 100
CONNECTIONS = 16
FIELDS = "id name quantity"

POLL = f"""query Poll($since: String) {{
  changes(since: $since) {{
    checkpoint hasMore
    pieces {{ inserted {{ {FIELDS} }} updated {{ {FIELDS} }} deleted }}
  }}
}}"""
PGL_POLL = """query Poll($tenant: String!, $after: Cursor) {
  pieces(condition: {tenantId: $tenant}, orderBy: SEQ_ASC, after: $after, first: 1000) {
    pageInfo { hasNextPage endCursor }
    nodes { rowId name quantity }
  }
}"""
PGL_CURSORS = """query Cursors($tenant: String!) {
  pieces(condition: {tenantId: $tenant}, orderBy: SEQ_ASC, first: 1000) {
    edges { cursor }
  }
}"""
PGL_UPDATE = """mutation Update($tenant: String!, $id: String!, $name: String!) {
  updatePiece(input: {tenantId: $tenant, rowId: $id, patch: {name: $name}}) {
    piece { rowId name }
  }
}"""
TYPENAME = "{ __typename }"
COUNTER = "__N__"
"""Replaced by wrk (a Lua counter) in every request of a write: each one changes the row."""
ID = "__ID__"
"""Replaced by the next of a load's ``ids`` in every request (writes spread over the rows)."""


# --- what is measured -----------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """One request, repeated by the loader: POST ``body`` (or GET when it is None)."""

    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], bool] | None = None
    """What a correct answer looks like (checked once before the load, and after it)."""
    ids: tuple[str, ...] = ()
    """Taken in turn for ``ID`` in the body."""

    def body_for(self, n: int, counter: str) -> bytes:
        """The body of the ``n``-th request (``counter`` for ``COUNTER``)."""
        body = (self.body or b"").replace(COUNTER.encode(), counter.encode())
        return body.replace(ID.encode(), self.ids[n % len(self.ids)].encode()) if self.ids else body


@dataclass
class Figure:
    label: str
    rates: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    """Server CPU per request, where the server is ours (its process tree in /proc)."""

    @property
    def best(self) -> float:
        return max(self.rates) if self.rates else 0.0

    def cells(self) -> list[str]:
        if not self.rates:
            return ["—", "—", "—"]
        spread = f"{min(self.rates):,.0f}-{max(self.rates):,.0f}"
        cpu = f"{min(self.cpu_ms):.2f}" if self.cpu_ms else "—"
        return [f"{self.best:,.0f}", spread, cpu]


def _key_headers(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", "content-type": "application/json"}


def _data_ok(path: str) -> Callable[[dict[str, Any]], bool]:
    """An answer with no errors whose ``data`` has ``path`` (dotted) not null."""

    def check(payload: dict[str, Any]) -> bool:
        value: Any = payload.get("data")
        for part in path.split("."):
            if not isinstance(value, dict) or value.get(part) is None:
                return False
            value = value[part]
        return not payload.get("errors")

    return check


def _changes_count(expected: int) -> Callable[[dict[str, Any]], bool]:
    def check(payload: dict[str, Any]) -> bool:
        pieces = (payload.get("data") or {}).get("changes", {}).get("pieces") or {}
        count = len(pieces.get("inserted", [])) + len(pieces.get("updated", []))
        return not payload.get("errors") and count == expected

    return check


def _pgl_count(expected: int) -> Callable[[dict[str, Any]], bool]:
    def check(payload: dict[str, Any]) -> bool:
        nodes = ((payload.get("data") or {}).get("pieces") or {}).get("nodes")
        return not payload.get("errors") and nodes is not None and len(nodes) == expected

    return check


# --- loaders --------------------------------------------------------------------------------

WRK = shutil.which("wrk")
WRK_SCRIPT = """
wrk.method = "{method}"
{headers}
local body = [==[{body}]==]
local ids = {{{ids}}}
local n = 0
request = function()
  n = n + 1
  local this = body:gsub("{counter}", "{run}-" .. n)
  if #ids > 0 then this = this:gsub("{id}", ids[n % #ids + 1]) end
  return wrk.format(nil, "{path}", nil, this)
end
"""


def _wrk_script(load: Load) -> str:
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in load.headers.items())
    method = "GET" if load.body is None else "POST"
    body = (load.body or b"").decode()
    return WRK_SCRIPT.format(
        method=method,
        headers=headers,
        body=body,
        path=load.path,
        counter=COUNTER,
        run=time.time_ns(),  # every run's values are new ones
        id=ID,
        ids=", ".join(f'"{one}"' for one in load.ids),
    )


async def wrk_rate(base_url: str, load: Load, seconds: float) -> float:
    """Requests/s by wrk; a non-2xx answer or a socket error fails the figure."""
    return await run_wrk(base_url, _wrk_script(load), seconds, what=load.path)


async def run_wrk(base_url: str, lua: str, seconds: float, *, what: str) -> float:
    """Requests/s of wrk running the Lua ``script``; a non-2xx answer or a socket error
    fails the figure (``what`` names it in the message)."""
    assert WRK is not None
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(lua)
        script.flush()
        process = await asyncio.create_subprocess_exec(
            WRK,
            "-t1",
            f"-c{CONNECTIONS}",
            "--timeout",
            "10s",
            f"-d{seconds:g}s",
            "-s",
            script.name,
            base_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out = (await process.communicate())[0].decode()
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if process.returncode != 0 or found is None:
        raise BenchError(f"wrk failed ({process.returncode}):\n{out}")
    for problem in ("Non-2xx or 3xx responses", "Socket errors"):
        if problem in out:
            raise BenchError(f"wrk saw errors on {what}:\n{out}")
    return float(found.group(1))


async def httpx_rate(base_url: str, load: Load, seconds: float) -> float:
    """The fallback loader: ``CONNECTIONS`` httpx clients in this process for ``seconds``."""
    done = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=base_url, headers=load.headers, limits=limits) as http:

        async def worker(first: int) -> None:
            nonlocal done
            n = first
            while time.perf_counter() < deadline:
                n += CONNECTIONS
                if load.body is None:
                    response = await http.get(load.path)
                else:
                    response = await http.post(load.path, content=load.body_for(n, str(n)))
                if response.status_code != 200:
                    raise BenchError(f"HTTP {response.status_code} on {load.path}")
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(CONNECTIONS)))
    return done / (time.perf_counter() - started)


async def check_once(base_url: str, load: Load) -> None:
    """One request as the loader sends it: a correct answer, or the figure is meaningless."""
    async with httpx.AsyncClient(base_url=base_url, headers=load.headers, timeout=60) as http:
        if load.body is None:
            response = await http.get(load.path)
        else:
            unique = f"check-{time.time_ns()}"  # a new value: a write writes
            response = await http.post(load.path, content=load.body_for(0, unique))
    payload = orjson.loads(response.content)
    if response.status_code != 200 or (load.check is not None and not load.check(payload)):
        raise BenchError(f"{load.path}: HTTP {response.status_code}: {str(payload)[:600]}")


# --- server processes ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its direct children (uvicorn's workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(entry.name))
    total = 0
    for one in pids:
        try:
            fields = (Path("/proc") / str(one) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(file: IO[bytes]) -> str:
    file.seek(0)
    return "\n    ".join(["", *file.read().decode(errors="replace").strip().splitlines()[-15:]])


@dataclass
class Served:
    base_url: str
    pid: int


BASELINE_MAIN = "import sys; sys.path.insert(0, sys.argv.pop(1)); from app.cli import main; main()"
"""``syncgraph`` with the ``app`` package of another checkout (``--baseline DIR``)."""


@asynccontextmanager
async def syncgraph_process(
    database_url: str, *, workers: int, extra_env: dict[str, str], code: str | None = None
) -> AsyncIterator[Served]:
    """``syncgraph serve --no-dev`` on a free port, as an operator starts it (``code``: the
    checkout whose ``app`` runs, instead of this one); stopped by PID."""
    port = _free_port()
    if code is None:
        command = [str(Path(sys.executable).parent / "syncgraph")]
    else:
        command = [sys.executable, "-c", BASELINE_MAIN, code]
    command += ["serve", "--no-dev", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(workers)]
    env = {**os.environ, "DATABASE_URL": database_url, "SYNCGRAPH_LOG_LEVEL": "WARNING"}
    env.update(extra_env)
    with tempfile.TemporaryFile() as output:
        process = await asyncio.create_subprocess_exec(
            *command, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output
        )
        base_url = f"http://127.0.0.1:{port}"
        try:
            await _until_healthy(base_url, process, output)
            yield Served(base_url, process.pid)
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 20)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def _until_healthy(
    base_url: str, process: asyncio.subprocess.Process, output: IO[bytes]
) -> None:
    deadline = time.perf_counter() + 60
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        while True:
            if process.returncode is not None:
                raise BenchError(
                    f"syncgraph serve exited with {process.returncode}:{_tail(output)}"
                )
            try:
                if (await http.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.perf_counter() > deadline:
                raise BenchError(f"syncgraph serve did not answer in 60 s:{_tail(output)}")
            await asyncio.sleep(0.1)


# --- the run --------------------------------------------------------------------------------


@dataclass
class Contender:
    """One server and the requests that ask it each question (None: not asked)."""

    name: str
    base_url: str
    loads: dict[str, Load | None]
    pid: int | None = None


@dataclass
class Scene:
    """The bench tenant's data: the pieces' ids, the checkpoints and PostGraphile cursors."""

    first_id: str
    ids: tuple[str, ...]
    """Every piece's id (the spread writes take them in turn)."""
    latest: str
    behind: str
    """The checkpoint ``CHANGED`` records behind the latest."""


async def prepare(srv: BenchServer) -> Scene:
    """1,000 pieces through the server's own sync; the checkpoints a poll starts from."""
    await create_assembly(srv)
    body = graphql_body(
        SYNC % "pieces", {"input": {"pieces": {"data": items(PIECES, new_ids(RECORDS), 0)}}}
    )
    if (await srv.graphql(body))["sync"]["totals"]["inserted"] != RECORDS:
        raise BenchError("populate: not every piece was inserted")
    page = await srv.graphql(graphql_body(POLL, {"since": None}))
    behind = await srv.graphql(
        graphql_body(
            POLL.replace("changes(since: $since)", "changes(since: $since, limit: 900)"),
            {"since": None},
        )
    )
    ids = tuple(piece["id"] for piece in page["changes"]["pieces"]["inserted"])
    return Scene(ids[0], ids, page["changes"]["checkpoint"], behind["changes"]["checkpoint"])


def syncgraph_loads(srv: BenchServer, scene: Scene) -> dict[str, Load | None]:
    headers = _key_headers(srv.key)
    item = {**PIECES.item(0, scene.first_id, 0), "name": f"Renamed {COUNTER}"}
    sync = graphql_body(SYNC % "pieces", {"input": {"pieces": {"data": [item]}}})
    one = {"id": ID, "name": f"Renamed {COUNTER}"}  # by id: the alias stays as it is
    spread = graphql_body(SYNC % "pieces", {"input": {"pieces": {"data": [one]}}})
    wrote = lambda p: _data_ok("sync")(p) and p["data"]["sync"]["totals"]["updated"] == 1  # noqa: E731
    return {
        "GET /healthz (plain Starlette)": Load("/healthz", check=lambda p: p.get("status") == "ok"),
        "{ __typename } with credentials": Load(
            "/graphql", graphql_body(TYPENAME), headers, _data_ok("__typename")
        ),
        "idle poll (nothing new)": Load(
            "/graphql", graphql_body(POLL, {"since": scene.latest}), headers, _changes_count(0)
        ),
        f"poll returning {CHANGED} records": Load(
            "/graphql",
            graphql_body(POLL, {"since": scene.behind}),
            headers,
            _changes_count(CHANGED),
        ),
        WRITE: Load("/graphql", sync, headers, wrote),
        SPREAD: Load("/graphql", spread, headers, wrote, scene.ids),
    }


async def postgraphile_loads(
    http: httpx.AsyncClient, srv: BenchServer, scene: Scene
) -> dict[str, Load | None]:
    variables = {"tenant": srv.tenant_id}
    answer = orjson.loads(
        (await http.post("/graphql", content=graphql_body(PGL_CURSORS, variables))).content
    )
    cursors = [edge["cursor"] for edge in answer["data"]["pieces"]["edges"]]
    headers = {"content-type": "application/json"}
    update = {"tenant": srv.tenant_id, "id": scene.first_id, "name": f"Renamed {COUNTER}"}
    return {
        "GET /healthz (plain Starlette)": None,
        "{ __typename } with credentials": Load(
            "/graphql", graphql_body(TYPENAME), headers, _data_ok("__typename")
        ),
        "idle poll (nothing new)": Load(
            "/graphql",
            graphql_body(PGL_POLL, {**variables, "after": cursors[-1]}),
            headers,
            _pgl_count(0),
        ),
        f"poll returning {CHANGED} records": Load(
            "/graphql",
            graphql_body(PGL_POLL, {**variables, "after": cursors[-1 - CHANGED]}),
            headers,
            _pgl_count(CHANGED),
        ),
        WRITE: Load(
            "/graphql", graphql_body(PGL_UPDATE, update), headers, _data_ok("updatePiece.piece")
        ),
        SPREAD: Load(
            "/graphql",
            graphql_body(PGL_UPDATE, {**update, "id": ID}),
            headers,
            _data_ok("updatePiece.piece"),
            scene.ids,
        ),
    }


async def measure_one(
    contender: Contender, label: str, seconds: float
) -> tuple[float, float | None]:
    load = contender.loads[label]
    assert load is not None
    await check_once(contender.base_url, load)
    cpu_before = cpu_seconds(contender.pid) if contender.pid else 0.0
    rate = await (wrk_rate if WRK else httpx_rate)(contender.base_url, load, seconds)
    cpu = None
    if contender.pid:
        cpu = (cpu_seconds(contender.pid) - cpu_before) * 1000 / max(rate * seconds, 1)
    await check_once(contender.base_url, load)
    return rate, cpu


async def measure(
    contenders: list[Contender], seconds: float, repeat: int, only: list[str] | None = None
) -> dict[str, dict[str, Figure]]:
    """Every figure of every contender, the contenders alternating; writes last (they move
    the latest checkpoint that the idle poll starts from)."""
    labels = [label for label in contenders[0].loads if label in only] if only else []
    labels = labels or list(contenders[0].loads)
    figures = {c.name: {label: Figure(label) for label in labels} for c in contenders}
    reads, writes = (
        [label for label in labels if label not in WRITES],
        [label for label in labels if label in WRITES],
    )
    for group in (reads, writes):
        for _round in range(repeat):
            for label in group:
                for contender in contenders:
                    if contender.loads.get(label) is None:
                        continue
                    note(f"  {contender.name}: {label}")
                    rate, cpu = await measure_one(contender, label, seconds)
                    figures[contender.name][label].rates.append(rate)
                    if cpu is not None:
                        figures[contender.name][label].cpu_ms.append(cpu)
    return figures


def print_figures(title: str, figures: dict[str, dict[str, Figure]]) -> None:
    """syncgraph's figures; beside them the baseline's (``after ÷ before``) and
    PostGraphile's (``syncgraph ÷ PostGraphile``) where they were measured."""
    ours = figures["syncgraph"]
    others = [name for name in ("baseline", "PostGraphile") if name in figures]
    headers = ["request", "syncgraph req/s", "spread", "CPU ms/req"]
    for name in others:
        headers += [f"{name} req/s", "spread", "CPU ms/req" if name == "baseline" else "", "ratio"]
    rows = []
    for label, figure in ours.items():
        row = [label, *figure.cells()]
        for name in others:
            peer = figures[name][label]
            cells = peer.cells() if name == "baseline" else [*peer.cells()[:2], ""]
            row += [*cells, ratio(figure.best / peer.best) if peer.rates else "—"]
        rows.append(row)
    print_table(title, headers, rows)


# --- profile ---------------------------------------------------------------------------------


WRITE = "one-record write (sync / update)"
SPREAD = "one-record write, 1,000 records in turn"
WRITES = (WRITE, SPREAD)
PROFILED = {
    "healthz": "GET /healthz (plain Starlette)",
    "idle": "idle poll (nothing new)",
    "typename": "{ __typename } with credentials",
    "poll100": f"poll returning {CHANGED} records",
    "write": WRITE,
    "spread": SPREAD,
}


async def profile(contender: Contender, which: str, seconds: float) -> None:
    """py-spy on the server while wrk sends one figure's requests: where the time goes."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None or contender.pid is None:
        note("NOTE: no profile: py-spy is not installed (pip install py-spy)")
        return
    load = contender.loads[PROFILED[which]]
    assert load is not None
    kept = KEPT_PROFILE.with_name(f"{which}-profile.txt")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.txt"
        spy_run = await asyncio.create_subprocess_exec(
            spy,
            "record",
            "-p",
            str(contender.pid),
            "-d",
            f"{seconds:g}",
            "-r",
            "250",
            "--nonblocking",
            "-f",
            "raw",
            "-o",
            str(out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(0.5)
        await (wrk_rate if WRK else httpx_rate)(contender.base_url, load, seconds)
        await spy_run.wait()
        collapsed = out.read_text() if out.exists() else ""
    kept.parent.mkdir(exist_ok=True)
    kept.write_text(collapsed)
    note(f"  the collapsed stacks are in {kept} (speedscope, flamegraph.pl)")
    print_profile(PROFILED[which], collapsed)


KEPT_PROFILE = Path(__file__).resolve().parent / ".work" / "profile.txt"
PROFILE_PARTS = (
    ("pool pre-ping", ("_async_ping", "do_ping", "pre_ping")),
    ("credential check (app/auth.py)", ("app/auth.py",)),
    ("changes resolver + read_changes", ("app/engine/changes.py", "app/graphql/changes.py")),
    ("other database work (pool, driver)", ("sqlalchemy/", "asyncpg/", "aiosqlite/")),
    ("Strawberry + graphql-core", ("strawberry/", "graphql/")),
    ("HTTP: uvicorn, Starlette, middlewares", ("uvicorn/", "starlette/", "app/requestid.py")),
)
"""A sample counts for the first part that any of its frames matches (so the ping inside a
credential check counts as ping)."""


def print_profile(label: str, collapsed: str, top: int = 15) -> None:
    """Where the server's samples go, by part of the request, then the heaviest leaves."""
    parts: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n, frames = int(count), stack.split(";")
        total += n
        part = next((name for name, marks in PROFILE_PARTS if _matches(frames, marks)), "other")
        parts[part] += n
        leaves[re.sub(r" \((.*/)?(site-packages/)?", " (", frames[-1])] += n
    if not total:
        note("NOTE: py-spy recorded no samples")
        return
    title = f"profile of {label}: {total} samples of the server (busy only), by part"
    print_table(
        title, ["%", "part"], [[f"{100 * n / total:.1f}", p] for p, n in parts.most_common()]
    )
    rows = [[f"{100 * n / total:.1f}", leaf[:110]] for leaf, n in leaves.most_common(top)]
    print_table("heaviest leaf frames (self time)", ["%", "frame"], rows)


def _matches(frames: list[str], marks: tuple[str, ...]) -> bool:
    return any(mark in frame for frame in frames for mark in marks)


# --- main ------------------------------------------------------------------------------------


async def bench_backend(
    backend: str, args: argparse.Namespace, workers: int
) -> dict[str, dict[str, Figure]]:
    note(f"[{backend}] preparing a fresh database")
    async with running_server(backend) as srv, AsyncExitStack() as stack:
        version = await srv.database_version()
        scene = await prepare(srv)
        served = await stack.enter_async_context(
            syncgraph_process(srv.db.url, workers=workers, extra_env=dict(args.env))
        )
        contenders = [
            Contender("syncgraph", served.base_url, syncgraph_loads(srv, scene), served.pid)
        ]
        if args.baseline or args.baseline_env:
            env = {**dict(args.env), **dict(args.baseline_env)}
            before = await stack.enter_async_context(
                syncgraph_process(srv.db.url, workers=workers, extra_env=env, code=args.baseline)
            )
            loads = syncgraph_loads(srv, scene)
            contenders.append(Contender("baseline", before.base_url, loads, before.pid))
        if args.postgraphile and backend == "postgres":
            note("  starting PostGraphile")
            try:
                http = await stack.enter_async_context(postgraphile_server(srv.db))
                loads = await postgraphile_loads(http, srv, scene)
                contenders.append(Contender("PostGraphile", str(http.base_url).rstrip("/"), loads))
                print(f"[{backend}] {postgraphile_version()}, Amber preset + simplify-inflection")
            except BenchError as error:
                note(f"  NOTE: PostGraphile skipped: {error}")
        if args.profile:
            await profile(contenders[0], args.profile, args.seconds)
        only = [PROFILED[name] for name in args.only.split(",")] if args.only else None
        figures = await measure(contenders, args.seconds, args.repeat, only)
        title = f"[{backend}] {version}; syncgraph serve --no-dev, {workers} worker(s)"
        print_figures(title, figures)
        return figures


def print_sqlite_vs_postgres(results: dict[str, dict[str, dict[str, Figure]]]) -> None:
    if {"sqlite", "postgres"} <= results.keys():
        rows = []
        for label in results["sqlite"]["syncgraph"]:
            lite, pg = (
                results["sqlite"]["syncgraph"][label],
                results["postgres"]["syncgraph"][label],
            )
            rows.append([label, f"{lite.best:,.0f}", f"{pg.best:,.0f}", ratio(lite.best / pg.best)])
        print_table(
            "syncgraph on SQLite vs PostgreSQL", ["request", "SQLite", "PostgreSQL", "ratio"], rows
        )


async def main(args: argparse.Namespace) -> None:
    print(f"polls: {RECORDS:,} pieces, {FIELDS!r} selected; {machine_line()}")
    loader = f"wrk -t1 -c{CONNECTIONS}" if WRK else f"httpx, {CONNECTIONS} connections"
    print(f"load: {loader}, {args.seconds:g} s per figure, best of {args.repeat}")
    if not WRK:
        note("NOTE: wrk not found (apt-get install -y wrk): loading with httpx from this process")
    if args.postgraphile and "postgres" in backends(args.backend):
        problem = await asyncio.to_thread(install_postgraphile)
        if problem:
            note(f"NOTE: PostGraphile skipped, it could not be installed: {problem}")
            args.postgraphile = False
    results = {}
    for backend in backends(args.backend):
        for workers in args.workers:
            if workers > 1 and backend == "sqlite":
                continue
            results[backend if workers == 1 else f"{backend}x{workers}"] = await bench_backend(
                backend, args, workers
            )
    print_sqlite_vs_postgres(results)


DESCRIPTION = (
    "requests/s of idle polls, __typename, 100-record polls and one-record writes, beside "
    "PostGraphile 5"
)


def cli(argv: Sequence[str] | None = None) -> None:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--no-postgraphile", action="store_true")
    own.add_argument("--seconds", type=float, default=5.0)
    own.add_argument("--repeat", type=int, default=2)
    own.add_argument("--workers", default="1", help="comma list of worker counts (PostgreSQL)")
    own.add_argument(
        "--profile",
        nargs="?",
        const="idle",
        choices=[name for name in PROFILED if name != "healthz"],
        help="py-spy one figure first (default: the idle poll)",
    )
    own.add_argument(
        "--baseline",
        metavar="DIR",
        help="also serve the app package of another checkout (e.g. an export of main) and "
        "print after/before ratios",
    )
    own.add_argument(
        "--only",
        help=f"comma list of figures to measure ({', '.join(PROFILED)}); default: all",
    )
    own.add_argument("--env", action="append", default=[], help="K=V for the server's environment")
    own.add_argument(
        "--baseline-env",
        action="append",
        default=[],
        metavar="K=V",
        help="serve a baseline with this environment too (this checkout unless --baseline), "
        "e.g. SYNCGRAPH_ACCEL=-fastlane",
    )
    extra, rest = own.parse_known_args(argv)
    args = parse_args(DESCRIPTION, rest)
    args.postgraphile = not extra.no_postgraphile
    args.seconds, args.repeat, args.profile = extra.seconds, extra.repeat, extra.profile
    args.baseline, args.only = extra.baseline, extra.only
    args.workers = [int(w) for w in extra.workers.split(",")]
    args.env = [tuple(pair.split("=", 1)) for pair in extra.env]
    args.baseline_env = [tuple(pair.split("=", 1)) for pair in extra.baseline_env]
    started = time.perf_counter()
    run_on_loop(main(args), args.loop)
    note(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    cli()
