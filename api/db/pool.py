"""The pool's connections: how they are checked, bounded and told apart.

A database restart costs no request once the database is back. The pool asks a connection that sat
unused for a while whether it is still alive before handing it out (`LivenessCheck`), and checks
the whole pool the moment one is found dead. Before a write goes out, one select() that does not
wait asks whether the server has already ended the session (`ended_while_idle`): a server that ends
an idle session says so and closes the socket without waiting for us, so its farewell is there
first. Every wait for an answer is bounded (`answer_within`) without asking a silent server to
cancel anything.

Readiness pings go over a connection of their own, never a pooled one: a pool whose every connection
is taken by requests waiting on row locks is busy, not unreachable, and a ping waiting for a free
connection took a healthy worker out of the load balancer (`PingConnection`).
"""

import asyncio
import contextlib
import logging
import math
import os
import select
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.pq import ConnStatus
from psycopg.rows import DictRow, dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from api.db.errors import DatabaseUnavailable, WritesRefused, in_one_line
from api.db.host_lookup import LookupBoundedAsyncConnection

logger = logging.getLogger(__name__)

# A connection handed out less than this long ago is handed out again without asking whether it is
# alive: under load every connection is that fresh, so the hot path pays nothing. pgx's pool (Go)
# pings past one second idle, HikariCP past half a second.
CHECK_CONNECTIONS_UNUSED_FOR_SECONDS = 1.0

# psycopg's pool tries a lost connection again after a delay that doubles from 1 s: 40 s without the
# database, and the API answered 503 for 17 s more once it was back, waiting for the next try. So a
# run of tries ends after this long (the pool's `reconnect_timeout`), and a fresh one starts at once
# (`try_again`): while the database is away the pool tries about once a second, never less often
# (tests/faults/test_database_outage.py, the long outage).
RECONNECT_TRIES_FOR_SECONDS = 2.0


# Which database a session reached: the database's oid, and when its server started. A database
# dropped and made again under the same name (a restore in place) has another oid, another server at
# the same address (a new cluster, a failover, a restart) another start: the isolation check's verdict
# is of one of them (`IsolationWatch.confirm`).
DatabaseIdentity = tuple[int, int]


async def read_identity(connection: psycopg.AsyncConnection[Any]) -> DatabaseIdentity | None:
    """The database the connection's session reached; None when the session is a pooler's, which
    may hand it another server session, of another server, at any transaction (a Postgres restarted
    under PgBouncer keeps the API's connections to PgBouncer). The start is whole microseconds since
    the epoch: a time as text is written by the session's DateStyle and read by the connection's
    loaders, which the check's connection and the pool's differ in."""
    async with connection.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(
            "select d.oid::bigint,"
            # Numeric times numeric: an operator for (numeric, integer), which Postgres has not, made
            # by a role that may create in a schema on the session's search_path would be picked
            # (the verification probe of stop 81 had one in the isolation check).
            " (extract(epoch from pg_catalog.pg_postmaster_start_time())"
            " * 1000000::pg_catalog.numeric)::bigint,"
            " pg_catalog.pg_backend_pid()"
            " from pg_catalog.pg_database d where d.datname = pg_catalog.current_database()",
            prepare=False,  # asked once a session: nothing to gain, and a pooler may not keep it
        )
        row = await cursor.fetchone()
    assert row is not None  # the session's own database
    oid, started, backend = row
    # A pooler answers the connection's startup with a backend pid of its own making.
    return (int(oid), int(started)) if backend == connection.info.backend_pid else None


class Connection(LookupBoundedAsyncConnection[DictRow]):
    # Whether this session may prepare statements (`api.db.prepared`), and the names of those it has.
    may_prepare: bool = False
    prepared: frozenset[str] = frozenset()
    # When the pool last handed this connection out (time.monotonic()); never, for a new one.
    handed_out_at: float = -math.inf
    # The database it reached, as the pool's configure step read it (`configure_sessions`).
    identity: DatabaseIdentity | None = None


