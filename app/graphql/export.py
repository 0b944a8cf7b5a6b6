"""The committed SDL: ``syncgraph export-schema`` writes it, a test compares it."""

from __future__ import annotations

from strawberry.printer import print_schema

from app.domains import load_registry
from app.graphql.schema import build_schema
from app.settings import Settings


def schema_sdl() -> str:
    # Production settings: the SDL must not depend on dev mode or the environment.
    return print_schema(build_schema(load_registry(), Settings(dev=False))) + "\n"
