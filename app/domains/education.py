"""Education: users (guardians, students, staff), members (pupils) and classrooms."""

from __future__ import annotations

from datetime import date

from sqlmodel import Field

from app.db import JSONType
from app.engine.models import SyncRow
from app.engine.registry import ObjectShape, Ref, entity_spec
from app.engine.views.spec import IsParam, ReferencedBy, RefIs, RefVisible, View

ROLE_SET = ObjectShape("RoleSet", ("guardian", "student", "teacher", "staff", "admin"))


class UserRow(SyncRow, table=True):
    __tablename__ = "users"

    name: str | None = Field(default=None, max_length=255)
    email: str | None = Field(default=None, max_length=320)
    birth: date | None = None
    role_set: dict[str, bool] | None = Field(default=None, sa_type=JSONType)
    active: bool | None = True
    invite: bool | None = False


class MemberRow(SyncRow, table=True):
    __tablename__ = "members"

    name: str | None = Field(default=None, max_length=255)
    birth: date | None = None
    active: bool | None = True
    user_ids: list[str] = Field(default_factory=list, sa_type=JSONType)


class ClassroomRow(SyncRow, table=True):
    __tablename__ = "classrooms"

    name: str | None = Field(default=None, max_length=255)
    active: bool | None = True
    tags: list[str] | None = Field(default=None, sa_type=JSONType)
    member_ids: list[str] = Field(default_factory=list, sa_type=JSONType)
    admin_ids: list[str] = Field(default_factory=list, sa_type=JSONType)


ENTITIES = [
    entity_spec(
        UserRow,
        name="User",
        plural="users",
        required=("name",),
        shapes={"role_set": ROLE_SET},
        lookup_fields=("email",),
    ),
    entity_spec(
        MemberRow,
        name="Member",
        plural="members",
        required=("name",),
        refs=(Ref("users", "User", many=True),),
    ),
    entity_spec(
        ClassroomRow,
        name="Classroom",
        plural="classrooms",
        required=("name",),
        refs=(Ref("members", "Member", many=True), Ref("admins", "User", many=True)),
    ),
]

VIEWS = [
    View(
        "guardian",
        params={"user": "users"},
        rules={
            "users": [IsParam("user")],
            "members": [RefIs("users", "user")],
            "classrooms": [RefVisible("members")],
        },
        description="A guardian's phone: the guardian, their children, their classrooms.",
    ),
    View(
        "teacher",
        params={"user": "users"},
        rules={
            "classrooms": [RefIs("admins", "user")],
            "members": [ReferencedBy("classrooms", "members")],
            "users": [IsParam("user"), ReferencedBy("members", "users")],
        },
        description="A teacher's tablet: their classrooms, the pupils and the pupils' users.",
    ),
]
