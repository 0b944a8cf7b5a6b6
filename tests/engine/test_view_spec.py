"""Declaring views: the registry checks each one when it freezes and says the fix."""

from __future__ import annotations

import pytest

from app.domains import load_registry
from app.engine.registry import Registry
from app.engine.views.spec import (
    Everything,
    IsParam,
    ReferencedBy,
    RefIs,
    RefVisible,
    View,
    check_binding,
)
from app.errors import BadRequest


def registry_with(view: View) -> Registry:
    shipped = load_registry()
    registry = Registry()
    for spec in shipped.ordered():
        registry.register(spec)
    registry.register_view(view)
    return registry


def test_the_shipped_views_resolve_in_dependency_order() -> None:
    views = load_registry().views
    assert set(views) == {"guardian", "teacher", "feed_point", "workshop"}
    assert list(views["teacher"].steps) == ["Classroom", "Member", "User"]
    order = list(views["workshop"].steps)
    assert order.index("Component") < order.index("Assembly") < order.index("Piece")
    assert order.index("Piece") < order.index("Article")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"nosuch": [Everything()]}, "unknown entity 'nosuch'"),
        ({"members": [RefIs("friends", "user")]}, "members has no reference 'friends'"),
        ({"members": [IsParam("user")]}, "user must be a parameter naming members"),
        ({"classrooms": [RefVisible("members")]}, "the view shows no members"),
        ({"users": [ReferencedBy("classrooms", "members")]}, "does not name users"),
        ({"users": []}, "users has no rule"),
        (
            {
                "members": [ReferencedBy("classrooms", "members")],
                "classrooms": [RefVisible("members")],
            },
            "cycle",
        ),
    ],
)
def test_a_bad_view_stops_the_freeze_with_the_fix(rules: dict[str, list], message: str) -> None:
    registry = registry_with(View("bad", params={"user": "users"}, rules=rules))
    with pytest.raises(ValueError, match=message):
        registry.freeze()


def test_a_view_is_declared_once() -> None:
    registry = Registry()
    registry.register_view(View("one", params={"user": "users"}, rules={}))
    with pytest.raises(ValueError, match="declared twice"):
        registry.register_view(View("one", params={"user": "users"}, rules={}))


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nosuch", {"user": "x"}, "unknown view 'nosuch'"),
        ("guardian", {}, "needs the parameter user"),
        ("guardian", {"user": "x", "extra": "y"}, "has no parameter 'extra'"),
        ("guardian", {"user": ""}, "must be the id or alias"),
        ("guardian", {"user": 7}, "must be the id or alias"),
        ("guardian", ["user"], "params must be an object"),
    ],
)
def test_bad_bindings_are_refused(name: str, params: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        check_binding(load_registry(), name, params)
