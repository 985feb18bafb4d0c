"""Every statement the API sends about tasks, as ready-to-use SQLModel/SQLAlchemy statements.

Each one runs inside `Database.run`, where row-level security decides which rows exist. The
owner filters below (`api.tasks.ownership`) are for the planner (they let it pick the
tasks_by_owner_* indexes); correctness never depends on them: without them the policies return
exactly the same rows, which tests/api/test_other_users_tasks.py proves.

Statements are built once per shape with bind parameters, and a request supplies only the
values (`Query`): the database layer compiles each shape once, not once per request.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cache, partial
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    ColumnElement,
    Delete,
    Insert,
    Integer,
    Interval,
    String,
    Update,
    all_,
    and_,
    any_,
    bindparam,
    cast,
    delete,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.elements import ClauseElement
from sqlmodel import col

from api.auth.principal import Principal
from api.db.database import Query
from api.tasks import ownership
from api.tasks.listing import SORT_KEYS, SortKey, SortOrder, TaskListParams
from api.tasks.models import IdempotencyKey, Task, TaskBase, TaskCreate, TaskPublic, User

_TASKS = Task.__table__  # type: ignore[attr-defined]
# What every statement returns: a task as the API shows it, field by field.
_TASK_COLUMNS = tuple(_TASKS.c[name] for name in TaskPublic.model_fields)
# What a client writes, each bound as its column's type: a create's values, an update's changes.
_WRITTEN = {name: bindparam(name, type_=_TASKS.c[name].type) for name in TaskBase.model_fields}

_USER_ID = bindparam("user_id", type_=String())
_TASK_ID = bindparam("task_id", type_=BigInteger())
_OWN_TASK = (ownership.owner_filter(col(Task.user_id), _USER_ID), col(Task.id) == _TASK_ID)


@cache
def _list_statement(
    *, by_completed: bool, searching: bool, sort: SortKey, order: SortOrder, paging: bool
) -> ClauseElement:
    sort_key = SORT_KEYS[sort]
    sort_column = sort_key.sort_expression
    ascending = order == "asc"
    statement = select(*_TASK_COLUMNS).where(ownership.owner_filter(col(Task.user_id), _USER_ID))
    if by_completed:
        statement = statement.where(col(Task.completed) == bindparam("completed", type_=Boolean()))
    if searching:
        # A case-insensitive substring test: strpos does not backtrack as ILIKE '%...%' does on a
        # crafted text (`python -m bench.search` times both), and it has no pattern syntax to
        # escape. It reads only the caller's rows, found through a tasks_by_owner_* index: under
        # row-level security no index can serve the test itself (its operators are not leakproof).
        needle = func.lower(bindparam("search", type_=String()))
        statement = statement.where(
            or_(
                func.strpos(func.lower(col(Task.title)), needle) > 0,
                func.strpos(func.lower(col(Task.description)), needle) > 0,
            )
        )
    if paging:
        position = tuple_(sort_column, col(Task.id))
        last_seen = tuple_(bindparam("after_value", type_=sort_key.column.type), bindparam("after_id"))
        statement = statement.where(position > last_seen if ascending else position < last_seen)
    order_by = (
        (sort_column.asc(), col(Task.id).asc()) if ascending else (sort_column.desc(), col(Task.id).desc())
    )
    return statement.order_by(*order_by).limit(bindparam("limit", type_=BigInteger()))


def list_tasks(user_id: str, listing: TaskListParams) -> Query:
    """One page, plus one row more so the caller knows whether another page follows."""
    completed, after = listing.completed, listing.cursor
    statement = _list_statement(
        by_completed=completed is not None,
        searching=bool(listing.q),
        sort=listing.sort,
        order=listing.sort_order,
        paging=after is not None,
    )
    params: dict[str, object] = {"user_id": user_id, "limit": listing.limit + 1}
    if completed is not None:
        params["completed"] = completed
    if listing.q:
        params["search"] = listing.q
    if after is not None:
        params["after_value"] = after.value
        params["after_id"] = after.task_id
    # A search tests `q` against every task the other parameters leave: its cost is the caller's to
    # choose, up to DB_STATEMENT_TIMEOUT_MS of a database core, so a user's run one at a time.
    return Query(statement, params, one_at_a_time=bool(listing.q))


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


# A write also brings the caller's user row up to date, in the same statement: the first write creates
# it (tasks.user_id references it), and a token with a new email or name refreshes it. Each write's
# Query also carries the statement without it, for owners whose row is stored (api/db/stored_owners.py):
# a departure measured to pay, docs/performance.md, "Writes without the owner-row upsert".
_USER_ROW = _upsert_user().cte("user_row")

# How every write is built: `build(owner_row)` is the write, with the `_USER_ROW` upsert when
# `owner_row`. Builders are cached, so each shape is one statement object, compiled once
# (api/db/statements.py).
_WriteBuilder = Callable[[bool], ClauseElement]


def _write(owner: Principal, build: _WriteBuilder, values: Mapping[str, object]) -> Query:
    """A write for `owner`, in both of its forms: with the upsert of the owner's user row, and
    without it. Built here, so no write can leave the shorter form out. The values fill both (the
    upsert's are the owner's id, email and name)."""
    user_row = {"user_id": owner.id, "email": owner.email, "name": owner.name}
    return Query(build(True), {**user_row, **values}, read_only=False, without_owner_row=build(False))


@cache
def _create_task_statement(owner_row: bool) -> ClauseElement:
    insert = pg_insert(Task).values(user_id=_USER_ID, **_WRITTEN)
    return (insert.add_cte(_USER_ROW) if owner_row else insert).returning(*_TASK_COLUMNS)


def create_task(owner: Principal, data: TaskCreate) -> Query:
    return _write(owner, _create_task_statement, data.model_dump())


# --- Creates with an Idempotency-Key ---------------------------------------------------------------
#
# A key names the task it created (sql/migrations/0007_deleted_means_gone.sql): a replay shows that
# task as it is now, and a key whose task was deleted is a tombstone (task_id NULL).

_KEY = bindparam("key", type_=String())
# Cast, not only typed: a prepared statement (api/db/statements.py) must know `now() + $n` adds an
# interval, and psycopg's dialect writes no cast for an Interval.
_TTL = cast(bindparam("ttl", type_=Interval()), Interval())
_KEYS = IdempotencyKey.__table__  # type: ignore[attr-defined]
_CALLERS_KEY = ownership.owner_filter(_KEYS.c.user_id, _USER_ID)
_EXPIRED = _KEYS.c.expires_at <= func.now()

# The caller's unexpired key: its request hash, and its task as it is now, or NULL once deleted. The
# join names the key's owner as well as the task's id, as the key's foreign key does.
_REMEMBERED = (
    select(_KEYS.c.request_hash, func.to_jsonb(_TASKS.table_valued()).label("task"))
    .select_from(
        _KEYS.outerjoin(_TASKS, and_(_TASKS.c.user_id == _KEYS.c.user_id, _TASKS.c.id == _KEYS.c.task_id))
    )
    .where(_CALLERS_KEY, _KEYS.c.key == _KEY, ~_EXPIRED)
)


@cache
def _create_task_once(owner_row: bool) -> ClauseElement:
    """Create the task and store the key naming it, unless the key is stored already.

    One statement, so the key is stored in the transaction that creates the task. A repeat of a
    stored key creates nothing and answers with the key's task as it is now; a concurrent first use
    of the same key waits for the other at the key's primary key, then fails (unique violation) and
    creates nothing.

    It also bounds what is stored: the caller's expired keys go, and so do the caller's oldest
    tombstones past `tombstones_kept` as the statement's snapshot has them (every other key names a
    live task, so with MAX_TASKS_PER_USER kept a user holds at most twice the quota in keys, and one
    more for each delete committed after that snapshot, until the next keyed create); other users'
    expired keys go a batch at a time, by a trigger on the keys' table
    (app.forget_expired_idempotency_keys), so no background worker is needed and the statement names
    nothing in schema app, which the login role it is prepared as cannot look up (api/db/prepared.py).
    The key being used stays, expired or not: the same statement cannot remove a key and store it
    again (see `forget_expired_keys`).
    """
    previous = _REMEMBERED.cte("previous")
    tombstones_past_the_newest = (
        select(_KEYS.c.key)
        .where(_CALLERS_KEY, _KEYS.c.task_id.is_(None))
        .order_by(_KEYS.c.expires_at.desc(), _KEYS.c.key)
        .offset(bindparam("tombstones_kept", type_=BigInteger()))
    )
    forgotten = (
        delete(_KEYS)
        .where(_CALLERS_KEY, _KEYS.c.key != _KEY, or_(_EXPIRED, _KEYS.c.key.in_(tombstones_past_the_newest)))
        .cte("forgotten")
    )
    created = (
        pg_insert(Task)
        .from_select(
            ["user_id", *_WRITTEN],
            select(_USER_ID, *_WRITTEN.values()).where(~exists(select(previous.c.request_hash))),
        )
        .returning(*_TASK_COLUMNS)
        .cte("created")
    )
    request_hash = bindparam("request_hash", type_=String())
    remembered = (
        pg_insert(IdempotencyKey)
        .from_select(
            ["user_id", "key", "request_hash", "task_id", "expires_at"],
            select(_USER_ID, _KEY, request_hash, created.c.id, func.now() + _TTL),
        )
        .cte("remembered")
    )
    return (
        select(
            literal("created").label("outcome"),
            request_hash.label("request_hash"),
            func.to_jsonb(created.table_valued()).label("task"),
        )
        .union_all(select(literal("previous"), previous.c.request_hash, previous.c.task))
        .add_cte(*((_USER_ROW,) if owner_row else ()), remembered, forgotten)
    )


def create_task_once(
    owner: Principal, data: TaskCreate, key: str, request_hash: str, ttl: timedelta, *, tombstones_kept: int
) -> Query:
    """Rows: (outcome 'created' or 'previous', request_hash, task), see `_create_task_once`; `task`
    is the task as it is now, or None when it was deleted."""
    values = {
        **data.model_dump(),
        "key": key,
        "request_hash": request_hash,
        "ttl": ttl,
        "tombstones_kept": tombstones_kept,
    }
    return _write(owner, _create_task_once, values)


def remembered(user_id: str, key: str) -> Query:
    """The unexpired key's request hash and task (None once deleted), if the caller stored the key."""
    return Query(_REMEMBERED, {"user_id": user_id, "key": key})


