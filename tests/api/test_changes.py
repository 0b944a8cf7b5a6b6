"""The delta feed (`changes`) through HTTP, as a sync client uses it (DESIGN §3, §7)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from app.db import write_transaction
from app.engine.purge import purge_tombstones
from tests.conftest import Tenant, statements

SYNC = """
mutation($input: SyncInput!, $force: Boolean) { sync(input: $input, force: $force) {
  checkpoint totals { inserted updated unchanged deleted failed }
  users { ids } persons { ids } projects { ids }
}}"""

RECORD = "id name version"
CHANGES = f"""
query($since: String, $fromDate: DateTime, $limit: Int) {{
  changes(since: $since, fromDate: $fromDate, limit: $limit) {{
    checkpoint hasMore fullSyncRequired serverTime
    users {{ inserted {{ {RECORD} }} updated {{ {RECORD} }} deleted }}
    persons {{ inserted {{ {RECORD} }} updated {{ {RECORD} }} deleted }}
    projects {{ inserted {{ {RECORD} }} updated {{ {RECORD} }} deleted }}
  }}
}}"""
ENTITIES = ("users", "persons", "projects")


# --- helpers -------------------------------------------------------------------------------


async def sync(tenant: Tenant, payload: dict[str, Any], *, force: bool = False) -> dict[str, Any]:
    """Run a sync that must fully succeed; returns the report."""
    body = await tenant.gql(SYNC, {"input": payload, "force": force})
    report: dict[str, Any] = body["data"]["sync"]
    assert report["totals"]["failed"] == 0, report
    return report


def batch(*items: dict[str, Any], clean: bool = False) -> dict[str, Any]:
    return {"data": list(items), "cleanSync": clean}


async def create(tenant: Tenant, plural: str, *names: str) -> list[str]:
    """New records named ``names``; returns their ids in order."""
    report = await sync(tenant, {plural: batch(*({"name": n} for n in names))})
    return list(report[plural]["ids"])


async def delete_all_but(tenant: Tenant, plural: str, keep: dict[str, str]) -> dict[str, Any]:
    """cleanSync that keeps exactly ``keep`` (id -> its current name) and deletes the rest."""
    items = [{"id": id_, "name": name} for id_, name in keep.items()]
    return await sync(tenant, {plural: batch(*items, clean=True)}, force=True)


async def pull(
    tenant: Tenant,
    since: str | None = None,
    *,
    limit: int | None = None,
    from_date: str | None = None,
    query: str = CHANGES,
) -> dict[str, Any]:
    variables: dict[str, Any] = {"since": since, "fromDate": from_date}
    if limit is not None:
        variables["limit"] = limit
    body = await tenant.gql(query, variables)
    page: dict[str, Any] = body["data"]["changes"]
    return page


async def pull_error(tenant: Tenant, **variables: Any) -> dict[str, Any]:
    body = await tenant.gql(CHANGES, variables, expect_errors=True)
    assert body["data"] is None
    [error] = body["errors"]
    return dict(error)


def ids(page: dict[str, Any], plural: str, kind: str) -> list[str]:
    changes = page[plural][kind]
    return list(changes) if kind == "deleted" else [r["id"] for r in changes]


def page_records(page: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(entity, kind, id) of every record in a page."""
    return [
        (plural, kind, id_)
        for plural in ENTITIES
        if plural in page
        for kind in ("inserted", "updated", "deleted")
        for id_ in ids(page, plural, kind)
    ]


async def pull_until_current(
    tenant: Tenant, since: str | None, *, limit: int
) -> list[dict[str, Any]]:
    """Loop ``since = checkpoint`` while ``hasMore``; returns every page."""
    pages = []
    while True:
        page = await pull(tenant, since, limit=limit)
        pages.append(page)
        since = page["checkpoint"]
        if not page["hasMore"]:
            return pages


# --- full snapshot ---------------------------------------------------------------------------


async def test_snapshot_has_every_live_record_as_inserted(tenant: Tenant) -> None:
    alice, bob, carol = await create(tenant, "users", "alice", "bob", "carol")
    [fair] = await create(tenant, "persons", "fair")
    await delete_all_but(tenant, "users", {alice: "alice", carol: "carol"})

    page = await pull(tenant)

    assert sorted(ids(page, "users", "inserted")) == sorted([alice, carol])
    assert ids(page, "persons", "inserted") == [fair]
    assert all(ids(page, p, k) == [] for p in ENTITIES for k in ("updated", "deleted"))
    assert bob not in str(page)
    assert page["hasMore"] is False
    assert page["fullSyncRequired"] is False


