"""The resolvers' side of bulk inputs: the raw value of a bulk argument, when the
``bulkinput`` accelerator (``app/accel/bulkinput.py``) took its variable before coercion.
Otherwise (the accelerator off, or a value it left to graphql-core) the resolver reads the
typed input as usual."""

from __future__ import annotations

from typing import Any

from graphql import VariableNode


def bulk_argument(info: Any, argument: str) -> Any:
    """The raw value of a bulk argument passed as a taken variable, else None."""
    taken = getattr(info.context, "bulk_inputs", None)
    if not taken:
        return None
    raw_info = getattr(info, "_raw_info", info)  # Strawberry's Info wraps graphql-core's
    for node in raw_info.field_nodes[0].arguments or ():
        if node.name.value == argument and isinstance(node.value, VariableNode):
            return taken.get(node.value.name.value)
    return None
