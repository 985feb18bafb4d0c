"""Connections, and the one transaction helper every route uses.

The API logs in as an ordinary role (on Neon one with BYPASSRLS), so every statement must run
after switching to todo_app. `Database.run` is the only way routes reach the database. In one
transaction it switches role, sets `app.user_id`, bounds the statement time and pins the time zone,
all with transaction-scoped `set_config(..., true)` (a plain SET would outlive the request on a
pooled connection), runs the statement and commits. The role switch takes effect before the
statement is planned, because it is a statement of its own. When anything fails, the transaction
is rolled back and the settings vanish with it.

A write also wakes the caller's live-changes streams (`api.events`): its settings say
`app.notify_after_commit` = on, so the trigger that records the change sends no NOTIFY, and the
transaction is followed by `WAKE_STREAMS`, a NOTIFY of its own sent after COMMIT. Inside the
transaction a NOTIFY would hold a database-wide lock through the commit's flush and make every
write of the database commit one at a time (sql/migrations/0009_wake_after_commit.sql).

BEGIN, the settings, the statement and COMMIT (and a write's NOTIFY) travel in one network round
trip, in one of two ways:

- By default, as ONE simple-protocol message, with the values bound client-side by psycopg
  (quoted as literals, never spliced by us). Poolers in transaction mode (PgBouncer, Neon's pooled
  endpoint) handle it like any query, and it costs the fewest Python calls. On a connection to
  Postgres itself (DB_PREPARED_STATEMENTS=auto, the default) the statement in that message is an
  EXECUTE of a statement prepared once per connection (`api.db.statements`, `api.db.prepared`).
- With DB_PREPARE_THRESHOLD set, as four extended-protocol statements (five for a write) in
  psycopg's pipeline mode, bound server-side so that psycopg prepares them: for a pooler that keeps
  protocol-level prepared statements (PgBouncer 1.21+ with max_prepared_statements). It costs more
  Python per request than it saves Postgres on our benchmark (`python -m bench.transaction_paths`),
  so it is not the default.

Either way a statement that fails skips everything after it up to the end of the message (or the
pipeline's Sync): a write that did not commit wakes nobody.

A database restart costs no request once the database is back: the pool's connections are checked
as `api.db.pool` says, and a transaction whose connection broke is run once more
on another connection, but only when running it again cannot write twice (`SafeToRetry`): it was
read-only, or nothing of it was sent. Before a write goes out, one select() that does not wait asks
whether the server has already ended the session (`ended_while_idle`): a server that ends an idle
session says so and closes the socket without waiting for us, so its farewell is there first. A
write that went out and got no answer is `OutcomeUnknown`: it may have committed.

A transaction Postgres rolled back to end a conflict with another one, a deadlock (a migration, or a
DBA's transaction, that took the same tables' locks in another order) or a serialization failure,
runs once more too (`TransactionConflict`): Postgres rolled all of it back, the connection is sound,
and the other side, no longer waiting, goes on; the client gets its answer rather than a 503 for a
conflict it had no part in. Met a second time, it is a 503 that changed nothing, and says so.

A statement prepared on a connection and found missing, or another client's, is no broken connection
but a pooler in transaction mode that start-up could not catch (`api.db.prepared`): the worker stops
preparing and the transaction, of which nothing committed, runs once more unprepared
(`PreparedStatementsLost`), on whatever connection the pool hands out, without checking the pool.

Readiness pings (`Database.ping`) go over a connection of their own, never a pooled one: a pool
whose every connection is taken by requests waiting on row locks is busy, not unreachable, and a
ping waiting for a free connection took a healthy worker out of the load balancer
(`api.db.pool.PingConnection`).
"""

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import PoolTimeout
from sqlalchemy.sql.elements import ClauseElement

from api.db.errors import (
    ASSIGNED_ID_KEYS,
    AlreadyExists,
    AssignedIdTaken,
    CheckRefused,
    DatabaseBusy,
    DatabaseFault,
    DatabaseUnavailable,
    LimitReached,
    LockWaitGivenUp,
    MissingReference,
    OutcomeUnknown,
    OutOfResources,
    PrivilegeDenied,
    RowSecurityViolation,
    StatementCancelled,
    TransactionConflict,
    UnknownName,
    WritesRefused,
    in_one_line,
    out_of_a_resource,
    the_function_raising,
)
from api.db.fair_share import FairShare, Share
from api.db.pool import (
    CHECK_CONNECTIONS_UNUSED_FOR_SECONDS,
    RECONNECT_TRIES_FOR_SECONDS,
    ConnectFailures,
    Connection,
    DatabaseIdentity,
    LivenessCheck,
    PingConnection,
    Pool,
    allow_preparing,
    allow_preparing_if_direct,
    answer_within,
    configure_sessions,
    ended_while_idle,
    try_again,
)
from api.db.prepared import PreparingSetting, preparing_setting
from api.db.statements import (
    ACT_AS_USER,
    WAKE_STREAMS,
    as_user_values,
    begin,
    compiled,
    one_message,
    prepare_in_a_transaction,
)
from api.db.urls import libpq_url
from api.settings import Settings
from api.telemetry import metrics
from api.telemetry.tracing import Tracer, transaction_span

