"""The README's client recipes are the files the client tests run, character for character."""

from __future__ import annotations

import re

from tests.clients.conftest import RECIPES

README = RECIPES.parents[1] / "README.md"
QUOTED = re.compile(r"<!-- recipe: (\S+) -->\n```\w+\n(.*?)```", re.DOTALL)


def test_every_recipe_is_quoted_exactly_as_tested() -> None:
    quoted = dict(QUOTED.findall(README.read_text(encoding="utf-8")))
    files = sorted(
        f"examples/clients/{p.name}" for p in RECIPES.iterdir() if p.suffix in (".mjs", ".py")
    )
    assert sorted(quoted) == files
    for path, text in quoted.items():
        assert text == (RECIPES.parents[1] / path).read_text(encoding="utf-8"), path