async def test_empty_tenant_snapshot(tenant: Tenant) -> None:
    page = await pull(tenant)
    assert page["checkpoint"] == "0"
    assert page["hasMore"] is False
    assert page_records(page) == []


# --- paging ------------------------------------------------------------------------------------


async def test_paging_across_entities_is_in_write_order_and_exactly_once(tenant: Tenant) -> None:
    written: list[tuple[str, str]] = []
    for step in range(3):
        for plural in ("persons", "users", "projects"):
            [new] = await create(tenant, plural, f"{plural}-{step}")
            written.append((plural, new))

    one_by_one = await pull_until_current(tenant, None, limit=1)
    by_two = await pull_until_current(tenant, None, limit=2)

    seen = [(plural, id_) for page in one_by_one for plural, _kind, id_ in page_records(page)]
    assert seen == written  # seq order over all entities
    pairs = [(plural, id_) for page in by_two for plural, _kind, id_ in page_records(page)]
    assert sorted(pairs) == sorted(written)  # each record exactly once
    assert [len(page_records(p)) for p in by_two] == [2, 2, 2, 2, 1]
    assert [p["hasMore"] for p in by_two] == [True, True, True, True, False]
    checkpoints = [int(p["checkpoint"]) for p in one_by_one]
    assert checkpoints == sorted(set(checkpoints))


async def test_paging_from_a_checkpoint_sees_each_change_once(tenant: Tenant) -> None:
    [a, b] = await create(tenant, "users", "a", "b")
    start = (await pull(tenant))["checkpoint"]
    await sync(tenant, {"users": batch({"id": a, "name": "a2"}), "persons": batch({"name": "p"})})
    [c] = await create(tenant, "users", "c")
    await sync(tenant, {"users": batch({"id": b, "name": "b2"})})

    pages = await pull_until_current(tenant, start, limit=1)

    kinds = [(plural, kind, id_) for page in pages for plural, kind, id_ in page_records(page)]
    assert [(p, k) for p, k, _ in kinds] == [
        ("users", "updated"),
        ("persons", "inserted"),
        ("users", "inserted"),
        ("users", "updated"),
    ]
    assert [i for p, _, i in kinds if p == "users"] == [a, c, b]


async def test_deleted_ids_count_toward_the_limit(tenant: Tenant) -> None:
    a, b, c = await create(tenant, "users", "a", "b", "c")
    start = (await pull(tenant))["checkpoint"]
    await delete_all_but(tenant, "users", {a: "a"})

    first = await pull(tenant, start, limit=1)
    second = await pull(tenant, first["checkpoint"], limit=1)

    assert len(ids(first, "users", "deleted")) == 1
    assert first["hasMore"] is True
    assert len(ids(second, "users", "deleted")) == 1
    assert second["hasMore"] is False
    assert sorted(ids(first, "users", "deleted") + ids(second, "users", "deleted")) == sorted(
        [b, c]
    )


async def test_unselected_entities_do_not_count_toward_the_limit(tenant: Tenant) -> None:
    await create(tenant, "persons", "p1", "p2", "p3")
    [u] = await create(tenant, "users", "u")
    report = await sync(tenant, {"persons": batch({"name": "p4"})})
    only_users = """query($limit: Int) {
      changes(limit: $limit) { checkpoint hasMore users { inserted { id } } } }"""

    body = await tenant.gql(only_users, {"limit": 1})

    page = body["data"]["changes"]
    assert set(page) == {"checkpoint", "hasMore", "users"}
    assert [r["id"] for r in page["users"]["inserted"]] == [u]
    assert page["hasMore"] is False
    assert page["checkpoint"] == report["checkpoint"]  # the latest seq, though it is a person's


# --- classification ----------------------------------------------------------------------------


async def test_inserted_or_updated_is_relative_to_since(tenant: Tenant) -> None:
    [old] = await create(tenant, "users", "old")
    since = (await pull(tenant))["checkpoint"]
    await sync(tenant, {"users": batch({"id": old, "name": "old2"}, {"name": "new"})})

    page = await pull(tenant, since)
    snapshot = await pull(tenant)

    assert [r["name"] for r in page["users"]["updated"]] == ["old2"]
    assert [r["version"] for r in page["users"]["updated"]] == [2]
    assert [r["name"] for r in page["users"]["inserted"]] == ["new"]
    assert sorted(r["name"] for r in snapshot["users"]["inserted"]) == ["new", "old2"]
    assert snapshot["users"]["updated"] == []


