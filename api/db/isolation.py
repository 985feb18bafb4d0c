"""The isolation check: whether the database will keep users apart, in findings a person can act on.

One check for every use: start-up refuses to serve on any finding, the running server repeats it
every ISOLATION_CHECK_INTERVAL_SECONDS and answers 503 while it finds anything
(`IsolationWatch`), and `todo-api policies` reports it beside its own drift check. It is:

- `sql/checks/isolation.sql`: roles, RLS enabled and forced, policies that admit every row,
  functions, views, privileges that row-level security does not govern, in plain words;
- `sql/checks/session_settings.sql`: the settings that change how policies apply, or what names
  mean, as the checking session has them (it is opened as the API opens its own: from the pool, or
  from DATABASE_URL with its options), in plain words (`todo-api migrate` refuses on them too);
- `sql/checks/reach.sql` against `sql/checks/expected_reach.json` (api/db/reach.py): everything
  todo_app or PUBLIC can reach a row through, in every schema, against what the package ships;
- proving the role switch by doing it, as every request will.

It reads the catalogs only (nothing of schema app, so a login role that owns nothing can run it),
with a lock timeout so that it never queues behind DDL, a bound on its wait for answers so that a
silent server cannot hold it (and the verdict before it) for ever, and a role switch in a
transaction that is rolled back. It fails closed: a check that cannot complete is a finding.
Only to word findings that are another release's schema does it read a table, yoyo's own, and only
as a role that may (`release_mismatch_on`, api/db/schema_release.py).
"""

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import PoolTimeout

from api.db.database import Database
from api.db.errors import UNAVAILABLE, AlreadyExists, IsolationBreach, MissingReference, in_one_line
from api.db.pool import Connection, DatabaseIdentity, answer_within, ended_while_idle, read_identity
from api.db.reach import CATALOG_AS_WRITTEN, differences, expected_reach, read_reach
from api.db.schema_release import newest_migration_applied, release_mismatch
from api.db.sql_files import ISOLATION_CHECK, LOGIN_ROLE_CHECK, SESSION_SETTINGS_CHECK, read_sql
from api.db.statements import APP_ROLE, NAMES_ONLY_PG_CATALOG
from api.telemetry import metrics

logger = logging.getLogger(__name__)

# How sql/checks/isolation.sql words a table the migrations make that is missing.
_NOT_MIGRATED = "the database is not migrated"
# Long enough for a catalog read, short enough that a check never waits long behind DDL.
_LOCK_TIMEOUT = "2s"
_STATEMENT_TIMEOUT = "10s"


def _check_settings() -> str:
    """The check's transaction's settings, in one statement: one round trip, which far from the
    database is what a check costs. An empty search_path, as for requests (api/db/statements.py): an
    operator a role made in schema public for types the check compares, =(oid, integer) say, ran as the
    login role in every check, which may switch to todo_app and read any user's tasks (the verification
    probe of stop 81), and could make a finding vanish."""
    return (
        f"select pg_catalog.set_config('lock_timeout', '{_LOCK_TIMEOUT}', true),"
        f" pg_catalog.set_config('statement_timeout', '{_STATEMENT_TIMEOUT}', true), {CATALOG_AS_WRITTEN},"
        f" {NAMES_ONLY_PG_CATALOG}"
    )


