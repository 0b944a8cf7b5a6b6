"""Declaring views: a named, parameterised subset of a tenant's records (DESIGN.md §8).

A domain module lists ``VIEWS`` beside its ``ENTITIES``::

    View("guardian", params={"user": "users"}, rules={
        "users": [IsParam("user")],
        "members": [RefIs("users", "user")],
        "classrooms": [RefVisible("members")],
    })

A record of an entity is visible when any rule of its entity holds; entities a view does not
list are invisible through it. ``Registry.freeze`` checks every view against the entities
(``View.bind``): unknown names, a reference to the wrong entity and cycles are refused with a
message that says the fix.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.errors import BadRequest

if TYPE_CHECKING:
    from app.engine.registry import EntitySpec, Ref, Registry


@dataclass(frozen=True)
class Everything:
    """Every live record of the entity."""

    def describe(self) -> str:
        return "everything"


@dataclass(frozen=True)
class IsParam:
    """The record the parameter names."""

    param: str

    def describe(self) -> str:
        return f"the parameter {self.param}"


@dataclass(frozen=True)
class RefIs:
    """Records whose reference ``ref`` (to-one or to-many) points at the parameter's record."""

    ref: str
    param: str

    def describe(self) -> str:
        return f"{self.ref} -> {self.param}"


@dataclass(frozen=True)
class RefVisible:
    """Records whose reference ``ref`` points at a visible record of its target entity."""

    ref: str

    def describe(self) -> str:
        return f"{self.ref} -> visible"


@dataclass(frozen=True)
class ReferencedBy:
    """Records a visible record of ``entity`` points at through its reference ``ref``."""

    entity: str
    ref: str

    def describe(self) -> str:
        return f"referenced by visible {self.entity}.{self.ref}"


Rule = Everything | IsParam | RefIs | RefVisible | ReferencedBy

_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class Step:
    """One rule of one entity, resolved against the registry: what the evaluator runs."""

    rule: Rule
    ref: Ref | None = None
    """The reference the rule follows (``RefIs``, ``RefVisible``: this entity's;
    ``ReferencedBy``: the other entity's)."""
    source: str | None = None
    """The entity (type name) whose visible records the rule reads, if any."""


@dataclass
class View:
    name: str
    params: dict[str, str]
    """Parameter -> the entity (collection or type name) whose record it names."""
    rules: dict[str, list[Rule]]
    """Entity (collection or type name) -> its rules; a record is visible when any holds."""
    description: str = ""
    # resolved by ``bind`` (at registry freeze)
    param_entities: dict[str, str] = field(default_factory=dict)
    """Parameter -> entity type name."""
    steps: dict[str, tuple[Step, ...]] = field(default_factory=dict)
    """Entity type name -> its resolved rules, in evaluation order (sources first)."""
    fingerprint: str = ""
    """Changes when the definition does: part of every checkpoint issued through the view."""

    def bind(self, registry: Registry) -> None:
        """Resolve names against the registry's entities and check the view; raise
        ``ValueError`` with the fix."""
        where = f"view {self.name!r}"
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"{where}: a view name is lower-case letters, digits and _")
        if not self.params:
            raise ValueError(f"{where}: declare at least one parameter")
        for param, entity in self.params.items():
            if not _NAME.fullmatch(param):
                raise ValueError(f"{where}: parameter {param!r} must be lower-case letters")
            self.param_entities[param] = _entity(registry, entity, f"{where}, {param}").name
        rules: dict[str, list[Rule]] = {}
        for entity, entity_rules in self.rules.items():
            spec = _entity(registry, entity, where)
            if not entity_rules:
                raise ValueError(f"{where}: {spec.plural} has no rule; give one or leave it out")
            rules[spec.name] = list(entity_rules)
        resolved = {
            name: tuple(self._step(registry, registry.entities[name], rule, rules) for rule in rs)
            for name, rs in rules.items()
        }
        self.steps = {name: resolved[name] for name in _order(self.name, resolved)}
        text = repr((self.params, sorted((k, [r for r in v]) for k, v in resolved.items())))
        self.fingerprint = hashlib.sha256(text.encode()).hexdigest()[:8]

    def _step(
        self, registry: Registry, spec: EntitySpec, rule: Rule, rules: dict[str, list[Rule]]
    ) -> Step:
        where = f"view {self.name!r}, {spec.plural}: {rule.describe()}"
        match rule:
            case Everything():
                return Step(rule)
            case IsParam(param=param):
                if self.param_entities.get(param) != spec.name:
                    raise ValueError(f"{where}: {param} must be a parameter naming {spec.plural}")
                return Step(rule)
            case RefIs(ref=ref_name, param=param):
                ref = _ref(spec, ref_name, where)
                if self.param_entities.get(param) != ref.target:
                    target = registry.entities[ref.target].plural
                    raise ValueError(f"{where}: {param} must be a parameter naming {target}")
                return Step(rule, ref)
            case RefVisible(ref=ref_name):
                ref = _ref(spec, ref_name, where)
                if ref.target not in rules:
                    target = registry.entities[ref.target].plural
                    raise ValueError(f"{where}: the view shows no {target}; give {target} a rule")
                return Step(rule, ref, ref.target)
            case ReferencedBy(entity=entity, ref=ref_name):
                other = _entity(registry, entity, where)
                ref = _ref(other, ref_name, where)
                if ref.target != spec.name:
                    raise ValueError(
                        f"{where}: {other.plural}.{ref_name} does not name {spec.plural}"
                    )
                if other.name not in rules:
                    raise ValueError(f"{where}: the view shows no {other.plural}; give it a rule")
                return Step(rule, ref, other.name)
        raise ValueError(f"{where}: unknown rule {rule!r}")  # pragma: no cover

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": dict(self.params),
            "rules": {k: [s.rule.describe() for s in v] for k, v in self.steps.items()},
        }


