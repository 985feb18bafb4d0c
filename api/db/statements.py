"""Each statement shape compiled once, holding what every way of sending it needs.

`compiled` turns a SQLAlchemy statement into one `CompiledStatement`, cached per shape: SQLAlchemy's
compilation with the psycopg dialect (placeholders `%(name)s`, bound by psycopg), the values the
statement carries itself, and its prepared form. Nothing is compiled twice, so nothing depends on
two compilations agreeing on the names of their parameters.

The prepared form (`api.db.prepared` says where a connection may prepare) is made from that same
text. `prepare` is `PREPARE name AS <the text>` with each placeholder bound, by psycopg's own
client-side binding, to `$n`, its position in `parameters` (`_Position`): nothing is rewritten by
hand. `execute`, sent instead of the text, is `EXECUTE name(<the values>)`, in the same order, bound
by psycopg like any other value.

Postgres then parses, rewrites (applying the row-level security policies) and plans a statement
once per connection rather than once per request: compare "one message" with "one message,
prepared" in `python -m bench.transaction_paths`. Preparing decides nothing about who sees what.
Postgres re-applies the policies to a prepared statement whenever the role that runs it changes, so
the statement prepared by the login role runs under todo_app's policies, and every test of isolation
runs over prepared statements too.
"""

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.sql.elements import ClauseElement

from api.db.listener import CHANNEL, wake_tag

_DIALECT = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]
_NAMES = itertools.count(1)

# The unprivileged role every transaction switches to; the policies (sql/policies) are written for it.
APP_ROLE = "todo_app"

# An empty search_path for every transaction of the API's, set with its other settings: a name the
# statement leaves unqualified (lower, strpos, =, a collation) is then only ever pg_catalog's, and its
# tables are named with their schema (api/tasks/models.py). On the default path ("$user", public) a
# role that may create in schema public, given it by a DBA, made `public.lower(varchar)` and an `=`
# for (text, varchar): an exact match for the statements' VARCHAR parameters, which Postgres picks
# over the built-in one, so they ran in each user's transaction, as todo_app, with app.user_id set,
# and wrote other users' titles where that role could read them (the database-settings probe of stop
# 81). A PREPARE is made under the same path (`prepare_in_a_transaction`), or an
# EXECUTE would parse its statement again whenever the two differ (Postgres's PREPARE notes).
NAMES_ONLY_PG_CATALOG = "pg_catalog.set_config('search_path', '', true)"

# The identity and limits of one request, as the first statement of its transaction: who it is
# for, the task quota the database enforces (sql/migrations/0003_task_quota.sql), and how long a
# statement may run. Parameter names start with app_, which no statement in api.tasks.queries uses;
# `as_user_values` gives their values. How long the live-changes events are kept is set the same
# way: the trigger that writes them purges (sql/migrations/0008_task_events.sql). And the trigger is
# told that a write wakes the streams itself, after COMMIT (`WAKE_STREAMS`,
# sql/migrations/0009_wake_after_commit.sql). While a statement runs, Postgres checks every second
# that the worker is still there, and ends the session of one killed (the OOM killer): a write
# waiting on a row lock would otherwise commit once the lock went, after its client had been reset
# and had read the task unchanged (tests/test_cli_workers.py, the worker killed outright).
# The search_path is empty (`NAMES_ONLY_PG_CATALOG`).
ACT_AS_USER = text(
    f"SELECT pg_catalog.set_config('role', '{APP_ROLE}', true),"
    " pg_catalog.set_config('app.user_id', :app_user_id, true),"
    " pg_catalog.set_config('app.max_tasks_per_user', :app_max_tasks, true),"
    " pg_catalog.set_config('app.events_retention_hours', :app_events_retention_hours, true),"
    " pg_catalog.set_config('app.notify_after_commit', 'on', true),"
    " pg_catalog.set_config('statement_timeout', :app_statement_timeout, true),"
    " pg_catalog.set_config('client_connection_check_interval', '1s', true),"
    " pg_catalog.set_config('TimeZone', 'UTC', true),"
    " pg_catalog.set_config('DateStyle', 'ISO', true),"
    f" {NAMES_ONLY_PG_CATALOG}"
)

# What a write sends after its COMMIT, outside any transaction: the NOTIFY the trigger would have
# sent, with the caller's tag (`api.db.listener.wake_tag`). Outside a transaction it changes no
# data, so its commit waits for no WAL flush and holds Postgres's NOTIFY lock only for an instant.
WAKE_STREAMS = text(f"SELECT pg_catalog.pg_notify('{CHANNEL}', :app_wake_tag)")


