r"""pgbench scripts with the very SQL the API sends, generated from api.db and api.tasks.queries.

Each statement is built by the same function the route calls, with sentinel values where the request
would put its own (the user id, a task id, a title), and compiled with the dialect the API uses
(psycopg 3). The placeholders are then filled in: sentinels become pgbench variables or expressions,
everything else the literal the API would bind. So a change to the queries changes the scripts, and
the scripts keep the API's casts and shape: the transaction is the one `Database.run` sends,
BEGIN (READ ONLY for reads), the set_config select, the statement and COMMIT, and for a write the
NOTIFY that wakes the user's streams after COMMIT (`WAKE_STREAMS`), as one compound
simple-protocol message (`\;`, run with -M simple), or as one pipeline of prepared statements
(\startpipeline ... \endpipeline, -M prepared). bench.run runs both and takes the faster as the ceiling.

`python -m bench.pgbench_scripts` prints them (`--prepared` for the pipelines).
"""

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.sql.expression import ClauseElement

from api.auth.principal import Principal
from api.db import statements as db_statements
from api.db.database import Query
from api.db.listener import wake_tag
from api.settings import Settings
from api.tasks import queries
from api.tasks.listing import TaskListParams
from api.tasks.models import TaskCreate
from bench.dataset import user_email_sql, user_id_sql, user_name_sql
from bench.scenarios import LIST_PAGE_SIZE

_USER = "bench-sentinel-user"
_EMAIL = "bench-sentinel-email"
_NAME = "bench-sentinel-name"
_NEW_TITLE = "bench-sentinel-title"
_TASK_ID = 987_654_321_987

# What pgbench puts where the request would put its own values (see the \set lines below).
_PGBENCH_VALUES: dict[object, str] = {
    _USER: user_id_sql(":u"),
    # pgbench cannot hash: the tag is computed in SQL, as the trigger computes it for other writers.
    wake_tag(_USER): f"left(md5({user_id_sql(':u')}), 8)",
    _EMAIL: user_email_sql(":u"),
    _NAME: user_name_sql(":u"),
    _NEW_TITLE: "('Benchmark task ' || (:n)::text)",
    _TASK_ID: "(:task_id)",
}

# A user from the same sample the wrk scripts use, one of their tasks, and a number for titles.
_PICK_USER = r"""\set k random(0, :sample - 1)
\set u 1 + :k * :stride
"""
_PICK_TASK = r"""\set task_id (:u - 1) * :tasks + random(1, :tasks)
"""
_PICK_NUMBER = r"""\set n random(1, 1000000000)
"""
# The delete scenario's next task (bench/deletable.py): this client's deletes take the pool's positions
# client_id, client_id + clients, ..., going round the sample's users (pgbench keeps a client's
# variables from one transaction to the next; bench.pgbench defines deletes=0 and clients).
_PICK_DELETABLE = r"""\set position :deletes * :clients + :client_id
\set deletes :deletes + 1
\set k :position % :sample
\set u 1 + :k * :stride
\set task_id :deletable_first + :k * :deletable_per_user + :position / :sample
"""

_DIALECT = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]
_PLACEHOLDER = re.compile(r"%%|%\((\w+)\)s")


@dataclass(frozen=True)
class Transaction:
    """One request's transaction: what `Database.run` wraps around `query`."""

    query: Query
    picks: str


def _transactions() -> dict[str, Transaction]:
    principal = Principal(_USER, email=_EMAIL, name=_NAME)
    first_page = TaskListParams(limit=LIST_PAGE_SIZE)
    return {
        "list": Transaction(queries.list_tasks(_USER, first_page), _PICK_USER),
        "get": Transaction(queries.get_task(_USER, _TASK_ID), _PICK_USER + _PICK_TASK),
        "create": Transaction(
            queries.create_task(principal, TaskCreate(title=_NEW_TITLE)), _PICK_USER + _PICK_NUMBER
        ),
        "toggle": Transaction(queries.set_completed(principal, _TASK_ID, None), _PICK_USER + _PICK_TASK),
        "update": Transaction(
            queries.update_task(principal, _TASK_ID, {"title": _NEW_TITLE}),
            _PICK_USER + _PICK_TASK + _PICK_NUMBER,
        ),
        "delete": Transaction(queries.delete_task(principal, _TASK_ID), _PICK_DELETABLE),
    }


