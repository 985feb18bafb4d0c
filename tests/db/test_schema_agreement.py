"""The models and the migrated schema describe the same tables, so neither can drift alone.

Field limits live once in Python (api/tasks/models.py, api/auth/principal.py) and once as CHECK
constraints in the migrations; the column names, types and nullability live in both too. A change
on one side only fails here. A title's rule (trimmed of Unicode White_Space as pydantic trims, then 1 to
200 characters) is checked by trying titles on both sides: the database stores exactly the titles the
API would store as sent; so are a task's version and times: it stores exactly the tasks TaskPublic
renders.
"""

import re
from typing import Any, get_args

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from sqlalchemy import BigInteger, Boolean, DateTime, Integer, String
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlmodel import SQLModel

from api.tasks.models import TITLE_MAX_LENGTH, IdempotencyKey, Task, TaskCreate, TaskPublic, User

Conn = psycopg.Connection[tuple[Any, ...]]
TABLE_MODELS: list[type[SQLModel]] = [User, Task]
# Tables whose columns the models describe; a key's shape is checked by a pattern, not a length.
COLUMN_MODELS: list[type[SQLModel]] = [*TABLE_MODELS, IdempotencyKey]
Limits = dict[str, tuple[int | None, int | None]]


def _postgres_type(sa_type: TypeEngine[Any]) -> str:
    if isinstance(sa_type, TypeDecorator):  # SQLModel's AutoString, say
        sa_type = sa_type.impl_instance
    match sa_type:
        case BigInteger():
            return "bigint"
        case Integer():
            return "integer"
        case Boolean():
            return "boolean"
        case DateTime(timezone=True):
            return "timestamp with time zone"
        case String():
            return "text"
    raise AssertionError(f"no Postgres type known for {sa_type!r}")


def _model_columns(model: type[SQLModel]) -> dict[str, tuple[str, bool]]:
    table = model.__table__  # type: ignore[attr-defined]
    return {column.name: (_postgres_type(column.type), column.nullable) for column in table.columns}


def _constraints(field: FieldInfo) -> list[Any]:
    """Every constraint on a field, including those of an Annotated type inside `X | None`."""
    found: list[Any] = list(field.metadata)
    for member in get_args(field.annotation):
        found += getattr(member, "__metadata__", ())
    return found


def _model_limits(model: type[SQLModel]) -> Limits:
    limits: Limits = {}
    for name, field in model.model_fields.items():
        metadata = _constraints(field)
        low = next((m.min_length for m in metadata if getattr(m, "min_length", None) is not None), None)
        high = next((m.max_length for m in metadata if getattr(m, "max_length", None) is not None), None)
        if low is not None or high is not None:
            limits[name] = (low, high)
    return limits


def _live_columns(db: Conn, table: str) -> dict[str, tuple[str, bool]]:
    rows = db.execute(
        "select column_name, data_type, is_nullable = 'YES' from information_schema.columns"
        " where table_schema = 'public' and table_name = %s",
        [table],
    ).fetchall()
    return {name: (data_type, nullable) for name, data_type, nullable in rows}


def _live_limits(db: Conn, table: str) -> Limits:
    checks = db.execute(
        "select pg_get_constraintdef(oid) from pg_constraint where contype = 'c' and conrelid = %s::regclass",
        [f"public.{table}"],
    ).fetchall()
    limits: Limits = {}
    for (definition,) in checks:
        for column in set(re.findall(r"char_length\((\w+)\)", definition)):
            low = re.search(rf"char_length\({column}\) >= (\d+)", definition)
            high = re.search(rf"char_length\({column}\) <= (\d+)", definition)
            limits[column] = (int(low.group(1)) if low else None, int(high.group(1)) if high else None)
    return limits


@pytest.mark.parametrize("model", COLUMN_MODELS, ids=lambda model: model.__tablename__)
def test_columns_types_and_nullability_agree(migrated_db: Conn, model: type[SQLModel]) -> None:
    assert _model_columns(model) == _live_columns(migrated_db, str(model.__tablename__))


@pytest.mark.parametrize("model", TABLE_MODELS, ids=lambda model: model.__tablename__)
def test_length_limits_agree(migrated_db: Conn, model: type[SQLModel]) -> None:
    assert _model_limits(model) == _live_limits(migrated_db, str(model.__tablename__))


def test_a_task_representation_carries_every_column_of_the_task_version_included(migrated_db: Conn) -> None:
    # The version is what a client sends back in If-Match: a list item without it cannot be edited
    # safely (the ETag is "<id>.<version>").
    assert set(TaskPublic.model_fields) == set(_live_columns(migrated_db, "tasks"))
    assert TaskPublic.model_json_schema()["required"].count("version") == 1


def test_the_comparison_sees_limits_on_both_sides(migrated_db: Conn) -> None:
    # A guard against the two helpers above agreeing on nothing at all.
    assert _live_limits(migrated_db, "tasks") == {"title": (1, 200), "description": (None, 1000)}
    assert _model_limits(User)["email"] == (None, 320)


