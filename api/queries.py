"""Every statement the API sends, as ready-to-use SQLModel/SQLAlchemy statements.

Each one runs inside `Database.run`, where row-level security decides which rows exist. The
`user_id` filters below are for the planner (they let it pick the tasks_by_owner_* indexes);
correctness never depends on them: without them the policies return exactly the same rows.

Statements are built once per shape with bind parameters, and a request supplies only the
values (`Query`): the database layer compiles each shape once, not once per request.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Insert,
    String,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.elements import ClauseElement
from sqlmodel import col

from api.auth import Principal
from api.models import Task, TaskCreate, User
from api.pagination import Cursor, SortKey, SortOrder


@dataclass(frozen=True, slots=True)
class Query:
    """A statement of a fixed shape and the values for its bind parameters."""

    statement: ClauseElement
    params: Mapping[str, object]


_TASK_COLUMNS = (
    col(Task.id),
    col(Task.user_id),
    col(Task.title),
    col(Task.description),
    col(Task.completed),
    col(Task.created_at),
    col(Task.updated_at),
)

_SORT_COLUMNS: dict[SortKey, Any] = {
    "created": col(Task.created_at),
    "updated": col(Task.updated_at),
    "title": col(Task.title),
}
_SORT_VALUE_TYPES: dict[SortKey, Any] = {
    "created": DateTime(timezone=True),
    "updated": DateTime(timezone=True),
    "title": String(),
}

_USER_ID = bindparam("user_id", type_=String())
_TASK_ID = bindparam("task_id", type_=BigInteger())
_OWN_TASK = (col(Task.user_id) == _USER_ID, col(Task.id) == _TASK_ID)


@dataclass(frozen=True, slots=True)
class TaskFilter:
    completed: bool | None
    search: str | None
    sort: SortKey
    order: SortOrder
    after: Cursor | None
    limit: int


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@cache
def _list_statement(
    *, by_completed: bool, searching: bool, sort: SortKey, order: SortOrder, paging: bool
) -> ClauseElement:
    sort_column = _SORT_COLUMNS[sort]
    ascending = order == "asc"
    statement = select(*_TASK_COLUMNS).where(col(Task.user_id) == _USER_ID)
    if by_completed:
        statement = statement.where(col(Task.completed) == bindparam("completed", type_=Boolean()))
    if searching:
        pattern = bindparam("pattern", type_=String())
        statement = statement.where(
            or_(
                col(Task.title).ilike(pattern, escape="\\"), col(Task.description).ilike(pattern, escape="\\")
            )
        )
    if paging:
        position = tuple_(sort_column, col(Task.id))
        last_seen = tuple_(bindparam("after_value", type_=_SORT_VALUE_TYPES[sort]), bindparam("after_id"))
        statement = statement.where(position > last_seen if ascending else position < last_seen)
    order_by = (
        (sort_column.asc(), col(Task.id).asc()) if ascending else (sort_column.desc(), col(Task.id).desc())
    )
    return statement.order_by(*order_by).limit(bindparam("limit", type_=BigInteger()))


def list_tasks(user_id: str, task_filter: TaskFilter) -> Query:
    """One page, plus one row more so the caller knows whether another page follows."""
    statement = _list_statement(
        by_completed=task_filter.completed is not None,
        searching=bool(task_filter.search),
        sort=task_filter.sort,
        order=task_filter.order,
        paging=task_filter.after is not None,
    )
    params: dict[str, object] = {"user_id": user_id, "limit": task_filter.limit + 1}
    if task_filter.completed is not None:
        params["completed"] = task_filter.completed
    if task_filter.search:
        params["pattern"] = _like_pattern(task_filter.search)
    if task_filter.after is not None:
        params["after_value"] = task_filter.after.value
        params["after_id"] = task_filter.after.task_id
    return Query(statement, params)


_GET_TASK = select(*_TASK_COLUMNS).where(*_OWN_TASK)


def get_task(user_id: str, task_id: int) -> Query:
    return Query(_GET_TASK, {"user_id": user_id, "task_id": task_id})


def _upsert_user() -> Insert:
    """Create the caller's row, or refresh email and name when the token says something new.

    A claim the token leaves out keeps its stored value. When the row exists and is current, the
    NOT EXISTS guard makes this one index lookup with no write and no row lock, so a user's row is
    not rewritten on every request.
    """
    email = bindparam("email", type_=String())
    name = bindparam("name", type_=String())
    up_to_date = exists().where(
        col(User.id) == _USER_ID,
        col(User.email).is_not_distinct_from(func.coalesce(email, col(User.email))),
        col(User.name).is_not_distinct_from(func.coalesce(name, col(User.name))),
    )
    insert = pg_insert(User).from_select(
        ["id", "email", "name"], select(_USER_ID, email, name).where(~up_to_date)
    )
    return insert.on_conflict_do_update(
        index_elements=[col(User.id)],
        set_={
            "email": func.coalesce(insert.excluded.email, col(User.email)),
            "name": func.coalesce(insert.excluded.name, col(User.name)),
        },
    )


# Every write also brings the caller's user row up to date, in the same statement: the first write
# creates it (tasks.user_id references it), and a token with a new email or name refreshes it.
_USER_ROW = _upsert_user().cte("user_row")


def _caller(principal: Principal) -> dict[str, object]:
    return {"user_id": principal.id, "email": principal.email, "name": principal.name}


_CREATE_TASK = (
    pg_insert(Task)
    .values(
        user_id=_USER_ID,
        title=bindparam("title", type_=String()),
        description=bindparam("description", type_=String()),
        completed=bindparam("completed", type_=Boolean()),
    )
    .add_cte(_USER_ROW)
    .returning(*_TASK_COLUMNS)
)


def create_task(principal: Principal, data: TaskCreate) -> Query:
    return Query(_CREATE_TASK, {**_caller(principal), **data.model_dump()})


@cache
def _update_statement(fields: frozenset[str]) -> ClauseElement:
    types: dict[str, Any] = {"title": String(), "description": String(), "completed": Boolean()}
    return (
        update(Task)
        .where(*_OWN_TASK)
        .values({field: bindparam(field, type_=types[field]) for field in sorted(fields)})
        .add_cte(_USER_ROW)
        .returning(*_TASK_COLUMNS)
    )


def update_task(principal: Principal, task_id: int, changes: Mapping[str, object]) -> Query:
    """Only the fields sent change; the others keep their value."""
    return Query(_update_statement(frozenset(changes)), {**_caller(principal), "task_id": task_id, **changes})


_TOGGLE = (
    update(Task)
    .where(*_OWN_TASK)
    .values(completed=~col(Task.completed))
    .add_cte(_USER_ROW)
    .returning(*_TASK_COLUMNS)
)


def set_completed(principal: Principal, task_id: int, completed: bool | None) -> Query:
    """`completed=None` toggles; a value sets it, so a retried request lands in the same state."""
    if completed is None:
        return Query(_TOGGLE, {**_caller(principal), "task_id": task_id})
    return update_task(principal, task_id, {"completed": completed})


_DELETE_TASK = delete(Task).where(*_OWN_TASK).add_cte(_USER_ROW).returning(col(Task.id))


def delete_task(principal: Principal, task_id: int) -> Query:
    return Query(_DELETE_TASK, {**_caller(principal), "task_id": task_id})
