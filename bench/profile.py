"""Where the server's time goes: pyinstrument over sync and changes requests (optional tool).

Needs ``pip install pyinstrument`` (not a project dependency; the benchmarks do not use it).
Client and server share one event loop, so the profile also shows httpx's (small) share;
aiosqlite's worker thread is not sampled (its time shows as waiting in the loop).

    .venv/bin/python -m bench.profile --backend sqlite --what sync-insert
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Awaitable, Callable
from typing import Any

from bench.bench_changes import PULL, populate
from bench.bench_sync import BATCH, chunks, sync_bodies
from bench.common import BenchServer, graphql_body, run_on_loop, running_server
from bench.data import PIECES, USERS, Case, create_assembly, items, new_ids

WHAT = ("sync-insert", "sync-update", "sync-resend", "changes-10k")


def _sync_passes(case: Case, rows: int) -> dict[str, list[bytes]]:
    ids = new_ids(rows)
    return {
        "sync-insert": sync_bodies(case, chunks(items(case, ids, 0), BATCH)),
        "sync-update": sync_bodies(case, chunks(items(case, ids, 1), BATCH)),
        "sync-resend": sync_bodies(case, chunks(items(case, ids, 1), BATCH)),
    }


async def _workload(srv: BenchServer, args: argparse.Namespace) -> Callable[[], Awaitable[None]]:
    """Runs everything ``what`` needs first, and returns the part to profile."""
    what = args.what
    await create_assembly(srv)
    if what == "changes-10k":
        await populate(srv, 10_000)
        body = graphql_body(PULL, {"limit": 10_000})

        async def pull() -> None:
            for _ in range(5):
                await srv.graphql(body)

        return pull
    passes = _sync_passes(USERS if args.entity == "users" else PIECES, args.rows)
    for name in WHAT[: WHAT.index(what)]:
        for body in passes.get(name, []):
            await srv.graphql(body)

    async def send() -> None:
        for body in passes[what]:
            await srv.graphql(body)

    return send


async def main(args: argparse.Namespace) -> None:
    try:
        pyinstrument: Any = importlib.import_module("pyinstrument")
    except ImportError:
        raise SystemExit(
            "bench.profile needs pyinstrument: .venv/bin/pip install pyinstrument"
        ) from None
    async with running_server(args.backend) as srv:
        work = await _workload(srv, args)
        profiler = pyinstrument.Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
        await work()
        profiler.stop()
    print(profiler.output_text(unicode=True, color=False, show_all=args.all))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--what", choices=WHAT, default="sync-insert")
    parser.add_argument("--rows", type=int, default=5_000)
    parser.add_argument("--entity", choices=("pieces", "users"), default="pieces")
    parser.add_argument("--all", action="store_true", help="show library frames too")
    return parser.parse_args()


if __name__ == "__main__":
    run_on_loop(main(parse()))
