"""The task resource as one family of models on a shared base, and the tables behind it.

`TaskBase` holds the fields a client writes, each with its limits, written once. `TaskCreate` and
`TaskUpdate` are what a client sends, `TaskPublic` what it gets back, and `Task` the table's columns
for the statements in `api.tasks.queries`. The database enforces the same limits as CHECK
constraints (sql/migrations/0002_tasks_schema.sql; a title's trimming, 0007_deleted_means_gone.sql;
a version from 1 and times a Python datetime holds, 0015_tasks_the_api_can_render.sql), so that no
row, even one a DBA writes, is one `TaskPublic` cannot render; `tests/db/test_schema_agreement.py`
migrates a real database and fails when the two disagree.

Input models are strict: unknown fields, wrong types, blank titles and NUL characters (which
Postgres cannot store in text) are refused with a 422 before anything reaches the database.

The API-facing forms are plain pydantic models and only the tables are SQLModel: a SQLModel
instance costs several times a pydantic one to build (it sets up SQLAlchemy's instance state), which
a page of rows would pay on every list.
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
    TypeAdapter,
    field_validator,
)
from pydantic import (
    Field as PydanticField,
)
from pydantic.json_schema import WithJsonSchema
from sqlalchemy import BigInteger, Column, DateTime, Identity, Integer, text
from sqlmodel import Field, SQLModel

from api.auth.principal import EMAIL_MAX_LENGTH, NAME_MAX_LENGTH, USER_ID_MAX_LENGTH

TITLE_MAX_LENGTH = 200
DESCRIPTION_MAX_LENGTH = 1000


def no_nul(value: str | None) -> str | None:
    """Postgres cannot store NUL in text: refuse it as invalid input rather than fail later."""
    if value is not None and "\x00" in value:
        raise ValueError("must not contain the NUL character")
    return value


# Unicode's White_Space characters, which a title is trimmed of: the set pydantic's strip_whitespace
# (Rust's str::trim) strips, and the one 0007_deleted_means_gone.sql's CHECK spells out. The title
# is trimmed here rather than by strip_whitespace, which trims before the limits are checked.
WHITE_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)
# The document's patterns state every rule `no_nul` and `_trimmed` enforce, so that a client that
# checks a value against them is refused nothing else. JSON Schema's `pattern` matches anywhere in the
# string, so each is anchored to say "no NUL anywhere". Characters are spelled out (`\uXXXX`) rather
# than as `\S`, which means another set in each engine that reads it: pydantic's Rust regex, a
# client's JavaScript (ECMA-262, which the document's patterns are), Python's re.
_WHITE_SPACE_CLASS = "".join(f"\\u{ord(c):04x}" for c in WHITE_SPACE)
_NUL = "\\u0000"
# White space only, then a character that is neither white space nor NUL, then anything but NUL:
# each character has one place to go, so a client's backtracking engine stays linear on any string.
# (Python's `$` also matches before a final newline, which the last class takes anyway.)
TITLE_PATTERN = f"^[{_WHITE_SPACE_CLASS}]*[^{_WHITE_SPACE_CLASS}{_NUL}][^{_NUL}]*$"
NUL_FREE_PATTERN = f"^[^{_NUL}]*$"
TITLE_DESCRIPTION = (
    f"1 to {TITLE_MAX_LENGTH} characters as sent, none of them NUL and at least one not white space; "
    "stored without the white space it starts or ends with."
)


def _trimmed(value: str) -> str:
    trimmed = value.strip(WHITE_SPACE)
    if not trimmed:
        # The rule TITLE_PATTERN states, in words: pydantic's own message would quote the pattern.
        raise ValueError("must contain a character that is not white space")
    return trimmed


# The examples are what the docs page offers to send ("Try it out"): without one, Swagger UI makes
# a string up from the pattern, random characters a newcomer would create tasks with.
# The limits apply to the title as sent, the string the document's minLength, maxLength and pattern
# describe, so a client that checks a title against them is refused nothing else; the stored title,
# trimmed after, is within them too.
Title = Annotated[
    str,
    StringConstraints(min_length=1, max_length=TITLE_MAX_LENGTH),
    AfterValidator(no_nul),
    AfterValidator(_trimmed),
    PydanticField(
        description=TITLE_DESCRIPTION, examples=["Buy milk"], json_schema_extra={"pattern": TITLE_PATTERN}
    ),
]
Description = Annotated[
    str,
    StringConstraints(max_length=DESCRIPTION_MAX_LENGTH),
    AfterValidator(no_nul),
    PydanticField(json_schema_extra={"pattern": NUL_FREE_PATTERN}),
]


class TaskBase(BaseModel):
    """What a client writes: every form of a task shares these fields and their limits."""

    title: Title
    description: Description | None = PydanticField(default=None, examples=["two litres"])
    completed: StrictBool = False


class TaskCreate(TaskBase):
    model_config = ConfigDict(extra="forbid")


class TaskUpdate(TaskBase):
    """Every field optional: a field left out keeps its value; `description: null` clears it."""

    model_config = ConfigDict(extra="forbid")

    # The schema must not promise that null is accepted where `not_null` refuses it.
    title: Annotated[
        Title | None,
        WithJsonSchema(TypeAdapter(Title).json_schema()),
    ] = None  # type: ignore[assignment]
    completed: Annotated[StrictBool | None, WithJsonSchema({"type": "boolean"})] = None  # type: ignore[assignment]

    @field_validator("title", "completed", mode="before")
    @classmethod
    def not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("may be left out to keep its value, but may not be null")
        return value

    def changes(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class CompletionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    completed: StrictBool


class _TaskKeys(BaseModel):
    """The fields the database sets; first in every response."""

    id: int
    user_id: str


class TaskPublic(TaskBase, _TaskKeys):
    # Every field is always in a response, defaults or not.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    # Postgres answers in UTC: every transaction sets TimeZone, and times are read in UTC (api/db/pool.py).
    created_at: AwareDatetime
    updated_at: AwareDatetime
    # In every representation, list items included, so a client that only listed can still send
    # If-Match: the task's ETag is `"<id>.<version>"` (api/tasks/etags.py).
    version: int = PydanticField(
        ge=1, description='Moves exactly when the task changes; the ETag is `"<id>.<version>"`.'
    )


# Every table the API names is schema-qualified: its transactions run with an empty search_path
# (api/db/statements.py, `ACT_AS_USER`), so that no function or operator another role made in a
# schema on the path can stand in for the built-in one a statement means.
_SCHEMA = {"schema": "public"}


class User(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = _SCHEMA

    id: str = Field(primary_key=True, min_length=1, max_length=USER_ID_MAX_LENGTH)
    email: str | None = Field(default=None, max_length=EMAIL_MAX_LENGTH)
    name: str | None = Field(default=None, max_length=NAME_MAX_LENGTH)
    created_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=text("now()"))
    )


IDEMPOTENCY_KEY_MAX_LENGTH = 255


class IdempotencyKey(SQLModel, table=True):
    """A create's Idempotency-Key and the task it made (sql/policies/idempotency_keys.sql).

    It names the task, never a copy of it: a replay shows the task as it is now, and once the task
    is deleted `task_id` and `request_hash` are NULL (a tombstone: the key answers 410 task-deleted,
    whatever the body, until it expires; sql/migrations/0013_tombstones_forget_the_request.sql).
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = _SCHEMA

    user_id: str = Field(primary_key=True, foreign_key="public.users.id")
    key: str = Field(primary_key=True, min_length=1, max_length=IDEMPOTENCY_KEY_MAX_LENGTH)
    request_hash: str | None = None
    task_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    created_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=text("now()"))
    )
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class Task(SQLModel, TaskBase, table=True):
    __tablename__ = "tasks"
    __table_args__ = _SCHEMA

    id: int = Field(sa_column=Column(BigInteger, Identity(always=True), primary_key=True))
    user_id: str = Field(foreign_key="public.users.id")
    created_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=text("now()"))
    )
    updated_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=text("now()"))
    )
    # Moves exactly when the content does (the app.record_change trigger); the ETag is made of it.
    version: int = Field(sa_column=Column(Integer, nullable=False, server_default=text("1")))
