"""A credential's view binding over GraphQL: ``ViewInput`` in, ``ViewBinding`` out."""

from __future__ import annotations

from typing import cast

import strawberry
from strawberry.scalars import JSON

from app.auth import Principal
from app.engine.registry import Registry
from app.engine.views.spec import Binding, check_binding
from app.errors import Forbidden


@strawberry.input(description="A view and its parameter values (ids or aliases).")
class ViewInput:
    name: str
    params: JSON


@strawberry.type(description="The view a credential is bound to, with its values as bound.")
class ViewBinding:
    name: str
    params: JSON


def view_binding(binding: Binding | None) -> ViewBinding | None:
    if binding is None:
        return None
    return ViewBinding(name=binding.name, params=cast(JSON, binding.values))


def checked(registry: Registry, view: ViewInput | None) -> Binding | None:
    """The binding ``view`` asks for (None: unbound); ``BAD_REQUEST`` says what is wrong."""
    if view is None:
        return None
    return check_binding(registry, view.name, view.params)


def device_binding(
    registry: Registry, principal: Principal, view: ViewInput | None
) -> Binding | None:
    """The binding of a device that ``principal`` registers: a view-bound key's own (it
    cannot hand out more than it sees), an unbound key's choice."""
    wanted = checked(registry, view)
    if principal.view is None:
        return wanted
    if wanted is not None and wanted != principal.view:
        raise Forbidden(
            f"this key is bound to the view {principal.view.name}: its devices get the same "
            "binding (leave out view, or pass the key's own)"
        )
    return principal.view