# session_settings.sql reads the session's search_path and where it came from: back to it for that
# file alone, whose comparisons are each of two values of one type, which pg_catalog's operators
# match first. sql/checks/isolation.sql, whose arrays and names no cast pins so (@>(oid[], oid[]) made
# in schema public ran as the login role in every check: the verification probe of stop 82), runs
# on the empty path, naming tables with their schema.
_SESSIONS_SEARCH_PATH = "set local search_path to default"
# The server cancels a statement of the check at _STATEMENT_TIMEOUT and says so; with no answer at all
# this long into a check (a network gone silent, a wedged pooler, a backend that stopped), none is
# coming, and a check left waiting would keep the last verdict, and hold off every later check, for
# as long as it waits.
_ANSWER_TIMEOUT_SECONDS = 15.0
_INCOMPLETE = "the isolation check could not complete"
# After a check that could not complete (the database restarting, say), the next one comes this
# soon, so that serving resumes within about a second of the database answering again.
_RETRY_INCOMPLETE_SECONDS = 1.0
# Sooner still when a request asks (`IsolationWatch.admit`) after a check that could not reach the
# database: each such check is first a connection attempt, which a server that is starting up
# answers with a process of its own, so requests during an outage ask for at most one this often.
_SOONEST_ASKED_CHECK_SECONDS = 0.1
# What a session of a database other than the one last verified makes of the verdict (`confirm`).
_ANOTHER_DATABASE = (
    "a session reached another database than the one the last check verified (a restart, a database "
    "made again under the same name by a restore, or another server at the same address): checking it"
)


# What a finding's fix depends on, for whoever advises on it (`todo-api serve`): the tables are
# missing (migrate), the check could not complete, or it could not because it waited in vain for a
# lock (end the transaction that holds it: migrating would wait for the same lock), or a grant to
# todo_app that a migration made is missing, which migrating does not make again (revoked by hand:
# grant it back; lost in a restore without privileges: restore again).
Cause = Literal["not migrated", "incomplete", "lock held", "grant missing"]


@dataclass(frozen=True)
class Finding:
    """One reason the database does not, or may not, isolate users."""

    kind: Literal["isolation", "drift"]
    message: str
    table: str | None = None
    policy: str | None = None
    cause: Cause | None = None


def could_not_complete(error: BaseException) -> Finding:
    """A check that could not complete proves nothing: that is a finding, never a pass."""
    cause: Cause = "lock held" if isinstance(error, psycopg.errors.LockNotAvailable) else "incomplete"
    return Finding("isolation", f"{_INCOMPLETE} ({in_one_line(error)})", cause=cause)


async def release_mismatch_on(connection: psycopg.AsyncConnection[Any]) -> str | None:
    """`release_mismatch` for the database on `connection`, read as the check reads (a read-only
    transaction with its lock and statement timeouts, within its bound on the wait for an answer), so
    that the wording never holds a verdict longer than the check would. It only words: a read that
    fails says nothing, and the findings are listed."""
    try:
        async with (
            answer_within(connection, _ANSWER_TIMEOUT_SECONDS),
            connection.transaction(force_rollback=True),
        ):
            await connection.execute("set transaction read only")
            await connection.execute(_check_settings())
            return release_mismatch(await newest_migration_applied(connection))
    except (psycopg.Error, TimeoutError):
        return None


def only_drift(findings: Sequence[Finding]) -> bool:
    """Whether the findings are differences from the shipped schema alone: what a release between the
    database's and this one makes, which the last migrate's record can name (api/db/schema_release.py)."""
    return bool(findings) and all(finding.kind == "drift" and finding.cause is None for finding in findings)


def _incomplete(findings: Sequence[Finding]) -> bool:
    return any(finding.cause in ("incomplete", "lock held") for finding in findings)


@cache
def _sql() -> str:
    return read_sql(ISOLATION_CHECK)


@cache
def _settings_sql() -> str:
    return read_sql(SESSION_SETTINGS_CHECK)


async def _rows(connection: psycopg.AsyncConnection[Any], query: str) -> list[tuple[Any, ...]]:
    async with connection.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(query)
        return await cursor.fetchall()


def _checked(message: str) -> Finding:
    """A row of sql/checks/isolation.sql, which says in words that a table is missing."""
    return Finding("isolation", message, cause="not migrated" if _NOT_MIGRATED in message else None)