# Every character Python's str.strip() removes (a superset of what pydantic's strip removes: it
# takes \x1c-\x1f too), and look-alikes both keep (zero-width space, BOM,
# Mongolian vowel separator), each alone, at either end and inside; lengths around the limit.
_WHITESPACE = [chr(code) for code in range(0x110000) if chr(code).isspace()]
_KEPT = ["\u200b", "\ufeff", "\u180e", "x"]
TITLES = sorted(
    {
        "",
        "x" * TITLE_MAX_LENGTH,
        "x" * (TITLE_MAX_LENGTH + 1),
        " " + "x" * TITLE_MAX_LENGTH,
        *(form for c in _WHITESPACE + _KEPT for form in (c, c + "x", "x" + c, "x" + c + "x", c * 3)),
    }
)


def _api_stores_as_sent(title: str) -> bool:
    try:
        return TaskCreate(title=title).title == title
    except ValidationError:
        return False


def _database_stores(db: Conn, title: str) -> bool:
    try:
        with db.transaction():
            db.execute("insert into tasks (user_id, title) values ('agreement', %s)", [title])
    except psycopg.errors.CheckViolation:
        return False
    return True


def test_the_database_stores_exactly_the_titles_the_api_stores_as_sent(migrated_db: Conn) -> None:
    migrated_db.execute("insert into users (id) values ('agreement')")
    disagreements = {
        title: _api_stores_as_sent(title)
        for title in TITLES
        if _database_stores(migrated_db, title) != _api_stores_as_sent(title)
    }
    assert disagreements == {}, "title: whether the API stores it as sent"
    # Both sides refuse something and store something, so the comparison has teeth.
    assert sum(map(_api_stores_as_sent, TITLES)) > len(_KEPT) * 4
    assert not _api_stores_as_sent("\u3000x")


def test_the_api_trims_what_the_database_refuses(migrated_db: Conn) -> None:
    """Each character the API strips: the database refuses a title padded with it, and stores the
    trimmed form the API makes of it."""
    migrated_db.execute("insert into users (id) values ('agreement')")
    stripped = [c for c in _WHITESPACE if TaskCreate(title=f"{c}x{c}").title == "x"]
    assert " " in stripped
    assert "\u3000" in stripped
    for c in stripped:
        assert _database_stores(migrated_db, TaskCreate(title=f"{c}Buy milk{c}").title)
        assert not _database_stores(migrated_db, f"{c}Buy milk{c}"), repr(c)


# A task the database stores is one TaskPublic renders, as a stream renders the trigger's copy of it
# (to_jsonb of the row): a version around TaskPublic's lowest, and each time column of tasks, whichever
# the migrations define, around Python's datetime range (a column added without 0015's range CHECK
# stores a time the API answers with a 500 on every list that reaches it).
_TASK = {
    "id": 1,
    "user_id": "agreement",
    "title": "x",
    "description": None,
    "completed": False,
    "created_at": "2026-01-01 00:00:00+00",
    "updated_at": "2026-01-01 00:00:00+00",
    "version": 1,
}
_TIMES = [
    "-infinity",
    "0001-12-31 23:59:59.999999+00 BC",
    "0001-01-01 00:00:00+00",
    "9999-12-31 23:59:59.999999+00",
    "10000-01-01 00:00:00+00",
    "infinity",
]


def _time_columns(db: Conn) -> list[str]:
    live = _live_columns(db, "tasks")
    return sorted(name for name, (data_type, _) in live.items() if data_type == "timestamp with time zone")


def _tasks_to_try(db: Conn) -> list[dict[str, Any]]:
    return [
        *({**_TASK, "version": version} for version in (-1, 0, 1, 2, 2**31 - 1)),
        *({**_TASK, column: time} for column in _time_columns(db) for time in _TIMES),
    ]


def _api_renders(db: Conn, task: dict[str, Any]) -> bool:
    with db.transaction():
        db.execute("set local timezone = 'UTC'")
        row = db.execute(
            "select to_jsonb(t) from jsonb_populate_record(null::tasks, %s) as t", [Jsonb(task)]
        ).fetchone()
    assert row is not None
    try:
        TaskPublic.model_validate(row[0])
    except ValidationError:
        return False
    return True


def _database_stores_task(db: Conn, task: dict[str, Any]) -> bool:
    # Every column but the id, which the database generates: a column added later is tried too.
    columns = sql.SQL(", ").join(map(sql.Identifier, sorted(set(_live_columns(db, "tasks")) - {"id"})))
    statement = sql.SQL("insert into tasks ({0}) select {0} from jsonb_populate_record(null::tasks, %s)")
    try:
        with db.transaction():
            db.execute(statement.format(columns), [Jsonb(task)])
    except psycopg.errors.CheckViolation:
        return False
    return True


def _tried(task: dict[str, Any]) -> dict[str, Any]:
    """What the task tries beside `_TASK`."""
    return {key: value for key, value in task.items() if value != _TASK.get(key)}


def test_the_database_stores_exactly_the_tasks_the_api_can_render(migrated_db: Conn) -> None:
    migrated_db.execute("insert into users (id) values ('agreement')")
    assert {"created_at", "updated_at"} <= set(_time_columns(migrated_db))
    tasks = _tasks_to_try(migrated_db)
    disagreements = [
        (_tried(task), _api_renders(migrated_db, task))
        for task in tasks
        if _database_stores_task(migrated_db, task) != _api_renders(migrated_db, task)
    ]
    assert disagreements == [], "the value tried, and whether the API renders it"
    # Both sides refuse something and store something, so the comparison has teeth.
    rendered = [_api_renders(migrated_db, task) for task in tasks]
    assert 0 < sum(rendered) < len(tasks)
    assert not _api_renders(migrated_db, {**_TASK, "version": 0})
