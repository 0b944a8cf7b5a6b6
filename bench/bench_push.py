"""``mutation pushChanges`` throughput over HTTP next to ``mutation sync`` of the same rows.

10,000 users with client-given UUIDs are created through ``sync`` (10 requests of 1,000),
then updated three times, each pass 10 sequential requests of 1,000 records, changing the
same two fields (``name`` and ``email``) of every record:

* **sync**: ``sync(input: {users: {data: [{id, name, email}]}})``, every item ``updated``;
* **push REJECT**: ``pushChanges`` with ``users.updated: [{id, baseVersion, changedAt,
  data: {name, email}}]``, ``conflictPolicy: REJECT`` and the record's current version as
  ``baseVersion`` (so no conflicts);
* **push LWW**: the same with ``LAST_WRITE_WINS`` and no ``baseVersion``.

Request bodies are encoded before the clock starts. Every answer is checked (sync: 1,000
updated, none failed; push: ``applied == 1000``, no conflicts, no errors). Ratio = push
rows/s ÷ sync rows/s in the same run. ``--quick`` uses 2,000 rows; ``--budget`` is accepted
(shared command line) but not used: a full run takes well under a minute.

    cd /work/main && .venv/bin/python -m bench.bench_push --backend both
"""

from __future__ import annotations

import argparse
import functools
from datetime import UTC, datetime
from typing import Any

from bench.common import (
    BenchError,
    BenchServer,
    Timing,
    backends,
    graphql_body,
    machine_line,
    ms,
    note,
    print_table,
    rate,
    ratio,
    run,
    running_server,
    timed,
)
from bench.data import USERS, items, new_ids

ROWS = 10_000
BATCH = 1_000

SYNC = """
mutation Sync($input: SyncInput!) {
  sync(input: $input) { totals { inserted updated unchanged failed } }
}
"""

PUSH = """
mutation Push($input: PushInput!) {
  pushChanges(input: $input) {
    applied
    conflicts { entity id reason serverVersion }
    errors { entity index field code message }
  }
}
"""

Item = dict[str, Any]


def chunks(values: list[Any], size: int) -> list[list[Any]]:
    return [values[k : k + size] for k in range(0, len(values), size)]


def fields(i: int, gen: int) -> Item:
    """The two changed fields of user ``i`` in generation ``gen`` (emails stay unique)."""
    return {"name": f"User {i} v{gen}", "email": f"user{i}.v{gen}@school.example"}


# --- request bodies -----------------------------------------------------------------------


def sync_bodies(batches: list[list[Item]]) -> list[bytes]:
    return [graphql_body(SYNC, {"input": {"users": {"data": b}}}) for b in batches]


def sync_update_items(ids: list[str], gen: int) -> list[Item]:
    return [{"id": id_, **fields(i, gen)} for i, id_ in enumerate(ids)]


def push_bodies(ids: list[str], gen: int, policy: str, base_version: int | None) -> list[bytes]:
    changed_at = datetime.now(UTC).isoformat()
    changes = []
    for i, id_ in enumerate(ids):
        change: Item = {"id": id_, "changedAt": changed_at, "data": fields(i, gen)}
        if base_version is not None:
            change["baseVersion"] = base_version
        changes.append(change)
    return [
        graphql_body(PUSH, {"input": {"conflictPolicy": policy, "users": {"updated": b}}})
        for b in chunks(changes, BATCH)
    ]


# --- checks -------------------------------------------------------------------------------


def check_sync(data: dict[str, Any], expect: str) -> None:
    totals = data["sync"]["totals"]
    if totals[expect] != BATCH or totals["failed"]:
        raise BenchError(f"sync: expected {BATCH} {expect}, got {totals}")


def check_push(data: dict[str, Any]) -> None:
    report = data["pushChanges"]
    if report["applied"] != BATCH or report["conflicts"] or report["errors"]:
        raise BenchError(f"push: expected {BATCH} applied, got {str(report)[:800]}")


async def send_all(srv: BenchServer, bodies: list[bytes], check: Any) -> Timing:
    """One request per body, in order; every answer checked (outside the timing)."""
    samples = []
    for body in bodies:
        answers: list[dict[str, Any]] = []
        samples.append(await timed(functools.partial(_send, srv, body, answers)))
        check(answers[0])
    return Timing(tuple(samples))


async def _send(srv: BenchServer, body: bytes, answers: list[dict[str, Any]]) -> None:
    answers.append(await srv.graphql(body))


# --- one backend --------------------------------------------------------------------------


async def bench_backend(backend: str, rows: int) -> list[tuple[str, Timing]]:
    note(f"[{backend}] starting server on a fresh database")
    async with running_server(backend) as srv:
        print(f"[{backend}] {await srv.database_version()}")
        ids = new_ids(rows)
        note(f"  creating {rows:,} users")
        create = sync_bodies(chunks(items(USERS, ids, 0), BATCH))
        await send_all(srv, create, functools.partial(check_sync, expect="inserted"))  # v1
        results = []
        note("  sync pass")
        bodies = sync_bodies(chunks(sync_update_items(ids, 1), BATCH))
        sync_check = functools.partial(check_sync, expect="updated")
        results.append(("sync (update)", await send_all(srv, bodies, sync_check)))  # v2
        note("  push REJECT pass")
        bodies = push_bodies(ids, 2, "REJECT", base_version=2)
        results.append(("pushChanges REJECT", await send_all(srv, bodies, check_push)))  # v3
        note("  push LAST_WRITE_WINS pass")
        bodies = push_bodies(ids, 3, "LAST_WRITE_WINS", base_version=None)
        results.append(("pushChanges LWW", await send_all(srv, bodies, check_push)))  # v4
    return results


HEADERS = ("backend", "pass", "requests", "s", "rows/s", "ms/request (median)", "ratio to sync")


def table_rows(backend: str, rows: int, results: list[tuple[str, Timing]]) -> list[list[str]]:
    sync_total = results[0][1].total
    return [
        [
            backend,
            name,
            str(len(t.samples)),
            f"{t.total:.2f}",
            rate(rows, t.total),
            ms(t.median),
            ratio(sync_total / t.total),
        ]
        for name, t in results
    ]


async def main(args: argparse.Namespace) -> None:
    rows = 2_000 if args.quick else ROWS
    print(f"push vs sync: {rows:,} users per pass, {BATCH:,} per request; {machine_line()}")
    table = []
    for backend in backends(args.backend):
        table += table_rows(backend, rows, await bench_backend(backend, rows))
    title = "pushChanges vs sync, updating name and email (ratio = push rows/s ÷ sync rows/s)"
    print_table(title, HEADERS, table)


if __name__ == "__main__":
    run(main, "mutation pushChanges throughput vs mutation sync of the same rows")