_FORGET_EXPIRED = delete(_KEYS).where(_CALLERS_KEY, _EXPIRED)


def forget_expired_keys(user_id: str) -> Query:
    """All of the user's expired keys, for when the key being used again is one of them."""
    return Query(_FORGET_EXPIRED, {"user_id": user_id}, read_only=False)


# --- Updates and deletes, unconditional or on If-Match and If-None-Match ----------------------------

_VERSIONS = bindparam("versions", type_=ARRAY(Integer()))
_NOT_VERSIONS = bindparam("not_versions", type_=ARRAY(Integer()))

# Whether an update changed the task, for the access line (api/http/request_telemetry.py): its version
# moves exactly when its content does (tasks_record_change, sql/migrations/0005), and the subquery
# reads the version before, as the statement's snapshot has it. No round trip, no lock more. A write
# that waited for another request's change to the same task compares with the version from before
# that change, so it counts as a change even if it then left the task as it was: rare, and a line
# too many rather than a change unlogged.
_BEFORE = _TASKS.alias("before")
_CHANGED = col(Task.version) != (
    select(_BEFORE.c.version)
    .where(_BEFORE.c.user_id == col(Task.user_id), _BEFORE.c.id == col(Task.id))
    .scalar_subquery()
)


@dataclass(frozen=True, slots=True)
class Conditions:
    """What a write's If-Match and If-None-Match ask of the task's version: one of `versions` (None:
    any), none of `not_versions` (None: no such condition)."""

    versions: Sequence[int] | None = None
    not_versions: Sequence[int] | None = None

    @property
    def shape(self) -> tuple[bool, bool]:
        """Which of the two the statement tests: each pair is one statement shape."""
        return self.versions is not None, self.not_versions is not None

    def params(self, task_id: int) -> dict[str, object]:
        params: dict[str, object] = {"task_id": task_id}
        if self.versions is not None:
            params["versions"] = list(self.versions)
        if self.not_versions is not None:
            params["not_versions"] = list(self.not_versions)
        return params


