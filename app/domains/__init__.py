"""Entity modules. Every module here that defines ``ENTITIES`` is loaded: adding an entity
is one new module (or one more table in an existing one)."""

from __future__ import annotations

import importlib
import pkgutil

from app.engine.registry import Registry


def load_registry() -> Registry:
    """A frozen registry of every shipped entity (in dependency order) and view."""
    registry = Registry()
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for spec in getattr(module, "ENTITIES", ()):
            registry.register(spec)
        for view in getattr(module, "VIEWS", ()):
            registry.register_view(view)
    return registry.freeze()