# A name the API's statements use, unknown to the session that runs them (`UnknownName`).
_UNKNOWN_NAME = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedColumn,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.UndefinedObject,
    psycopg.errors.InvalidSchemaName,
)

# The C functions of PL/pgSQL's RAISE and ASSERT, as the error names its source: never translated, where
# the context's words follow lc_messages ("PL/pgSQL-Funktion public.f() Zeile 2 bei RAISE": in German
# a DBA's RAISE was a 500, or a 503 for everyone: the verification probe of stop 87).
_RAISED_BY_PLPGSQL = ("exec_stmt_raise", "exec_stmt_assert")
# SQLSTATE classes that tell of the database, not of the row written, answered by what they mean even
# when a trigger raises them: a lost connection (08), a read-only or aborted transaction (25), a
# conflict to run again (40), a resource (53), a limit of the server's (54), an object's state (55: a
# lock not available), an operator (57), the system (58), an internal error (XX).
_THE_DATABASES_STATE = ("08", "25", "40", "53", "54", "55", "57", "58", "XX")


def _a_dbas_rule_that_refused(error: psycopg.Error) -> str | None:
    """The function (its name and parameter types) of a DBA's trigger that refused a write by RAISE or
    ASSERT: a rule the API does not know, as a DBA's CHECK is, whatever SQLSTATE it chose (with
    'check_violation', 'insufficient_privilege' or a code of its own it was a 500, or an isolation
    finding: stop 86's note), but one that tells of the database. None for any other error, and for
    the database's own bookkeeping (schema app)."""
    if error.diag.source_function not in _RAISED_BY_PLPGSQL:
        return None
    if (error.sqlstate or "")[:2] in _THE_DATABASES_STATE:
        return None
    return the_function_raising(error.diag.context or "")


# The SQLSTATE class of the database's own internal errors (XX000 internal_error, XX001 data_corrupted,
# XX002 index_corrupted): psycopg's InternalError, not one of its OperationalErrors.
_INTERNAL_ERROR = "XX"
# Where Postgres refuses to run a statement prepared before a column it returns changed its type ("cached
# plan must not change result type"), named by its function rather than its message, which lc_messages
# translates.
_PREPARED_PLAN_OUTDATED = "RevalidateCachedQuery"

logger = logging.getLogger(__name__)
# psycopg's pool logs here.
_POOL_LOG = logging.getLogger("psycopg.pool")


class SafeToRetry(DatabaseUnavailable):
    """The connection broke, and running the transaction again cannot do anything twice: it was
    read-only, or nothing of it was sent (`ended_while_idle`). `Database.run` retries
    it once on another connection; raised again, it is a plain `DatabaseUnavailable`."""


class PreparedStatementsLost(DatabaseUnavailable):
    """A statement the connection prepared was missing, or another client's: its sessions do not last
    (a pooler in transaction mode), and nothing of the transaction committed. The connection is sound,
    and the worker has stopped preparing (`Database._stop_preparing`): `Database.run` runs the
    transaction once more, unprepared; raised again, it is a plain `DatabaseUnavailable`."""


Rows = list[DictRow]

# Ample for the pool's own steps before it looks for an idle connection.
_LEND_AN_IDLE_CONNECTION_SECONDS = 0.05
# How often a write refused as read-only replaces the pool's sessions (`_replace_sessions_opened_read_only`).
_REPLACE_READ_ONLY_SESSIONS_SECONDS = 1.0
_READ_ONLY = metrics.transaction_duration.labels("read_only")
_READ_WRITE = metrics.transaction_duration.labels("read_write")


@dataclass(frozen=True, slots=True)
class Query:
    """A statement of a fixed shape and the values for its bind parameters.

    A write also brings the caller's user row up to date (`api.tasks.queries._USER_ROW`);
    `without_owner_row` is the same write without that, for a caller whose row is known to be
    stored as their token describes them. Which of the two is sent is decided in one place,
    `api.db.stored_owners.StoredOwners.run`: docs/performance.md, "Writes without the owner-row
    upsert".
    """

    statement: ClauseElement
    params: Mapping[str, object]
    # A write says so, and runs in a READ WRITE transaction; a read runs READ ONLY, which also makes
    # a lost connection safe to run it again on (`Database.run`).
    read_only: bool = True
    without_owner_row: ClauseElement | None = None
    # A statement whose cost the caller chooses (a search): at most one of a user's runs at a time
    # in a worker, its wait for that turn part of the wait for a connection (`api.db.fair_share`).
    one_at_a_time: bool = False

    def for_stored_owner(self) -> "Query":
        """The write without the upsert of its owner's user row, with the same values."""
        if self.without_owner_row is None:
            raise ValueError("this query does not bring an owner's user row up to date")
        return Query(self.without_owner_row, self.params, read_only=self.read_only)


