"""The SDL: ``syncgraph export-schema`` writes it, a test compares the committed one."""

from __future__ import annotations

from strawberry.printer import print_schema

from app.domains import load_registry
from app.engine.registry import Registry
from app.graphql.schema import build_schema
from app.settings import Settings


def schema_sdl(registry: Registry | None = None) -> str:
    """The SDL of ``registry``; by default of the shipped domains alone, which is what the
    committed ``schema.graphql`` describes."""
    # Production settings: the SDL must not depend on dev mode or the environment.
    return print_schema(build_schema(registry or load_registry(), Settings(dev=False))) + "\n"
