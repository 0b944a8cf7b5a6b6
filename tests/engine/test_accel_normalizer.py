"""The ``normalizer`` accelerator: each entity's generated normalizer must give exactly what
the generic loop gives, for good items and for every kind of bad one. Both paths are built
here explicitly (a spec made under ``accel.only``), so these hold whatever
``SYNCGRAPH_ACCEL`` says."""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from app import accel
from app.accel.normalizer import compile_normalizer
from app.domains import load_registry
from app.engine.registry import EntitySpec, Registry
from app.engine.write import items as items_module
from app.engine.write.items import normalize_items

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


def built(spec: EntitySpec, *accelerators: str) -> EntitySpec:
    """A fresh copy of ``spec`` that chooses its normalizer with only ``accelerators`` on."""
    with accel.only(*accelerators):
        copy = dataclasses.replace(spec)
        _ = copy.fast_normalizer  # chosen now, inside the block
    return copy


def accelerated(spec: EntitySpec, raw: list[Any]) -> Any:
    fast = built(spec, "normalizer")
    assert fast.fast_normalizer is not None
    return normalize_items(fast, raw)


def general(spec: EntitySpec, raw: list[Any]) -> Any:
    """normalize_items on the plain path: the generic loop alone."""
    plain = built(spec)
    assert plain.fast_normalizer is None
    return normalize_items(plain, raw)


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
        fast_items, fast_errors = accelerated(spec, raw)
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
    fast = compile_normalizer(spec)
    item = fast(0, raw)
    assert item is not None
    assert item.id == raw["id"]
    assert item.values["birth"].isoformat() == "2004-08-22"
    assert item.values["role_set"]["guardian"] is True
    assert fast(0, {**raw, "id": raw["id"].upper()}) is None


def test_the_comparison_covers_every_field_kind_and_takes_the_examples(
    registry: Registry,
) -> None:
    """The agreement above means something: the entities use every kind of field the
    normalizer generates code for, and the generated code (not the fallback) takes the
    shipped example items, dates in both forms included."""
    kinds = {f.kind for spec in registry.ordered() for f in spec.fields}
    assert kinds >= {"str", "int", "bool", "date", "enum", "strlist", "object"}
    assert any(spec.refs for spec in registry.ordered())
    examples = example_items(registry)
    taken = 0
    for spec in registry.ordered():
        fast = compile_normalizer(spec)
        for index, raw in enumerate(examples.get(spec.plural, [])):
            assert fast(index, raw) is not None, (spec.plural, raw)
            taken += 1
    assert taken > 10
    users = compile_normalizer(registry.by_plural("users"))
    iso, dmy = users(0, {"birth": "2004-08-22"}), users(1, {"birth": "22/08/2004"})
    assert iso is not None
    assert dmy is not None
    assert iso.values["birth"] == dmy.values["birth"]
