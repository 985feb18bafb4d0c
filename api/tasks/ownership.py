"""The owner filter of every task statement, made in one place.

Row-level security decides which rows a caller reaches; the filter on the owner is there for the
planner, which it lets pick the owner's indexes. Every statement in `api.tasks.queries` takes it from
`owner_filter` when it is built, so that tests/api/test_other_users_tasks.py can build them once
without it and show that row-level security alone keeps users apart (and, on a database with
row-level security off, that the filter alone does).
"""

from typing import Any

from sqlalchemy import BindParameter, ColumnElement
from sqlalchemy.orm import Mapped


def owner_filter(
    owner_column: ColumnElement[Any] | Mapped[Any], user_id: BindParameter[Any]
) -> ColumnElement[bool]:
    """The condition `owner_column` names the caller."""
    return owner_column == user_id