ANY_VERSION = Conditions()


def _conditional_write(
    write: Update | Delete,
    returned: tuple[Any, ...],
    *,
    conditions: tuple[bool, bool],
    owner_row: bool,
    changed: ColumnElement[bool] | None = None,
) -> ClauseElement:
    """`write` returning `returned`, and with `changed` (when given) whether it changed the task;
    with `conditions` (`Conditions.shape`), only if the task's version is one of `versions` and none
    of `not_versions`, decided in the write's own WHERE (re-read under the row's lock), and with the
    task as it is when it was not written. Rows then carry `written`; none means no such task. A
    check made by a read before the write would let a write another request made meanwhile slip
    between the two.

    The task as it is is read under a lock as well (FOR SHARE): a plain read would see the row as
    the statement's snapshot had it, before a write the statement waited for, and answer 412 with
    the ETag the client sent, or name a task deleted meanwhile. A locking read waits for that write
    and sees what it committed, or no row (404). FOR KEY SHARE would not do: it does not wait for
    an update that leaves the key alone, and returns the old row. The lock costs nothing on a write
    that succeeds, which never reads this way; under row-level security, the policy for UPDATE
    applies to it too, and is the owner's, as for SELECT.
    """
    ctes = (_USER_ROW,) if owner_row else ()
    answered = returned if changed is None else (*returned, changed.label("changed"))
    if_match, if_none_match = conditions
    if not (if_match or if_none_match):
        return write.add_cte(*ctes).returning(*answered)
    if if_match:
        write = write.where(col(Task.version) == any_(_VERSIONS))
    if if_none_match:
        write = write.where(col(Task.version) != all_(_NOT_VERSIONS))
    done = write.returning(*answered).cte("done")
    not_written = returned if changed is None else (*returned, false().label("changed"))
    # A CTE, since Postgres allows no FOR SHARE in a UNION's arm.
    as_it_is = (
        select(*not_written)
        .where(*_OWN_TASK, ~exists(select(done.c.id)))
        .with_for_update(read=True)
        .cte("as_it_is")
    )
    return (
        select(*done.c, true().label("written"))
        .union_all(select(*as_it_is.c, false().label("written")))
        .add_cte(*ctes)
    )