async def isolation_findings(connection: psycopg.AsyncConnection[Any]) -> list[Finding]:
    """Every finding, read as the connection's login role; empty when users are isolated.

    Connecting is the caller's business; once connected, whatever keeps the check from completing
    (a lock, a timeout, an object it cannot read, a server that stops answering) is returned as a
    finding, never raised. The connection is closed when no answer came in time."""
    _, findings = await checked_database(connection)
    return findings


async def checked_database(
    connection: psycopg.AsyncConnection[Any],
) -> tuple[DatabaseIdentity | None, list[Finding]]:
    """`isolation_findings`, and which database they are of (None when the check could not say)."""
    try:
        async with answer_within(connection, _ANSWER_TIMEOUT_SECONDS) as answered:
            identity, findings = await _findings_on(connection)
    except TimeoutError:  # raised only once the bound shut the connection
        identity, findings = None, []
    if answered.expired:  # what the check read before its connection was shut proves nothing
        silent = TimeoutError(f"no answer from the database within {_ANSWER_TIMEOUT_SECONDS:g} s")
        return None, [could_not_complete(silent)]
    return identity, findings


async def _findings_on(
    connection: psycopg.AsyncConnection[Any],
) -> tuple[DatabaseIdentity | None, list[Finding]]:
    identity: DatabaseIdentity | None = None
    findings: list[Finding] = []
    try:
        async with connection.transaction(force_rollback=True):
            # One snapshot for the catalog rows both queries read. The privilege functions they call
            # (has_table_privilege and its kin) read the catalog as it is now, not as the snapshot
            # saw it, so a change committed mid-check can still show half: IsolationWatch.check.
            await connection.execute("set transaction isolation level repeatable read, read only")
            await connection.execute(_check_settings())
            # Which database the verdict is of, read with the catalogs it is made from.
            identity = await read_identity(connection)
            rows = await _rows(connection, _sql())
            findings += [_checked(str(message)) for (message,) in rows]
            await connection.execute(_SESSIONS_SEARCH_PATH)
            findings += [_checked(str(message)) for (_, message) in await _rows(connection, _settings_sql())]
            if any(finding.cause == "not migrated" for finding in findings):
                return identity, findings
            for difference in differences(await read_reach(connection), expected_reach()):
                table, policy = difference.policy or (None, None)
                cause: Cause | None = "grant missing" if difference.grant_back else None
                findings.append(Finding("drift", difference.message, table, policy, cause))
    except psycopg.Error as error:
        findings.append(could_not_complete(error))
    if findings:
        return identity, findings
    # The catalog says the login role may switch; make sure by doing it, as every request will.
    try:
        async with connection.transaction(force_rollback=True):
            await connection.execute("select set_config('role', %s, true)", [APP_ROLE])
    except psycopg.errors.InsufficientPrivilege:
        (login_role,) = (await _rows(connection, "select current_user"))[0]
        findings.append(
            Finding(
                "isolation", f"login role {login_role} cannot switch to {APP_ROLE}: grant {APP_ROLE} to it"
            )
        )
    except psycopg.Error as error:
        findings.append(could_not_complete(error))
    return identity, findings


@dataclass(frozen=True)
class LoginRole:
    """The role in DATABASE_URL, as far as isolation is concerned."""

    name: str
    superuser: bool
    bypassrls: bool
    owns: list[str]  # the schemas and relations of the API it owns
    # The roles it may SET ROLE to whose rights reach past row-level security, each with why.
    may_become: list[str]

    @property
    def kind(self) -> str:
        if self.superuser:
            return "a superuser"
        if self.owns and self.bypassrls:
            return "the schema's owner, with BYPASSRLS"
        if self.owns:
            return "the schema's owner"
        if self.bypassrls:
            return "a role with BYPASSRLS that owns nothing"
        if self.may_become:
            return f"a role that owns nothing but may become {', '.join(self.may_become)}"
        return "a role that owns nothing and cannot bypass row-level security"

    @property
    def warning(self) -> str | None:
        """Why serving as this role is riskier than it needs to be, or None."""
        if not (self.superuser or self.bypassrls or self.owns or self.may_become):
            return None
        return (
            f"the API logs in as {self.name}, {self.kind}: a statement sent outside the role switch "
            "would not be bound by row-level security. Serve as a login role that owns nothing and is "
            "a member of todo_app alone (todo-api migrate --login-role NAME), and migrate through "
            "MIGRATION_DATABASE_URL"
        )


