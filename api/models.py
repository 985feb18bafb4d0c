"""The task resource: its table, and the shapes it takes on the way in and out of the API.

Input models are strict: unknown fields, wrong types, blank titles and NUL characters (which
Postgres cannot store in text) are refused with a 422 before anything reaches the database.
"""

from datetime import datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    StrictBool,
    StringConstraints,
    field_validator,
)
from pydantic.json_schema import WithJsonSchema
from sqlalchemy import BigInteger, Column, DateTime, Identity, text
from sqlmodel import Field, SQLModel

TITLE_MAX_LENGTH = 200
DESCRIPTION_MAX_LENGTH = 1000
USER_ID_MAX_LENGTH = 255


def no_nul(value: str | None) -> str | None:
    """Postgres cannot store NUL in text: refuse it as invalid input rather than fail later."""
    if value is not None and "\x00" in value:
        raise ValueError("must not contain the NUL character")
    return value


Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=TITLE_MAX_LENGTH),
    AfterValidator(no_nul),
]
Description = Annotated[str, StringConstraints(max_length=DESCRIPTION_MAX_LENGTH), AfterValidator(no_nul)]


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: str = Field(primary_key=True, max_length=USER_ID_MAX_LENGTH)
    email: str | None = None
    name: str | None = None
    created_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=text("now()"))
    )


class Task(SQLModel, table=True):
    __tablename__ = "tasks"

    id: int = Field(sa_column=Column(BigInteger, Identity(always=True), primary_key=True))
    user_id: str = Field(foreign_key="users.id")
    title: str
    description: str | None = None
    completed: bool = False
    created_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=text("now()"))
    )
    updated_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=text("now()"))
    )


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskCreate(_Input):
    title: Title
    description: Description | None = None
    completed: StrictBool = False


class TaskUpdate(_Input):
    """Every field optional: a field left out keeps its value; `description: null` clears it."""

    # The schema must not promise that null is accepted where `not_null` refuses it.
    title: Annotated[
        Title | None, WithJsonSchema({"type": "string", "minLength": 1, "maxLength": TITLE_MAX_LENGTH})
    ] = None
    description: Description | None = None
    completed: Annotated[StrictBool | None, WithJsonSchema({"type": "boolean"})] = None

    @field_validator("title", "completed", mode="before")
    @classmethod
    def not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may be left out to keep its value, but may not be null")
        return value

    def changes(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class CompletionUpdate(_Input):
    completed: StrictBool


class TaskPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: str
    title: str
    description: str | None
    completed: bool
    # Postgres answers in UTC: every transaction pins TimeZone (api/db.py).
    created_at: AwareDatetime
    updated_at: AwareDatetime
