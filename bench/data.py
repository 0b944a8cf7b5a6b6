"""The rows the benchmarks write: manufacturing pieces and education users, as GraphQL input
items (camelCase, what a client sends) and as the full table rows a raw driver writes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson

from bench.common import BenchServer

PROJECT_ALIAS = "BENCH-PRJ-1"
COMPONENT_ALIAS = "BENCH-CMP-1"
ASSEMBLY_ALIAS = "BENCH-ASM-1"
ROLES = ("guardian", "student", "teacher", "staff", "admin")

SETUP = """
mutation Setup($input: SyncInput!) {
  sync(input: $input) { totals { inserted failed } }
}
query Assembly($alias: String!) { assembly(alias: $alias) { id } }
"""

Item = dict[str, Any]
Refs = dict[str, str]


@dataclass(frozen=True)
class Case:
    """One entity to benchmark: how to make its input items and the matching row values."""

    plural: str
    item: Callable[[int, str, int], Item]
    """(index, id, generation) -> input item; another generation changes data fields."""
    columns: Callable[[Item, Refs], dict[str, Any]]
    """Input item -> domain column values (references already resolved)."""


def piece_item(i: int, id_: str, gen: int) -> Item:
    """10 input fields: id, alias, 7 data fields, and the assembly reference (by alias)."""
    return {
        "id": id_,
        "alias": f"PC-{i:06d}",
        "name": f"Plate {i} rev {gen}",
        "number": f"N-{i:06d}",
        "quantity": 1 + (i + gen) % 9,
        "lengthMm": 100.0 + i % 900 + gen,
        "widthMm": 40.0 + i % 300,
        "thicknessMm": 4.0 + i % 26,
        "weightKg": round(0.25 + (i % 1000) * 0.013 + gen, 3),
        "assembly": ASSEMBLY_ALIAS,
    }


def piece_columns(item: Item, refs: Refs) -> dict[str, Any]:
    return {
        "alias": item["alias"],
        "assembly_id": refs["assembly"],
        "article_id": None,
        "name": item["name"],
        "number": item["number"],
        "quantity": item["quantity"],
        "length_mm": item["lengthMm"],
        "width_mm": item["widthMm"],
        "thickness_mm": item["thicknessMm"],
        "weight_kg": item["weightKg"],
    }


def user_item(i: int, id_: str, gen: int) -> Item:
    """8 input fields (roleSet is an object of 5 flags)."""
    return {
        "id": id_,
        "alias": f"U-{i:06d}",
        "name": f"User {i} v{gen}",
        "email": f"user{i}@school.example",
        "birth": date(2000 + i % 18, 1 + i % 12, 1 + i % 28).isoformat(),
        "roleSet": {"student": i % 5 != 0, "guardian": i % 5 == 0 or gen % 2 == 1},
        "active": True,
        "invite": i % 3 == 0,
    }


def user_columns(item: Item, _refs: Refs) -> dict[str, Any]:
    return {
        "alias": item["alias"],
        "name": item["name"],
        "email": item["email"],
        "birth": date.fromisoformat(item["birth"]),
        "role_set": {r: bool(item["roleSet"].get(r)) for r in ROLES},
        "active": item["active"],
        "invite": item["invite"],
    }


PIECES = Case("pieces", piece_item, piece_columns)
USERS = Case("users", user_item, user_columns)


def new_ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def items(case: Case, ids: list[str], gen: int) -> list[Item]:
    return [case.item(i, id_, gen) for i, id_ in enumerate(ids)]


def raw_rows(
    case: Case, tenant_id: str, batch: list[Item], refs: Refs, *, version: int, first_seq: int
) -> list[dict[str, Any]]:
    """Full table rows (sync columns included) for the raw driver's upsert."""
    now = datetime.now().astimezone()
    return [
        {
            "tenant_id": tenant_id,
            "id": item["id"],
            "version": version,
            "created_at": now,
            "updated_at": now,
            "changed_at": now,
            "actor": None,
            "seq": first_seq + k,
            "created_seq": first_seq + k,
            "deleted_at": None,
            **case.columns(item, refs),
        }
        for k, item in enumerate(batch)
    ]


async def create_assembly(srv: BenchServer) -> str:
    """A project, component and assembly to hang pieces on; returns the assembly's id."""
    setup = {
        "projects": {"data": [{"alias": PROJECT_ALIAS, "name": "Bench project"}]},
        "components": {
            "data": [
                {"alias": COMPONENT_ALIAS, "name": "Bench component", "project": PROJECT_ALIAS}
            ]
        },
        "assemblies": {
            "data": [
                {"alias": ASSEMBLY_ALIAS, "name": "Bench assembly", "component": COMPONENT_ALIAS}
            ]
        },
    }
    body = {"query": SETUP, "operationName": "Setup", "variables": {"input": setup}}
    await srv.graphql(_encode(body))
    body = {"query": SETUP, "operationName": "Assembly", "variables": {"alias": ASSEMBLY_ALIAS}}
    data = await srv.graphql(_encode(body))
    return str(data["assembly"]["id"])


def _encode(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)
