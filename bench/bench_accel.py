"""The accelerators of ``app/accel`` on and off, in one process, no server, no database:

* ``normalizer``: ``normalize_items`` over 1,000 users, the generic loop against the
  generated normalizer;
* ``bulkinput``: the GraphQL layer of a 1,000-user ``sync`` mutation (parse cache, variable
  coercion or the raw check, the resolver up to the engine call; the engine is a stub), with
  graphql-core's coercion against the raw check.

``fastpath`` needs rows to complete: ``SYNCGRAPH_ACCEL=-fastpath`` against the default with
``bench_changes`` measures it through the real server.

    .venv/bin/python -m bench.bench_accel
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from app import accel
from app.auth import AuthResult, Principal
from app.domains import load_registry
from app.engine.tenants import SCOPES
from app.engine.write.items import normalize_items
from app.graphql.context import Context
from app.graphql.schema import build_schema
from app.settings import Settings

ITEMS = 1_000
SYNC = "mutation($input: SyncInput!) { sync(input: $input) { checkpoint } }"


def users(n: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"00000000-0000-4000-8000-{i:012d}",
            "alias": f"u{i}",
            "name": f"user {i}",
            "email": f"u{i}@example.org",
            "birth": "02/03/2001" if i % 2 else "2001-03-02",
            "roleSet": {"teacher": i % 3 == 0},
            "active": i % 4 != 0,
        }
        for i in range(n)
    ]


def best_ms(run: Callable[[], Any], repeat: int = 30) -> tuple[float, float]:
    """(best, median) milliseconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return min(times), statistics.median(times)


def normalizer() -> tuple[tuple[float, float], tuple[float, float]]:
    spec = load_registry().by_plural("users")
    raw = users(ITEMS)
    paths = []
    for names in ((), ("normalizer",)):
        with accel.only(*names):
            built = dataclasses.replace(spec)
            _ = built.fast_normalizer
        paths.append(best_ms(lambda built=built: normalize_items(built, raw)))
    return paths[0], paths[1]


class _Stop(Exception):
    pass


class _Engine:
    async def sync(self, *_args: Any, **_kwargs: Any) -> Any:
        raise _Stop


def bulkinput() -> tuple[tuple[float, float], tuple[float, float]]:
    registry = load_registry()
    variables = {"input": {"users": {"data": users(ITEMS)}}}
    principal = Principal("t", "t", frozenset(SCOPES))
    paths = []
    for names in ((), ("bulkinput",)):
        with accel.only(*names):
            schema = build_schema(registry, Settings(dev=False))

        def run(schema: Any = schema) -> None:
            context = Context(
                None, None, SimpleNamespace(service=_Engine()), AuthResult(principal), "r"
            )  # type: ignore[arg-type]
            asyncio.run(schema.execute(SYNC, variable_values=variables, context_value=context))

        run()  # parse and validate once, as a server's caches would have
        paths.append(best_ms(run, repeat=15))
    return paths[0], paths[1]


def main() -> None:
    import logging

    logging.getLogger("syncgraph").setLevel(logging.CRITICAL)  # the stub engine's stop
    head = ("accelerator", "what (1,000 users)", "plain ms", "accel ms", "ratio")
    print(f"{head[0]:<12} {head[1]:<34} {head[2]:>14} {head[3]:>14} {head[4]:>6}")
    for name, what, measure in (
        ("normalizer", "normalize_items", normalizer),
        ("bulkinput", "GraphQL layer of a sync request", bulkinput),
    ):
        plain, fast = measure()
        cells = [f"{p[0]:.2f} ({p[1]:.2f})" for p in (plain, fast)]
        print(f"{name:<12} {what:<34} {cells[0]:>14} {cells[1]:>14} {plain[0] / fast[0]:>5.1f}x")
    print("best of the runs (median in brackets)")


if __name__ == "__main__":
    main()
