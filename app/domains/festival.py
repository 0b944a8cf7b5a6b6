"""Festival volunteer catering: people, directions (teams), badges, arrivals, engagements."""

from __future__ import annotations

import enum
from datetime import date

import sqlalchemy as sa
from sqlmodel import Field

from app.engine.models import SyncRow
from app.engine.registry import Ref, entity_spec
from app.engine.views.spec import IsParam, ReferencedBy, RefIs, RefVisible, View

S = 255  # length of short text columns


class Gender(enum.Enum):
    MALE = "MALE"
    FEMALE = "FEMALE"
    OTHER = "OTHER"


class DirectionType(enum.Enum):
    CITY_SERVICE = "CITY_SERVICE"
    FIELD_SERVICE = "FIELD_SERVICE"
    UNIVERSAL_SERVICE = "UNIVERSAL_SERVICE"
    FEDERAL_LOCATION = "FEDERAL_LOCATION"
    GRANT_LOCATION = "GRANT_LOCATION"
    COMMERCIAL_LOCATION = "COMMERCIAL_LOCATION"
    LATERAL_LOCATION = "LATERAL_LOCATION"
    RESPONSIBILITY_AREA = "RESPONSIBILITY_AREA"


class Feed(enum.Enum):
    FREE = "FREE"
    PAID = "PAID"
    NO = "NO"


class BadgeRole(enum.Enum):
    ORGANIZER = "ORGANIZER"
    CAMP_LEAD = "CAMP_LEAD"
    VICE = "VICE"
    TEAM_LEAD = "TEAM_LEAD"
    VOLUNTEER = "VOLUNTEER"
    CAMP_GUY = "CAMP_GUY"
    PARTICIPANT = "PARTICIPANT"
    FELLOW = "FELLOW"
    CONTRACTOR = "CONTRACTOR"
    MEDIC = "MEDIC"
    ANIMATOR = "ANIMATOR"
    LECTOR = "LECTOR"
    ARTIST = "ARTIST"
    VIP = "VIP"
    PRESS = "PRESS"
    ART_FELLOW = "ART_FELLOW"


class EngagementRole(enum.Enum):
    ORGANIZER = "ORGANIZER"
    CAMP_LEAD = "CAMP_LEAD"
    VICE = "VICE"
    TEAM_LEAD = "TEAM_LEAD"
    VOLUNTEER = "VOLUNTEER"
    CAMP_GUY = "CAMP_GUY"
    PARTICIPANT = "PARTICIPANT"
    FELLOW = "FELLOW"
    CONTRACTOR = "CONTRACTOR"
    MASTER = "MASTER"


class ParticipationStatus(enum.Enum):
    PLANNED = "PLANNED"
    CANCELLED = "CANCELLED"
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    SKIPPED = "SKIPPED"
    ARRIVED = "ARRIVED"
    STARTED = "STARTED"
    LEFT = "LEFT"
    COMPLETE = "COMPLETE"
    JOINED = "JOINED"


class Transport(enum.Enum):
    UNDEFINED = "UNDEFINED"
    SELF = "SELF"
    BUS = "BUS"
    CAR = "CAR"
    TRANSFER = "TRANSFER"
    MOVE = "MOVE"


class PersonRow(SyncRow, table=True):
    __tablename__ = "persons"

    name: str | None = Field(default=None, max_length=S)
    first_name: str | None = Field(default=None, max_length=S)
    last_name: str | None = Field(default=None, max_length=S)
    nickname: str | None = Field(default=None, max_length=S)
    other_names: str | None = Field(default=None, max_length=1024)
    gender: Gender | None = Field(default=None, sa_type=sa.String(16))
    birth_date: date | None = None
    phone: str | None = Field(default=None, max_length=64)
    telegram: str | None = Field(default=None, max_length=S)
    email: str | None = Field(default=None, max_length=320)
    city: str | None = Field(default=None, max_length=S)
    vegan: bool | None = None


class DirectionRow(SyncRow, table=True):
    __tablename__ = "directions"

    name: str | None = Field(default=None, max_length=S)
    first_year: int | None = None
    last_year: int | None = None
    type: DirectionType | None = Field(default=None, sa_type=sa.String(32))


class BadgeRow(SyncRow, table=True):
    __tablename__ = "badges"

    name: str | None = Field(default=None, max_length=S)
    first_name: str | None = Field(default=None, max_length=S)
    last_name: str | None = Field(default=None, max_length=S)
    gender: Gender | None = Field(default=None, sa_type=sa.String(16))
    phone: str | None = Field(default=None, max_length=64)
    infant: bool | None = None
    vegan: bool | None = None
    feed: Feed | None = Field(default=None, sa_type=sa.String(16))
    number: str | None = Field(default=None, max_length=64)
    batch: str | None = Field(default=None, max_length=64)
    role: BadgeRole | None = Field(default=None, sa_type=sa.String(32))
    position: str | None = Field(default=None, max_length=S)
    photo: str | None = Field(default=None, max_length=2048)
    person_id: str | None = Field(default=None, max_length=36)
    comment: str | None = Field(default=None, max_length=4096)


class ArrivalRow(SyncRow, table=True):
    __tablename__ = "arrivals"

    badge_id: str | None = Field(default=None, max_length=36)
    status: ParticipationStatus | None = Field(default=None, sa_type=sa.String(32))
    arrival_date: date | None = None
    arrival_transport: Transport | None = Field(default=None, sa_type=sa.String(16))
    departure_date: date | None = None
    departure_transport: Transport | None = Field(default=None, sa_type=sa.String(16))


class EngagementRow(SyncRow, table=True):
    __tablename__ = "engagements"

    year: int | None = None
    person_id: str | None = Field(default=None, max_length=36)
    role: EngagementRole | None = Field(default=None, sa_type=sa.String(32))
    position: str | None = Field(default=None, max_length=S)
    status: ParticipationStatus | None = Field(default=None, sa_type=sa.String(32))
    direction_id: str | None = Field(default=None, max_length=36)


ENTITIES = [
    entity_spec(PersonRow, name="Person", plural="persons"),
    entity_spec(DirectionRow, name="Direction", plural="directions"),
    entity_spec(BadgeRow, name="Badge", plural="badges", refs=(Ref("person", "Person"),)),
    entity_spec(
        ArrivalRow, name="Arrival", plural="arrivals", refs=(Ref("badge", "Badge", required=True),)
    ),
    entity_spec(
        EngagementRow,
        name="Engagement",
        plural="engagements",
        refs=(Ref("person", "Person"), Ref("direction", "Direction")),
    ),
]

VIEWS = [
    View(
        "feed_point",
        params={"direction": "directions"},
        rules={
            "directions": [IsParam("direction")],
            "engagements": [RefIs("direction", "direction")],
            "persons": [ReferencedBy("engagements", "person")],
            "badges": [RefVisible("person")],
            "arrivals": [RefVisible("badge")],
        },
        description="A kitchen tablet: one direction's engagements, people, badges, arrivals.",
    ),
]
