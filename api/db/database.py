"""Connections, and the one transaction helper every route uses.

The API logs in as an ordinary role (on Neon one with BYPASSRLS), so every statement must run
after switching to todo_app. `Database.run` is the only way routes reach the database. In one
transaction it switches role, sets `app.user_id`, bounds the statement time and pins the time zone,
all with transaction-scoped `set_config(..., true)` (a plain SET would outlive the request on a
pooled connection), runs the statement and commits. The role switch takes effect before the
statement is planned, because it is a statement of its own. When anything fails, the transaction
is rolled back and the settings vanish with it.

BEGIN, the settings, the statement and COMMIT travel in one network round trip, in one of two ways:

- By default, as ONE simple-protocol message, with the values bound client-side by psycopg
  (quoted as literals, never spliced by us). Poolers in transaction mode (PgBouncer, Neon's pooled
  endpoint) handle it like any query, and it costs the fewest Python calls. On a connection to
  Postgres itself (DB_PREPARED_STATEMENTS=auto, the default) the statement in that message is an
  EXECUTE of a statement prepared once per connection (`api.db.prepared`).
- With DB_PREPARE_THRESHOLD set, as four extended-protocol messages in psycopg's pipeline mode,
  bound server-side so that psycopg prepares them: for a pooler that keeps protocol-level prepared
  statements (PgBouncer 1.21+ with max_prepared_statements). It costs more Python per request than
  it saves Postgres on our benchmark (bench/RESULTS.md, "Fifth session"), so it is not the default.
"""

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.sql.elements import ClauseElement

from api.db.errors import AlreadyExists, DatabaseUnavailable, LimitReached, MissingReference
from api.db.fair_share import FairShare
from api.db.prepared import prepared_statement, reaches_postgres_itself
from api.db.urls import libpq_url
from api.settings import Settings
from api.telemetry import metrics
from api.telemetry.tracing import Tracer, transaction_span

APP_ROLE = "todo_app"

# The identity and limits of one request, as the first statement of its transaction: who it is
# for, the task quota the database enforces (sql/migrations/0003_task_quota.sql), and how long a
# statement may run. Parameter names start with app_, which no statement in api.tasks.queries uses.
# How long the live-changes events are kept is set the same way: the trigger that writes them purges
# (sql/migrations/0008_task_events.sql).
ACT_AS_USER = text(
    "SELECT set_config('role', 'todo_app', true),"
    " set_config('app.user_id', :app_user_id, true),"
    " set_config('app.max_tasks_per_user', :app_max_tasks, true),"
    " set_config('app.events_retention_hours', :app_events_retention_hours, true),"
    " set_config('statement_timeout', :app_statement_timeout, true),"
    " set_config('TimeZone', 'UTC', true)"
)

_DIALECT = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]


class _Connection(psycopg.AsyncConnection[DictRow]):
    # The statements this session has prepared (`api.db.prepared`); None when it may not prepare.
    prepared: set[str] | None = None


async def _allow_preparing_if_direct(connection: _Connection) -> None:
    """The pool's configure step for DB_PREPARED_STATEMENTS=auto: prepare only on a connection to
    Postgres itself, never through a pooler."""
    if await reaches_postgres_itself(connection):
        connection.prepared = set()


async def _allow_preparing(connection: _Connection) -> None:
    """The pool's configure step for DB_PREPARED_STATEMENTS=on."""
    connection.prepared = set()


Rows = list[DictRow]
_READ_ONLY = metrics.transaction_duration.labels("read_only")
_READ_WRITE = metrics.transaction_duration.labels("read_write")


@dataclass(frozen=True, slots=True)
class Query:
    """A statement of a fixed shape and the values for its bind parameters.

    A write also brings the caller's user row up to date (`api.tasks.queries._USER_ROW`);
    `without_owner_row` is the same write without that, for a caller whose row is known to be
    stored as their token describes them (`api.http.caller.Caller.run`).
    """

    statement: ClauseElement
    params: Mapping[str, object]
    without_owner_row: ClauseElement | None = None

    def for_stored_owner(self) -> "Query":
        """What to send once the caller's user row is stored: a write without the upsert; any other
        query as it is."""
        if self.without_owner_row is None:
            return self
        return Query(self.without_owner_row, self.params)


@dataclass(frozen=True, slots=True)
class CompiledStatement:
    sql: str
    # Values the statement carries itself (constants such as a literal flag); requests add theirs.
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