async def _result_rows(cursor: psycopg.AsyncCursor[DictRow]) -> Rows:
    """The rows of the cursor's current result; none when the statement returns no rows.

    Asks the result's status rather than `cursor.description`, which builds a Column object for
    every column of the result (each of a task's) only to say whether there are any.
    """
    result = cursor.pgresult
    return await cursor.fetchall() if result and result.status == psycopg.pq.ExecStatus.TUPLES_OK else []


@dataclass(frozen=True, slots=True)
class TransactionSettings:
    """How `Database.run` sends each transaction and what it sets in it, read from `Settings` in one
    place (`from_settings`)."""

    # Each transaction's own statement_timeout (DB_STATEMENT_TIMEOUT_MS).
    statement_timeout_ms: int
    # The quota the insert's trigger enforces (MAX_TASKS_PER_USER).
    max_tasks_per_user: int
    # How old an event a stream may still be sent (EVENTS_RETENTION_HOURS).
    events_retention_hours: float
    # The longest wait for any answer of the server's, past which the connection is shut.
    answer_timeout_seconds: float
    # Pipelined, for psycopg to prepare (DB_PREPARE_THRESHOLD set), rather than one message.
    pipelined: bool
    # The setting that asked for prepared statements, and its fix, said when they turn out to be lost.
    preparing: PreparingSetting

    @classmethod
    def from_settings(cls, settings: Settings) -> "TransactionSettings":
        return cls(
            statement_timeout_ms=settings.db_statement_timeout_ms,
            max_tasks_per_user=settings.max_tasks_per_user,
            events_retention_hours=settings.events_retention_hours,
            # The server cancels a slow statement itself; this bounds the wait when no answer can
            # come at all (a wedged pooler, a network that drops packets silently): at the bound the
            # connection is shut, without asking the server to cancel (`answer_within`).
            answer_timeout_seconds=settings.db_statement_timeout_ms / 1000
            + settings.db_connect_timeout_seconds,
            pipelined=settings.db_prepare_threshold is not None,
            preparing=preparing_setting(
                prepare_threshold=settings.db_prepare_threshold,
                prepared_statements=settings.db_prepared_statements,
            ),
        )


class IdentityGate(Protocol):
    """Which database the isolation check last verified (api/db/isolation.py, `IsolationWatch`)."""

    checked_identity: DatabaseIdentity | None

    async def confirm(self, identity: DatabaseIdentity) -> None:
        """Return once a session of `identity` may be used, or raise to refuse the request."""


