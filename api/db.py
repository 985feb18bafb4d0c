"""Connections, and the one transaction helper every route uses.

The API logs in as an ordinary role (on Neon one with BYPASSRLS), so every statement must run
after switching to todo_app. `Database.run` is the only way routes reach the database. In one
transaction it switches role, sets `app.user_id`, bounds the statement time and pins the time zone,
all with transaction-scoped `set_config(..., true)` (a plain SET would outlive the request on a
pooled connection), runs the statement and commits.

The four messages (BEGIN, the settings, the statement, COMMIT) go out together in psycopg's
pipeline mode: one network round trip per request instead of four. The role switch still takes
effect before the statement is planned, because it is a statement of its own. When anything
fails, the transaction is rolled back and the settings vanish with it.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.expression import bindparam

from api.database_url import libpq_url
from api.queries import Query
from api.settings import Settings

APP_ROLE = "todo_app"

# The identity and limits of one request, as the first statement of its transaction.
ACT_AS_USER = select(
    func.set_config("role", APP_ROLE, True),
    func.set_config("app.user_id", bindparam("user_id"), True),
    func.set_config("statement_timeout", bindparam("statement_timeout"), True),
    func.set_config("TimeZone", "UTC", True),
)

_DIALECT = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class CompiledStatement:
    sql: str
    # Values the statement carries itself (constants such as the role name); requests add theirs.
    constants: Mapping[str, object]

    def params(self, values: Mapping[str, object]) -> dict[str, object]:
        return {**self.constants, **values}


@lru_cache(maxsize=512)
def compiled(statement: ClauseElement) -> CompiledStatement:
    """The SQL of a statement shape, compiled once; psycopg binds the values."""
    result = statement.compile(dialect=_DIALECT)
    return CompiledStatement(
        str(result), {name: value for name, value in result.params.items() if value is not None}
    )


def begin(*, read_only: bool) -> str:
    return "BEGIN READ ONLY" if read_only else "BEGIN"


Rows = list[DictRow]


class Database:
    def __init__(
        self, pool: AsyncConnectionPool[psycopg.AsyncConnection[DictRow]], statement_timeout_ms: int
    ):
        self.pool = pool
        self._statement_timeout = str(statement_timeout_ms)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Database":
        if settings.database_url is None:
            raise ValueError("DATABASE_URL is not set")
        conninfo = libpq_url(
            settings.database_url.get_secret_value(),
            connect_timeout=settings.db_connect_timeout_seconds,
            application_name="todo-api",
        )
        pool = AsyncConnectionPool(
            conninfo,
            connection_class=psycopg.AsyncConnection[DictRow],
            # Autocommit: the transaction is spelled out (BEGIN ... COMMIT) inside the pipeline.
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "prepare_threshold": settings.db_prepare_threshold,
            },
            min_size=settings.db_pool_size,
            max_size=settings.db_pool_size,
            timeout=settings.db_pool_timeout_seconds,
            # A connection the server dropped is discarded when it fails (that request gets a 503)
            # and replaced in the background; no per-request ping, which would cost a round trip.
            max_lifetime=1800,
            open=False,
        )
        return cls(pool, settings.db_statement_timeout_ms)

    async def open(self) -> None:
        await self.pool.open()

    async def close(self) -> None:
        await self.pool.close()

    async def run(self, user_id: str, query: Query, *, read_only: bool) -> Rows:
        """Run one statement as `user_id` in a transaction of its own; return its rows."""
        identity = {"user_id": user_id, "statement_timeout": self._statement_timeout}
        async with self.pool.connection() as connection:
            try:
                async with connection.pipeline():
                    await connection.execute(begin(read_only=read_only))
                    act_as_user, statement = compiled(ACT_AS_USER), compiled(query.statement)
                    await connection.execute(act_as_user.sql, act_as_user.params(identity))
                    cursor = await connection.execute(statement.sql, statement.params(query.params))
                    await connection.execute("COMMIT")
                return await cursor.fetchall() if cursor.description else []
            except BaseException:
                if (
                    not connection.closed
                    and connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
                ):
                    await connection.execute("ROLLBACK")
                raise

    async def ping(self) -> None:
        """Reach the server and back, touching no table: for readiness checks."""
        async with self.pool.connection() as connection:
            await connection.execute("select 1")
