"""(a) ``mutation sync`` throughput over HTTP next to the raw driver's upsert of the same rows.

For pieces (manufacturing, 10 input fields, a reference to an assembly by alias) and users
(education), 20,000 rows go to a real uvicorn server in requests of 1,000 (one batch per
request) in three passes: all new (insert), every row changed (update), and the same data
again (re-send, all unchanged). Between the passes, the raw driver upserts the same rows into
the same table under a second tenant, one batch per transaction. Ratio = syncgraph rows/s ÷
raw rows/s (1.00x would be "as fast as the driver").

    cd /work/main && .venv/bin/python -m bench.bench_sync --backend both
"""

from __future__ import annotations

import argparse
import functools
import time
from dataclasses import dataclass
from typing import Any

from bench.common import (
    SPLIT_HEADERS,
    BenchError,
    BenchServer,
    Budget,
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
    timed,
)
from bench.data import PIECES, USERS, Case, create_assembly, items, new_ids, raw_rows
from bench.raw import RawWriter, open_writers

ROWS = 20_000
BATCH = 1_000
PASSES = (("insert", 0, "inserted"), ("update", 1, "updated"), ("re-send", 1, "unchanged"))
"""(pass name, data generation, the SyncReport count every item must land in)."""

SYNC = """
mutation Sync($input: SyncInput!) {
  sync(input: $input) {
    checkpoint
    totals { inserted updated unchanged failed }
    %s { errors { index code message } }
  }
}
"""


@dataclass
class PassResult:
    entity: str
    name: str
    rows: int
    """Rows sent (fewer than planned when the time budget cut the pass short)."""
    planned: int
    syncgraph: Timing
    splits: list[Split]
    raw: list[tuple[str, Timing]]

    @property
    def label(self) -> str:
        return self.name if self.rows == self.planned else f"{self.name} (partial)"


@dataclass
class Setup:
    """What every pass of a backend shares."""

    srv: BenchServer
    probe: Probe
    budget: Budget
    raw_tenants: list[str]
    """One tenant per raw writer: each writes the same rows there, beside the server's."""
    refs: dict[str, str]
    rows: int


# --- syncgraph over HTTP -------------------------------------------------------------------


def sync_bodies(case: Case, batch_items: list[list[dict[str, Any]]]) -> list[bytes]:
    query = SYNC % case.plural
    return [graphql_body(query, {"input": {case.plural: {"data": b}}}) for b in batch_items]


def check_report(data: dict[str, Any], expect: str, size: int) -> None:
    totals = data["sync"]["totals"]
    if totals[expect] != size or totals["failed"]:
        raise BenchError(f"expected {size} {expect}, got {data['sync']}"[:800])


async def interleaved_pass(
    setup: Setup,
    case: Case,
    writers: list[RawWriter],
    batches: list[list[dict[str, Any]]],
    gen: int,
    expect: str,
) -> tuple[list[Split], list[list[float]]]:
    """Batch by batch: the server's request, then each raw writer's write of the same rows
    (under its own tenant), so that both see the same machine and the same table size; stops
    early (after at least one batch) past the time budget's share."""
    deadline = setup.budget.next_part()
    bodies = sync_bodies(case, batches)
    splits: list[Split] = []
    raw: list[list[float]] = [[] for _ in writers]
    for k, (body, batch) in enumerate(zip(bodies, batches, strict=True)):
        if splits and deadline is not None and time.perf_counter() > deadline:
            break
        answers: list[dict[str, Any]] = []
        splits.append(await setup.probe.measure(functools.partial(_send, setup.srv, body, answers)))
        check_report(answers[0], expect, BATCH)
        for writer, tenant, times in zip(writers, setup.raw_tenants, raw, strict=False):
            rows = raw_rows(case, tenant, batch, setup.refs, version=gen + 1, first_seq=k * BATCH)
            params = writer.params(rows)  # untimed: driver parameters only
            times.append(await timed(functools.partial(writer.write_batch, params)))
    return splits, raw


async def _send(srv: BenchServer, body: bytes, answers: list[dict[str, Any]]) -> None:
    answers.append(await srv.graphql(body))


def chunks(values: list[Any], size: int) -> list[list[Any]]:
    return [values[k : k + size] for k in range(0, len(values), size)]


