"""Statements prepared once per connection with SQL's PREPARE, and run with EXECUTE inside the one
message each transaction travels in (`api.db.database`).

Postgres then parses, rewrites (applying the row-level security policies) and plans a statement
once per connection rather than once per request: bench/RESULTS.md, "Fifth session". Preparing
decides nothing about who sees what. Postgres re-applies the policies to a prepared statement
whenever the role that runs it changes, so the statement prepared by the login role runs under
todo_app's policies, and every test of isolation runs over prepared statements too.

Only where the session lasts: a pooler in transaction mode (PgBouncer, Neon's pooled endpoint) may
run the EXECUTE on a server connection where the PREPARE never ran. `reaches_postgres_itself` tells
a connection to Postgres from one to a pooler: a pooler hands its clients cancel keys of its own, so
the backend process id a connection was told at start-up is not that of the backend answering it.
"""

import itertools
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.rows import tuple_row

_PLACEHOLDER = re.compile(r"%%|%\((\w+)\)s")
_NAMES = itertools.count(1)


@dataclass(frozen=True, slots=True)
class PreparedStatement:
    name: str
    # Sent once per connection, outside any transaction: PREPARE name AS <the statement, with $n>.
    prepare: str
    # Sent in the transaction's message instead of the statement: EXECUTE name(<its values>), bound
    # by psycopg like the statement's own placeholders would have been.
    execute: str


@lru_cache(maxsize=512)
def prepared_statement(sql: str) -> PreparedStatement:
    """The statement `sql` (psycopg's `%(name)s` placeholders) under a name of its own."""
    names: list[str] = []

    def positional(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"  # PREPARE is sent without values, so psycopg does not unescape it
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    body = _PLACEHOLDER.sub(positional, sql)
    name = f"todo_api_{next(_NAMES)}"
    values = ", ".join(f"%({value})s" for value in names)
    execute = f"EXECUTE {name}({values})" if names else f"EXECUTE {name}"
    return PreparedStatement(name, f"PREPARE {name} AS {body}", execute)


async def reaches_postgres_itself(connection: psycopg.AsyncConnection[Any]) -> bool:
    """Whether the connection's session is one Postgres backend, not a pooler's."""
    async with connection.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute("SELECT pg_backend_pid()")
        row = await cursor.fetchone()
    return row == (connection.info.backend_pid,)
