"""Where statements may be prepared: once per connection with SQL's PREPARE, and run with EXECUTE
inside the one message each transaction travels in (`api.db.database`; the PREPARE and EXECUTE
texts are `api.db.statements.CompiledStatement`'s).

Only where the session lasts: a pooler in transaction mode (PgBouncer, Neon's pooled endpoint) may
run the EXECUTE on a server connection where the PREPARE never ran. `reaches_postgres_itself` tells
a connection to Postgres from one to a pooler: a pooler hands its clients cancel keys of its own, so
the backend process id a connection was told at start-up is not that of the backend answering it.
`url_reaches_postgres_itself` asks it of a URL (LISTEN needs Postgres itself too: `api.db.listener`).
A pooler in session mode fails that test too, yet keeps each session for one client, which is what
DB_PREPARED_STATEMENTS=on is for; `sessions_pass_between_clients` tells the two apart where it can.
Where sessions turn out not to last, `preparing_setting` names the setting to blame and its fix, in
the same words for `todo-api serve`'s refusal and a worker's warning.
"""

import secrets
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from api.db.host_lookup import LookupBoundedAsyncConnection, LookupBoundedConnection


@dataclass(frozen=True)
class PreparingSetting:
    """The setting that asks for prepared statements, and how to stop asking where the database's
    sessions do not last from one transaction to the next."""

    name: str
    fix: str


def preparing_setting(*, prepare_threshold: int | None, prepared_statements: str) -> PreparingSetting:
    """DB_PREPARE_THRESHOLD when set (psycopg prepares at the protocol level), else
    DB_PREPARED_STATEMENTS as given."""
    if prepare_threshold is not None:
        return PreparingSetting(
            "DB_PREPARE_THRESHOLD",
            "unset DB_PREPARE_THRESHOLD, or give PgBouncer 1.21+ max_prepared_statements",
        )
    if prepared_statements == "on":
        return PreparingSetting(
            "DB_PREPARED_STATEMENTS=on",
            "set DB_PREPARED_STATEMENTS=auto (it prepares only on connections to Postgres itself), "
            "or run the pooler in session mode",
        )
    # auto: a session that passed `reaches_postgres_itself` did not last (off prepares nothing).
    return PreparingSetting(f"DB_PREPARED_STATEMENTS={prepared_statements}", "set DB_PREPARED_STATEMENTS=off")


async def reaches_postgres_itself(connection: psycopg.AsyncConnection[Any]) -> bool:
    """Whether the connection's session is one Postgres backend, not a pooler's."""
    async with connection.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute("SELECT pg_backend_pid()")
        row = await cursor.fetchone()
    return row == (connection.info.backend_pid,)


async def url_reaches_postgres_itself(conninfo: str) -> bool:
    """`reaches_postgres_itself`, over a connection of its own to `conninfo`, closed again."""
    async with await LookupBoundedAsyncConnection.connect(
        conninfo, autocommit=True, prepare_threshold=None
    ) as connection:
        return await reaches_postgres_itself(connection)


def sessions_pass_between_clients(conninfo: str, *, protocol_level: bool) -> bool:
    """Whether a statement one connection prepares shows in another connection's session: proof that
    the pooler hands a server session from client to client (transaction mode), so that a statement
    prepared in one transaction may be missing, or another client's, in the next. False proves
    nothing: the other connection may have been given another server session.

    `protocol_level`: prepared as psycopg's DB_PREPARE_THRESHOLD does (a Parse message), which
    PgBouncer 1.21+ with max_prepared_statements keeps per client under names of its own, so that it
    never shows under ours; else with SQL's PREPARE, as DB_PREPARED_STATEMENTS=on does. Blocking:
    run it in a thread. What it prepared is deallocated wherever it is seen.
    """
    name = f"todo_api_probe_{secrets.token_hex(8)}"
    with (
        LookupBoundedConnection.connect(conninfo, autocommit=True, prepare_threshold=None) as preparing,
        LookupBoundedConnection.connect(conninfo, autocommit=True, prepare_threshold=None) as looking,
    ):
        if protocol_level:
            result = preparing.pgconn.prepare(name.encode(), b"SELECT 1")
            if result.status != psycopg.pq.ExecStatus.COMMAND_OK:
                raise psycopg.OperationalError(result.get_error_message())
        else:
            preparing.execute(f"PREPARE {name} AS SELECT 1")
        # In one transaction, so that a pooler in transaction mode keeps the same server session
        # from the look to the DEALLOCATE.
        with looking.transaction():
            row = looking.execute(
                "SELECT exists (SELECT FROM pg_catalog.pg_prepared_statements WHERE name = %s)", [name]
            ).fetchone()
            seen = row is not None and bool(row[0])
            if seen:
                looking.execute(f"DEALLOCATE {name}")
    return seen