# --- one entity ---------------------------------------------------------------------------


async def bench_case(setup: Setup, case: Case) -> list[PassResult]:
    table = setup.srv.state.registry.by_plural(case.plural).table
    writers = await open_writers(setup.srv.db, table)
    ids = new_ids(setup.rows)
    results = []
    try:
        for name, gen, expect in PASSES:
            note(f"  {case.plural}: {name}")
            results.append(await bench_pass(setup, case, writers, ids, (name, gen, expect)))
            ids = ids[: results[-1].rows]  # after a partial pass, go on with what it sent
    finally:
        for writer in writers:
            await writer.close()
    return results


async def bench_pass(
    setup: Setup,
    case: Case,
    writers: list[RawWriter],
    ids: list[str],
    spec: tuple[str, int, str],
) -> PassResult:
    name, gen, expect = spec
    batches = chunks(items(case, ids, gen), BATCH)
    splits, raw_times = await interleaved_pass(setup, case, writers, batches, gen, expect)
    raw = [(w.label, Timing(tuple(t))) for w, t in zip(writers, raw_times, strict=True)]
    sg = Timing(tuple(s.total for s in splits))
    return PassResult(case.plural, name, len(splits) * BATCH, setup.rows, sg, splits, raw)


# --- output -------------------------------------------------------------------------------

HEADERS = (
    "entity",
    "pass",
    "syncgraph s",
    "syncgraph rows/s",
    "ms/request (median)",
    "raw driver",
    "raw s",
    "raw rows/s",
    "ratio sg/raw",
)


def table_rows(results: list[PassResult]) -> list[list[str]]:
    out = []
    for r in results:
        for k, (label, t) in enumerate(r.raw):
            sg = r.syncgraph
            sg_cols = [f"{sg.total:.2f}", rate(r.rows, sg.total), ms(sg.median)]
            raw_cols = [label, f"{t.total:.2f}", rate(r.rows, t.total), ratio(t.total / sg.total)]
            out.append([r.entity, r.label, *(sg_cols if k == 0 else ["", "", ""]), *raw_cols])
    return out


def split_rows(results: list[PassResult]) -> list[list[str]]:
    return [[r.entity, r.label, *split_cells(mean_split(r.splits))] for r in results]


def print_results(backend: str, results: list[PassResult], probe: Probe) -> None:
    partial = [f"{r.entity} {r.name}: {r.rows:,}" for r in results if r.rows != r.planned]
    title = f"[{backend}] sync over HTTP vs raw driver upsert (rows/s over the whole pass)"
    print_table(title, HEADERS, table_rows(results))
    title = f"[{backend}] where a 1,000-row sync request goes (mean ms per request)"
    print_table(title, ("entity", "pass", *SPLIT_HEADERS), split_rows(results))
    if partial:
        print(f"time budget reached; rows sent in partial passes: {'; '.join(partial)}")
    print_statements(f"[{backend}] SQL statements that took the most time (all passes)", probe)


CASES = (PIECES, USERS)
RAW_WRITERS = 2
"""At most this many raw writers per backend (``open_writers``)."""


async def bench_backend(backend: str, rows: int, budget: Budget) -> None:
    note(f"[{backend}] starting server on a fresh database")
    async with running_server(backend) as srv:
        print(f"[{backend}] {await srv.database_version()}")
        assembly_id = await create_assembly(srv)
        raw_tenants = [await srv.new_tenant(f"raw-{k}") for k in range(RAW_WRITERS)]
        probe = Probe(srv.app, srv.state)
        setup = Setup(srv, probe, budget, raw_tenants, {"assembly": assembly_id}, rows)
        results = []
        for case in CASES:
            results += await bench_case(setup, case)
    print_results(backend, results, probe)


async def main(args: argparse.Namespace) -> None:
    rows = 2_000 if args.quick else ROWS
    chosen = backends(args.backend)
    budget = Budget(args.budget, parts=len(chosen) * len(CASES) * len(PASSES))
    print(f"sync: {rows:,} rows per pass, {BATCH:,} per request; {machine_line()}")
    for backend in chosen:
        await bench_backend(backend, rows, budget)


if __name__ == "__main__":
    run(main, "mutation sync throughput vs the raw driver's batched upsert")