class AnswerDeadline:
    """What `answer_within` gives its block: whether the bound passed, for a block that turns the
    broken connection's error into an answer of its own rather than letting it out."""

    __slots__ = ("expired",)

    def __init__(self) -> None:
        self.expired = False


@contextlib.asynccontextmanager
async def answer_within(
    connection: psycopg.AsyncConnection[Any], seconds: float
) -> AsyncIterator[AnswerDeadline]:
    """Bound the wait for the server's answer: raise TimeoutError after `seconds`, the connection
    closed.

    Not by cancelling the wait, as `asyncio.timeout` does: psycopg answers a cancelled query by
    asking the server to cancel it (up to 5 s) and waiting for the query to end (5 s more) before
    it lets the connection go (`AsyncConnection.wait`), 10 s that a silent server always takes.
    Instead the deadline shuts the socket down: psycopg's wait ends at once with the connection
    broken, and nothing is asked of the server.
    """
    bound = AnswerDeadline()

    def expire() -> None:
        bound.expired = True
        try:  # the socket libpq holds, shut through a duplicate of its descriptor
            duplicate = socket.socket(fileno=os.dup(connection.fileno()))
        except (OSError, psycopg.Error):
            return  # closed already
        with duplicate, contextlib.suppress(OSError):
            duplicate.shutdown(socket.SHUT_RDWR)

    deadline = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        yield bound
    except Exception as error:
        if bound.expired:
            raise TimeoutError from error
        raise
    finally:
        deadline.cancel()
        if bound.expired:
            await connection.close()  # even when the answer came after all: its socket is shut


# psycopg_pool's warnings about making connections (3.3), as its records carry them.
_TRY_FAILED = "error connecting in %r: %s"
_TRIES_GAVE_UP = "reconnection attempt in pool %r failed after %s sec"
# While the pool cannot connect, it says so again this often.
CONNECT_FAILURES_REPEATED_EVERY_SECONDS = 60.0


class ConnectFailures(logging.Filter):
    """The pool's warnings about connecting, one line for a run of failed tries rather than a line
    for each: a filter on psycopg's `psycopg.pool` logger while the pool is open.

    While the database is away each connection the pool lost is tried about once a second
    (`try_again`), and psycopg warns at every try, and again as each run of tries gives up: 170
    lines in a 15 s outage of `serve --workers 2` under load, burying the one that says why. The
    first failed try is logged, as psycopg words it, then one a minute while the pool still cannot
    connect; a run that gives up is not; and the pool's configure step says when it connects again
    (`connected`)."""

    def __init__(self) -> None:
        super().__init__()
        # Whose records these are: the logger is every pool's, and a process may have more than one.
        self.pool_name = ""
        self._first_failed_at: float | None = None
        self._said_at = -math.inf
        self._failed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _TRIES_GAVE_UP:
            return False  # the next run starts at once
        ours = isinstance(record.args, tuple) and record.args[:1] == (self.pool_name,)
        if record.msg != _TRY_FAILED or not ours:
            return True
        now = time.monotonic()
        self._failed += 1
        if self._first_failed_at is None:
            self._first_failed_at = now
        if now - self._said_at < CONNECT_FAILURES_REPEATED_EVERY_SECONDS:
            return False
        self._said_at = now
        record.msg = (
            f"{_TRY_FAILED} (it tries again about once a second; said again once a minute, until it connects)"
        )
        return True

    def connected(self) -> None:
        """A connection was made: after failed tries, say so, once."""
        if self._first_failed_at is None:
            return
        logger.info(
            "the pool connects to the database again, %.1f s after a try first failed (%d tries failed)",
            time.monotonic() - self._first_failed_at,
            self._failed,
        )
        self._first_failed_at, self._said_at, self._failed = None, -math.inf, 0


# How long `Pool.idle_connection` waits for a request to hand a connection back.
IDLE_CONNECTION_WAIT_SECONDS = 0.2


class _NoAnswer(psycopg.OperationalError):
    """A connection did not answer a liveness check in time: it is discarded, alone."""