async def login_role(connection: psycopg.AsyncConnection[Any]) -> LoginRole:
    name, superuser, bypassrls, owns, may_become = (await _rows(connection, read_sql(LOGIN_ROLE_CHECK)))[0]
    return LoginRole(str(name), bool(superuser), bool(bypassrls), list(owns), list(may_become))


class IsolationError(RuntimeError):
    def __init__(self, findings: Sequence[Finding]) -> None:
        self.findings = list(findings)
        lines = "\n".join(f"  - {finding.message}" for finding in findings)
        super().__init__(
            "Refusing to serve: the database cannot guarantee that users are isolated.\n"
            f"{lines}\nRun `todo-api migrate` (or fix the roles and policies by hand), then start again."
        )


class IsolationUnverified(Exception):  # noqa: N818 (a state of the database, not a mistake)
    """The last isolation check found something, or could not complete: nothing may reach the
    database until one completes clean (503 isolation-unverified, api/http/problems.py)."""

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__("the last isolation check found something")
        self.retry_after_seconds = retry_after_seconds


class IsolationWatch:
    """The last verdict of the isolation check in this worker, kept current in the background.

    Every task request asks it when it is admitted and again each time its caller reaches the
    database (`refuse_unless_verified`, from api/http/caller.py), so a request that outlives a
    verdict, a live-changes stream above all, reads nothing once a check finds anything: while the
    last check found anything, or could not complete, nothing is trusted to a database that may not
    isolate users.

    It checks over a connection of its own, not a pooled one: requests waiting on row locks can
    hold every pooled connection past DB_POOL_TIMEOUT_SECONDS, and a check that waited for one then
    could not complete, refusing every request and /readyz of a worker that was busy, not unsafe.
    Only when the server will not open one of its own does it take a pooled connection, an idle one.
    """

    def __init__(
        self, database: Database, *, interval_seconds: float, owner_login_expected: bool = False
    ) -> None:
        self.database = database
        self.interval_seconds = interval_seconds
        # The embedded development database has no role but its owner to log in as: its start-up
        # says so without a warning whose fix (another login role) it cannot take.
        self.owner_login_expected = owner_login_expected
        self.findings: tuple[Finding, ...] = ()
        # The last check's findings in one line, when they are another release's schema (`_release_mismatch`).
        self.mismatch: str | None = None
        self.verified = False
        # The database the last check found clean (`DatabaseIdentity`); None while none is verified.
        # Every transaction compares its session's with it (`Database.identity_gate`, `confirm`).
        self.checked_identity: DatabaseIdentity | None = None
        database.identity_gate = self
        self._check_now = asyncio.Event()
        # When the next check is due (time.monotonic()), once `keep_checking` waits for one.
        self._next_check_at: float | None = None
        # Made on first use, and again once it is closed or broken (`_connection`).
        self._kept: Connection | None = None
        # How many times the database answered as isolation forbids (`_distrust`): a check during
        # which this grew keeps no clean verdict.
        self._distrusts = 0
        # Whether the last verdict is a check that had no connection to the database (`admit`).
        self._unreachable = False
        # Resolved once the check requests asked for has ended (`admit`).
        self._asked: asyncio.Future[None] | None = None
        # When the last check ended (time.monotonic()), for the spacing of asked checks.
        self._last_check_ended = -math.inf

    def seconds_until_next_check(self) -> int:
        """Retry-After for a refused request: when the next check may serve again, which after one
        that could not complete, or a `distrust`, is about a second away rather than an interval."""
        if self._next_check_at is None:
            return max(1, math.ceil(self.interval_seconds))
        return max(1, math.ceil(self._next_check_at - time.monotonic()))

    def refuse_unless_verified(self) -> None:
        """Fail closed: IsolationUnverified while the last check found anything."""
        if not self.verified:
            raise IsolationUnverified(self.seconds_until_next_check())

    async def admit(self, *, waiting_at_most: float | None = None) -> None:
        """Fail closed as `refuse_unless_verified` does, for a request about to be admitted; but while
        the last check could not reach the database, first ask for a check at once and wait for it,
        `waiting_at_most` seconds (by default, as long as a request waits for a connection).

        After a database restart the scheduled retry came up to a second after the database
        answered again, and every request meanwhile was refused. Now the first request asks, those
        that arrive meanwhile wait for the same check (or, if one already running fails, the next),
        and none is let through unless a check comes back clean."""
        if self.verified or not self._unreachable:
            self.refuse_unless_verified()
            return
        if self._asked is None:
            self._asked = asyncio.get_running_loop().create_future()
            self._check_now.set()
        # By default as long as a request waits for a connection (DB_POOL_TIMEOUT_SECONDS): a check is
        # a new connection and a dozen round trips, 2 s at 40 ms from the database, where a bound of
        # 1 s refused every request that came as the database answered again (the database-far-away
        # probe of stop 80). Not cancelled at the bound: the check goes on, for the requests after.
        wait = self.database.pool.timeout if waiting_at_most is None else waiting_at_most
        await asyncio.wait({self._asked}, timeout=wait)
        self.refuse_unless_verified()

    async def confirm(self, identity: DatabaseIdentity) -> None:
        """For a transaction about to run on a session of `identity`, another database than the one
        the last clean check verified: distrust that verdict and wait for a check, as `admit` waits
        after an outage, and refuse unless it comes back clean for this database.

        A restore in place while serving (DROP DATABASE, then pg_restore under the same name) was
        served as soon as the pool reconnected, until the next check: a restore in sections, the
        tables before the policies, had task requests read and write with no row-level security."""
        if self.verified:
            # A warning: every database restart comes this way, and the check that follows says
            # at ERROR whatever it finds.
            finding = Finding("isolation", _ANOTHER_DATABASE, cause="incomplete")
            self._record((finding,), completed=False, level=logging.WARNING)
            self._unreachable = True  # so that requests ask for a check at once and wait for it
        await self.admit()
        if identity != self.checked_identity:
            raise IsolationUnverified(self.seconds_until_next_check())

    def _lost_its_connection(self) -> bool:
        """Whether the check that just ended had no connection to the database: none could be made,
        or the one it used broke or went silent (and was closed). One whose connection answered but
        refused it (a lock, a timeout, a privilege) would be refused again: asking for another at
        once would only add load."""
        kept = self._kept
        return kept is None or kept.closed or kept.broken

    async def check(self) -> tuple[Finding, ...]:
        """Run the check and keep its verdict; one that cannot complete is a finding."""
        distrusts = self._distrusts
        identity, findings = await self._findings()
        if findings and findings != self.findings and not _incomplete(findings):
            # A change committed while the check ran can show half (see isolation_findings): new
            # findings are read once more, so that one change is logged once, whole. Not a clean
            # verdict, which serves again at once, nor one that could not complete, which may have
            # waited out a timeout: refusing must not wait twice.
            identity, findings = await self._findings()
        unreachable = _incomplete(findings) and self._lost_its_connection()
        if not findings and self._distrusts != distrusts:
            # The database answered as isolation forbids while this check ran, which read it as it was
            # before, maybe: its clean verdict would serve until the check `_distrust` asked for,
            # which runs next, decides.
            return self.findings
        mismatch = await self._release_mismatch(findings)
        self._record(findings, completed=not _incomplete(findings), mismatch=mismatch)
        self.checked_identity = None if findings else identity
        self._unreachable = unreachable
        return findings

    async def _findings(self) -> tuple[DatabaseIdentity | None, tuple[Finding, ...]]:
        """The database checked, and what the check found there."""
        try:
            try:
                connection = await self._connection()
            except psycopg.OperationalError as refused:
                return await self._findings_over_an_idle_pooled_connection(refused)
            identity, findings = await checked_database(connection)
            return identity, tuple(findings)
        except Exception as error:  # fail closed, whatever kept the check from completing
            return None, (could_not_complete(error),)

    async def _findings_over_an_idle_pooled_connection(
        self, refused: psycopg.OperationalError
    ) -> tuple[DatabaseIdentity | None, tuple[Finding, ...]]:
        """The check over a connection the pool holds idle (`Pool.idle_connection`), when the server
        would not open one of the check's own: without it, a worker whose pool held every slot the
        server had left refused every request for as long as it did (tests/test_isolation_watch.py,
        `test_a_check_and_a_readiness_ping_the_server_has_no_slot_for_run_over_an_idle_pooled_connection`).
        With none idle, or one that had lost the server too (the database is away), `refused` is the
        finding, the same at every check while it lasts."""
        try:
            async with self.database.pool.idle_connection() as connection:
                identity, findings = await checked_database(connection)
                if _incomplete(findings) and (connection.closed or connection.broken):
                    raise refused
                return identity, tuple(findings)
        except PoolTimeout:
            raise refused from None

    async def _release_mismatch(self, findings: tuple[Finding, ...]) -> str | None:
        """The findings as `todo-api serve` words them at start-up when they are another release's
        schema (a newer release migrated under this one, in a rolling upgrade): its diagnosis in one
        line rather than a list of function md5s, triggers and policies. Read only while there are such
        findings, over the check's own connection; it only words the log, so a record that cannot be
        read leaves the list."""
        if not only_drift(findings) or self._kept is None:
            return None
        try:
            return await release_mismatch_on(self._kept)
        except Exception:  # whatever it is, the verdict is still recorded: a check that raised kept the last
            logger.exception("the isolation check could not read which release migrated the database")
            return None

    async def _connection(self) -> Connection:
        kept = self._kept
        # A session the server ended while it sat idle between checks (a restart, an idle timeout)
        # is replaced before the check, not found dead by it: that check would refuse every request.
        if kept is not None and not (kept.closed or kept.broken or ended_while_idle(kept)):
            return kept
        if kept is not None:
            await kept.close()
        # Opened as the pool opens its own (DATABASE_URL with its options, the client encoding), so
        # that the session settings it checks are theirs; never preparing, since it may reach a pooler.
        conninfo = self.database.pool.conninfo
        assert isinstance(conninfo, str)  # as Database.from_settings gives it
        self._kept = await Connection.connect(
            conninfo, autocommit=True, row_factory=dict_row, prepare_threshold=None
        )
        return self._kept

    async def close(self) -> None:
        if self._kept is not None:
            await self._kept.close()

    def _record(
        self,
        findings: tuple[Finding, ...],
        *,
        completed: bool,
        mismatch: str | None = None,
        level: int = logging.ERROR,
    ) -> None:
        metrics.record_isolation_verdict(len(findings), completed=completed, found=not _incomplete(findings))
        # Logged again when only the wording changes: a check between a newer release's migration and
        # the record its migrate writes after it (sql/mark_newest_migration.sql) finds the same
        # differences with no record of them yet.
        if (findings, mismatch) != (self.findings, self.mismatch):
            if findings:
                logger.log(
                    level,
                    "isolation is not verified; task requests are refused until it is: %s",
                    mismatch or "; ".join(finding.message for finding in findings),
                    extra={"findings": [finding.message for finding in findings]},
                )
            elif self.findings:
                # A recovery, at INFO as the pool's and readiness's are: at WARNING it paged whoever
                # alerts on warnings after every Neon wake-up a check fell in (the serverless probe of
                # stop 84).
                logger.info("isolation is verified again; task requests are served")
        self.findings, self.mismatch, self.verified = findings, mismatch, not findings

    def distrust(self, breach: IsolationBreach) -> None:
        """The database answered as it never does to what the API sends while isolation holds. For
        the HTTP handler, and for a stream, whose breach comes after its 200 has started, when no
        handler runs."""
        self._distrust(str(breach))

    def distrust_unique_key(self, refusal: AlreadyExists) -> None:
        """The database refused a write for a unique key the API does not ship (the one it expects,
        a repeated Idempotency-Key, is caught before this): a key on what a user writes, whose
        conflict would tell the caller that another user stored the value."""
        self._distrust(f"the database refused a write for a unique key the API does not expect: {refusal}")

    def distrust_foreign_key(self, refusal: MissingReference) -> None:
        """The database refused a write for a foreign key whose parent row is not there, after the
        caller's user row was stored again (`StoredOwners.run`): a key the API does not ship, on
        what a user writes, whose refusal tells the caller which of other users' rows exist."""
        self._distrust(f"the database refused a write for a foreign key the API does not expect: {refusal}")

    def _distrust(self, reason: str) -> None:
        """The database did something isolation forbids: refuse until a check completes clean,
        and run that check now rather than at the next interval."""
        self._distrusts += 1
        self._record((Finding("isolation", reason),), completed=False)
        self._unreachable = False
        self._next_check_at = time.monotonic()
        self._check_now.set()

    async def ensure(self) -> None:
        """The start-up check: refuse to serve (IsolationError) on any finding; warn about a login
        role that bypasses row-level security or owns the schema.

        A database this worker cannot reach, or a check that cannot complete, does not stop it:
        `todo-api serve` checked the database before any worker started, so this one meets an outage
        that began since, or replaces a worker that died during one. It starts refusing every task
        request, as a running worker does, until `keep_checking` completes a check clean. Failing
        here instead made granian give up on the whole server, every other worker with it."""
        try:
            async with self.database.pool.connection() as connection:
                role = await login_role(connection)
        except UNAVAILABLE as error:
            self._record((could_not_complete(error),), completed=False)
            self._unreachable = True
            return
        if role.warning and self.owner_login_expected:
            logger.info(
                "todo-api: the API logs in as %s, %s, the one role of the embedded development database; "
                'a deployment serves as a login role that owns nothing (README.md, "Deploying")',
                role.name,
                role.kind,
            )
        elif role.warning:
            logger.warning("todo-api: %s", role.warning)
        else:
            logger.info("todo-api: the API logs in as %s, %s", role.name, role.kind)
        findings = await self.check()
        if findings and not _incomplete(findings):
            raise IsolationError(findings)

    async def keep_checking(self) -> None:
        """Repeat the check until cancelled: every interval, or at once when asked (`_distrust`,
        `admit`)."""
        while True:
            wait = (
                min(self.interval_seconds, _RETRY_INCOMPLETE_SECONDS)
                if _incomplete(self.findings)
                else self.interval_seconds
            )
            if not self._check_now.is_set():
                self._next_check_at = time.monotonic() + wait
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), wait)
            if self._asked is not None and self._unreachable:
                # Asked by requests during an outage (a distrust replaces that verdict and is
                # checked at once): spaced out, so that requests cannot make a storm of connections.
                await asyncio.sleep(self._last_check_ended + _SOONEST_ASKED_CHECK_SECONDS - time.monotonic())
            self._check_now.clear()
            asked, self._asked = self._asked, None
            try:
                await self.check()
            finally:
                self._last_check_ended = time.monotonic()
                if asked is not None:
                    asked.set_result(None)
                if self.verified and self._asked is not None:
                    # Asked while this check ran, which came back clean: no need to wait for another.
                    self._asked.set_result(None)
                    self._asked = None
                    self._check_now.clear()
