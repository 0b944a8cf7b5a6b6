"""Manufacturing (steel construction): projects, articles, components, assemblies, pieces."""

from __future__ import annotations

from datetime import date

from sqlmodel import Field

from app.engine.models import SyncRow
from app.engine.registry import Ref, entity_spec
from app.engine.views.spec import IsParam, ReferencedBy, RefIs, RefVisible, View

S = 255


class ProjectRow(SyncRow, table=True):
    __tablename__ = "projects"

    name: str | None = Field(default=None, max_length=S)
    number: str | None = Field(default=None, max_length=64)
    customer: str | None = Field(default=None, max_length=S)
    start_date: date | None = None
    due_date: date | None = None


class ArticleRow(SyncRow, table=True):
    __tablename__ = "articles"

    number: str | None = Field(default=None, max_length=64)
    name: str | None = Field(default=None, max_length=S)
    material: str | None = Field(default=None, max_length=64)
    unit: str | None = Field(default=None, max_length=16)


class ComponentRow(SyncRow, table=True):
    __tablename__ = "components"

    project_id: str | None = Field(default=None, max_length=36)
    name: str | None = Field(default=None, max_length=S)
    number: str | None = Field(default=None, max_length=64)
    quantity: int | None = None


class AssemblyRow(SyncRow, table=True):
    __tablename__ = "assemblies"

    component_id: str | None = Field(default=None, max_length=36)
    name: str | None = Field(default=None, max_length=S)
    number: str | None = Field(default=None, max_length=64)
    quantity: int | None = None


class PieceRow(SyncRow, table=True):
    __tablename__ = "pieces"

    assembly_id: str | None = Field(default=None, max_length=36)
    article_id: str | None = Field(default=None, max_length=36)
    name: str | None = Field(default=None, max_length=S)
    number: str | None = Field(default=None, max_length=64)
    quantity: int | None = None
    length_mm: float | None = None
    width_mm: float | None = None
    thickness_mm: float | None = None
    weight_kg: float | None = None


def _spec(model: type[SyncRow], name: str, plural: str, **kw: object) -> object:
    return entity_spec(model, name=name, plural=plural, company_guid=True, **kw)  # type: ignore[arg-type]


ENTITIES = [
    _spec(ProjectRow, "Project", "projects", required=("name",)),
    _spec(ArticleRow, "Article", "articles", required=("number",)),
    _spec(
        ComponentRow,
        "Component",
        "components",
        required=("name",),
        refs=(Ref("project", "Project", required=True),),
    ),
    _spec(
        AssemblyRow,
        "Assembly",
        "assemblies",
        required=("name",),
        refs=(Ref("component", "Component", required=True),),
    ),
    _spec(
        PieceRow,
        "Piece",
        "pieces",
        refs=(Ref("assembly", "Assembly", required=True), Ref("article", "Article")),
    ),
]

VIEWS = [
    View(
        "workshop",
        params={"project": "projects"},
        rules={
            "projects": [IsParam("project")],
            "components": [RefIs("project", "project")],
            "assemblies": [RefVisible("component")],
            "pieces": [RefVisible("assembly")],
            "articles": [ReferencedBy("pieces", "article")],
        },
        description="A workshop tablet: one project's tree and the articles its pieces use.",
    ),
]