async def test_unchanged_resend_is_not_a_change(tenant: Tenant) -> None:
    [a] = await create(tenant, "users", "a")
    since = (await pull(tenant))["checkpoint"]
    report = await sync(tenant, {"users": batch({"id": a, "name": "a"})})

    page = await pull(tenant, since)

    assert report["totals"]["unchanged"] == 1
    assert page_records(page) == []
    assert page["checkpoint"] == since


async def test_created_and_deleted_between_pulls_is_only_deleted(tenant: Tenant) -> None:
    [keep] = await create(tenant, "users", "keep")
    since = (await pull(tenant))["checkpoint"]
    [ghost] = await create(tenant, "users", "ghost")
    await delete_all_but(tenant, "users", {keep: "keep"})

    page = await pull(tenant, since)

    assert ids(page, "users", "deleted") == [ghost]
    assert ids(page, "users", "inserted") == []
    assert ids(page, "users", "updated") == []


async def test_updated_then_deleted_appears_once_as_deleted(tenant: Tenant) -> None:
    a, b = await create(tenant, "users", "a", "b")
    since = (await pull(tenant))["checkpoint"]
    await sync(tenant, {"users": batch({"id": b, "name": "b2"})})
    await delete_all_but(tenant, "users", {a: "a"})

    page = await pull(tenant, since)

    assert page_records(page) == [("users", "deleted", b)]


# --- checkpoints -------------------------------------------------------------------------------


async def test_final_checkpoint_is_the_latest_seq_and_idle_pulls_keep_it(tenant: Tenant) -> None:
    await create(tenant, "users", "u1", "u2")
    report = await sync(tenant, {"persons": batch({"name": "p"})})

    page = await pull(tenant, limit=5)
    idle = await pull(tenant, page["checkpoint"])
    idle_again = await pull(tenant, idle["checkpoint"], limit=1)

    assert page["hasMore"] is False
    assert page["checkpoint"] == report["checkpoint"]
    assert idle["checkpoint"] == idle_again["checkpoint"] == report["checkpoint"]
    assert page_records(idle) == page_records(idle_again) == []
    assert idle["fullSyncRequired"] is False


async def test_checkpoint_never_goes_backwards(tenant: Tenant) -> None:
    await create(tenant, "users", "u1")
    [p] = await create(tenant, "persons", "p1")
    latest = (await pull(tenant))["checkpoint"]
    users_only = "query($s: String) { changes(since: $s) { checkpoint hasMore users { deleted } } }"

    body = await tenant.gql(users_only, {"s": latest})
    await sync(tenant, {"persons": batch({"id": p, "name": "p2"})})
    after = await tenant.gql(users_only, {"s": latest})

    assert body["data"]["changes"]["checkpoint"] == latest
    assert int(after["data"]["changes"]["checkpoint"]) > int(latest)


async def test_checkpoints_from_sync_and_pull_agree(tenant: Tenant) -> None:
    report = await sync(tenant, {"users": batch({"name": "a"}, {"name": "b"})})
    page = await pull(tenant)
    assert page["checkpoint"] == report["checkpoint"]
    assert (await pull(tenant, report["checkpoint"]))["checkpoint"] == report["checkpoint"]


# --- fromDate ------------------------------------------------------------------------------------

TIMES = """query($id: ID!) { user(id: $id) { createdAt updatedAt } }"""


async def server_times(tenant: Tenant, id_: str) -> dict[str, str]:
    body = await tenant.gql(TIMES, {"id": id_})
    times: dict[str, str] = body["data"]["user"]
    return times


async def test_from_date_returns_records_updated_at_or_after_it(tenant: Tenant) -> None:
    [old] = await create(tenant, "users", "old")
    [untouched] = await create(tenant, "users", "untouched")
    [new] = await create(tenant, "users", "new")
    cut = (await server_times(tenant, new))["createdAt"]
    await sync(tenant, {"users": batch({"id": old, "name": "old2"})})

    page = await pull(tenant, from_date=cut)

    assert ids(page, "users", "inserted") == [new]  # created exactly at fromDate: included
    assert ids(page, "users", "updated") == [old]
    assert untouched not in str(page)
    assert page["hasMore"] is False


async def test_from_date_in_another_time_zone_is_the_same_instant(tenant: Tenant) -> None:
    await create(tenant, "users", "before")
    [new] = await create(tenant, "users", "after")
    cut = datetime.fromisoformat((await server_times(tenant, new))["createdAt"])
    plus_two = cut.astimezone(timezone(timedelta(hours=2))).isoformat()

    page = await pull(tenant, from_date=plus_two)

    assert ids(page, "users", "inserted") == [new]


