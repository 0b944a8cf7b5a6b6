"""Item normalization: the compiled per-entity checker must give exactly what the general
code gives, for good items and for every kind of bad one."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.domains import load_registry
from app.engine import items as items_module
from app.engine.items import normalize_items
from app.engine.registry import EntitySpec, Registry

EXAMPLES = Path(__file__).parent.parent / "examples"

ODD_VALUES: list[Any] = [
    None,
    "",
    " ",
    "x" * 300,
    "16/11/1962",
    "1962-11-16",
    "31/02/2000",
    "not a date",
    0,
    -(2**31),
    2**31,
    2**31 - 1,
    1.5,
    float("inf"),
    True,
    False,
    [],
    ["a", "b"],
    ["a", 1],
    {},
    {"guardian": True},
    {"guardian": "yes"},
    {"unknown": True},
    str(uuid.uuid4()),
    str(uuid.uuid4()).upper(),
    uuid.uuid4().hex,
    "ID123",
    "x\ud800",
    ["ok", "\udfff"],
]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def example_items(registry: Registry) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(EXAMPLES.glob("*-sync.json")):
        for plural, batch in json.loads(path.read_text()).items():
            out.setdefault(plural, []).extend(batch["data"])
    return out


def general(spec: EntitySpec, raw: list[Any]) -> Any:
    """normalize_items with the compiled checker turned off."""
    saved = items_module._FAST.copy()
    items_module._FAST.clear()
    original = items_module._compiled
    items_module._compiled = lambda spec: lambda index, raw: None  # type: ignore[assignment]
    try:
        return normalize_items(spec, raw)
    finally:
        items_module._compiled = original  # type: ignore[assignment]
        items_module._FAST.update(saved)


def variants(spec: EntitySpec, base: dict[str, Any], rng: random.Random) -> list[Any]:
    """The example item with one field at a time set to each odd value, plus removals,
    unknown keys and ids in every form."""
    keys = ["id", "alias", *items_module.input_names(spec)]
    out: list[Any] = [base, {}, [], "item", None]
    for key in keys:
        for value in ODD_VALUES:
            out.append({**base, key: value})
        out.append({k: v for k, v in base.items() if k != key})
    out.append({**base, "noSuchField": 1})
    for _ in range(200):
        item = dict(base)
        for key in rng.sample(keys, k=min(3, len(keys))):
            item[key] = rng.choice(ODD_VALUES)
        out.append(item)
    return out


def test_compiled_checker_agrees_with_the_general_code(registry: Registry) -> None:
    rng = random.Random(7)
    examples = example_items(registry)
    compared = 0
    for spec in registry.ordered():
        bases = examples.get(spec.plural) or [{"alias": "a-1"}]
        raw = [v for base in bases for v in variants(spec, base, rng)]
        fast_items, fast_errors = normalize_items(spec, raw)
        slow_items, slow_errors = general(spec, raw)
        assert fast_items == slow_items, spec.plural
        assert fast_errors == slow_errors, spec.plural
        compared += len(raw)
    assert compared > 5_000


def test_compiled_checker_takes_the_common_items(registry: Registry) -> None:
    """Valid items with canonical ids are normalized without the general code."""
    spec = registry.by_plural("users")
    raw = {
        "id": str(uuid.uuid4()),
        "alias": "u-1",
        "name": "Ana",
        "email": "ana@example.com",
        "birth": "2004-08-22",
        "roleSet": {"guardian": True},
        "active": True,
    }
    item = items_module._compiled(spec)(0, raw)
    assert item is not None
    assert item.id == raw["id"]
    assert item.values["birth"].isoformat() == "2004-08-22"
    assert item.values["role_set"]["guardian"] is True
    assert items_module._compiled(spec)(0, {**raw, "id": raw["id"].upper()}) is None
