"""Bulk inputs (``SyncInput``, ``PushInput``) taken from the raw JSON.

Replaces graphql-core's input coercion of a bulk variable (field by field, then Strawberry's
conversion to input objects, then ``to_wire`` back to dictionaries), which costs far more
than the database write of the same rows. For a variable of a bulk type whose value is
already exactly what the typed path would accept — the right JSON types, no unknown or
missing fields, no implicit list wrapping — the raw value is kept for the resolver
(``bulk_argument``) and graphql-core coerces an empty placeholder instead. Any value that does
not pass this conservative check goes through the normal path, so errors stay identical; the
engine validates every item either way.

Checked by ``tests/api/test_accel_graphql.py`` (the same requests, valid and invalid, to an
app with and one without: identical JSON) and ``tests/engine/test_accel_bulkinput.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from graphql import (
    DocumentNode,
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLScalarType,
    GraphQLSchema,
    ListTypeNode,
    NamedTypeNode,
    NonNullTypeNode,
    OperationDefinitionNode,
    TypeNode,
    VariableNode,
)
from graphql.pyutils import Undefined as _NO_DEFAULT
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from app.errors import BadRequest
from app.graphql.scalars import parse_datetime

BULK_TYPES = frozenset({"SyncInput", "PushInput"})
Check = Callable[[Any], bool]
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def _scalar_check(scalar: GraphQLScalarType) -> Check | None:
    name = scalar.name
    if name in ("String", "ID", "Date"):
        return lambda v: type(v) is str
    if name == "Boolean":
        return lambda v: type(v) is bool
    if name == "Int":
        return lambda v: type(v) is int and _INT_MIN <= v <= _INT_MAX
    if name == "Float":
        return lambda v: (
            (type(v) is int and abs(v) < 2**53) or (type(v) is float and math.isfinite(v))
        )
    if name == "DateTime":
        return _is_datetime
    if name == "JSON":
        return lambda v: True
    return None


def _is_datetime(value: Any) -> bool:
    if type(value) is not str:
        return False
    try:
        parse_datetime(value)
    except BadRequest:  # the plain path reports it, worded by graphql-core
        return False
    return True


class Checker:
    """One schema's checks, built once per input type (the executor class made for the
    schema holds its ``Checker``: they live and die together)."""

    def __init__(self) -> None:
        self._cache: dict[Any, Check | None] = {}

    def check(self, input_type: GraphQLInputType) -> Check | None:
        if input_type not in self._cache:
            self._cache[input_type] = None  # recursion guard
            self._cache[input_type] = self._build(input_type)
        return self._cache[input_type]

    def _build(self, t: GraphQLInputType) -> Check | None:
        if isinstance(t, GraphQLNonNull):
            inner = self.check(t.of_type)
            return None if inner is None else (lambda v: v is not None and inner(v))
        nullable = self._nullable(t)
        return None if nullable is None else (lambda v: v is None or nullable(v))

    def _nullable(self, t: GraphQLInputType) -> Check | None:
        if isinstance(t, GraphQLList):
            item = self.check(t.of_type)
            if item is None:
                return None
            return lambda v: type(v) is list and all(item(x) for x in v)
        if isinstance(t, GraphQLEnumType):
            names = frozenset(t.values)
            return lambda v: type(v) is str and v in names
        if isinstance(t, GraphQLScalarType):
            return _scalar_check(t)
        if isinstance(t, GraphQLInputObjectType):
            return self._object(t)
        return None

    def _object(self, t: GraphQLInputObjectType) -> Check | None:
        """One generated function per input object type: a straight pass over its fields with
        the scalar checks inlined (an item of 10 fields in about a microsecond)."""
        env: dict[str, Any] = {"M": _MISSING}
        lines = [
            "def check(value):",
            "    if type(value) is not dict: return False",
            "    get = value.get",
            "    n = 0",
        ]
        for i, (name, field) in enumerate(t.fields.items()):
            no_default = field.default_value is _NO_DEFAULT and field.default is None
            required = isinstance(field.type, GraphQLNonNull) and no_default
            inner = field.type.of_type if isinstance(field.type, GraphQLNonNull) else field.type
            test = self._inline(inner, f"C{i}", env)
            if test is None:
                return None
            lines += [f"    v = get({name!r}, M)"]
            lines += ["    if v is M:", "        return False"] if required else []
            lines += ["    if v is not M:" if not required else "    if True:", "        n += 1"]
            if isinstance(field.type, GraphQLNonNull):
                lines += [f"        if v is None or not ({test}): return False"]
            else:
                lines += [f"        if v is not None and not ({test}): return False"]
        lines += ["    return n == len(value)"]
        exec(compile("\n".join(lines), f"<check {t.name}>", "exec"), env)  # noqa: S102
        check: Check = env["check"]
        return check

    def _inline(self, t: GraphQLInputType, name: str, env: dict[str, Any]) -> str | None:
        """A Python expression over ``v`` (not None) for a nullable type, or None if the type
        cannot be checked here."""
        if isinstance(t, GraphQLScalarType) and t.name in _INLINE:
            env.update(_INLINE_ENV)
            return _INLINE[t.name]
        if isinstance(t, GraphQLEnumType):
            env[name] = frozenset(t.values)
            return f"type(v) is str and v in {name}"
        nested = self.check(t)  # cached, with its recursion guard
        if nested is None:
            return None
        env[name] = nested
        return f"{name}(v)"


_MISSING = object()
_INLINE = {
    "String": "type(v) is str",
    "ID": "type(v) is str",
    "Date": "type(v) is str",
    "Boolean": "type(v) is bool",
    "Int": f"type(v) is int and {_INT_MIN} <= v <= {_INT_MAX}",
    "Float": "(type(v) is int and -FLOAT_INT < v < FLOAT_INT) or (type(v) is float and finite(v))",
    "DateTime": "is_datetime(v)",
    "JSON": "True",
}
_INLINE_ENV = {"FLOAT_INT": 2**53, "finite": math.isfinite, "is_datetime": _is_datetime}


def take_bulk_variables(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None,
    raw: dict[str, Any],
    taken: dict[str, Any],
    *,
    checker: Checker,
) -> dict[str, Any]:
    """Move eligible bulk variables into ``taken``; return what graphql-core should coerce."""
    operation = _operation(document, operation_name)
    if operation is None or not operation.variable_definitions:
        return raw
    replaced = dict(raw)
    for definition in operation.variable_definitions:
        type_name = _non_null_name(definition.type)
        name = definition.variable.name.value
        if type_name not in BULK_TYPES or name not in raw:
            continue
        input_type = schema.get_type(type_name)
        if not isinstance(input_type, GraphQLInputObjectType):
            continue
        check = checker.check(GraphQLNonNull(input_type))
        if check is not None and check(raw[name]):
            taken[name] = raw[name]
            replaced[name] = {}
    return replaced


class BulkInputExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor, taking eligible bulk variables raw before coercion.

    ``checker`` is per schema: ``app.graphql.executor.executor_class`` makes one class per
    schema with its own ``Checker``."""

    checker: Checker

    @classmethod
    def build(
        cls,
        schema: Any,
        document: Any,
        root_value: Any = None,
        context_value: Any = None,
        raw_variable_values: dict[str, Any] | None = None,
        operation_name: str | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        taken = getattr(context_value, "bulk_inputs", None)
        if raw_variable_values and taken is not None:
            raw_variable_values = take_bulk_variables(
                schema, document, operation_name, raw_variable_values, taken, checker=cls.checker
            )
        return super().build(
            schema,
            document,
            root_value,
            context_value,
            raw_variable_values,
            operation_name,
            *args,
            **kwargs,
        )


def _operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode | None:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if name is None:
        return operations[0] if len(operations) == 1 else None
    return next((o for o in operations if o.name and o.name.value == name), None)


def _non_null_name(node: TypeNode) -> str | None:
    if isinstance(node, NonNullTypeNode) and isinstance(node.type, NamedTypeNode):
        return node.type.name.value
    if isinstance(node, ListTypeNode):
        return None
    return None


def bulk_argument(info: Any, argument: str) -> Any:
    """The raw value of a bulk argument passed as a taken variable, else None (always None
    when this accelerator is off: nothing is taken)."""
    taken = getattr(info.context, "bulk_inputs", None)
    if not taken:
        return None
    raw_info = getattr(info, "_raw_info", info)  # Strawberry's Info wraps graphql-core's
    for node in raw_info.field_nodes[0].arguments or ():
        if node.name.value == argument and isinstance(node.value, VariableNode):
            return taken.get(node.value.name.value)
    return None