def as_user_values(
    user_id: str, *, max_tasks: str, events_retention_hours: str, statement_timeout_ms: str, read_only: bool
) -> dict[str, object]:
    """The values `ACT_AS_USER` binds for one transaction of `user_id` (settings are text, as
    set_config takes them), and for a write the tag `WAKE_STREAMS` sends after it."""
    values: dict[str, object] = {
        "app_user_id": user_id,
        "app_max_tasks": max_tasks,
        "app_events_retention_hours": events_retention_hours,
        "app_statement_timeout": statement_timeout_ms,
    }
    if not read_only:
        values["app_wake_tag"] = wake_tag(user_id)
    return values


@dataclass(frozen=True, slots=True)
class CompiledStatement:
    # The statement, its values bound by psycopg: client-side in the one message, server-side in a
    # pipeline.
    sql: str
    # Values the statement carries itself (constants such as a literal flag); requests add theirs.
    constants: Mapping[str, object]
    # The name a connection prepares it under.
    name: str
    # Every parameter once, in the order the EXECUTE passes them: `$n` is the nth.
    parameters: tuple[str, ...]
    # Sent in the transaction's message instead of `sql` once prepared.
    execute: str

    def params(self, values: Mapping[str, object]) -> dict[str, object]:
        return {**self.constants, **values}

    def prepare(self, connection: psycopg.AsyncConnection[Any]) -> str:
        """`PREPARE name AS <sql>`, sent once per connection, in a transaction of its own
        (`prepare_in_a_transaction`)."""
        cursor = psycopg.AsyncClientCursor(connection)
        cursor.adapters.register_dumper(_Position, _PositionDumper)
        positions = {name: _Position(n) for n, name in enumerate(self.parameters, 1)}
        return f"PREPARE {self.name} AS {cursor.mogrify(self.sql, positions)}"


@lru_cache(maxsize=512)
def compiled(statement: ClauseElement) -> CompiledStatement:
    """The statement shape, compiled once; psycopg binds the values."""
    result = statement.compile(dialect=_DIALECT)
    parameters = tuple(result.params)
    constants = {name: value for name, value in result.params.items() if value is not None}
    name = f"todo_api_{next(_NAMES)}"
    values = ", ".join(f"%({parameter})s" for parameter in parameters)
    execute = f"EXECUTE {name}({values})" if values else f"EXECUTE {name}"
    return CompiledStatement(str(result), constants, name, parameters, execute)


def begin(*, read_only: bool) -> str:
    """The transaction's BEGIN. READ COMMITTED whatever the database's default_transaction_isolation:
    each statement is written for it (a write that waited for a row lock reads the row as that lock
    left it, an If-Match included), where under a DBA's repeatable read or serializable default some
    of a user's concurrent writes failed to serialize, a 503 that said the database was away."""
    return (
        "BEGIN READ ONLY, ISOLATION LEVEL READ COMMITTED"
        if read_only
        else "BEGIN ISOLATION LEVEL READ COMMITTED"
    )


def prepare_in_a_transaction(prepare: str, *, statement_timeout_ms: int) -> str:
    """A PREPARE in a transaction of its own, under the statement timeout its statement gets, as one
    message. A PREPARE waits for its tables' locks as the statement does (a DBA's LOCK TABLE); outside
    a transaction it had the session's timeout, none, and waited until the API gave the answer up, a
    write whose outcome it could not tell though nothing but the PREPARE had been sent. Sent as three
    messages, it cost a statement's first run on a connection two round trips more, which far from the
    database is what counts (the database-far-away probe of stop 80: 5 round trips at 20 ms away, 3 in
    one message). A statement that fails skips the rest, COMMIT included, and leaves the transaction
    for the caller to roll back."""
    timeout = f"pg_catalog.set_config('statement_timeout', '{statement_timeout_ms:d}', true)"
    return f"BEGIN; SELECT {timeout}, {NAMES_ONLY_PG_CATALOG}; {prepare}; COMMIT"


@lru_cache(maxsize=1024)
def one_message(statement: ClauseElement, *, read_only: bool, prepared: bool) -> str:
    """The whole transaction as one simple-protocol message: BEGIN; settings; statement; COMMIT;
    and for a write, `WAKE_STREAMS` after it. With `prepared`, the statement is the EXECUTE of its
    prepared form."""
    body = compiled(statement).execute if prepared else compiled(statement).sql
    parts = [begin(read_only=read_only), compiled(ACT_AS_USER).sql, body, "COMMIT"]
    if not read_only:
        parts.append(compiled(WAKE_STREAMS).sql)
    return ";\n".join(parts)


@dataclass(frozen=True, slots=True)
class _Position:
    """A parameter's place in a prepared statement, bound into its text as `$n`."""

    number: int


class _PositionDumper(Dumper):
    """psycopg's client-side binding writes what `quote` returns where the placeholder stood."""

    def quote(self, obj: _Position) -> bytes:
        return f"${obj.number}".encode()

    def dump(self, obj: _Position) -> bytes:
        raise TypeError("a position is only ever bound into a statement's text")
