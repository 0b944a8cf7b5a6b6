"""The fast executor: flat lists of records completed in one generated loop, and live events
executed once for all the subscribers that receive them.

Replaces graphql-core's completion of list values (every field of every object through
several Python calls, about 2.4 µs a field). Most of what a sync server returns is lists of
records whose selected fields are plain columns, so ``FastExecutor`` completes such a list in
one tight loop: for each selected field it reads the attribute and coerces it with the
field's own leaf type, exactly as the normal path would. Anything else — a field with a
resolver or arguments, a nested object, @defer/@stream, a null in a non-null field, a value
the type refuses — makes the whole list go through the normal path, so results and errors
stay identical.

Checked by ``tests/api/test_accel_graphql.py``: the same requests (change pages, lists,
nested selections, aliases, fragments, errors, subscriptions) to an app with and one without,
compared as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import Callable
from inspect import isawaitable
from typing import Any

import orjson
from graphql import (
    GraphQLBoolean,
    GraphQLFloat,
    GraphQLID,
    GraphQLInt,
    GraphQLLeafType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLString,
    is_leaf_type,
    is_list_type,
    is_non_null_type,
    is_object_type,
    print_ast,
)
from graphql.language import FieldNode, Node, OperationDefinitionNode, VariableNode, Visitor, visit
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

BACKREF = "strawberry-definition"
_MISS = object()

Coerce = Callable[[Any], Any]
Step = tuple[str, str | None, Coerce | None, bool, str | None]
"""(response key, attribute, coerce, non-null, constant) — constant is __typename."""

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def _exact(kind: type) -> Callable[[GraphQLLeafType], tuple[Coerce, type | None]]:
    def make(leaf: GraphQLLeafType) -> tuple[Coerce, type | None]:
        slow = leaf.coerce_output_value

        def coerce(value: Any) -> Any:
            return value if type(value) is kind else slow(value)

        return coerce, kind

    return make


def _int(leaf: GraphQLLeafType) -> tuple[Coerce, type | None]:
    slow = leaf.coerce_output_value

    def coerce(value: Any) -> Any:
        if type(value) is int and _INT_MIN <= value <= _INT_MAX:
            return value
        return slow(value)

    return coerce, None


_BUILTIN: dict[str, Callable[[GraphQLLeafType], tuple[Coerce, type | None]]] = {
    GraphQLString.name: _exact(str),
    GraphQLID.name: _exact(str),
    GraphQLBoolean.name: _exact(bool),
    GraphQLFloat.name: _exact(float),
    GraphQLInt.name: _int,
}

PLANS_MAX = 1024
"""Generated loops kept per schema: one per (type, selection) seen, and clients choose the
selections, so the number is bounded (least recently used go)."""


class FastPlans:
    """One schema's coercers and generated loops. The executor class made for the schema
    holds it (``app.graphql.executor.executor_class``), so they die with the schema: the
    keys are the schema's own type objects."""

    def __init__(self) -> None:
        self.coercers: dict[Any, Coerce] = {}
        self.shortcuts: dict[Coerce, type] = {}
        """Coercers whose identity case is a plain type check."""
        self.loop = functools.lru_cache(maxsize=PLANS_MAX)(self._generate)

    def leaf_coercer(self, leaf: GraphQLLeafType) -> Coerce:
        """The leaf type's own output coercion, with an identity shortcut for built-ins
        (one per type object, so generated loops can be reused)."""
        cached = self.coercers.get(leaf)
        if cached is None:
            cached = self.coercers[leaf] = self._leaf_coercer(leaf)
        return cached

    def _leaf_coercer(self, leaf: GraphQLLeafType) -> Coerce:
        make = _BUILTIN.get(leaf.name)
        if make is None or leaf not in _BUILTIN_TYPES:
            return leaf.coerce_output_value
        coerce, kind = make(leaf)
        if kind is not None:
            self.shortcuts[coerce] = kind
        return coerce

    def list_coercer(self, list_type: GraphQLList[Any]) -> Coerce | None:
        """For ``[Leaf!]`` / ``[Leaf]`` fields (ids of references, tags)."""
        if list_type not in self.coercers:
            made = self._list_coercer(list_type)
            if made is None:
                return None
            self.coercers[list_type] = made
        return self.coercers[list_type]

    def _list_coercer(self, list_type: GraphQLList[Any]) -> Coerce | None:
        inner = list_type.of_type
        non_null = is_non_null_type(inner)
        leaf = inner.of_type if non_null else inner
        if not is_leaf_type(leaf):
            return None
        return _list_of(self.leaf_coercer(leaf), non_null=non_null)

    def _generate(self, plan: tuple[Step, ...]) -> Callable[[list[Any]], list[dict[str, Any]]]:
        return _generate(plan, self.shortcuts)


_BUILTIN_TYPES = (GraphQLString, GraphQLID, GraphQLBoolean, GraphQLFloat, GraphQLInt)


