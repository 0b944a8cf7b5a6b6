"""A lending library: books, borrowers and the loans between them, and the view a
borrower's phone syncs. syncgraph loads this module when SYNCGRAPH_ENTITY_MODULES names it."""

from __future__ import annotations

from datetime import date

from sqlmodel import Field

from app.engine.models import SyncRow
from app.engine.registry import Ref, entity_spec
from app.engine.views.spec import IsParam, ReferencedBy, RefIs, View


class BookRow(SyncRow, table=True):
    __tablename__ = "books"

    title: str | None = Field(default=None, max_length=255)
    author: str | None = Field(default=None, max_length=255)
    isbn: str | None = Field(default=None, max_length=17)


class BorrowerRow(SyncRow, table=True):
    __tablename__ = "borrowers"

    name: str | None = Field(default=None, max_length=255)
    email: str | None = Field(default=None, max_length=320)


class LoanRow(SyncRow, table=True):
    __tablename__ = "loans"

    book_id: str | None = Field(default=None, max_length=36)
    borrower_id: str | None = Field(default=None, max_length=36)
    lent_on: date | None = None
    returned: bool | None = False


ENTITIES = [
    entity_spec(BookRow, name="Book", plural="books", required=("title",), lookup_fields=("isbn",)),
    entity_spec(BorrowerRow, name="Borrower", plural="borrowers", required=("name",)),
    entity_spec(
        LoanRow,
        name="Loan",
        plural="loans",
        refs=(Ref("book", "Book", required=True), Ref("borrower", "Borrower", required=True)),
    ),
]

VIEWS = [
    View(
        "borrower",
        params={"borrower": "borrowers"},
        rules={
            "borrowers": [IsParam("borrower")],
            "loans": [RefIs("borrower", "borrower")],
            "books": [ReferencedBy("loans", "book")],
        },
        description="A borrower's phone: the borrower, their loans and the books lent.",
    ),
]
