"""Entity modules: the shipped domains (this package) and the user's own.

A module declares ``ENTITIES`` (``entity_spec(...)`` of SQLModel tables) and ``VIEWS``. The
modules loaded are the shipped domains ``SYNCGRAPH_DOMAINS`` names (all three by default), the
modules ``SYNCGRAPH_ENTITY_MODULES`` names, and those installed packages announce in the
``syncgraph.entities`` entry-point group. They all go into one registry, frozen once; whatever
stops it is a ``StartupError`` that names the module and the fix.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import TypeVar

from app.engine.registry import EntitySpec, Registry
from app.engine.views.spec import View
from app.errors import StartupError
from app.settings import Settings

SHIPPED = ("education", "festival", "manufacturing")
ENTRY_POINTS = "syncgraph.entities"
T = TypeVar("T")
_TABLE_TAKEN = re.compile(r"Table '([^']+)' is already defined")


@dataclass(frozen=True)
class Source:
    """A module to load, what named it and what to do when it does not import."""

    module: str
    named_by: str
    fix: str


def load_registry(sources: Sequence[Source] | None = None) -> Registry:
    """A frozen registry of the sources' entities (in dependency order) and views; without
    sources, the shipped domains alone (the registry ``schema.graphql`` describes)."""
    registry = Registry()
    for source in shipped(SHIPPED) if sources is None else sources:
        _register(registry, source, _import(source))
    if not registry.entities:
        raise StartupError(
            "no entities to serve: SYNCGRAPH_DOMAINS is empty and no entity module is "
            "configured; set SYNCGRAPH_ENTITY_MODULES=your.module or SYNCGRAPH_DOMAINS"
        )
    try:
        return registry.freeze()
    except ValueError as exc:
        raise StartupError(str(exc)) from exc


def configured_registry(settings: Settings) -> Registry:
    """The registry the settings and the installed packages ask for."""
    return load_registry(configured_sources(settings))


def configured_sources(settings: Settings) -> list[Source]:
    """The chosen shipped domains, then ``SYNCGRAPH_ENTITY_MODULES`` in its order, then the
    entry points by name; a module named twice is loaded once."""
    named = [
        Source(
            name,
            "SYNCGRAPH_ENTITY_MODULES",
            "install the package that provides it (pip install -e your-project) or correct "
            "the name in SYNCGRAPH_ENTITY_MODULES",
        )
        for name in settings.entity_module_names()
    ]
    sources: dict[str, Source] = {}
    for source in [*shipped(settings.domain_names()), *named, *entry_point_sources()]:
        sources.setdefault(source.module, source)
    return list(sources.values())


def shipped(names: Iterable[str]) -> list[Source]:
    """The shipped domains among ``names``, in their fixed order (that of the schema)."""
    chosen = set(names)
    unknown = sorted(chosen - set(SHIPPED))
    if unknown:
        raise StartupError(
            f"SYNCGRAPH_DOMAINS names {', '.join(map(repr, unknown))}, not a shipped domain: "
            f"choose among {', '.join(SHIPPED)} (or leave it empty for none)"
        )
    return [
        Source(f"{__name__}.{name}", "SYNCGRAPH_DOMAINS", "reinstall syncgraph")
        for name in SHIPPED
        if name in chosen
    ]


def entry_point_sources() -> list[Source]:
    """The modules installed packages announce (``[project.entry-points."syncgraph.entities"]``
    ``library = "library_sync.models"``)."""
    sources = []
    for point in sorted(entry_points(group=ENTRY_POINTS), key=lambda p: p.name):
        package = point.dist.name if point.dist else "its package"
        sources.append(
            Source(
                point.module,
                f"the {ENTRY_POINTS} entry point {point.name!r} of {package}",
                f"reinstall {package}, or uninstall it (pip uninstall {package})",
            )
        )
    return sources


def own_tables(registry: Registry) -> frozenset[str]:
    """The tables of the entities registered by modules other than the shipped domains:
    the user's, whose migrations live in the user's folders."""
    modules = {
        spec.table.name: registry.module_of("entity", spec.name) for spec in registry.ordered()
    }
    return frozenset(
        table
        for table, module in modules.items()
        if module and not module.startswith(f"{__name__}.")
    )


def _import(source: Source) -> ModuleType:
    try:
        return importlib.import_module(source.module)
    except Exception as exc:  # anything a module raises at import stops the start alike
        raise StartupError(_import_failure(source, exc)) from exc


def _import_failure(source: Source, exc: Exception) -> str:
    where = f"{source.module} (named by {source.named_by})"
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if missing and f"{source.module}.".startswith(f"{missing}."):  # it, or a package above it
        return f"{where} does not import: there is no module {missing!r}; {source.fix}"
    taken = _TABLE_TAKEN.search(str(exc))
    if taken:
        return (
            f"{where}: its table {taken[1]!r} is already defined by another module (a shipped "
            "domain or another entity module): give its class another __tablename__"
        )
    return (
        f"{where} failed while importing: {type(exc).__name__}: {exc}; fix the module "
        "(--debug shows the traceback)"
    )


def _register(registry: Registry, source: Source, module: ModuleType) -> None:
    entities = getattr(module, "ENTITIES", None)
    views = getattr(module, "VIEWS", None)
    where = f"{source.module} (named by {source.named_by})"
    if entities is None and views is None:
        raise StartupError(
            f"{where} declares neither ENTITIES nor VIEWS: list its entity_spec(...) "
            "registrations in ENTITIES and its views in VIEWS"
        )
    try:
        for spec in entities or ():
            registry.register(_expect(spec, EntitySpec, where, "ENTITIES"), module=source.module)
        for view in views or ():
            registry.register_view(_expect(view, View, where, "VIEWS"), module=source.module)
    except ValueError as exc:
        raise StartupError(str(exc)) from exc


def _expect(item: object, kind: type[T], where: str, name: str) -> T:
    if not isinstance(item, kind):
        what = "entity_spec(...)" if kind is EntitySpec else "View(...)"
        raise StartupError(f"{where}: {name} holds {item!r}, which is not a {what}")
    return item
