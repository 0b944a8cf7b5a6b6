"""(b) ``query changes`` over HTTP next to a plain Starlette endpoint serving the same rows.

10,000 pieces are synced into a fresh tenant, then pulled with ``changes(since: null)``
selecting 10 scalar fields, as one 10,000-record page and as 1,000-record pages. The
reference is a plain Starlette route added to the same app in the same uvicorn process: the
same SELECT of the same columns (SQLAlchemy Core on the server's engine) encoded with orjson.
Ratio = syncgraph records/s ÷ plain records/s (1.00x = parity; 0.50x = half as fast). The
two are timed alternately; probes on the served app split syncgraph's time into transport,
GraphQL and engine.

    cd /work/main && .venv/bin/python -m bench.bench_changes --backend both
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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
    Probe,
    Split,
    Timing,
    backends,
    graphql_body,
    machine_line,
    mean_split,
    ms,
    note,
    print_statements,
    print_table,
    rate,
    ratio,
    run,
    running_server,
    split_cells,
    timed_pair,
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


@dataclass
class Measured:
    label: str
    records: int
    syncgraph: Timing
    plain: Timing
    splits: list[Split]
    """Per syncgraph pull (warm-up excluded)."""
    plain_splits: list[Split]


async def compare(
    srv: BenchServer, probe: Probe, pull: Pull, limit: int, runs: int
) -> tuple[Timing, Timing, list[Split], list[Split]]:
    """syncgraph and the plain endpoint, alternately, each run probed."""
    sg_splits: list[Split] = []
    plain_splits: list[Split] = []

    async def sg() -> None:
        sg_splits.append(await probe.measure(functools.partial(pull, syncgraph_page, srv, limit)))

    async def plain() -> None:
        plain_splits.append(await probe.measure(functools.partial(pull, plain_page, srv, limit)))

    sg_t, plain_t = await timed_pair(sg, plain, runs=runs)
    return sg_t, plain_t, sg_splits[1:], plain_splits[1:]


async def measure(srv: BenchServer, probe: Probe, runs: dict[str, int]) -> list[Measured]:
    plan: list[tuple[str, Pull, int, int, int]] = [
        (f"one page, limit {RECORDS:,}", one_page, RECORDS, RECORDS, runs["full"]),
        (f"one page, limit {PAGE:,}", one_page, PAGE, PAGE, runs["page"]),
        (f"{RECORDS:,} in pages of {PAGE:,}", all_pages, PAGE, RECORDS, runs["all"]),
    ]
    out = []
    for label, pull, limit, records, n in plan:
        note(f"  {label}")
        sg, plain, splits, plain_splits = await compare(srv, probe, pull, limit, n)
        out.append(Measured(label, records, sg, plain, splits, plain_splits))
    return out


HEADERS = ("pull", "syncgraph ms", "records/s", "plain ms", "records/s", "ratio sg/plain")


def table_rows(results: list[Measured]) -> list[list[str]]:
    return [
        [
            m.label,
            ms(m.syncgraph.median),
            rate(m.records, m.syncgraph.median),
            ms(m.plain.median),
            rate(m.records, m.plain.median),
            ratio(m.plain.median / m.syncgraph.median),
        ]
        for m in results
    ]


def split_rows(results: list[Measured]) -> list[list[str]]:
    rows = []
    for m in results:
        sg, plain = mean_split(m.splits), mean_split(m.plain_splits)
        rows.append([m.label, *split_cells(sg), ms(sg.sql), ms(plain.total), ms(plain.sql)])
    return rows


def print_results(backend: str, results: list[Measured], probe: Probe) -> None:
    title = f"[{backend}] changes over HTTP vs plain endpoint (median ms per pull)"
    print_table(title, HEADERS, table_rows(results))
    title = f"[{backend}] where a pull's time goes (mean ms per pull)"
    headers = ("pull", *SPLIT_HEADERS, "all SQL", "plain: request", "plain: SQL")
    print_table(title, headers, split_rows(results))
    print_statements(f"[{backend}] SQL statements that took the most time (all pulls)", probe)


async def bench_backend(backend: str, runs: dict[str, int]) -> None:
    note(f"[{backend}] starting server on a fresh database")
    async with running_server(backend, routes=plain_routes) as srv:
        print(f"[{backend}] {await srv.database_version()}")
        await create_assembly(srv)
        note(f"  populating {RECORDS:,} pieces")
        await populate(srv, RECORDS)
        probe = Probe(srv.app, srv.state)  # after populating: it sees the pulls only
        print_results(backend, await measure(srv, probe, runs), probe)


async def main(args: argparse.Namespace) -> None:
    runs = {"full": 3, "page": 5, "all": 2} if args.quick else {"full": 7, "page": 21, "all": 5}
    print(f"changes: {RECORDS:,} pieces, {len(COLUMNS)} fields selected; {machine_line()}")
    print(f"median of {runs['full']} (10k page), {runs['page']} (1k page), {runs['all']} (paging)")
    for backend in backends(args.backend):
        await bench_backend(backend, runs)


if __name__ == "__main__":
    run(main, "query changes vs a plain Starlette endpoint with the same SELECT")