class Database:
    def __init__(
        self,
        pool: Pool,
        transactions: TransactionSettings,
        *,
        fair_share: FairShare,
        ping_connection: PingConnection,
        liveness: LivenessCheck | None = None,
        tracer: Tracer | None = None,
    ):
        self.pool = pool
        self.transactions = transactions
        self._liveness = liveness or LivenessCheck(CHECK_CONNECTIONS_UNUSED_FOR_SECONDS)
        self._liveness.pool = pool
        self.fair_share = fair_share
        self._ping_connection = ping_connection
        # As `set_config` takes them, made once rather than on every transaction.
        self._statement_timeout = str(transactions.statement_timeout_ms)
        self._max_tasks = str(transactions.max_tasks_per_user)
        self._events_retention_hours = str(transactions.events_retention_hours)
        self._tracer = tracer
        # Whether the last readiness ping reached the server (`ping`).
        self._answered_last_ping = True
        self._pool_watcher: asyncio.Task[None] | None = None
        # Requests in `_attempt` waiting for the pool to lend them a connection (`_watch_pool`).
        self._waiting_for_pool = 0
        # When a write refused as read-only last replaced the pool's sessions.
        self._read_only_sessions_replaced_at = -math.inf
        # The isolation check, which no transaction outruns: one on a session of another database
        # than the one it verified waits for it to check that one (a database made again under the
        # same name may not have its policies yet). None where no check runs (tools, tests).
        self.identity_gate: IdentityGate | None = None
        # The connections lent to requests right now (`cancel_statements`).
        self._lent: set[Connection] = set()
        # False once a prepared statement was missing or another client's: the database's sessions
        # do not last, and from then on this worker prepares nothing (`_stop_preparing`).
        self._may_prepare = True

    @classmethod
    def from_settings(cls, settings: Settings, *, tracer: Tracer | None = None) -> "Database":
        if settings.database_url is None:
            raise ValueError("DATABASE_URL is not set")
        conninfo = libpq_url(
            settings.database_url.get_secret_value(),
            connect_timeout=settings.db_connect_timeout_seconds,
            application_name="todo-api",
        )
        transactions = TransactionSettings.from_settings(settings)
        pipelined = transactions.pipelined
        preparing = {"auto": allow_preparing_if_direct, "on": allow_preparing, "off": None}[
            settings.db_prepared_statements
        ]
        liveness = LivenessCheck(CHECK_CONNECTIONS_UNUSED_FOR_SECONDS)
        connect_failures = ConnectFailures()
        pool = Pool(
            conninfo,
            connection_class=Connection,
            kwargs={
                # Autocommit: each transaction is spelled out, BEGIN ... COMMIT.
                "autocommit": True,
                "row_factory": dict_row,
                "prepare_threshold": settings.db_prepare_threshold,
                "cursor_factory": psycopg.AsyncCursor if pipelined else psycopg.AsyncClientCursor,
            },
            min_size=settings.db_pool_size,
            max_size=settings.db_pool_size,
            timeout=settings.db_pool_timeout_seconds,
            # A connection the server dropped while it sat idle is found before a request gets it
            # (when unused for a while) or when a request fails on it (then that request runs once
            # more, when it safely can); either way it is replaced in the background.
            check=liveness,
            max_lifetime=1800,
            reconnect_timeout=RECONNECT_TRIES_FOR_SECONDS,
            reconnect_failed=try_again,
            # Pipelined statements are prepared by psycopg (DB_PREPARE_THRESHOLD) instead.
            configure=configure_sessions(
                None if pipelined else preparing, connected=connect_failures.connected
            ),
            open=False,
        )
        pool.answer_timeout_seconds = settings.db_connect_timeout_seconds
        pool.connect_failures, connect_failures.pool_name = connect_failures, pool.name
        return cls(
            pool,
            transactions,
            fair_share=FairShare(
                settings.max_connections_per_user, pool_has_idle_connection=pool.has_idle_connection
            ),
            ping_connection=PingConnection(
                libpq_url(
                    settings.database_url.get_secret_value(),
                    connect_timeout=settings.db_connect_timeout_seconds,
                    application_name="todo-api-readiness",
                ),
                answer_timeout_seconds=settings.db_connect_timeout_seconds,
                pool=pool,
            ),
            liveness=liveness,
            tracer=tracer,
        )

    async def open(self) -> None:
        _POOL_LOG.addFilter(self.pool.connect_failures)
        await self.pool.open()
        self._pool_watcher = asyncio.create_task(self._watch_pool(), name="pool-metrics")

    async def close(self) -> None:
        if self._pool_watcher is not None:
            self._pool_watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pool_watcher
        await self._liveness.close()
        await self._ping_connection.close()
        await self.pool.close()
        _POOL_LOG.removeFilter(self.pool.connect_failures)

    async def _watch_pool(self) -> None:
        """The pool's gauges, read once a second off the request path rather than on every request.

        Requests waiting and connections in use are counted by the API itself, not read from the
        pool's statistics: psycopg_pool (3.3) keeps a waiter that gave up in its queue until a
        connection turns up, and counts connections it is still making as lent out, so during an
        outage with no request in flight its figures showed a busy pool rather than a dead database.
        """
        while True:
            # Connections that are there, idle or lent: psycopg's pool_size also counts those it is
            # still trying to make, so a pool that could not connect showed as full.
            metrics.pool_size.set(self.pool.get_stats()["pool_available"] + self.fair_share.at_database)
            metrics.pool_in_use.set(self.fair_share.at_database)
            metrics.pool_waiting.set(self._waiting_for_pool + self.fair_share.waiting)
            await asyncio.sleep(1.0)

    async def run(self, user_id: str, query: Query) -> Rows:
        """Run one statement as `user_id` in a transaction of its own; return its rows.

        What it raises when the database cannot do the work now is listed in `api.db.errors.UNAVAILABLE`.
        """
        as_user = as_user_values(
            user_id,
            max_tasks=self._max_tasks,
            events_retention_hours=self._events_retention_hours,
            statement_timeout_ms=self._statement_timeout,
            read_only=query.read_only,
        )
        # One wait for a connection, DB_POOL_TIMEOUT_SECONDS in all: for the user's share first, then
        # for the pool with what is left. A retry waits for the pool as long as the first attempt
        # could: the time the first one spent at the database was not spent waiting.
        deadline = time.monotonic() + self.pool.timeout
        one_at_a_time = query.one_at_a_time
        share = await self.fair_share.acquire(user_id, deadline, one_at_a_time=one_at_a_time)
        pool_wait = deadline - time.monotonic()
        if pool_wait < _LEND_AN_IDLE_CONNECTION_SECONDS and self.pool.has_idle_connection():
            # A request whose share came with next to nothing left of its wait still takes a
            # connection the pool holds idle, since lending one makes no wait: psycopg refuses any
            # at all once the time it is given has run out by the time it looks.
            pool_wait = _LEND_AN_IDLE_CONNECTION_SECONDS
        try:
            try:
                return await self._attempt(share, pool_wait, query, as_user)
            except SafeToRetry as lost:
                logger.info("running a transaction again on another connection: %s", lost)
                # The connections that were idle beside it most likely died with it.
                await self._liveness.check_pool()
                return await self._attempt(share, pool_wait, query, as_user)
            except PreparedStatementsLost as lost:
                # Every connection is as sound as before: only preparing failed, and it has stopped.
                logger.info("running a transaction again, unprepared: %s", lost)
                return await self._attempt(share, pool_wait, query, as_user)
            except TransactionConflict as lost:
                logger.info("running a transaction again: %s", lost)
                return await self._attempt(share, pool_wait, query, as_user)
        finally:
            self.fair_share.release(user_id, one_at_a_time=one_at_a_time)

    async def _confirm(self, identity: DatabaseIdentity | None) -> None:
        """Return once a session of the database `identity` names may be used: at once when it is the
        one the last clean check verified, after a check of it otherwise (`IdentityGate.confirm`).
        A session of a pooler's has no identity to compare (`read_identity`): there, the check's
        interval bounds how long a database swapped behind the pooler goes unchecked."""
        gate = self.identity_gate
        if gate is not None and identity is not None and identity != gate.checked_identity:
            await gate.confirm(identity)

    async def _attempt(
        self, share: Share, pool_wait: float, query: Query, as_user: Mapping[str, object]
    ) -> Rows:
        self._waiting_for_pool += 1
        try:
            # getconn/putconn rather than pool.connection(): its `async with connection` would
            # commit or roll back, which the transaction does itself (`python -m bench.request_cpu`
            # counts the Python calls that saves).
            connection = await self.pool.getconn(pool_wait)
        except PoolTimeout:
            # Requests hold connections: the pool is busy. A database that went away breaks the
            # connections it had, and they go back, so none is held then.
            if self.fair_share.at_database:
                raise DatabaseBusy("no connection came free in time") from None
            raise
        finally:
            self._waiting_for_pool -= 1
        share.at_database += 1
        self._lent.add(connection)
        # Timed from here, not from the request's first wait: one that waited for its share or the
        # pool and was refused sent the database nothing, and read as a transaction as long as
        # DB_POOL_TIMEOUT_SECONDS, so a queue in front of a healthy database looked like a slow one.
        taken = time.perf_counter()
        try:
            await self._confirm(connection.identity)
            if self._tracer is None:
                return await self._on(connection, query, as_user)
            # The span is the transaction the metric times: from the connection taken, one per attempt.
            with transaction_span(self._tracer, read_only=query.read_only):
                return await self._on(connection, query, as_user)
        finally:
            share.at_database -= 1
            self._lent.discard(connection)
            await self.pool.putconn(connection)
            (_READ_ONLY if query.read_only else _READ_WRITE).observe(time.perf_counter() - taken)

    async def _on(self, connection: Connection, query: Query, as_user: Mapping[str, object]) -> Rows:
        read_only = query.read_only
        if not self._may_prepare:
            # The one way this worker stops preparing, on the connections it has and those it makes:
            # each passes here before it runs a transaction.
            connection.may_prepare = False
            connection.prepare_threshold = None
        if not read_only and ended_while_idle(connection):
            # Nothing of this transaction has been sent: another connection may run it.
            await connection.close()
            raise SafeToRetry("the server had ended the session before a write was sent")
        try:
            async with answer_within(connection, self.transactions.answer_timeout_seconds):
                try:
                    return await self._sent_prepared_anew_if_outdated(connection, query, as_user)
                except psycopg.Error as error:
                    if not read_only and (rule := _a_dbas_rule_that_refused(error)):
                        # Refused by a statement, or at COMMIT by a deferred trigger: nothing committed
                        # either way (at COMMIT it was an outcome-unknown 503 that every retry met).
                        raise CheckRefused(f"its rule {rule}") from None  # rolled back below
                    if not read_only and _may_have_committed(connection, error):
                        if connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                            await connection.close()  # psycopg lost track of it: not back to the pool
                        # In a pipeline, the server's error is the one psycopg met ending it.
                        said = error.__context__ if isinstance(error.__context__, psycopg.Error) else error
                        raise OutcomeUnknown(
                            f"the database failed once the write's transaction had ended: {in_one_line(said)}"
                        ) from None
                    raise
        except SafeToRetry:
            raise
        except TimeoutError:
            # Whatever the connection was waiting for may still arrive; it was closed.
            if read_only:
                raise DatabaseUnavailable("the database did not answer in time") from None
            # BEGIN ... COMMIT went out as one message (or one pipeline): it may have committed.
            raise OutcomeUnknown("the database did not answer a write in time") from None
        except (psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement) as error:
            # A statement this session prepared is gone, or another client's holds its name: the
            # session is not one that lasts (a pooler in transaction mode that start-up could not
            # prove so). Nothing of the transaction committed: a PREPARE goes out before it, and a
            # failed statement skips the rest of the message (or pipeline), COMMIT included. So the
            # worker stops preparing and the request runs once more, unprepared.
            await _roll_back(connection)
            self._stop_preparing(error)
            raise PreparedStatementsLost(f"a prepared statement was missing or another's: {error}") from None
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as error:
            # The failed statement skipped the rest of the message (or pipeline), COMMIT included; one
            # that failed at COMMIT, or after it, is `OutcomeUnknown` above and never run again.
            await _roll_back(connection)
            raise TransactionConflict(f"Postgres rolled it back: {in_one_line(error)}") from None
        except (psycopg.errors.UniqueViolation, psycopg.errors.ExclusionViolation) as error:
            await _roll_back(connection)
            constraint = error.diag.constraint_name
            if constraint in ASSIGNED_ID_KEYS:
                raise AssignedIdTaken(constraint) from None
            raise AlreadyExists(constraint) from None
        except psycopg.errors.ForeignKeyViolation as error:
            await _roll_back(connection)
            raise MissingReference(error.diag.constraint_name) from None
        except psycopg.errors.CheckViolation as error:
            await _roll_back(connection)
            constraint = error.diag.constraint_name
            if constraint is not None and constraint.endswith("_limit"):
                raise LimitReached(constraint) from None
            if error.diag.schema_name != "public":
                # A rule of the database's own bookkeeping (schema app), which no request writes:
                # whatever broke it, the client's input did not (a 500, as a bug).
                raise
            raise CheckRefused(f"its rule {constraint}" if constraint else "one of its rules") from None
        except psycopg.errors.NotNullViolation as error:
            # The API sends NULL only where its columns take it: a NOT NULL a DBA added to one, which
            # was a 500 (the database-settings probe of stop 81), refuses the write as a CHECK does.
            await _roll_back(connection)
            if error.diag.schema_name != "public":
                raise  # the database's own bookkeeping, as above
            column = error.diag.column_name
            rule = f"its rule that {column} is NOT NULL" if column else "one of its rules"
            raise CheckRefused(rule) from None
        except psycopg.errors.StringDataRightTruncation as error:
            # The API's text columns take any length it accepts: a DBA's narrower type (varchar(n)).
            # Postgres's message names the type alone ("value too long for type character varying(n)").
            await _roll_back(connection)
            raise CheckRefused(f"its column type ({error.diag.message_primary})") from None
        except psycopg.errors.InsufficientPrivilege as error:
            await _roll_back(connection)
            # Not back to the pool: a read is refused for row-level security only when the session
            # has row_security off (ALTER ROLE ... SET, ALTER SYSTEM, ...), which a new session, once
            # that is reset, has not.
            await connection.close()
            message = error.diag.message_primary
            if "row-level security" in (message or ""):
                raise RowSecurityViolation(message, read_only=read_only) from None
            # Any other privilege the API's statements need was verified before serving: a grant to
            # todo_app revoked since (or the login role's membership in it) is the DBA's, not a bug.
            raise PrivilegeDenied(message, read_only=read_only) from None
        except _UNKNOWN_NAME as error:
            await _roll_back(connection)
            # Not back to the pool, as above: its prepared statements name what the schema no longer
            # has, and a new session starts from what the next check verifies.
            await connection.close()
            raise UnknownName(error.diag.message_primary, read_only=read_only) from None
        except psycopg.errors.ReadOnlySqlTransaction as error:
            await _roll_back(connection)
            if read_only:  # a write in a READ ONLY transaction: the API's own mistake
                raise
            # The database refuses every write (a failover that landed on a standby, or
            # default_transaction_read_only set while serving); this one was refused before it wrote.
            # Not back to the pool: a new session reaches whatever the URL names now, with the
            # settings it has now.
            await connection.close()
            await self._replace_sessions_opened_read_only()
            raise WritesRefused(error.diag.message_primary) from None
        except psycopg.errors.QueryCanceled as error:
            # The server cancelled the statement (DB_STATEMENT_TIMEOUT_MS, or an operator) and said
            # so: the connection is sound, and the rest of the message, COMMIT included, was skipped.
            await _roll_back(connection)
            raise StatementCancelled(error.diag.message_primary) from None
        except psycopg.errors.LockNotAvailable as error:
            # lock_timeout, which the API never sets for requests: the DBA's, on the login role or
            # the database. Answered like a cancelled statement: the connection is sound.
            await _roll_back(connection)
            raise LockWaitGivenUp(error.diag.message_primary) from None
        except psycopg.Error as error:
            if await _roll_back(connection) or not (connection.broken or connection.closed):
                # The server answered with an error: the transaction failed, and was rolled back (or its
                # connection closed, when the server refused that too).
                if out_of_a_resource(error):
                    # A full disk, say: the server answered, so it is reachable.
                    raise OutOfResources(in_one_line(error)) from None
                if error.sqlstate and (
                    isinstance(error, psycopg.OperationalError) or error.sqlstate.startswith(_INTERNAL_ERROR)
                ):
                    # The database's failure, not the API's: class XX was a 500 "bug on our side",
                    # and the others a 503 saying that the database, which had answered, could not
                    # be reached.
                    raise DatabaseFault(in_one_line(error)) from None
                raise
            if read_only:
                raise SafeToRetry(f"the connection broke during a read: {error}") from error
            raise OutcomeUnknown(f"the connection broke after a write was sent: {error}") from error
        except BaseException:
            await _roll_back(connection)
            raise

    async def _replace_sessions_opened_read_only(self) -> None:
        """Every session the pool holds most likely started read-only too (they share the URL and its
        defaults): replace them all, so that once a DBA resets default_transaction_read_only (or the
        URL names a primary again) the next write meets a session that started after that. Replaced
        one by one as each was refused, a write failed for each pooled session while /readyz, whose
        own session was new, said the database took writes. At most once a second: while the
        database stays read-only, every refused write would otherwise reopen the whole pool."""
        now = time.monotonic()
        if now - self._read_only_sessions_replaced_at < _REPLACE_READ_ONLY_SESSIONS_SECONDS:
            return
        self._read_only_sessions_replaced_at = now
        await self.pool.drain()

    async def _sent_prepared_anew_if_outdated(
        self, connection: Connection, query: Query, as_user: Mapping[str, object]
    ) -> Rows:
        """The transaction, sent once more on the same connection when Postgres refused a statement it
        had prepared before a migration changed the type of a column it returns: Postgres refuses such
        a statement every time, so without preparing it anew every request that ran it on this
        connection failed for as long as the connection lasted. Nothing of the first try ran: the
        refusal comes before the statement runs, and the rest of the transaction, COMMIT included, is
        skipped."""
        try:
            return await self._sent(connection, query, as_user)
        except psycopg.errors.FeatureNotSupported as error:
            if error.diag.source_function != _PREPARED_PLAN_OUTDATED:
                raise
            logger.info("running a transaction again, its statements prepared anew: %s", in_one_line(error))
            # psycopg forgets (and deallocates) what it prepared itself (DB_PREPARE_THRESHOLD) when
            # this rolls back; what this worker prepared with PREPARE goes here.
            await _roll_back(connection)
            if connection.prepared:
                await connection.execute("DEALLOCATE ALL")
                connection.prepared = frozenset()
            return await self._sent(connection, query, as_user)

    async def _sent(self, connection: Connection, query: Query, as_user: Mapping[str, object]) -> Rows:
        if self.transactions.pipelined:
            return await self._pipelined(connection, query, as_user)
        return await self._one_message(
            connection, query, as_user, statement_timeout_ms=self.transactions.statement_timeout_ms
        )

    def _stop_preparing(self, error: psycopg.Error) -> None:
        """Prepare nothing more in this worker (`_on` sees to it); say so once."""
        if not self._may_prepare:
            return
        self._may_prepare = False
        logger.warning(
            "%s asks for prepared statements, but the database's sessions do not last from one"
            " transaction to the next (%s): a pooler in transaction mode. This worker prepares nothing"
            " from now on; %s",
            self.transactions.preparing.name,
            error.diag.message_primary or type(error).__name__,
            self.transactions.preparing.fix,
        )

    @staticmethod
    async def _one_message(
        connection: Connection,
        query: Query,
        as_user: Mapping[str, object],
        *,
        statement_timeout_ms: int,
    ) -> Rows:
        statement = compiled(query.statement)
        if connection.may_prepare and statement.name not in connection.prepared:
            # Once per connection and statement, in a transaction of its own: a failed request's
            # transaction keeps it. Whatever fails here leaves a transaction `_roll_back` ends.
            try:
                prepare = statement.prepare(connection)
                await connection.execute(
                    prepare_in_a_transaction(prepare, statement_timeout_ms=statement_timeout_ms)
                )
            except psycopg.Error as error:
                # Whatever the server said as it ended the session: a FATAL 25P03 (idle in this
                # transaction past idle_in_transaction_session_timeout) is no OperationalError.
                if connection.broken:  # the transaction was never sent
                    raise SafeToRetry(f"the connection broke before a write was sent: {error}") from error
                raise
            connection.prepared |= {statement.name}
        cursor = connection.cursor()
        params = {**as_user, **statement.params(query.params)}
        message = one_message(query.statement, read_only=query.read_only, prepared=connection.may_prepare)
        await cursor.execute(message, params)
        cursor.nextset()  # past BEGIN's result
        cursor.nextset()  # past the settings' row
        return await _result_rows(cursor)

    @staticmethod
    async def _pipelined(connection: Connection, query: Query, as_user: Mapping[str, object]) -> Rows:
        act_as_user, statement = compiled(ACT_AS_USER), compiled(query.statement)
        async with connection.pipeline():
            await connection.execute(begin(read_only=query.read_only))
            await connection.execute(act_as_user.sql, as_user)
            cursor = await connection.execute(statement.sql, statement.params(query.params))
            await connection.execute("COMMIT")
            if not query.read_only:
                await connection.execute(compiled(WAKE_STREAMS).sql, as_user)
        return await _result_rows(cursor)

    async def ping(self) -> None:
        """Reach the server and back, touching no table: for readiness checks. Over a connection
        of its own (`PingConnection`), so a pool with no free connection does not delay it; one
        lost on the way is replaced.

        Unavailable too when the server answers the ping but the pool has nothing to lend: no
        connection idle, none lent to a request, and every attempt to make one since the last ping
        failed. The ping's connection was made before whatever now refuses new ones (the login role's
        CONNECTION LIMIT, max_connections taken by other clients), and every task request of this
        worker would wait out DB_POOL_TIMEOUT_SECONDS for a 503. A pool whose connections are all
        lent to requests is busy, not unable, and stays ready. Judged from the second ping that
        reaches the server on: the first after an outage would count the pool's tries while the
        database was away (the pool tries again about once a second), and answered 503 for a pool
        "that could make none" while the database had just come back."""
        try:
            identity = await self._ping_connection.ping()
        except BaseException:
            self._answered_last_ping = False
            raise
        cannot_connect = self.pool.failed_every_attempt_since_last_asked()
        back_from_an_outage, self._answered_last_ping = not self._answered_last_ping, True
        # Ready for what a task request would meet there: after a restore in place, /readyz said
        # ready on the verdict of the database before until a request of this worker met the new one.
        await self._confirm(identity)
        if back_from_an_outage:
            return
        if cannot_connect and not self.pool.has_idle_connection() and not self.fair_share.at_database:
            raise DatabaseUnavailable(
                "the database answers, but this worker's pool holds no connection and could make none"
                " since the last check (psycopg.pool's warning says why)"
            )

    async def cancel_statements(self, *, timeout_seconds: float) -> int:
        """Ask the server to cancel whatever the connections lent to requests are running; return how
        many were asked. For a worker about to be killed: a write still waiting (on a row lock, say)
        would otherwise commit after the kill, its client cut off unanswered, where cancelled it is
        rolled back and answered 503 (`StatementCancelled`). A statement that ends first is
        answered as usual: a cancel that arrives after it changes nothing."""
        lent = list(self._lent)
        cancels = [connection.cancel_safe(timeout=timeout_seconds) for connection in lent]
        # A cancel that fails leaves its statement to the kill, as before.
        await asyncio.gather(*cancels, return_exceptions=True)
        return len(lent)

    @property
    def pings_sent(self) -> int:
        """Round trips readiness checks have asked for so far."""
        return self._ping_connection.sent