async def test_from_date_reports_deletions_after_it(tenant: Tenant) -> None:
    a, b = await create(tenant, "users", "a", "b")
    cut = datetime.now(UTC).isoformat()
    await delete_all_but(tenant, "users", {a: "a"})

    page = await pull(tenant, from_date=cut)

    assert page_records(page) == [("users", "deleted", b)]


async def test_from_date_in_the_future_is_empty_and_current(tenant: Tenant) -> None:
    report = await sync(tenant, {"users": batch({"name": "a"})})
    page = await pull(tenant, from_date=(datetime.now(UTC) + timedelta(days=1)).isoformat())
    assert page_records(page) == []
    assert page["checkpoint"] == report["checkpoint"]


async def test_since_and_from_date_together_is_bad_request(tenant: Tenant) -> None:
    error = await pull_error(tenant, since="0", fromDate=datetime.now(UTC).isoformat())
    assert error["extensions"]["code"] == "BAD_REQUEST"


# --- bad arguments -------------------------------------------------------------------------------


async def test_malformed_checkpoint_is_bad_request(tenant: Tenant) -> None:
    for checkpoint in ("abc", "-1", "", "1.5", "+1"):
        error = await pull_error(tenant, since=checkpoint)
        assert error["extensions"]["code"] == "BAD_REQUEST", checkpoint
        assert error["path"] == ["changes"]


async def test_limit_out_of_range_is_bad_request(tenant: Tenant) -> None:
    for limit in (0, -1, 10_001):
        error = await pull_error(tenant, limit=limit)
        assert error["extensions"]["code"] == "BAD_REQUEST", limit
        assert "10000" in error["message"]


async def test_limit_of_ten_thousand_is_allowed(tenant: Tenant) -> None:
    await create(tenant, "users", "a")
    page = await pull(tenant, limit=10_000)
    assert len(ids(page, "users", "inserted")) == 1


async def test_default_limit_is_a_thousand(tenant: Tenant) -> None:
    await sync(tenant, {"persons": batch(*({"name": f"p{i}"} for i in range(1000)))})
    await create(tenant, "persons", "last")
    page = await pull(tenant)
    assert len(ids(page, "persons", "inserted")) == 1000
    assert page["hasMore"] is True
    rest = await pull(tenant, page["checkpoint"])
    assert len(ids(rest, "persons", "inserted")) == 1
    assert rest["hasMore"] is False


# --- selection ---------------------------------------------------------------------------------


def touches(statement: str, table: str) -> bool:
    return re.search(rf'\b"?{table}"?\.|\bFROM "?{table}"?\b', statement) is not None


async def test_selected_entities_only_are_returned_and_read(tenant: Tenant) -> None:
    [u] = await create(tenant, "users", "u")
    await create(tenant, "persons", "p")
    query = "{ changes { checkpoint users { inserted { id name } } } }"

    with statements(tenant.state) as seen:
        body = await tenant.gql(query)

    assert body["data"]["changes"]["users"]["inserted"] == [{"id": u, "name": "u"}]
    read = {
        s.table.name
        for s in tenant.state.registry.ordered()
        if any(touches(stmt, s.table.name) for stmt in seen)
    }
    assert read == {"users"}


async def test_aliases_and_fragments_in_the_changes_query(tenant: Tenant) -> None:
    [u] = await create(tenant, "users", "ana")
    await sync(tenant, {"users": batch({"id": u, "email": "ana@example.org"})})
    [p] = await create(tenant, "persons", "pat")
    query = """
    fragment Who on User { id who: name email }
    fragment Feed on ChangeSet {
      people: users { fresh: inserted { ...Who } again: updated { id } gone: deleted }
    }
    query {
      feed: changes(limit: 10) {
        at: checkpoint
        ...Feed
        ... on ChangeSet { festival: persons { inserted { id name } } }
        sameUsers: users { inserted { version } }
      }
    }"""

    body = await tenant.gql(query)

    feed = body["data"]["feed"]
    assert feed["people"] == {
        "fresh": [{"id": u, "who": "ana", "email": "ana@example.org"}],
        "again": [],
        "gone": [],
    }
    assert feed["festival"]["inserted"] == [{"id": p, "name": "pat"}]
    assert feed["sameUsers"]["inserted"] == [{"version": 2}]
    assert int(feed["at"]) > 0


