"""Every statement the API sends, as ready-to-use SQLModel/SQLAlchemy statements.

Each one runs inside `Database.transaction`, where row-level security decides which rows exist.
The `user_id` filters below are for the planner (they let it pick the tasks_by_owner_* indexes);
correctness never depends on them: without them the policies return exactly the same rows.
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Insert, String, delete, exists, func, literal, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.expression import Executable
from sqlmodel import col

from api.auth import Principal
from api.models import Task, TaskCreate, User
from api.pagination import Cursor, SortKey, SortOrder

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


def list_tasks(user_id: str, task_filter: TaskFilter) -> Executable:
    """One page, plus one row more so the caller knows whether another page follows."""
    sort_column = _SORT_COLUMNS[task_filter.sort]
    ascending = task_filter.order == "asc"
    statement = select(*_TASK_COLUMNS).where(col(Task.user_id) == user_id)
    if task_filter.completed is not None:
        statement = statement.where(col(Task.completed) == task_filter.completed)
    if task_filter.search:
        pattern = _like_pattern(task_filter.search)
        statement = statement.where(
            or_(
                col(Task.title).ilike(pattern, escape="\\"), col(Task.description).ilike(pattern, escape="\\")
            )
        )
    if task_filter.after is not None:
        position = tuple_(sort_column, col(Task.id))
        last_seen = tuple_(literal(task_filter.after.value), literal(task_filter.after.task_id))
        statement = statement.where(position > last_seen if ascending else position < last_seen)
    order_by = (
        (sort_column.asc(), col(Task.id).asc()) if ascending else (sort_column.desc(), col(Task.id).desc())
    )
    return statement.order_by(*order_by).limit(task_filter.limit + 1)


def get_task(user_id: str, task_id: int) -> Executable:
    return select(*_TASK_COLUMNS).where(col(Task.user_id) == user_id, col(Task.id) == task_id)


def _upsert_user(principal: Principal) -> Insert:
    """Create the caller's row, or refresh email and name when the token says something new.

    A claim the token leaves out keeps its stored value. When the row exists and is current, the
    NOT EXISTS guard makes this one index lookup with no write and no row lock, so a user's row is
    not rewritten on every request.
    """
    email = literal(principal.email, String)
    name = literal(principal.name, String)
    up_to_date = exists().where(
        col(User.id) == principal.id,
        col(User.email).is_not_distinct_from(func.coalesce(email, col(User.email))),
        col(User.name).is_not_distinct_from(func.coalesce(name, col(User.name))),
    )
    insert = pg_insert(User).from_select(
        ["id", "email", "name"],
        select(literal(principal.id), email, name).where(~up_to_date),
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


def create_task(principal: Principal, data: TaskCreate) -> Executable:
    return (
        pg_insert(Task)
        .values(
            user_id=principal.id, title=data.title, description=data.description, completed=data.completed
        )
        .add_cte(_upsert_user(principal).cte("user_row"))
        .returning(*_TASK_COLUMNS)
    )


def update_task(principal: Principal, task_id: int, changes: dict[str, object]) -> Executable:
    return (
        update(Task)
        .where(col(Task.user_id) == principal.id, col(Task.id) == task_id)
        .values(**changes)
        .add_cte(_upsert_user(principal).cte("user_row"))
        .returning(*_TASK_COLUMNS)
    )


def set_completed(principal: Principal, task_id: int, completed: bool | None) -> Executable:
    """`completed=None` toggles; a value sets it, so a retried request lands in the same state."""
    new_value = ~col(Task.completed) if completed is None else literal(completed)
    return (
        update(Task)
        .where(col(Task.user_id) == principal.id, col(Task.id) == task_id)
        .values(completed=new_value)
        .add_cte(_upsert_user(principal).cte("user_row"))
        .returning(*_TASK_COLUMNS)
    )


def delete_task(principal: Principal, task_id: int) -> Executable:
    return (
        delete(Task)
        .where(col(Task.user_id) == principal.id, col(Task.id) == task_id)
        .add_cte(_upsert_user(principal).cte("user_row"))
        .returning(col(Task.id))
    )