def _may_have_committed(connection: Connection, error: psycopg.Error) -> bool:
    """Whether a write whose transaction just failed, its connection still sound, may have committed.

    A statement that fails inside BEGIN ... COMMIT leaves the transaction open and failed until
    `_roll_back`: nothing committed. Ended instead, by an error of the server's, it was ended by its
    COMMIT, and what failed was that COMMIT or came after it (WAKE_STREAMS, refused while the NOTIFY
    queue is full); in a pipeline, such an error at its Sync leaves psycopg unable to end the
    pipeline, the transaction still "active" to it. Either way its rows are lost with the error, and
    the change may stand."""
    if connection.broken:
        return False  # `_on` tells a broken connection's outcome itself
    status = connection.info.transaction_status
    return status == psycopg.pq.TransactionStatus.ACTIVE or (
        status == psycopg.pq.TransactionStatus.IDLE and error.sqlstate is not None
    )


async def _roll_back(connection: Connection) -> bool:
    """End whatever transaction a failed request left open, so the pool gets the connection clean.

    A connection that cannot even roll back is closed: the pool then replaces it. Return whether that
    was a ROLLBACK the server refused on a sound connection: the server had answered the request, so
    its error is that answer, not a connection lost. Past temp_file_limit, a list run by its prepared
    statement's generic plan (from its sixth run on a connection) had Postgres refuse the ROLLBACK with
    the same 53400, and the list was answered "cannot be reached", run again on another connection
    and refused there alike (the disk probe of stop 83). Closed, not rolled back a second time: that
    ended the transaction, but the session kept the temporary file it could not clean up, which
    counted against every later statement on it (the verification probe of stop 83).
    """
    if connection.closed or connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return False
    try:
        await connection.execute("ROLLBACK")
    except psycopg.Error:
        refused = not connection.broken
        await connection.close()
        return refused
    return False