def _entity(registry: Registry, name: str, where: str) -> EntitySpec:
    spec = registry.by_any_name(name)
    if spec is None:
        known = ", ".join(s.plural for s in registry.ordered())
        raise ValueError(f"{where}: unknown entity {name!r}; the entities are {known}")
    return spec


def _ref(spec: EntitySpec, name: str, where: str) -> Ref:
    for ref in spec.refs:
        if ref.name == name:
            return ref
    known = ", ".join(r.name for r in spec.refs) or "none"
    raise ValueError(f"{where}: {spec.plural} has no reference {name!r} (it has: {known})")


def _order(view: str, steps: dict[str, tuple[Step, ...]]) -> list[str]:
    """Entities so that each comes after the entities its rules read (depth first, in
    declaration order); a cycle is refused."""
    done: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name) :], name])
            raise ValueError(
                f"view {view!r}: its rules go round in a cycle ({cycle}); base one of these "
                "entities on a parameter or on everything instead"
            )
        visiting.append(name)
        for step in steps[name]:
            if step.source is not None:
                visit(step.source)
        visiting.pop()
        done.append(name)

    for name in steps:
        visit(name)
    return done


# --- bindings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    """A credential's view and parameter values (ids or aliases, resolved when read)."""

    name: str
    params: tuple[tuple[str, str], ...]

    @property
    def values(self) -> dict[str, str]:
        return dict(self.params)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.values}

    @staticmethod
    def from_json(value: Any) -> Binding | None:
        """The binding stored with a key or device (None: unbound)."""
        if not value:
            return None
        return Binding(str(value["name"]), tuple(sorted(value["params"].items())))


def check_binding(registry: Registry, name: Any, params: Any) -> Binding:
    """A binding of ``name`` with ``params`` (a mapping of parameter -> id or alias), checked
    against the declared views: ``BadRequest`` says what is wrong."""
    if not isinstance(name, str) or name not in registry.views:
        known = ", ".join(sorted(registry.views)) or "none"
        raise BadRequest(f"unknown view {name!r}; the views are: {known}")
    view = registry.views[name]
    if not isinstance(params, dict):
        raise BadRequest(f"view {name}: params must be an object of parameter -> id or alias")
    unknown = sorted(set(params) - set(view.params))
    if unknown:
        raise BadRequest(
            f"view {name} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters are: {', '.join(view.params)}"
        )
    missing = [p for p in view.params if p not in params]
    if missing:
        raise BadRequest(f"view {name} needs the parameter {', '.join(missing)}")
    for param, value in params.items():
        if not isinstance(value, str) or not value.strip() or len(value) > 255:
            raise BadRequest(
                f"view {name}: parameter {param} must be the id or alias of a record "
                "(1 to 255 characters)"
            )
    return Binding(name, tuple(sorted((str(k), str(v)) for k, v in params.items())))


def binding_fingerprint(view: View, binding: Binding) -> str:
    """8 hex digits that change with the view's definition or the binding's values: a
    checkpoint issued under another one is diffed against the new view."""
    text = f"{view.fingerprint}|{binding.name}|{binding.params!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def binding_identity(binding: Binding | None) -> str | None:
    """What the action log stores of the pushing credential's binding, and what a
    view-bound reader of the log filters on (None: unbound): 64 hex digits, the SHA-256 of
    the binding's canonical JSON (the view's name and the parameter values as bound). It
    does not depend on the view's definition (unlike ``binding_fingerprint``), so a server
    upgrade that changes a view keeps its log readable by the same binding; a value bound
    by alias and the same record bound by id are different bindings."""
    if binding is None:
        return None
    text = json.dumps(binding.as_json(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
