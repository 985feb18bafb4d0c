"""How the task list is asked for: its query parameters, its sort keys, and the keyset cursor.

`SORT_KEYS` is the one table of sort keys: the column each sorts by (whose name is also the key of
the value in a row) and in which collation, its default order, and how a cursor's value for it
parses. The list route, the statements (`api.tasks.queries`) and the cursors all read it.
"""

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import WithJsonSchema
from pydantic_core import PydanticCustomError
from sqlalchemy import Column, ColumnElement, Table

from api.http.query import ascii_digits
from api.settings import POSTGRES_BIGINT_MAX
from api.tasks.models import NUL_FREE_PATTERN, TITLE_MAX_LENGTH, Task, no_nul

MAX_TASK_ID = POSTGRES_BIGINT_MAX
# A page's size: `limit`'s default and its largest value.
PAGE_SIZE = 100
PAGE_SIZE_MAX = 500
# The longest search text (`q`).
SEARCH_MAX_LENGTH = 200

# Literals, not Enums: each query parameter's schema must stand alone in the OpenAPI document.
SortKey = Literal["created", "updated", "title"]
SortOrder = Literal["asc", "desc"]
TaskStatus = Literal["all", "pending", "completed"]


def _aware_datetime(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("a timestamp without a time zone")
    # The same instant in UTC: Postgres refuses offsets Python reads (past 15:59, or in fractions
    # of a second). OverflowError when the instant falls outside Python's years.
    return parsed.astimezone(UTC)


def _text(value: str) -> str:
    value.encode()  # lone surrogates are not text Postgres can compare against
    return value


@dataclass(frozen=True, slots=True)
class SortKeySpec:
    column: Column[Any]
    default_order: SortOrder
    parse_cursor_value: Callable[[str], datetime | str]
    # Text is compared in a collation named here, not the database's default: a Postgres created with
    # a language's locale (en_US.UTF-8, common on Debian and Amazon RDS) sorts "alpha" before "Buy",
    # where the README promises code point order. The key's index must be built in the same
    # collation, or the planner cannot read the order from it and sorts every row instead.
    collation: str | None = None

    @property
    def sort_expression(self) -> ColumnElement[Any]:
        """What the list orders by, and compares a cursor's value with."""
        return self.column.collate(self.collation) if self.collation else self.column

    @property
    def row_key(self) -> str:
        """Where a row returned by the list statement holds this key's value."""
        return self.column.name


_TASKS: Table = Task.__table__  # type: ignore[attr-defined]  # SQLModel sets it on table models

SORT_KEYS: Mapping[SortKey, SortKeySpec] = {
    "created": SortKeySpec(_TASKS.c.created_at, "desc", _aware_datetime),
    "updated": SortKeySpec(_TASKS.c.updated_at, "desc", _aware_datetime),
    # "C": by code point; tasks_by_owner_title is built COLLATE "C" to match (0014 migration).
    "title": SortKeySpec(_TASKS.c.title, "asc", _text, collation="C"),
}

COMPLETED_FOR_STATUS: Mapping[TaskStatus, bool | None] = {"all": None, "pending": False, "completed": True}


def _base64(raw: bytes) -> str:
    """`raw` as a cursor spells it: URL-safe base64 without padding, the only spelling accepted."""
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the previous page ended: the sort value and id of its last task."""

    sort: SortKey
    order: SortOrder
    value: datetime | str
    task_id: int

    @classmethod
    def after_row(cls, sort: SortKey, order: SortOrder, row: Mapping[str, Any]) -> Self:
        return cls(sort, order, row[SORT_KEYS[sort].row_key], row["id"])

    def encode(self) -> str:
        value = self.value.isoformat() if isinstance(self.value, datetime) else self.value
        # A title's characters as UTF-8 rather than \uXXXX, six bytes for a CJK character and twelve
        # for an emoji; json.loads reads both, so cursors issued escaped still decode.
        raw = json.dumps(
            [self.sort, self.order, value, self.task_id], separators=(",", ":"), ensure_ascii=False
        )
        return _base64(raw.encode())

    @classmethod
    def decode(cls, token: str, *, sort: SortKey, order: SortOrder) -> Self:
        """The cursor a previous page's Link carried; ValueError, saying why, for anything else."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            if _base64(raw) != token:
                # One spelling, as issued: the decoder passes over characters outside its alphabet, the
                # standard one's `+/`, padding and unused bits, so a page had countless cursors (the
                # contract probe of stop 85), which a log search or a cache rule keyed on it missed.
                raise ValueError
            cursor_sort, cursor_order, value, task_id = json.loads(raw)
            if cursor_sort not in SORT_KEYS or cursor_order not in get_args(SortOrder):
                raise ValueError
            if type(task_id) is not int or not 0 < task_id <= MAX_TASK_ID:
                raise ValueError
            if not isinstance(value, str) or "\x00" in value:
                raise ValueError
            parsed = SORT_KEYS[cursor_sort].parse_cursor_value(value)
        # RecursionError: arrays nested deeper than the parser's stack, which a cursor of the longest
        # length accepted can hold (api/http/json_body.py meets the same in a body).
        except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error, UnicodeError):
            raise ValueError("is not a cursor this API issued") from None
        if (cursor_sort, cursor_order) != (sort, order):
            raise ValueError("was issued for another sort or order; keep them the same while paging")
        return cls(sort, order, parsed, task_id)