class Pool(AsyncConnectionPool[Connection]):
    """psycopg's pool, with a bound on how long asking a connection whether it is alive may take:
    on a network that went silent the answer never comes, and `check()` would hold every idle
    connection while it waits."""

    answer_timeout_seconds: float = 5.0
    # Its warnings about connecting, told when it connects (`configure_sessions`).
    connect_failures: ConnectFailures
    # The pool's counts of connection attempts and of those that failed, when last read
    # (`failed_every_attempt_since_last_asked`).
    _attempts_seen: tuple[int, int] = (0, 0)

    async def check_connection(self, conn: Connection) -> None:  # type: ignore[override]
        try:
            async with answer_within(conn, self.answer_timeout_seconds):
                await AsyncConnectionPool.check_connection(conn)
        except TimeoutError:
            raise _NoAnswer("the server did not answer a liveness check in time") from None

    def has_idle_connection(self) -> bool:
        """Whether a connection waits in the pool, ready to be lent out."""
        return self.get_stats()["pool_available"] > 0

    def idle_connection(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A connection the pool holds idle, for the isolation check and the readiness ping when the
        server will not open one of their own: with no slot left (max_connections, or the login
        role's CONNECTION LIMIT, below what every worker's pool, check, ping and listener need), the
        pools, which reconnect first after a restart, hold them all. Never a wait for a pool all taken
        (by requests waiting on row locks, say), which their own connections are there to avoid: one
        that requests hand back within IDLE_CONNECTION_WAIT_SECONDS, else PoolTimeout."""
        return self.connection(timeout=IDLE_CONNECTION_WAIT_SECONDS)

    def failed_every_attempt_since_last_asked(self) -> bool:
        """Whether the pool tried to make a connection since this was last asked, and every try failed.

        While it cannot connect it tries about once a second (`try_again`), so a pool that lost its
        connections and cannot replace them (the login role's CONNECTION LIMIT reached, or the
        server's max_connections, by other clients) answers yes each time, and one that made a
        connection since answers no."""
        stats = self.get_stats()
        attempts = (stats.get("connections_num", 0), stats.get("connections_errors", 0))
        tried, failed = (now - before for now, before in zip(attempts, self._attempts_seen, strict=True))
        self._attempts_seen = attempts
        return tried > 0 and failed == tried


async def try_again(pool: AsyncConnectionPool[Any]) -> None:
    """The pool's `reconnect_failed`: a run of tries gave up and freed its connection's place, and
    `check()` starts a new run to fill it (psycopg's own would wait for the next request)."""
    await pool.check()


class LivenessCheck:
    """The pool's `check` step: before a connection unused for a while is handed out, one empty
    query (`Pool.check_connection`) asks whether it is still alive.

    A connection the server ended means it restarted or dropped its sessions, so every other idle
    connection is most likely dead too: the whole pool is checked then (`check_pool`), once however
    many ask, and the request waits for a connection that answered or a new one. One that merely
    did not answer in time is discarded alone.
    """

    def __init__(self, unused_for_seconds: float) -> None:
        self.unused_for_seconds = unused_for_seconds
        self.pool: Pool | None = None
        self._pool_check: asyncio.Task[None] | None = None

    async def __call__(self, connection: Connection) -> None:
        now = time.monotonic()
        if self.pool is not None and now - connection.handed_out_at >= self.unused_for_seconds:
            try:
                await self.pool.check_connection(connection)
            except psycopg.Error as error:
                # Broken, but not by our own deadline (`_NoAnswer`, which breaks it too): the
                # server ended the session.
                if connection.broken and not isinstance(error, _NoAnswer):
                    await self.check_pool()
                raise  # the pool discards this one and hands out another
        connection.handed_out_at = now

    async def check_pool(self) -> None:
        """Check every idle connection of the pool, replacing the dead ones; one check at a time."""
        if self.pool is None:
            return
        if self._pool_check is None or self._pool_check.done():
            self._pool_check = asyncio.create_task(self.pool.check(), name="pool-check")
        # Shielded: a request that gives up waiting must not cancel the check for the others.
        await asyncio.shield(self._pool_check)

    async def close(self) -> None:
        if self._pool_check is not None:
            self._pool_check.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pool_check


class PingConnection:
    """The readiness check's own connection to DATABASE_URL, made on the first ping and again after
    it broke: one connection per worker besides the pool (docs/operations.md counts it).

    It logs in and asks, as the login role, whether its transactions are read-only, touching no
    table, never preparing (it may reach a pooler in transaction mode): a standby, or sessions
    read-only by default, answer but are not ready, since every write would be refused. Each answer
    is bounded as a pooled connection's liveness check is: past the connect timeout the connection
    is shut, and the next ping makes a new one. When the server will not open one, it asks over an
    idle pooled connection (`Pool.idle_connection`), as the isolation check does. A ping says which
    database answered (`read_identity`, read once a connection), as a pooled session does.
    One ping at a time (`api.http.readiness.SharedReadiness` sees to it).
    """

    def __init__(self, conninfo: str, *, answer_timeout_seconds: float, pool: Pool) -> None:
        self._conninfo = conninfo
        self._answer_timeout = answer_timeout_seconds
        self._pool = pool
        self._connection: Connection | None = None
        self._closed = False
        # Round trips asked for so far: tests/faults/test_readiness_flood.py counts them.
        self.sent = 0

    async def ping(self) -> DatabaseIdentity | None:
        """Ask whether the database is ready; return the identity of the one that answered."""
        kept = self._connection
        if kept is not None and not kept.closed:
            try:
                await self._ask_ready(kept)
                return kept.identity
            except psycopg.Error:
                # The server ended the session we kept (a restart, an idle timeout), or refused it
                # something: the question may be asked again, on a new connection. A timeout is not
                # asked again: the server did not answer, and the connection is shut already.
                await kept.close()
        if self._closed:
            raise DatabaseUnavailable("the readiness connection is closed")
        try:
            self._connection = await Connection.connect(
                self._conninfo, autocommit=True, row_factory=dict_row, prepare_threshold=None
            )
        except psycopg.OperationalError as refused:
            try:
                async with self._pool.idle_connection() as pooled:
                    await self._ask_ready(pooled)
                    return pooled.identity
            except (PoolTimeout, psycopg.OperationalError):
                # None idle, or the one lent had lost the server too (the database is away): the
                # refusal is the reason, the same at every ping while it lasts.
                raise refused from None
        if self._closed:  # closed while it connected: the worker is stopping
            await self._connection.close()
            raise DatabaseUnavailable("the readiness connection is closed")
        try:
            async with answer_within(self._connection, self._answer_timeout):
                self._connection.identity = await read_identity(self._connection)
        except psycopg.DatabaseError as refused:
            # SELECT on pg_database revoked from the login role, say: the pool's sessions cannot tell
            # either, and no request is served. Not kept, so the next ping asks again.
            await self._connection.close()
            raise DatabaseUnavailable(
                f"the database would not say which database this is ({in_one_line(refused)})"
            ) from None
        await self._ask_ready(self._connection)
        return self._connection.identity

    async def _ask_ready(self, connection: Connection) -> None:
        self.sent += 1
        async with answer_within(connection, self._answer_timeout):
            # Rather than `select 1`, for the same round trip: a standby, or sessions read-only by
            # default, would refuse every write this worker sends.
            cursor = await connection.execute("select current_setting('transaction_read_only') as read_only")
            row = await cursor.fetchone()
        if row is not None and row["read_only"] == "on":
            # Not kept: a new session has the settings of the server the URL names by then (and not
            # handed back to the pool, when it was one of the pool's).
            await connection.close()
            raise WritesRefused("the database refuses writes (a standby, or read-only sessions)")

    async def close(self) -> None:
        self._closed = True
        if self._connection is not None:
            await self._connection.close()


class UtcTimestamptzLoader(Loader):
    """A timestamptz as the API's transactions have Postgres write it, ISO and UTC (`ACT_AS_USER` sets
    both for the transaction), read in UTC. psycopg's own loader reads it by the DateStyle and
    TimeZone the session last reported, at the end of a message, by when the transaction's settings
    are undone: a DBA's DateStyle (ALTER DATABASE ... SET DateStyle = 'SQL, DMY') made every answer
    holding a task a 500, and their TimeZone shifted its times off UTC, which the contract promises.
    Only transaction-scoped settings are sent (docs/architecture.md): the session's stay the DBA's."""

    def load(self, data: Buffer) -> datetime:
        # Written in UTC, so read with the offset +00: no conversion.
        return datetime.fromisoformat(bytes(data).decode())


def read_times_in_utc(connection: psycopg.AsyncConnection[Any]) -> None:
    """Read the connection's times with `UtcTimestamptzLoader`."""
    connection.adapters.register_loader("timestamptz", UtcTimestamptzLoader)


def configure_sessions(
    preparing: Callable[[Connection], Awaitable[None]] | None,
    *,
    connected: Callable[[], None],
) -> Callable[[Connection], Awaitable[None]]:
    """The pool's configure step: times read in UTC (`read_times_in_utc`), the database the session
    reached (`read_identity`), `preparing`'s step, then `connected` told (`ConnectFailures.connected`).
    Told last: behind a pooler, a connection is made while the database is away (the pooler answers
    it), and only a question to the server fails; told first, every such try said the pool connects
    again, several times a second, each followed by the warning it had silenced."""

    async def configure(connection: Connection) -> None:
        read_times_in_utc(connection)
        connection.identity = await read_identity(connection)
        if preparing is not None:
            await preparing(connection)
        connected()

    return configure


async def allow_preparing_if_direct(connection: Connection) -> None:
    """The pool's configure step for DB_PREPARED_STATEMENTS=auto: prepare only on a connection to
    Postgres itself, never through a pooler: one whose database `read_identity` could pin."""
    if connection.identity is not None:
        await allow_preparing(connection)


async def allow_preparing(connection: Connection) -> None:
    """The pool's configure step for DB_PREPARED_STATEMENTS=on."""
    connection.may_prepare = True


# Severities with which the server ends the session after saying so.
_SESSION_ENDING = ("FATAL", "PANIC")


def ended_while_idle(connection: Connection) -> bool:
    """Whether the server has already ended this session, which sits idle with nothing of ours in
    flight: the proof that a write about to be sent on it would never run, so it may run elsewhere.

    A server that ends an idle session (a restart, pg_terminate_backend, idle_session_timeout)
    sends its farewell, a FATAL, and closes the socket without waiting for us, so both are already
    in the socket before our message goes out. Asking costs one select() that does not wait; only
    when something is there does libpq read it. A session ended between this check and the send is
    not caught here: that write is `OutcomeUnknown`.
    """
    farewells: list[psycopg.errors.Diagnostic] = []

    def note(diagnostic: psycopg.errors.Diagnostic) -> None:
        if diagnostic.severity_nonlocalized in _SESSION_ENDING:
            farewells.append(diagnostic)

    try:
        if not select.select([connection], [], [], 0)[0]:
            return False
        # libpq passes an error that arrives while idle to the notice handlers (the farewell, when
        # the server has not closed the socket yet); the end of the stream breaks the connection.
        connection.add_notice_handler(note)
        try:
            for _ in range(8):  # each pass reads what has arrived; the end of the stream raises
                connection.pgconn.consume_input()
                connection.pgconn.is_busy()  # parses what was read: the farewell reaches `note`
                if farewells or not select.select([connection], [], [], 0)[0]:
                    break
        finally:
            connection.remove_notice_handler(note)
    except psycopg.OperationalError:  # the server closed the connection, or it was lost before
        return True
    return bool(farewells) or connection.pgconn.status == ConnStatus.BAD
