"""The ``bulkinput`` accelerator: a bulk variable taken from the raw JSON reaches the engine
exactly as the typed path (graphql-core's coercion, Strawberry's input objects, ``to_wire``)
delivers it, and a value it does not take answers with the typed path's errors. Two schemas
are built, one under ``accel.only("bulkinput")`` and one with every accelerator off, so this
holds whatever ``SYNCGRAPH_ACCEL`` says; the engine is a stub that records what it gets."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import strawberry

from app import accel
from app.auth import AuthResult, Principal
from app.domains import load_registry
from app.engine.registry import Registry
from app.engine.tenants import SCOPES
from app.engine.write.items import normalize_items
from app.engine.write.push import KINDS, Change, PushRequest
from app.graphql.context import Context
from app.graphql.schema import build_schema
from app.settings import Settings

TENANT = "00000000-0000-4000-8000-000000000001"
IDS = [f"00000000-0000-4000-8000-{i:012d}" for i in range(10)]
SYNC = """mutation($input: SyncInput!) { sync(input: $input) { checkpoint } }"""
PUSH = """mutation($input: PushInput!) { pushChanges(input: $input) { applied } }"""


class Recorded(Exception):
    """Ends the request once the engine has been handed its input."""


@dataclass
class Engine:
    calls: list[Any] = field(default_factory=list)

    async def sync(self, tenant_id: str, batches: Any, **options: Any) -> Any:
        self.calls.append((tenant_id, batches, options))
        raise Recorded

    async def push(self, tenant_id: str, request: Any, **options: Any) -> Any:
        self.calls.append((tenant_id, request))
        raise Recorded


@pytest.fixture(scope="module")
def schemas() -> tuple[strawberry.Schema, strawberry.Schema]:
    """(accelerated, plain), from one registry."""
    registry = load_registry()
    settings = Settings(dev=False)
    with accel.only("bulkinput"):
        fast = build_schema(registry, settings)
    with accel.only():
        plain = build_schema(registry, settings)
    return fast, plain


async def run(schema: strawberry.Schema, query: str, value: Any) -> tuple[Any, list[Any], Any]:
    """(what the engine got, the errors' messages and codes, what was taken raw)."""
    engine = Engine()
    principal = Principal(TENANT, "t", frozenset(SCOPES))
    context = Context(
        request=None,
        response=None,
        state=SimpleNamespace(service=engine),  # type: ignore[arg-type]
        auth=AuthResult(principal=principal),
        request_id="r",
    )
    result = await schema.execute(query, variable_values={"input": value}, context_value=context)
    errors = [(e.message, e.path) for e in result.errors or [] if not _recorded(e)]
    return engine.calls, errors, context.bulk_inputs


def _recorded(error: Any) -> bool:
    return isinstance(error.original_error, Recorded)


USER = {
    "id": IDS[0],
    "alias": "u0",
    "name": "Ana",
    "email": "ana@example.com",
    "birth": "22/08/2004",
    "roleSet": {"teacher": True, "guardian": None},
    "active": True,
}

Case = tuple[str, Any, bool, bool]
"""(query, the input, whether the accelerator takes it raw, whether GraphQL refuses it)."""

PUSH_FULL = {
    "since": "0",
    "conflictPolicy": "LAST_WRITE_WINS",
    "atomic": True,
    "users": {
        "inserted": [{"id": IDS[3], "data": {"name": "new", "birth": "01/01/2000"}}],
        "updated": [{"id": IDS[1], "data": {"name": "x"}, "changedAt": "2030-01-01T00:00:00Z"}],
        "deleted": [{"id": IDS[4]}],
    },
}
CASES: dict[str, Case] = {
    "users": (
        SYNC,
        {"users": {"data": [USER, {"name": "Bo", "birth": "2004-08-22"}]}},
        True,
        False,
    ),
    "clean-sync": (
        SYNC,
        {"users": {"data": [], "cleanSync": True}, "classrooms": None},
        True,
        False,
    ),
    "lists": (
        SYNC,
        {"classrooms": {"data": [{"name": "A", "tags": ["x"], "members": [IDS[1]]}]}},
        True,
        False,
    ),
    "string-gender": (SYNC, {"badges": {"data": [{"name": "b", "gender": "ALIEN"}]}}, True, False),
    "object-for-list": (SYNC, {"users": {"data": {"name": "wrapped"}}}, False, False),
    "int-for-string": (SYNC, {"users": {"data": [{"name": 5}]}}, False, True),
    "unknown-field": (SYNC, {"users": {"data": [{"name": "x", "nope": 1}]}}, False, True),
    "bad-flag": (
        SYNC,
        {"users": {"data": [{"name": "x", "roleSet": {"admin": "yes"}}]}},
        False,
        True,
    ),
    "missing-data": (SYNC, {"users": {"cleanSync": True}}, False, True),
    "other-entity-field": (
        SYNC,
        {"persons": {"data": [{"name": "x", "firstYear": 1}]}},
        False,
        True,
    ),
    "int-overflow": (
        SYNC,
        {"directions": {"data": [{"name": "x", "firstYear": 2**40}]}},
        False,
        True,
    ),
    "float-for-int": (
        SYNC,
        {"directions": {"data": [{"name": "x", "firstYear": 1.5}]}},
        False,
        True,
    ),
    "unknown-entity": (SYNC, {"noSuchEntity": {"data": []}}, False, True),
    "list-for-input": (SYNC, [], False, True),
    "push": (PUSH, PUSH_FULL, True, False),
    "push-empty-data": (PUSH, {"users": {"updated": [{"id": IDS[1], "data": {}}]}}, True, False),
    "push-int-id": (PUSH, {"users": {"updated": [{"id": 7}]}}, False, False),
    "push-bad-time": (
        PUSH,
        {"users": {"updated": [{"id": IDS[1], "changedAt": "then"}]}},
        False,
        True,
    ),
    "push-bad-enum": (PUSH, {"conflictPolicy": "SOMETIMES"}, False, True),
    "push-int-since": (PUSH, {"since": 3, "users": None}, False, True),
}


def normalized(registry: Registry, calls: list[Any]) -> list[Any]:
    """What the engine makes of its input: the typed path hands it dates as ``date`` and
    the raw path as text, and the engine's normalizer is what makes them the same item."""
    out: list[Any] = []
    for call in calls:
        if isinstance(call[1], PushRequest):
            request = call[1]
            entities = {
                plural: {
                    kind: [_change(registry, plural, c) for c in getattr(push, kind)]
                    for kind in KINDS
                }
                for plural, push in request.entities.items()
            }
            out.append((entities, request.since, request.from_date, request.atomic, request.policy))
        else:
            tenant_id, batches, options = call
            out.append(
                {
                    plural: (normalize_items(registry.by_plural(plural), b.data), b.clean_sync)
                    for plural, b in batches.items()
                }
            )
            out.append((tenant_id, options))
    return out


def _change(registry: Registry, plural: str, change: Change) -> Any:
    data = normalize_items(registry.by_plural(plural), [change.data]) if change.data else None
    return (change.id, change.base_version, change.changed_at, change.actor, data)


@pytest.mark.parametrize("name", list(CASES))
async def test_an_input_reaches_the_engine_or_fails_alike(
    schemas: tuple[strawberry.Schema, strawberry.Schema], name: str
) -> None:
    query, value, taken, refused = CASES[name]
    registry = load_registry()
    fast, plain = [await run(schema, query, value) for schema in schemas]
    assert fast[2] == ({"input": value} if taken else {})
    assert plain[2] == {}
    assert fast[1] == plain[1]
    assert normalized(registry, fast[0]) == normalized(registry, plain[0])
    assert bool(fast[1]) is refused
    assert bool(fast[0]) is not refused