# The longest cursor the list issues, and so the longest it accepts: after a task of the largest id
# whose title is the longest there is in JSON, a control character, which JSON writes as \u00XX, six
# bytes (any other character takes at most four in UTF-8, or two escaped). The other sort keys' values
# are timestamps, far shorter (tests/test_listing.py).
CURSOR_MAX_LENGTH = len(Cursor("title", "desc", "\x01" * TITLE_MAX_LENGTH, MAX_TASK_ID).encode())
# What `_base64` writes, in the schema, so that a client generator or a fuzzer knows it too.
CURSOR_PATTERN = "^[A-Za-z0-9_-]*$"
_CURSOR_DESCRIPTION = "From a previous page's Link header; empty or left out for the first page."
# The schema a client sees (a string); `WithJsonSchema` replaces it whole, description included.
_CURSOR_SCHEMA = {
    "anyOf": [
        {"type": "string", "maxLength": CURSOR_MAX_LENGTH, "pattern": CURSOR_PATTERN},
        {"type": "null"},
    ],
    "title": "Cursor",
    "description": _CURSOR_DESCRIPTION,
}


class TaskListParams(BaseModel):
    """The list's query parameters, as one model (`Annotated[TaskListParams, Query()]`)."""

    status: TaskStatus = Field("all", description="Which tasks to list.")
    sort: SortKey = Field("created", description="Sort by creation, last update or title.")
    order: SortOrder | None = Field(None, description="Default: desc for created and updated, asc for title.")
    # The pattern states no_nul's rule in the document, beside the length (TITLE_PATTERN's comment).
    q: (
        Annotated[
            str,
            StringConstraints(max_length=SEARCH_MAX_LENGTH),
            AfterValidator(no_nul),
            Field(json_schema_extra={"pattern": NUL_FREE_PATTERN}),
        ]
        | None
    ) = Field(
        None,
        description=(
            "Text to find in title or description, whatever the case: the database lowercases both, "
            "one character at a time, as its locale says; nothing else is folded."
        ),
    )
    limit: Annotated[int, BeforeValidator(ascii_digits)] = Field(
        PAGE_SIZE, ge=1, le=PAGE_SIZE_MAX, description="Page size."
    )
    # Decoded on the way in, so a bad cursor is reported like any bad parameter (`query.cursor`).
    cursor: Annotated[Cursor | None, WithJsonSchema(_CURSOR_SCHEMA)] = Field(
        None, description=_CURSOR_DESCRIPTION
    )

    @field_validator("cursor", mode="before")
    @classmethod
    def decode_cursor(cls, value: object, info: ValidationInfo) -> object:
        if value is None or value == "" or "sort" not in info.data or "order" not in info.data:
            # Empty, as an empty `q` is no search: the first page (the schema admits "", and a client
            # generated from it sends `cursor=` for an empty string it holds). A bad sort or order is
            # reported on its own, not again as a cursor "issued for another sort or order".
            return None
        if not isinstance(value, str):
            raise PydanticCustomError("string_type", "Input should be a valid string")
        if len(value) > CURSOR_MAX_LENGTH:
            raise PydanticCustomError(
                "string_too_long",
                "String should have at most {max_length} characters",
                {"max_length": CURSOR_MAX_LENGTH},
            )
        sort: SortKey = info.data["sort"]
        try:
            return Cursor.decode(
                value, sort=sort, order=info.data.get("order") or SORT_KEYS[sort].default_order
            )
        except ValueError as error:
            raise PydanticCustomError("cursor", "The cursor {reason}.", {"reason": str(error)}) from None

    @property
    def sort_order(self) -> SortOrder:
        """The order asked for, or the sort key's default."""
        return self.order or SORT_KEYS[self.sort].default_order

    @property
    def completed(self) -> bool | None:
        """Which tasks `status` asks for: completed ones, pending ones, or either (None)."""
        return COMPLETED_FOR_STATUS[self.status]
