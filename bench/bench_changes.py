"""(b) ``query changes`` over HTTP next to a plain Starlette endpoint serving the same rows.

10,000 pieces are synced into a fresh tenant, then pulled with ``changes(since: null)``
selecting 10 scalar fields, as one 10,000-record page and as 1,000-record pages. The
reference is a plain Starlette route added to the same app in the same uvicorn process: the
same SELECT of the same columns (SQLAlchemy Core on the server's engine) encoded with orjson.
Ratio = syncgraph records/s ÷ plain records/s (1.00x = parity; 0.50x = half as fast).

On PostgreSQL a third contender is PostGraphile v5 (``bench/postgraphile``, installed with
``npm ci`` on first use, Node 22 from the ``node`` npm package) serving the same database's
``public`` schema in its own process: ``pieces(condition: {tenantId}, orderBy: SEQ_ASC,
first: N)`` with the same 10 fields, cursor pagination for the paged pull. Ratio =
syncgraph records/s ÷ PostGraphile records/s (>1.00x: syncgraph is faster).
``--no-postgraphile`` skips it; a failed install or start is reported and skipped.

The contenders are timed alternately; probes on the served app split syncgraph's time into
transport, GraphQL and engine.

    cd /work/main && .venv/bin/python -m bench.bench_changes --backend both
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import orjson
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from app.state import AppState
from bench.bench_sync import BATCH, chunks, sync_bodies
from bench.common import (
    SPLIT_HEADERS,
    BenchError,
    BenchServer,
    Database,
    Probe,
    Split,
    Timing,
    backends,
    graphql_body,
    machine_line,
    mean_split,
    ms,
    note,
    parse_args,
    print_statements,
    print_table,
    rate,
    ratio,
    run_on_loop,
    running_server,
    split_cells,
    timed,
)
from bench.data import PIECES, create_assembly, items, new_ids

RECORDS = 10_000
PAGE = 1_000
FIELDS = "id alias version name number quantity lengthMm widthMm thicknessMm weightKg"
COLUMNS = {
    "id": "id",
    "alias": "alias",
    "version": "version",
    "name": "name",
    "number": "number",
    "quantity": "quantity",
    "lengthMm": "length_mm",
    "widthMm": "width_mm",
    "thicknessMm": "thickness_mm",
    "weightKg": "weight_kg",
}
"""The 10 selected fields: wire name -> column."""

PULL = f"""
query Pull($since: String, $limit: Int) {{
  changes(since: $since, limit: $limit) {{
    checkpoint
    hasMore
    pieces {{ inserted {{ {FIELDS} }} updated {{ {FIELDS} }} deleted }}
  }}
}}
"""
PLAIN_PATH = "/bench/plain/pieces"


# --- the plain endpoint --------------------------------------------------------------------


def plain_routes(state: AppState, tenant_id: str) -> list[BaseRoute]:
    """GET /bench/plain/pieces?after=SEQ&limit=N: the rows a pull returns, as plain JSON."""
    t = state.registry.by_plural("pieces").table
    keys = list(COLUMNS)
    columns = [t.c[c] for c in COLUMNS.values()]

    async def endpoint(request: Request) -> Response:
        after = int(request.query_params.get("after", "0"))
        limit = int(request.query_params.get("limit", str(PAGE)))
        stmt = (
            sa.select(t.c.seq, *columns)
            .where(t.c.tenant_id == tenant_id, t.c.seq > after, t.c.deleted_at.is_(None))
            .order_by(t.c.seq)
            .limit(limit + 1)
        )
        async with state.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        more, rows = len(rows) > limit, rows[:limit]
        records = [dict(zip(keys, row[1:], strict=True)) for row in rows]
        checkpoint = str(rows[-1].seq) if rows else str(after)
        body = {"checkpoint": checkpoint, "hasMore": more, "pieces": records}
        return Response(orjson.dumps(body), media_type="application/json")

    return [Route(PLAIN_PATH, endpoint, methods=["GET"])]


# --- PostGraphile --------------------------------------------------------------------------

PGL_DIR = Path(__file__).resolve().parent / "postgraphile"
PGL_NODE = PGL_DIR / "node_modules" / "node" / "bin" / "node"
"""Node 22, from the ``node`` npm package (PostGraphile v5 needs Node >= 22)."""
PGL_FIELDS = "id: rowId " + FIELDS.removeprefix("id ")
"""PostGraphile names the ``id`` column ``rowId`` (``id`` is its global Node ID)."""
PGL_PULL = f"""
query Pull($tenant: String!, $first: Int!, $after: Cursor) {{
  pieces(condition: {{tenantId: $tenant}}, orderBy: SEQ_ASC, first: $first, after: $after) {{
    pageInfo {{ hasNextPage endCursor }}
    nodes {{ {PGL_FIELDS} }}
  }}
}}
"""


def postgraphile_version() -> str:
    """PostGraphile's and the Node binary's versions, from the installed packages."""
    modules = PGL_DIR / "node_modules"
    version = {
        name: orjson.loads((modules / name / "package.json").read_bytes())["version"]
        for name in ("postgraphile", "node")
    }
    return f"PostGraphile {version['postgraphile']} on Node {version['node']}"


def install_postgraphile() -> str | None:
    """``npm ci`` in bench/postgraphile unless already installed; None when ready, else why
    it is not."""
    modules = PGL_DIR / "node_modules"
    wanted = [PGL_NODE, modules / "postgraphile", modules / "@graphile" / "simplify-inflection"]
    if all(path.exists() for path in wanted):
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm not found on PATH"
    note("  installing PostGraphile: npm ci in bench/postgraphile (once; about a minute)")
    try:
        done = subprocess.run(  # noqa: S603
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=PGL_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"npm ci failed: {error}"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-8:]
        return f"npm ci failed (exit {done.returncode}):\n    " + "\n    ".join(tail)
    missing = [str(path.relative_to(PGL_DIR)) for path in wanted if not path.exists()]
    return f"npm ci succeeded but {', '.join(missing)} is missing" if missing else None


def _tail(file: IO[bytes], lines: int = 15) -> str:
    file.seek(0)
    text = file.read().decode(errors="replace").strip().splitlines()[-lines:]
    return "\n    ".join(["", *text]) if text else " (no output)"


@asynccontextmanager
async def postgraphile_server(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """``bench/postgraphile/server.mjs`` on the bench database, on a free port of 127.0.0.1;
    yields a client for it once it answers. The process is stopped on the way out, errors
    included."""
    env = {
        **os.environ,
        "DATABASE_URL": db.driver_target,
        "HOST": "127.0.0.1",
        "PORT": "0",
        "NODE_ENV": "production",
        "GRAPHILE_ENV": "production",
    }
    with tempfile.TemporaryFile() as stderr:
        process = await asyncio.create_subprocess_exec(
            str(PGL_NODE),
            "server.mjs",
            cwd=PGL_DIR,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
        try:
            assert process.stdout is not None
            try:
                line = await asyncio.wait_for(process.stdout.readline(), 120)
            except TimeoutError:
                raise BenchError(f"PostGraphile did not start in 120 s:{_tail(stderr)}") from None
            if not line:
                await process.wait()
                raise BenchError(
                    f"PostGraphile exited with {process.returncode} before it listened:"
                    f"{_tail(stderr)}"
                )
            port = int(orjson.loads(line)["port"])
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}",
                timeout=300,
                headers={"content-type": "application/json"},
            ) as http:
                await _until_answers(http, process, stderr)
                yield http
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()


async def _until_answers(
    http: httpx.AsyncClient, process: asyncio.subprocess.Process, stderr: IO[bytes]
) -> None:
    body = graphql_body("{ __typename }")
    deadline = time.perf_counter() + 30
    while True:
        if process.returncode is not None:
            raise BenchError(f"PostGraphile exited with {process.returncode}:{_tail(stderr)}")
        try:
            response = await http.post("/graphql", content=body)
            if response.status_code == 200 and b'"Query"' in response.content:
                return
            problem = f"HTTP {response.status_code}: {response.text[:300]}"
        except httpx.TransportError as error:
            problem = repr(error)
        if time.perf_counter() > deadline:
            raise BenchError(f"PostGraphile does not answer: {problem}{_tail(stderr)}")
        await asyncio.sleep(0.1)


async def postgraphile_pieces(
    http: httpx.AsyncClient, tenant_id: str, after: str | None, first: int
) -> dict[str, Any]:
    """One page of PostGraphile's ``pieces`` connection: ``{pageInfo, nodes}``."""
    variables = {"tenant": tenant_id, "first": first, "after": after}
    response = await http.post("/graphql", content=graphql_body(PGL_PULL, variables))
    payload = orjson.loads(response.content)
    if response.status_code != 200 or payload.get("errors"):
        raise BenchError(f"PostGraphile: HTTP {response.status_code}: {str(payload)[:600]}")
    return dict(payload["data"]["pieces"])


