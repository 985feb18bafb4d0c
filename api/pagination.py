"""Keyset paging for the task list: an opaque cursor naming the last row a page ended on."""

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

from api.problems import ProblemError, invalid_input

# tasks.id is a bigint.
MAX_TASK_ID = 2**63 - 1


SortKey = Literal["created", "updated", "title"]
SortOrder = Literal["asc", "desc"]


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the previous page ended: the sort value and id of its last task."""

    sort: SortKey
    order: SortOrder
    value: datetime | str
    task_id: int

    def encode(self) -> str:
        value = self.value.isoformat() if isinstance(self.value, datetime) else self.value
        raw = json.dumps([self.sort, self.order, value, self.task_id], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, *, sort: SortKey, order: SortOrder) -> "Cursor":
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            cursor_sort, cursor_order, value, task_id = json.loads(raw)
            if cursor_sort not in get_args(SortKey) or cursor_order not in get_args(SortOrder):
                raise ValueError
            if type(task_id) is not int or not 0 < task_id <= MAX_TASK_ID:
                raise ValueError
            if not isinstance(value, str) or "\x00" in value:
                raise ValueError
            value.encode()  # lone surrogates are not text Postgres can compare against
            parsed: datetime | str = value if cursor_sort == "title" else datetime.fromisoformat(value)
            if isinstance(parsed, datetime) and parsed.tzinfo is None:
                raise ValueError
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
            raise _bad_cursor("is not a cursor this API issued") from None
        if (cursor_sort, cursor_order) != (sort, order):
            raise _bad_cursor("was issued for another sort or order; keep them the same while paging")
        return cls(sort, order, parsed, task_id)


def _bad_cursor(reason: str) -> ProblemError:
    return invalid_input("query.cursor", f"The cursor {reason}.")