def _list_of(item: Coerce, *, non_null: bool) -> Coerce:
    def coerce(value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise _Fallback
        out: list[Any] = []
        for v in value:
            if v is None:
                if non_null:
                    raise _Fallback
                out.append(None)
            else:
                c = item(v)
                if c is None:
                    raise _Fallback
                out.append(c)
        return out

    return coerce


class _Variables(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def enter_variable(self, node: VariableNode, *_: Any) -> None:
        self.names.append(node.name.value)


def _variables_in(node: Node) -> list[str]:
    found = _Variables()
    visit(node, found)
    return found.names


def _selection_variables(operation: OperationDefinitionNode, fragments: list[Any]) -> set[str]:
    """Variables used anywhere in the selection but the root fields' own arguments."""
    used = Counter(_variables_in(operation.selection_set))
    for fragment in fragments:
        used.update(_variables_in(fragment))
    for selection in operation.selection_set.selections:
        if isinstance(selection, FieldNode):
            for argument in selection.arguments or ():
                used.subtract(_variables_in(argument))
    return {name for name, count in used.items() if count > 0}


_RESULTS = "_syncgraph_results"


def _shared_results(event: Any) -> dict[Any, Any] | None:
    """The per-event result cache carried by a shared live event (``share_event``)."""
    return getattr(event, _RESULTS, None)


def share_event(event: Any) -> Any:
    """Mark a subscription event object as delivered alike to many subscribers: executions
    of it are cached on it (and die with it)."""
    with contextlib.suppress(AttributeError, TypeError):
        object.__setattr__(event, _RESULTS, {})  # (Strawberry's object types are frozen)
    return event


class _Fallback(Exception):
    """This list needs the normal path."""


class FastExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor with flat lists of records completed in one loop, and shared
    live events executed once. ``plans`` is per schema: ``executor_class`` in
    ``app.graphql.executor`` makes one class per schema with its own ``FastPlans``."""

    plans: FastPlans

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Keyed like graphql-core's own memo: the field list is kept alive with its plan.
        self._flat_plans: dict[
            tuple[GraphQLObjectType, int], tuple[Any, tuple[Step, ...] | None]
        ] = {}

    def complete_list_value(
        self,
        return_type: GraphQLList[GraphQLOutputType],
        field_details_list: Any,
        info: Any,
        path: Any,
        result: Any,
        position_context: Any,
    ) -> Any:
        if type(result) is list and result:
            item_type = return_type.of_type
            inner = item_type.of_type if is_non_null_type(item_type) else item_type
            if is_object_type(inner) and self.get_stream_usage(field_details_list, path) is None:
                plan = self._plan(inner, field_details_list)
                if plan is not None:
                    try:
                        return _complete_flat(self.plans, plan, result)
                    except _Fallback:
                        pass
        return super().complete_list_value(
            return_type, field_details_list, info, path, result, position_context
        )

    def build_per_event_executor(self, payload: Any) -> Any:
        """Each subscription event gets fresh flat plans (see ``SyncExecutor`` for why), and
        the key its shared execution is cached under."""
        executor = super().build_per_event_executor(payload)
        if isinstance(executor, FastExecutor):
            executor._flat_plans = {}
            if self._own_event_key is _MISS:  # once per subscription
                self._own_event_key = self._shared_key()
            executor._event_key = self._own_event_key
        return executor

    _event_key: tuple[Any, ...] | None = None
    _own_event_key: Any = _MISS

    def execute_operation(self, serially: bool | None = None) -> Any:
        """A live event that many subscribers receive as the same object (the hub builds one
        page per commit for every current subscriber with the same entities) is executed
        once per distinct query, variables and credentials; the others get that result
        (Strawberry wraps it per subscriber, with its own errors processing and frame)."""
        key = self._event_key
        results = _shared_results(self.root_value) if key is not None else None
        if results is None:
            return super().execute_operation(serially)
        if key not in results:
            result = super().execute_operation(serially)
            results[key] = asyncio.ensure_future(result) if isawaitable(result) else result
        result = results[key]
        # a subscriber that goes away while it waits must not cancel the others' execution
        return asyncio.shield(result) if isinstance(result, asyncio.Future) else result

    def _shared_key(self) -> tuple[Any, ...] | None:
        """What the result of an event depends on besides the event itself: the operation
        and its fragments, the credentials, and the variables used in the selection. The
        root field's own arguments (``since``, ``after``) chose the stream; they do not
        change how an event is executed, so subscribers resuming from different positions
        still share."""
        principal = getattr(getattr(self.context_value, "auth", None), "principal", None)
        if principal is None:
            return None
        fragments = dict(getattr(self, "fragments", None) or {})
        # Strawberry parses without locations: the printed form is the identity
        source = "\n".join(
            [print_ast(self.operation), *(print_ast(fragments[n]) for n in sorted(fragments))]
        )
        used = _selection_variables(self.operation, list(fragments.values()))
        try:
            raw: Any = self.variable_values
            values: dict[str, Any] = getattr(raw, "coerced", raw)
            variables = orjson.dumps(
                {k: values[k] for k in sorted(used) if k in values}, option=orjson.OPT_SORT_KEYS
            )
        except TypeError:
            return None
        # the view too: nested objects resolve through it (a page is one cohort's anyway)
        view = getattr(principal, "view", None)
        return (source, variables, principal.tenant_id, principal.scopes, view)

    def _plan(
        self, object_type: GraphQLObjectType, field_details_list: Any
    ) -> tuple[Step, ...] | None:
        key = (object_type, id(field_details_list))
        cached = self._flat_plans.get(key)
        if cached is None:
            cached = (field_details_list, self._build_plan(object_type, field_details_list))
            self._flat_plans[key] = cached
        return cached[1]

    def _build_plan(
        self, object_type: GraphQLObjectType, field_details_list: Any
    ) -> tuple[Step, ...] | None:
        grouped, defer_usages, _ = self.collect_subfields(object_type, field_details_list)
        if defer_usages:
            return None
        steps: list[Step] = []
        for response_key, details in grouped.items():
            node = details[0].node
            if node.name.value == "__typename":
                steps.append((response_key, None, None, False, object_type.name))
                continue
            step = _field_step(self.plans, object_type, response_key, node)
            if step is None:
                return None
            steps.append(step)
        return tuple(steps)


def _field_step(
    plans: FastPlans, object_type: GraphQLObjectType, response_key: str, node: Any
) -> Step | None:
    directives = node.directives or ()
    if node.arguments or any(d.name.value not in ("include", "skip") for d in directives):
        return None
    field = object_type.fields.get(node.name.value)
    if field is None:
        return None
    definition = field.extensions.get(BACKREF)
    if definition is None or not definition.is_basic_field:
        return None
    field_type = field.type
    non_null = isinstance(field_type, GraphQLNonNull)
    inner = field_type.of_type if non_null else field_type
    if is_leaf_type(inner):
        coerce: Coerce | None = plans.leaf_coercer(inner)
    elif is_list_type(inner):
        coerce = plans.list_coercer(inner)
    else:
        return None
    if coerce is None:
        return None
    return (response_key, definition.python_name, coerce, non_null, None)


def _complete_flat(plans: FastPlans, plan: tuple[Step, ...], items: list[Any]) -> Any:
    return plans.loop(plan)(items)


def _generate(
    plan: tuple[Step, ...], shortcuts: dict[Coerce, type]
) -> Callable[[list[Any]], list[dict[str, Any]]]:
    """Generate the loop for one plan: one attribute read and one type check per field,
    no call unless a value needs converting. Names come from the schema (identifiers) and
    response keys are passed as constants, never spliced into the source."""
    namespace: dict[str, Any] = {"F": _Fallback, "M": _MISS, "KEYS": [s[0] for s in plan]}
    lines = [
        "def complete(items):",
        "    out = []",
        "    append = out.append",
        "    for it in items:",
        "        if it is None: raise F",
    ]
    entries = []
    for i, (_key, attribute, coerce, non_null, constant) in enumerate(plan):
        if attribute is None:
            namespace[f"k{i}"] = constant
            entries.append(f"KEYS[{i}]: k{i}")
            continue
        if not attribute.isidentifier():
            raise ValueError(f"not an attribute name: {attribute!r}")
        namespace[f"c{i}"] = _guarded(coerce)  # type: ignore[arg-type]
        fast = shortcuts.get(coerce)  # type: ignore[arg-type]
        lines.append(f"        v{i} = getattr(it, {attribute!r}, M)")
        lines.append(f"        if v{i} is M: raise F")
        check = f"type(v{i}) is not t{i} and " if fast is not None else ""
        if fast is not None:
            namespace[f"t{i}"] = fast
        if non_null:
            lines.append(f"        if v{i} is None: raise F")
            lines.append(f"        if {check}True: v{i} = c{i}(v{i})")
        else:
            lines.append(f"        if v{i} is not None and {check}True: v{i} = c{i}(v{i})")
        entries.append(f"KEYS[{i}]: v{i}")
    lines.append("        append({" + ", ".join(entries) + "})")
    lines.append("    return out")
    exec("\n".join(lines), namespace)  # noqa: S102 - generated from schema identifiers only
    compiled: Callable[[list[Any]], list[dict[str, Any]]] = namespace["complete"]
    return compiled


def _guarded(coerce: Coerce) -> Coerce:
    def run(value: Any) -> Any:
        try:
            coerced = coerce(value)
        except Exception as exc:
            raise _Fallback from exc
        if coerced is None:
            raise _Fallback
        return coerced

    return run