def _literal(value: object) -> str:
    if value in _PGBENCH_VALUES:
        return _PGBENCH_VALUES[value]
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no pgbench literal for {value!r}")


def _sql(statement: ClauseElement, values: Mapping[str, object] | None = None) -> str:
    compiled = statement.compile(dialect=_DIALECT)
    params = compiled.construct_params(dict(values or {})) or {}

    def fill(match: re.Match[str]) -> str:
        return "%" if match.group(0) == "%%" else _literal(params[match.group(1)])

    text = _PLACEHOLDER.sub(fill, str(compiled))
    return "\n".join(line.rstrip() for line in text.splitlines()) + ";"


def _as_user(statement_timeout_ms: int) -> dict[str, object]:
    """What the API binds in `ACT_AS_USER` and, after a write, `WAKE_STREAMS`."""
    return db_statements.as_user_values(
        _USER,
        max_tasks=str(_default("max_tasks_per_user")),
        events_retention_hours=str(Settings.model_fields["events_retention_hours"].default),
        statement_timeout_ms=str(statement_timeout_ms),
        read_only=False,
    )


def _default(setting: str) -> int:
    default = Settings.model_fields[setting].default
    assert isinstance(default, int)
    return default


def default_statement_timeout_ms() -> int:
    return _default("db_statement_timeout_ms")


def list_statement_for(user_number: int) -> str:
    """The API's first-page list query for one user, as plain SQL (for EXPLAIN)."""
    query = _transactions()["list"].query
    statement = _sql(query.statement, query.params)
    return statement.replace("(:u)", str(user_number))


def scripts(statement_timeout_ms: int | None = None, *, prepared: bool = False) -> dict[str, str]:
    """Scenario name -> pgbench script, for -D sample=..., stride=... and tasks=... (see bench.run).

    By default one message of the statements joined with pgbench's `\\;` (run with -M simple); with
    `prepared`, the statements in one pipeline (run with -M prepared).
    """
    timeout = statement_timeout_ms if statement_timeout_ms is not None else default_statement_timeout_ms()
    as_user = _as_user(timeout)
    act = _sql(db_statements.ACT_AS_USER, as_user)
    generated = {}
    for name, transaction in _transactions().items():
        query = transaction.query
        # What the API sends once it has stored the caller's user row (the dataset has every row):
        # a write without the upsert (api/db/stored_owners.py).
        statement = query.statement if transaction.query.read_only else query.for_stored_owner().statement
        statements = [
            db_statements.begin(read_only=transaction.query.read_only) + ";",
            act,
            _sql(statement, query.params),
            "COMMIT;",
        ]
        if not transaction.query.read_only:
            statements.append(_sql(db_statements.WAKE_STREAMS, as_user))
        if prepared:
            body = ["\\startpipeline", *statements, "\\endpipeline"]
        else:
            body = [" \\;\n".join(statement.removesuffix(";") for statement in statements) + ";"]
        generated[name] = "\n".join(
            [
                f"-- {name}: generated by bench/pgbench_scripts.py from the API's statements; do not edit.",
                transaction.picks.rstrip("\n"),
                *body,
                "",
            ]
        )
    return generated


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.pgbench_scripts",
        description="Prints the pgbench scripts bench.run times, with the very SQL the API sends.",
    )
    parser.add_argument("--prepared", action="store_true", help="the pipelines of prepared statements")
    for text in scripts(prepared=parser.parse_args().prepared).values():
        print(text)