def postgraphile_pager(http: httpx.AsyncClient, tenant_id: str) -> Pager:
    """A pager over PostGraphile's connection (checkpoint = ``endCursor``)."""

    async def postgraphile_page(
        _srv: BenchServer, since: str | None, limit: int
    ) -> tuple[int, str, bool]:
        pieces = await postgraphile_pieces(http, tenant_id, since, limit)
        info = pieces["pageInfo"]
        return len(pieces["nodes"]), info["endCursor"] or "", info["hasNextPage"]

    return postgraphile_page


async def check_same_records(srv: BenchServer, http: httpx.AsyncClient) -> None:
    """PostGraphile's 10,000 records equal syncgraph's, field for field."""
    ours = (await srv.graphql(graphql_body(PULL, {"since": None, "limit": RECORDS})))["changes"]
    mine = ours["pieces"]["inserted"] + ours["pieces"]["updated"]
    theirs = (await postgraphile_pieces(http, srv.tenant_id, None, RECORDS))["nodes"]

    def by_id(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(records, key=lambda record: str(record["id"]))

    if len(theirs) != RECORDS or by_id(theirs) != by_id(mine):
        raise BenchError(
            f"PostGraphile's records differ from syncgraph's ({len(theirs)} vs {len(mine)}; "
            f"first: {theirs[:1]} vs {mine[:1]})"
        )


# --- the pulls -----------------------------------------------------------------------------


async def populate(srv: BenchServer, count: int) -> None:
    """``count`` new pieces through the server's own sync (so seqs are stamped as usual)."""
    for body in sync_bodies(PIECES, chunks(items(PIECES, new_ids(count), 0), BATCH)):
        data = await srv.graphql(body)
        if data["sync"]["totals"]["inserted"] != BATCH:
            raise BenchError(f"populate: {data}"[:600])


async def syncgraph_page(srv: BenchServer, since: str | None, limit: int) -> tuple[int, str, bool]:
    data = (await srv.graphql(graphql_body(PULL, {"since": since, "limit": limit})))["changes"]
    return len(data["pieces"]["inserted"]), data["checkpoint"], data["hasMore"]


async def plain_page(srv: BenchServer, since: str | None, limit: int) -> tuple[int, str, bool]:
    response = await srv.http.get(PLAIN_PATH, params={"after": since or "0", "limit": limit})
    data = orjson.loads(response.content)
    return len(data["pieces"]), data["checkpoint"], data["hasMore"]


Pager = Callable[[BenchServer, str | None, int], Awaitable[tuple[int, str, bool]]]


async def one_page(pager: Pager, srv: BenchServer, limit: int) -> None:
    count, _, _ = await pager(srv, None, limit)
    if count != min(limit, RECORDS):
        raise BenchError(f"{pager.__name__}: {count} records, expected {limit}")


async def all_pages(pager: Pager, srv: BenchServer, limit: int) -> None:
    """Loop ``since = checkpoint`` while ``hasMore``, as a client catching up does."""
    since: str | None = None
    total, more = 0, True
    while more:
        count, since, more = await pager(srv, since, limit)
        total += count
        more = more and count > 0
    if total != RECORDS:
        raise BenchError(f"{pager.__name__}: {total} records over all pages, expected {RECORDS}")


# --- measurements --------------------------------------------------------------------------

Pull = Callable[[Pager, BenchServer, int], Awaitable[None]]
"""``one_page`` or ``all_pages``."""
Plan = tuple[str, Pull, int, int, int]
"""label, pull, limit, records pulled, timed runs."""


@dataclass
class Measured:
    label: str
    records: int
    syncgraph: Timing
    plain: Timing
    splits: list[Split]
    """Per syncgraph pull (warm-up excluded)."""
    plain_splits: list[Split]
    postgraphile: Timing | None = None


async def timed_rounds(
    fns: Sequence[Callable[[], Awaitable[object]]], *, runs: int, warmup: int = 1
) -> list[Timing]:
    """Time several things in turn (a, b, c, a, b, c, …) so drift and noise hit all alike."""
    for _ in range(warmup):
        for fn in fns:
            await fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, own in zip(fns, samples, strict=True):
            own.append(await timed(fn))
    return [Timing(tuple(own)) for own in samples]


async def compare(srv: BenchServer, probe: Probe, plan: Plan, pgl: Pager | None) -> Measured:
    """syncgraph, the plain endpoint and PostGraphile (if given), in turn, the first two
    probed."""
    label, pull, limit, records, runs = plan
    sg_splits: list[Split] = []
    plain_splits: list[Split] = []

    async def sg() -> None:
        sg_splits.append(await probe.measure(functools.partial(pull, syncgraph_page, srv, limit)))

    async def plain() -> None:
        plain_splits.append(await probe.measure(functools.partial(pull, plain_page, srv, limit)))

    contenders: list[Callable[[], Awaitable[object]]] = [sg, plain]
    if pgl is not None:
        contenders.append(functools.partial(pull, pgl, srv, limit))
    timings = await timed_rounds(contenders, runs=runs)
    pgl_t = timings[2] if pgl is not None else None
    return Measured(label, records, timings[0], timings[1], sg_splits[1:], plain_splits[1:], pgl_t)


async def measure(
    srv: BenchServer, probe: Probe, runs: dict[str, int], pgl: Pager | None
) -> list[Measured]:
    plans: list[Plan] = [
        (f"one page, limit {RECORDS:,}", one_page, RECORDS, RECORDS, runs["full"]),
        (f"one page, limit {PAGE:,}", one_page, PAGE, PAGE, runs["page"]),
        (f"{RECORDS:,} in pages of {PAGE:,}", all_pages, PAGE, RECORDS, runs["all"]),
    ]
    out = []
    for plan in plans:
        note(f"  {plan[0]}")
        out.append(await compare(srv, probe, plan, pgl))
    return out


HEADERS = ("pull", "syncgraph ms", "records/s", "plain ms", "records/s", "ratio sg/plain")
PGL_HEADERS = ("PostGraphile ms", "records/s", "ratio sg/PostGraphile")


def table_rows(results: list[Measured]) -> list[list[str]]:
    rows = []
    for m in results:
        row = [
            m.label,
            ms(m.syncgraph.median),
            rate(m.records, m.syncgraph.median),
            ms(m.plain.median),
            rate(m.records, m.plain.median),
            ratio(m.plain.median / m.syncgraph.median),
        ]
        if m.postgraphile is not None:
            pgl = m.postgraphile.median
            row += [ms(pgl), rate(m.records, pgl), ratio(pgl / m.syncgraph.median)]
        rows.append(row)
    return rows


def split_rows(results: list[Measured]) -> list[list[str]]:
    rows = []
    for m in results:
        sg, plain = mean_split(m.splits), mean_split(m.plain_splits)
        rows.append([m.label, *split_cells(sg), ms(sg.sql), ms(plain.total), ms(plain.sql)])
    return rows


def print_results(backend: str, results: list[Measured], probe: Probe) -> None:
    with_pgl = any(m.postgraphile is not None for m in results)
    versus = "plain endpoint and PostGraphile" if with_pgl else "plain endpoint"
    title = f"[{backend}] changes over HTTP vs {versus} (median ms per pull)"
    print_table(title, (*HEADERS, *PGL_HEADERS) if with_pgl else HEADERS, table_rows(results))
    title = f"[{backend}] where a pull's time goes (mean ms per pull)"
    headers = ("pull", *SPLIT_HEADERS, "all SQL", "plain: request", "plain: SQL")
    print_table(title, headers, split_rows(results))
    print_statements(f"[{backend}] SQL statements that took the most time (all pulls)", probe)


async def start_postgraphile(stack: AsyncExitStack, srv: BenchServer) -> Pager | None:
    """PostGraphile on the bench database (stopped when ``stack`` closes), or None, with a
    note, if it cannot run or does not serve the same records."""
    own = AsyncExitStack()
    try:
        http = await own.enter_async_context(postgraphile_server(srv.db))
        await check_same_records(srv, http)
    except (BenchError, OSError, ValueError, KeyError, httpx.HTTPError) as error:
        await own.aclose()
        note(f"  NOTE: PostGraphile skipped: {error}")
        return None
    except BaseException:
        await own.aclose()
        raise
    stack.push_async_exit(own)
    print(f"[{srv.db.backend}] {postgraphile_version()}, Amber preset + simplify-inflection")
    return postgraphile_pager(http, srv.tenant_id)


async def bench_backend(backend: str, runs: dict[str, int], postgraphile: bool) -> None:
    note(f"[{backend}] starting server on a fresh database")
    async with running_server(backend, routes=plain_routes) as srv, AsyncExitStack() as stack:
        print(f"[{backend}] {await srv.database_version()}")
        await create_assembly(srv)
        note(f"  populating {RECORDS:,} pieces")
        await populate(srv, RECORDS)
        pgl = None
        if postgraphile and backend == "postgres":
            note("  starting PostGraphile")
            pgl = await start_postgraphile(stack, srv)
        probe = Probe(srv.app, srv.state)  # after populating: it sees the pulls only
        print_results(backend, await measure(srv, probe, runs, pgl), probe)


async def main(args: argparse.Namespace) -> None:
    runs = {"full": 3, "page": 5, "all": 2} if args.quick else {"full": 7, "page": 21, "all": 5}
    print(f"changes: {RECORDS:,} pieces, {len(COLUMNS)} fields selected; {machine_line()}")
    print(f"median of {runs['full']} (10k page), {runs['page']} (1k page), {runs['all']} (paging)")
    postgraphile = args.postgraphile and "postgres" in backends(args.backend)
    if postgraphile:
        problem = await asyncio.to_thread(install_postgraphile)
        if problem:
            note(f"NOTE: PostGraphile skipped, it could not be installed: {problem}")
            postgraphile = False
    for backend in backends(args.backend):
        await bench_backend(backend, runs, postgraphile)


DESCRIPTION = (
    "query changes vs a plain Starlette endpoint with the same SELECT and, on PostgreSQL, "
    "PostGraphile v5 on the same table (--no-postgraphile: skip PostGraphile)"
)


def cli(argv: Sequence[str] | None = None) -> None:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--no-postgraphile", action="store_true")
    extra, rest = own.parse_known_args(argv)
    args = parse_args(DESCRIPTION, rest)
    args.postgraphile = not extra.no_postgraphile
    started = time.perf_counter()
    run_on_loop(main(args), args.loop)
    note(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    cli()