async def test_two_aliased_pulls_in_one_query_are_independent(tenant: Tenant) -> None:
    await create(tenant, "users", "a", "b")
    query = """{ first: changes(limit: 1) { checkpoint hasMore users { inserted { name } } }
                 all: changes { checkpoint hasMore users { inserted { name } } } }"""

    body = await tenant.gql(query)

    first, everything = body["data"]["first"], body["data"]["all"]
    assert first["hasMore"] is True
    assert first["users"]["inserted"] == [{"name": "a"}]
    assert everything["hasMore"] is False
    assert sorted(r["name"] for r in everything["users"]["inserted"]) == ["a", "b"]


# --- full sync required --------------------------------------------------------------------------


async def test_since_older_than_the_purge_horizon_needs_a_full_sync(tenant: Tenant) -> None:
    a, b, c = await create(tenant, "users", "a", "b", "c")
    before_deletes = (await pull(tenant))["checkpoint"]
    deleted = await delete_all_but(tenant, "users", {a: "a"})
    async with write_transaction(tenant.state.engine) as conn:
        await purge_tombstones(
            conn,
            tenant.state.registry,
            retention_days=0,
            now=datetime.now(UTC) + timedelta(seconds=1),
        )

    stale = await pull(tenant, before_deletes)
    at_horizon = await pull(tenant, deleted["checkpoint"])
    fresh = await pull(tenant)

    assert stale["fullSyncRequired"] is True
    assert page_records(stale) == []
    assert at_horizon["fullSyncRequired"] is False
    assert fresh["fullSyncRequired"] is False
    assert ids(fresh, "users", "inserted") == [a]
    assert b not in str(fresh)
    assert c not in str(fresh)
    assert fresh["checkpoint"] == deleted["checkpoint"]


async def test_since_beyond_the_latest_seq_needs_a_full_sync(tenant: Tenant) -> None:
    report = await sync(tenant, {"users": batch({"name": "a"})})
    ahead = str(int(report["checkpoint"]) + 1)

    page = await pull(tenant, ahead)
    huge = await pull(tenant, "9" * 30)

    assert page["fullSyncRequired"] is True
    assert huge["fullSyncRequired"] is True
    assert page_records(page) == []


# --- misc ----------------------------------------------------------------------------------------


async def test_server_time_is_utc_iso_8601(tenant: Tenant) -> None:
    page = await pull(tenant)
    value = page["serverTime"]
    parsed = datetime.fromisoformat(value)
    assert value.endswith(("Z", "+00:00"))
    assert parsed.utcoffset() == timedelta(0)
    assert abs(parsed - datetime.now(UTC)) < timedelta(minutes=1)


async def test_other_tenants_changes_never_appear(tenant: Tenant, other_tenant: Tenant) -> None:
    shared_id = str(uuid.uuid4())
    await sync(other_tenant, {"users": batch({"id": shared_id, "name": "theirs"}, {"name": "x"})})
    await sync(other_tenant, {"persons": batch({"name": "theirs too"})})
    report = await sync(tenant, {"users": batch({"id": shared_id, "name": "mine"})})

    mine = await pull(tenant)
    current = await pull(tenant, mine["checkpoint"])

    assert mine["users"]["inserted"] == [{"id": shared_id, "name": "mine", "version": 1}]
    assert page_records(mine) == [("users", "inserted", shared_id)]
    assert mine["checkpoint"] == report["checkpoint"] == "1"
    assert page_records(current) == []


async def test_each_document_reads_what_it_selects_however_often_it_is_sent(
    tenant: Tenant,
) -> None:
    """The selection of a kept document is remembered (``SelectionOf``): documents sent
    in turn, each several times, must each get exactly its own columns, fragments and
    aliases included, and the digest only when asked."""
    await create(tenant, "persons", "Ann", "Bob")
    documents = {
        "names": "{ changes { persons { inserted { id name } } } }",
        "versions": "{ changes { persons { inserted { id version } } } }",
        "fragment": """query { changes { persons { inserted { ...P } } } }
            fragment P on Person { name version }""",
        "digest": "{ changes { digest { entity count } persons { inserted { id } } } }",
    }
    expected = {
        "names": {"id", "name"},
        "versions": {"id", "version"},
        "fragment": {"name", "version"},
        "digest": {"id"},
    }
    for _ in range(3):
        for name, query in documents.items():
            body = await tenant.gql(query)
            page = body["data"]["changes"]
            records = page["persons"]["inserted"]
            assert len(records) == 2, (name, page)
            assert {key for record in records for key in record} == expected[name], name
            assert all(value is not None for r in records for value in r.values()), records
            if name == "digest":
                assert page["digest"] == [{"entity": "PERSON", "count": 2}]