@cache
def _update_statement(
    fields: frozenset[str], conditions: tuple[bool, bool], owner_row: bool
) -> ClauseElement:
    write = update(Task).where(*_OWN_TASK).values({field: _WRITTEN[field] for field in sorted(fields)})
    return _conditional_write(
        write, _TASK_COLUMNS, conditions=conditions, owner_row=owner_row, changed=_CHANGED
    )


def update_task(
    owner: Principal, task_id: int, changes: Mapping[str, object], conditions: Conditions = ANY_VERSION
) -> Query:
    """Only the fields sent change; the others keep their value. `conditions`: see `_conditional_write`."""
    build = partial(_update_statement, frozenset(changes), conditions.shape)
    return _write(owner, build, {**conditions.params(task_id), **changes})


@cache
def _toggle_statement(conditions: tuple[bool, bool], owner_row: bool) -> ClauseElement:
    write = update(Task).where(*_OWN_TASK).values(completed=~col(Task.completed))
    # A toggle always changes the task.
    return _conditional_write(
        write, _TASK_COLUMNS, conditions=conditions, owner_row=owner_row, changed=true()
    )


def set_completed(
    owner: Principal, task_id: int, completed: bool | None, conditions: Conditions = ANY_VERSION
) -> Query:
    """`completed=None` toggles; a value sets it, so a retried request lands in the same state."""
    if completed is None:
        build = partial(_toggle_statement, conditions.shape)
        return _write(owner, build, conditions.params(task_id))
    return update_task(owner, task_id, {"completed": completed}, conditions)


@cache
def _delete_statement(conditions: tuple[bool, bool], owner_row: bool) -> ClauseElement:
    returned = (col(Task.id), col(Task.version))
    return _conditional_write(
        delete(Task).where(*_OWN_TASK), returned, conditions=conditions, owner_row=owner_row
    )


def delete_task(owner: Principal, task_id: int, conditions: Conditions = ANY_VERSION) -> Query:
    return _write(owner, partial(_delete_statement, conditions.shape), conditions.params(task_id))