@lru_cache(maxsize=1024)
def one_message(statement: ClauseElement, *, read_only: bool, prepared: bool) -> str:
    """The whole transaction as one simple-protocol message: BEGIN; settings; statement; COMMIT.
    With `prepared`, the statement is the EXECUTE of its prepared form."""
    sql = compiled(statement).sql
    body = prepared_statement(sql).execute if prepared else sql
    return ";\n".join((begin(read_only=read_only), compiled(ACT_AS_USER).sql, body, "COMMIT"))


async def _result_rows(cursor: psycopg.AsyncCursor[DictRow]) -> Rows:
    """The rows of the cursor's current result; none when the statement returns no rows.

    Asks the result's status rather than `cursor.description`, which builds a Column object for
    every column (7 per task) only to say whether there are any.
    """
    result = cursor.pgresult
    return await cursor.fetchall() if result and result.status == psycopg.pq.ExecStatus.TUPLES_OK else []


class Database:
    def __init__(
        self,
        pool: AsyncConnectionPool[_Connection],
        *,
        statement_timeout_ms: int,
        max_tasks_per_user: int,
        prepare: bool,
        answer_timeout_seconds: float,
        fair_share: FairShare,
        tracer: Tracer | None = None,
        events_retention_hours: float = 24.0,
    ):
        self.pool = pool
        self.fair_share = fair_share
        self._statement_timeout = str(statement_timeout_ms)
        self.max_tasks_per_user = max_tasks_per_user
        self._max_tasks = str(max_tasks_per_user)
        self._events_retention_hours = str(events_retention_hours)
        self._prepare = prepare
        self._answer_timeout = answer_timeout_seconds
        self._tracer = tracer
        self._pool_watcher: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, tracer: Tracer | None = None) -> "Database":
        if settings.database_url is None:
            raise ValueError("DATABASE_URL is not set")
        conninfo = libpq_url(
            settings.database_url.get_secret_value(),
            connect_timeout=settings.db_connect_timeout_seconds,
            application_name="todo-api",
        )
        prepare = settings.db_prepare_threshold is not None
        configure = {"auto": _allow_preparing_if_direct, "on": _allow_preparing, "off": None}[
            settings.db_prepared_statements
        ]
        pool = AsyncConnectionPool(
            conninfo,
            connection_class=_Connection,
            kwargs={
                # Autocommit: each transaction is spelled out, BEGIN ... COMMIT.
                "autocommit": True,
                "row_factory": dict_row,
                "prepare_threshold": settings.db_prepare_threshold,
                "cursor_factory": psycopg.AsyncCursor if prepare else psycopg.AsyncClientCursor,
            },
            min_size=settings.db_pool_size,
            max_size=settings.db_pool_size,
            timeout=settings.db_pool_timeout_seconds,
            # A connection the server dropped is discarded when it fails (that request gets a 503)
            # and replaced in the background; no per-request ping, which would cost a round trip.
            max_lifetime=1800,
            # Pipelined statements are prepared by psycopg (DB_PREPARE_THRESHOLD) instead.
            configure=None if prepare else configure,
            open=False,
        )
        return cls(
            pool,
            statement_timeout_ms=settings.db_statement_timeout_ms,
            max_tasks_per_user=settings.max_tasks_per_user,
            prepare=prepare,
            fair_share=FairShare(
                settings.max_connections_per_user, wait_seconds=settings.db_pool_timeout_seconds
            ),
            # The server cancels a slow statement itself; this bounds the wait when no answer can
            # come at all (a wedged pooler, a network that drops packets silently). psycopg then
            # spends up to 10 s asking the server to cancel before it lets the connection go.
            answer_timeout_seconds=settings.db_statement_timeout_ms / 1000
            + settings.db_connect_timeout_seconds,
            tracer=tracer,
            events_retention_hours=settings.events_retention_hours,
        )

    async def open(self) -> None:
        await self.pool.open()
        self._pool_watcher = asyncio.create_task(self._watch_pool(), name="pool-metrics")

    async def close(self) -> None:
        if self._pool_watcher is not None:
            self._pool_watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pool_watcher
        await self.pool.close()

    async def _watch_pool(self) -> None:
        """The pool's gauges, read once a second off the request path rather than on every request."""
        while True:
            stats = self.pool.get_stats()
            metrics.pool_size.set(stats["pool_size"])
            metrics.pool_in_use.set(stats["pool_size"] - stats["pool_available"])
            metrics.pool_waiting.set(stats.get("requests_waiting", 0) + self.fair_share.waiting)
            await asyncio.sleep(1.0)

    async def run(self, user_id: str, query: Query, *, read_only: bool) -> Rows:
        """Run one statement as `user_id` in a transaction of its own; return its rows.

        What it raises when the database cannot do the work now is listed in `api.db.errors.UNAVAILABLE`.
        """
        started = time.perf_counter()
        try:
            if self._tracer is None:
                return await self._transaction(user_id, query, read_only=read_only)
            with transaction_span(self._tracer, read_only=read_only):
                return await self._transaction(user_id, query, read_only=read_only)
        finally:
            (_READ_ONLY if read_only else _READ_WRITE).observe(time.perf_counter() - started)

    async def _transaction(self, user_id: str, query: Query, *, read_only: bool) -> Rows:
        as_user = {
            "app_user_id": user_id,
            "app_max_tasks": self._max_tasks,
            "app_events_retention_hours": self._events_retention_hours,
            "app_statement_timeout": self._statement_timeout,
        }
        await self.fair_share.acquire(user_id)
        try:
            # getconn/putconn rather than pool.connection(): its `async with connection` would
            # commit or roll back, which the transaction does itself (bench/RESULTS.md, "Third session").
            connection = await self.pool.getconn()
            try:
                return await self._on(connection, query, as_user, read_only=read_only)
            finally:
                await self.pool.putconn(connection)
        finally:
            self.fair_share.release(user_id)

    async def _on(
        self, connection: _Connection, query: Query, as_user: Mapping[str, object], *, read_only: bool
    ) -> Rows:
        try:
            async with asyncio.timeout(self._answer_timeout):
                if self._prepare:
                    return await self._pipelined(connection, query, as_user, read_only=read_only)
                return await self._one_message(connection, query, as_user, read_only=read_only)
        except TimeoutError:
            # Whatever the connection was waiting for may still arrive; it cannot be reused.
            await connection.close()
            raise DatabaseUnavailable("the database did not answer in time") from None
        except psycopg.errors.InvalidSqlStatementName:
            # A statement this session prepared is gone: it is not the session we took it for (a
            # pooler we could not tell apart). Not on this connection again; this request may retry.
            await _roll_back(connection)
            connection.prepared = None
            raise DatabaseUnavailable("a prepared statement was missing on the connection") from None
        except psycopg.errors.UniqueViolation as error:
            await _roll_back(connection)
            raise AlreadyExists(error.diag.constraint_name) from None
        except psycopg.errors.ForeignKeyViolation as error:
            await _roll_back(connection)
            raise MissingReference(error.diag.constraint_name) from None
        except psycopg.errors.CheckViolation as error:
            await _roll_back(connection)
            limit = error.diag.constraint_name
            if limit is not None and limit.endswith("_limit"):
                raise LimitReached(limit) from None
            raise
        except BaseException:
            await _roll_back(connection)
            raise

    @staticmethod
    async def _one_message(
        connection: _Connection, query: Query, as_user: Mapping[str, object], *, read_only: bool
    ) -> Rows:
        prepared = connection.prepared
        statement = compiled(query.statement)
        if prepared is not None:
            named = prepared_statement(statement.sql)
            if named.name not in prepared:
                # Once per connection and statement, in autocommit: a failed transaction keeps it.
                await connection.execute(named.prepare)
                prepared.add(named.name)
        cursor = connection.cursor()
        params = {**as_user, **statement.params(query.params)}
        message = one_message(query.statement, read_only=read_only, prepared=prepared is not None)
        await cursor.execute(message, params)
        cursor.nextset()  # past BEGIN's result
        cursor.nextset()  # past the settings' row
        return await _result_rows(cursor)

    @staticmethod
    async def _pipelined(
        connection: _Connection, query: Query, as_user: Mapping[str, object], *, read_only: bool
    ) -> Rows:
        act_as_user, statement = compiled(ACT_AS_USER), compiled(query.statement)
        async with connection.pipeline():
            await connection.execute(begin(read_only=read_only))
            await connection.execute(act_as_user.sql, as_user)
            cursor = await connection.execute(statement.sql, statement.params(query.params))
            await connection.execute("COMMIT")
        return await _result_rows(cursor)

    async def ping(self) -> None:
        """Reach the server and back, touching no table: for readiness checks."""
        async with self.pool.connection() as connection:
            await connection.execute("select 1")


async def _roll_back(connection: _Connection) -> None:
    """End whatever transaction a failed request left open, so the pool gets the connection clean.

    A connection that cannot even roll back is closed: the pool then replaces it.
    """
    if connection.closed or connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return
    try:
        await connection.execute("ROLLBACK")
    except psycopg.Error:
        await connection.close()
