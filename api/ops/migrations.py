"""Apply and roll back sql/migrations with yoyo, then re-apply sql/policies.

This is what `yoyo apply` does with the shipped yoyo.ini, with one difference: the policies are
re-applied even when no migration was pending, so the live policies always equal the files.

Every way a migration fails that the operator can fix becomes a MigrationFailed: one line with the
cause and the fix (a connection that fails is api/ops/failures.py's business).
"""

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from yoyo import read_migrations
from yoyo.backends import DatabaseBackend
from yoyo.backends.core.postgresql import PostgresqlPsycopgBackend
from yoyo.connections import default_migration_table, parse_uri
from yoyo.exceptions import LockTimeout
from yoyo.migrations import Migration, MigrationList

from api.db.errors import out_of_a_resource
from api.db.host_lookup import CLIENT_ENCODING, LookupBoundedConnection
from api.db.schema_release import migrated_by_a_newer_release, release_mismatch
from api.db.sql_files import (
    MIGRATIONS_DIR,
    NEWEST_MIGRATION_APPLIED,
    SCHEMA_OWNER_CHECK,
    SESSION_SETTINGS_CHECK,
    missing,
    read_sql,
)
from api.db.urls import libpq_url, yoyo_url
from api.ops.entry import StopsDeferred, stop_asked
from api.ops.startup_checks import (
    ENCODING_STATE,
    READ_ONLY_STATE,
    RELEASE_STATE,
    encoding_refusal,
    read_only_refusal,
    release_refusal,
)
from api.settings import DEFAULT_CONNECT_TIMEOUT_SECONDS

# How long a statement of a migration waits for a lock another session holds before it gives up,
# rather than queueing (and making every request queue behind it) for as long as that session lasts.
# Set on every connection yoyo opens (`_yoyo_url`): yoyo applies each migration, and the policies,
# over a connection of its own; and on the one migrate's checks before it use.
LOCK_TIMEOUT = "10s"
# How long to wait for another `todo-api migrate` (or `yoyo apply`) to finish.
MIGRATION_LOCK_WAIT_SECONDS = 10


# The fix for a role that may not migrate, which only the schema's owner does.
_FIX_AS_OWNER = "migrate as the database's owner (set MIGRATION_DATABASE_URL to its URL)"


class MigrationFailed(Exception):  # noqa: N818 (what the operator sees, not a bug)
    """A migration could not be applied, for a reason the operator can fix; `str()` says which."""


class MigratedByANewerRelease(MigrationFailed):
    """The database was migrated by a newer release, and nothing was changed. `serve --migrate` goes
    on to its isolation check, which serves such a database when its reach is this release's."""

    def __init__(self, newest_applied: str) -> None:
        self.newest_applied = newest_applied
        super().__init__(f"refusing to migrate: {release_mismatch(newest_applied)}; nothing was changed")


def _options_with_lock_timeout(database_url: str) -> str:
    """The URL's `options` (`-c role=...`, say) with LOCK_TIMEOUT added, since `options` given
    beside a URL replace the URL's own."""
    given = conninfo_to_dict(libpq_url(database_url)).get("options") or ""
    return f"{given} -c lock_timeout={LOCK_TIMEOUT}".strip()


# Where yoyo's tables are, named unqualified by yoyo: public, as every other statement of migrate
# reads them. On the default search_path ("$user", public), a schema named as the migrating role (as
# PostgreSQL's docs suggest for each user) came first: yoyo made its tables there, and every migrate
# failed on reading public._yoyo_migration (the verification probe of stop 85). A search_path set
# elsewhere is refused before yoyo connects (`_refuse_unsafe_settings`).
_YOYOS_SCHEMA = "-c search_path=public"


def _yoyo_url(database_url: str, connect_timeout_seconds: int) -> str:
    """yoyo's URL, whose every connection waits at most LOCK_TIMEOUT for a lock, keeps yoyo's tables
    in public (`_YOYOS_SCHEMA`), and speaks UTF-8 (yoyo connects with psycopg's own class:
    `CLIENT_ENCODING` says why)."""
    options = f"{_options_with_lock_timeout(database_url)} {_YOYOS_SCHEMA}"
    return yoyo_url(
        database_url,
        connect_timeout=connect_timeout_seconds,
        options=options,
        client_encoding=CLIENT_ENCODING,
    )


def _migrations() -> MigrationList:
    migrations = read_migrations(str(MIGRATIONS_DIR))
    if not migrations:
        # Never "none pending": a database migrated from nothing would stay empty.
        raise missing(MIGRATIONS_DIR)
    return migrations


# What the messages call a migrating role whose URL does not name it.
_UNNAMED_ROLE = "the migrating role"


def migrating_role(database_url: str) -> str:
    try:
        return str(conninfo_to_dict(libpq_url(database_url)).get("user") or _UNNAMED_ROLE)
    except (ValueError, psycopg.Error):
        return _UNNAMED_ROLE


def _break_lock_command(setting: str) -> str:
    """yoyo's own command that removes a migration lock left behind, as it runs in the shell that ran
    migrate: yoyo wants the URL as postgresql+psycopg:// (postgresql:// is psycopg2 to it, not
    installed), and with no yoyo.ini read (a checkout's reads DATABASE_URL as it is)."""
    return f'yoyo break-lock --no-config-file --batch --database "postgresql+psycopg://${{{setting}#*://}}"'


def migration_failure(
    error: Exception, database_url: str, *, setting: str = "DATABASE_URL"
) -> MigrationFailed:
    """The cause and the fix, in one line; `setting` is the variable the URL came from."""
    role = migrating_role(database_url)
    text = (error.diag.message_primary if isinstance(error, psycopg.Error) else None) or str(error)
    reason = (text.strip().splitlines() or [type(error).__name__])[0]
    if isinstance(error, LockTimeout):
        # yoyo takes its lock by inserting its one row, and retries until the wait is over whatever
        # refused the insert (the last refusal is the timeout's context): only a row already there, a
        # unique violation, is another migration's lock.
        refused = error.__context__
        if isinstance(refused, psycopg.Error) and not isinstance(refused, psycopg.errors.UniqueViolation):
            return migration_failure(refused, database_url, setting=setting)
        return MigrationFailed(
            f"another migration holds this database's migration lock ({reason}): wait for it to "
            "finish; if none is running (a migrate killed while migrating leaves its lock), remove the "
            f"lock with `{_break_lock_command(setting)}`, then run todo-api migrate again"
        )
    if isinstance(error, psycopg.errors.DeadlockDetected):
        # Not the migration's bug: a transaction (a DBA's, say) took the tables' locks in another
        # order than sql/lock_policy_tables.sql, and Postgres cancelled this side to end the wait.
        return MigrationFailed(
            f"another transaction locked the tables this migration needed in another order, and "
            f"Postgres cancelled the migration to end the deadlock ({reason}); the failing migration "
            "was rolled back: run todo-api migrate again"
        )
    if isinstance(error, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
        return MigrationFailed(
            f"another session held a lock the migration needed for more than {LOCK_TIMEOUT} ({reason}): "
            "find it in pg_stat_activity (a long transaction, or someone's LOCK TABLE), let it finish or "
            "end it, then run todo-api migrate again; nothing was changed by the step that waited"
        )
    if isinstance(error, psycopg.errors.InsufficientPrivilege):
        if "admin option" in reason or "permission denied to grant role" in reason:
            # A grant would let this role become todo_app in the other role's databases too, and act
            # as any of their users: the isolation check there rightly calls that a breach.
            return MigrationFailed(
                f"{role} cannot grant role todo_app ({reason}): todo_app was created by another role, "
                "and it is one role for the whole cluster, so whoever can become it can act as any user "
                "of every database the API serves there. One cluster holds the API for one owner role: "
                "migrate this database as the role that created todo_app (MIGRATION_DATABASE_URL; a "
                "second database of the same owner is fine), or serve this owner from another cluster"
            )
        if "create role" in reason:
            # Quoted as Postgres reads it, so that the GRANT runs as written for any name (Todo-Owner).
            grantee = role if role == _UNNAMED_ROLE else sql.Identifier(role).as_string()
            return MigrationFailed(
                f"{role} may not create roles ({reason}): migrate as a role with CREATEROLE "
                "(on Neon, neondb_owner) through MIGRATION_DATABASE_URL, or have an administrator run "
                "`CREATE ROLE todo_app NOLOGIN NOINHERIT NOBYPASSRLS` and "
                f"`GRANT todo_app TO {grantee} WITH ADMIN OPTION` first"
            )
        return MigrationFailed(f"{role} may not change the schema ({reason}): {_FIX_AS_OWNER}")
    if isinstance(error, psycopg.Error) and out_of_a_resource(error):
        # A first start of the embedded database on a nearly full disk (the verification probe of
        # stop 83): not the database's to fix, nor a bug to report.
        return MigrationFailed(
            f"the database ran out of a resource the migration needed ({type(error).__name__}: {reason}); "
            "the failing migration was rolled back. Free what ran out (room on the database's disk, "
            "say) or raise its limit, then run todo-api migrate again"
        )
    return MigrationFailed(
        f"a migration failed ({type(error).__name__}: {reason}); the failing migration was rolled back. "
        "Fix the database (or report the bug), then run todo-api migrate again"
    )


def _cannot_create(role: str) -> MigrationFailed:
    # yoyo keeps its bookkeeping in schema public and hides why it could not create it there.
    return MigrationFailed(
        f"{role} may not change the schema (no CREATE on schema public): it is a login role "
        f"that owns nothing, which is right for serving; {_FIX_AS_OWNER}"
    )


def _cannot_read_records(role: str, reason: str) -> MigrationFailed:
    # A database migrated already, read by a role that owns nothing (DATABASE_URL's, right for
    # serving): yoyo's records are the owner's, and reading them is the first thing migrate does.
    return MigrationFailed(
        f"{role} may not read or write the migration records ({reason}): only the schema's owner "
        f"migrates it; {_FIX_AS_OWNER}; nothing was changed"
    )


def _not_the_owner(role: str, owners: list[str], *, owns_the_database: bool = False) -> MigrationFailed:
    # Even a superuser, who could change everything, would re-create the policies the files say are
    # `TO CURRENT_USER` for itself rather than for the tables' owner: the isolation check would then
    # refuse every `serve`. Acting as the owner is the operator's explicit choice, never ours.
    if len(owners) > 1:
        return MigrationFailed(
            f"schema app and its tables have several owners ({', '.join(owners)}), so no role can "
            "migrate them as their one owner: give them one (ALTER ... OWNER TO), then migrate as it "
            "(MIGRATION_DATABASE_URL); nothing was changed"
        )
    owner = owners[0]
    restored = (
        # The schema is the role's but for a restore that gave it away: that is the fix to name.
        f"; or, if a restore run as {owner} left them to it, restore again with --role={role} "
        '(docs/operations.md, "Backup and restore")'
        if owns_the_database
        else ""
    )
    return MigrationFailed(
        f"{role} does not own the schema it would migrate ({owner} owns schema app and its tables): "
        f"applied as {role}, the policies for the tables' owner would name {role}, and serve would "
        f"refuse to start. Migrate as {owner}: set MIGRATION_DATABASE_URL to its URL, or, for a "
        f"superuser's URL, add options=-c%20role%3D{owner} to it to act as {owner}{restored}; "
        "nothing was changed"
    )


# Whether the migrating role owns the database (as the owner the docs' restore names does).
_OWNS_THE_DATABASE = (
    "select pg_catalog.pg_get_userbyid(datdba) = current_user from pg_catalog.pg_database"
    " where datname = pg_catalog.current_database()"
)
# What has the name `name` (one of yoyo's tables, say; its table of migration records is dumped by
# pg_dump with the rest): a relkind in _TABLE_KINDS is a table; no row, nothing. Qualified, operator
# included: an `=(oid, regclass)` another role made in schema public would be the better match for an
# unqualified one, and run as the owner (tests/test_isolation_blind_spots.py).
_RELATION_KIND = (
    "select c.relkind from pg_catalog.pg_class as c "
    "where c.oid operator(pg_catalog.=) pg_catalog.to_regclass(%(name)s)"
)
_TABLE_KINDS = ("r", "p")


def a_table_named(connection: psycopg.Connection[Any], name: str) -> bool:
    """Whether `name` is a table, rather than nothing or a view, a type, an index... of that name."""
    found = connection.execute(_RELATION_KIND, {"name": name}).fetchone()
    return found is not None and found[0] in _TABLE_KINDS


_KINDS = {
    "v": "a view",
    "m": "a materialized view",
    "S": "a sequence",
    "c": "a composite type",
    "i": "an index",
    "I": "a partitioned index",
    "f": "a foreign table",
}

# Whether the database records migrations as applied in a cluster that has no todo_app, the role 0001
# made: a restore into a cluster without the API's roles, which pg_dump does not dump, so every grant
# to todo_app was refused on the way in and no migration pending would make them again. yoyo records a
# migration once it has committed, so a first `migrate` running elsewhere at the same moment (a fleet's
# first start: docs/operations.md) has recorded nothing while its todo_app is not yet made.
_RESTORED_WITHOUT_ROLES = """
select exists (select from public._yoyo_migration)
   and not exists (select from pg_catalog.pg_roles where rolname = 'todo_app')
"""


def _restored_without_roles() -> MigrationFailed:
    return MigrationFailed(
        "role todo_app does not exist in this cluster, yet this database records its migrations as "
        "applied: it was restored from a dump (pg_dump dumps no roles) into a cluster without the API's "
        "roles, and its grants to todo_app were refused on the way in, which migrating cannot make "
        "again. Create the roles first (the old cluster's `pg_dumpall --globals-only` through psql, or "
        "sql/migrations/0001_app_role.sql through psql as the owner), then restore into a new, empty "
        'database and migrate that (docs/operations.md, "Backup and '
        'restore"); nothing was changed'
    )


# What of 0002's work a database holds without the rest: its tables without yoyo's record of it, or
# the record without its schema `app` (0002 makes both, committed with its record: `_apply_and_record`).
# Only a restore of part of a dump leaves that (`pg_restore --schema-only`, `-n public`, `-t tasks`),
# and migrating then failed on yoyo's own tables (a traceback) or on a migration that was not pending.
_RESTORED_IN_PART = """
select case
    when pg_catalog.to_regclass('public.tasks') is not null
         and not exists (select from public._yoyo_migration where migration_id = '0002_tasks_schema')
        then 'tables without records'
    when exists (select from public._yoyo_migration where migration_id = '0002_tasks_schema')
         and pg_catalog.to_regnamespace('app') is null
        then 'records without schema'
end
"""
# The same, where yoyo's tables are not there at all (`pg_restore -t tasks`).
_RESTORED_WITHOUT_RECORDS = (
    "select case when pg_catalog.to_regclass('public.tasks') is not null then 'tables without records' end"
)
_IN_PART = {
    "tables without records": "its tables are there, but not yoyo's record of the migrations that made them",
    "records without schema": (
        "it records its migrations as applied, but schema app, which they made, is not there"
    ),
}


def _restored_in_part(what: str) -> MigrationFailed:
    return MigrationFailed(
        f"this database holds part of a restore: {what} (a restore of some of a dump: "
        "`pg_restore --schema-only`, `-n public` or `-t`), and migrating cannot make the rest. "
        "Restore the whole dump into a new, empty database and migrate that "
        '(docs/operations.md, "Backup and restore"); nothing was changed'
    )


# The one setting of sql/checks/session_settings.sql migrate takes as it comes: a superuser's URL acts
# as the owner by it (`_not_the_owner`), and `current_user` is then checked as the owner like any role.
_ACTING_AS = "role"


def _refuse_unsafe_settings(connection: psycopg.Connection[Any], setting: str) -> None:
    """The session must be as serve's would have to be: with another search_path (the URL's options,
    ALTER ROLE ... SET, ALTER SYSTEM; never PGOPTIONS, which the options given with every URL here
    replace) yoyo kept its records in another schema, and every later migrate, finding none, failed
    on re-creating the schema; the other settings silence triggers or policies."""
    with connection.transaction():
        connection.execute("select pg_catalog.set_config('todo_api.url_setting', %s, true)", [setting])
        findings = [
            str(finding)
            for name, finding in connection.execute(read_sql(SESSION_SETTINGS_CHECK))
            if name != _ACTING_AS
        ]
    if findings:
        raise MigrationFailed(f"refusing to migrate: {'; and '.join(findings)}; nothing was changed")


def _refuse_dropped_options(connection: psycopg.Connection[Any], setting: str) -> None:
    """The session must have the lock_timeout migrate set in its options: a pooler that takes
    `options` and drops them (PgBouncer's `ignore_startup_parameters = options`) let migrate wait for
    a lock for as long as another transaction held it, every request queued behind. Told by the
    setting itself rather than by the session's backend pid: Neon's proxy hands out keys of its
    own on the direct URL too."""
    row = connection.execute(
        "select current_setting('lock_timeout'), current_setting('lock_timeout')::interval = %s::interval",
        [LOCK_TIMEOUT],
    ).fetchone()
    assert row is not None
    if not row[1]:
        host, port = connection.info.host, connection.info.port
        where = f"the socket in {host}" if host.startswith("/") else f"{host}:{port}"
        raise MigrationFailed(
            f"{setting} reaches a pooler at {where}, which dropped the options migrate sets (its "
            f"lock_timeout is {row[0]}, not {LOCK_TIMEOUT}, so a migration would wait behind any long "
            "transaction with every request queued behind it): migrate through a URL that reaches "
            "Postgres itself (Neon's direct URL, as MIGRATION_DATABASE_URL); nothing was changed"
        )


def _not_yoyos_records(why: str) -> MigrationFailed:
    # A type, an index, a view or a sequence named as yoyo's table of records, or a table of another
    # shape, was a WrongObjectType or UndefinedColumn traceback, or taken for a restored database (the
    # verification probes of stop 85).
    return MigrationFailed(
        f"public._yoyo_migration, where migrate keeps its records, is not yoyo's table ({why}): rename or "
        "drop it (someone else's?), then run todo-api migrate again; nothing was changed"
    )


def _holds(connection: psycopg.Connection[Any], query: str) -> bool:
    row = connection.execute(query).fetchone()
    return bool(row and row[0])


def _refuse_what_cannot_migrate(database_url: str, connect_timeout_seconds: int, setting: str) -> None:
    """Only the schema's owner migrates it (none yet: whoever may create there becomes it), only
    where it can write: on a standby, or in read-only sessions, yoyo's lock is refused, and yoyo
    retries it as if another migration held it; and only a database `serve` would serve: in UTF-8, on a
    Postgres release it supports (an older one failed half-way through the migrations); and only over
    a session whose settings serve would accept (`_refuse_unsafe_settings`)."""
    # Reading yoyo's table waits behind whoever locked it (a DBA's LOCK TABLE) as long as yoyo would.
    options = _options_with_lock_timeout(database_url)
    conninfo = libpq_url(database_url, connect_timeout=connect_timeout_seconds, options=options)
    with LookupBoundedConnection.connect(conninfo, autocommit=True) as connection:
        _refuse_dropped_options(connection, setting)
        version_num, version = connection.execute(RELEASE_STATE).fetchone() or (0, "")
        refusal = release_refusal(version_num=int(version_num), version=str(version), setting=setting)
        if refusal is not None:
            raise MigrationFailed(f"{refusal}; nothing was changed")
        _refuse_unsafe_settings(connection, setting)
        state = connection.execute(READ_ONLY_STATE).fetchone()
        assert state is not None
        refusal = read_only_refusal(in_recovery=bool(state[0]), read_only=bool(state[1]), setting=setting)
        if refusal is not None:
            raise MigrationFailed(f"{refusal}; nothing was changed")
        try:
            kind = connection.execute(_RELATION_KIND, {"name": "public._yoyo_migration"}).fetchone()
            if kind is not None and kind[0] not in _TABLE_KINDS:
                raise _not_yoyos_records(_KINDS.get(str(kind[0]), f"relkind {kind[0]}"))
            has_records = kind is not None
            if has_records and _holds(connection, _RESTORED_WITHOUT_ROLES):
                raise _restored_without_roles()
            in_part = _RESTORED_IN_PART if has_records else _RESTORED_WITHOUT_RECORDS
            (what,) = connection.execute(in_part).fetchone() or (None,)
            if what is not None:
                raise _restored_in_part(_IN_PART[str(what)])
        except psycopg.errors.LockNotAvailable as error:
            raise migration_failure(error, database_url) from None
        except psycopg.errors.UndefinedColumn as error:  # a table of another shape
            raise _not_yoyos_records(error.diag.message_primary or str(error)) from None
        except psycopg.errors.InsufficientPrivilege as error:
            (role,) = connection.execute("select current_user").fetchone() or ("the migrating role",)
            owners = [str(owner) for (owner,) in connection.execute(read_sql(SCHEMA_OWNER_CHECK))]
            if owners and owners != [role] and _holds(connection, _OWNS_THE_DATABASE):
                # The database's owner, whose schema another role owns: a restore run as a superuser
                # without `--role` (docs/operations.md, "Backup and restore") leaves it everything.
                raise _not_the_owner(str(role), owners, owns_the_database=True) from None
            raise _cannot_read_records(str(role), error.diag.message_primary or str(error)) from None
        database, encoding = connection.execute(ENCODING_STATE).fetchone() or ("", "")
        refusal = encoding_refusal(database=database, encoding=encoding, setting=setting)
        if refusal is not None:
            raise MigrationFailed(f"{refusal}; nothing was changed")
        row = connection.execute(
            "select current_user, has_schema_privilege(current_user, 'public', 'CREATE')"
        ).fetchone()
        owners = [str(owner) for (owner,) in connection.execute(read_sql(SCHEMA_OWNER_CHECK))]
    assert row is not None
    role, may_create = str(row[0]), bool(row[1])
    if not may_create:
        raise _cannot_create(role)
    if owners and owners != [role]:
        raise _not_the_owner(role, owners)


# What Postgres answers a CREATE TABLE of a table made already: named so; or, made by another session
# at the same moment, its row type "already exists", or a duplicate key in pg_type.
_MADE_ALREADY = (
    psycopg.errors.DuplicateTable,
    psycopg.errors.DuplicateObject,
    psycopg.errors.UniqueViolation,
)


class _StopSafeBackend(PostgresqlPsycopgBackend):  # type: ignore[misc]  # yoyo ships no types
    """yoyo's backend for psycopg, whose BEGIN, COMMIT and ROLLBACK a stop (Ctrl-C, SIGTERM, SIGHUP)
    cannot part from yoyo's note of them: one that landed between a COMMIT and the note left yoyo
    sure a transaction was open, so its release of the migration lock failed on a SAVEPOINT outside
    any ("NoActiveSqlTransaction"), the lock stayed until someone broke it, and migrate said a
    migration had failed (exit 1) where it had been stopped (143)."""

    def begin(self) -> None:
        with StopsDeferred():
            super().begin()

    def commit(self) -> None:
        with StopsDeferred():
            super().commit()

    def rollback(self) -> None:
        with StopsDeferred():
            super().rollback()

    def create_lock_table(self) -> None:
        """yoyo's, but failing on what fails it, as yoyo's passes over every error (meaning the table
        made already): a disk with no room for it failed later as 'relation "yoyo_lock" does not
        exist' (the verification probe of stop 83)."""
        try:
            with self.transaction():
                self.execute(self.format_sql(self.create_lock_table_sql))
        except _MADE_ALREADY as made:
            # Made already, perhaps by another migrate at the same moment; but a type, a view or an
            # index of that name (a DBA's) says so too, and failed later as `cannot open relation
            # "yoyo_lock"` (the mutation round of stop 85).
            if not a_table_named(self.connection, self.lock_table_quoted):
                raise MigrationFailed(
                    f"cannot make the migration lock table: {made.diag.message_primary}, and it is no table "
                    "(a type, a view or an index someone made?): rename or drop it, then run todo-api "
                    "migrate again; nothing was changed"
                ) from None
            # A table of another shape failed each insert of the lock row, which yoyo takes for a lock
            # held: MIGRATION_LOCK_WAIT_SECONDS later, "a migration failed (UndefinedColumn ...)" (the
            # verification probe of stop 85).
            try:
                self.connection.execute(
                    sql.SQL("select locked, ctime, pid from {} where false").format(
                        sql.Identifier(self.lock_table)
                    )
                )
            except psycopg.errors.UndefinedColumn as error:
                raise MigrationFailed(
                    f"public.{self.lock_table}, the migration lock table, is not yoyo's "
                    f"({error.diag.message_primary}): rename or drop it (someone else's?), then run "
                    "todo-api migrate again; nothing was changed"
                ) from None

    @contextlib.contextmanager
    def lock(self, timeout: int = 10) -> Iterator[None]:
        """yoyo's lock, taken with stops deferred: yoyo commits its row before it notes that it holds
        it (what its release runs on), and a stop between the two left the row for good. A stop that
        comes while the lock is taken, or while migrate waits for another's (at most
        MIGRATION_LOCK_WAIT_SECONDS), ends migrate as soon as that is over, releasing what it took."""
        with contextlib.ExitStack() as held:
            with StopsDeferred():
                held.enter_context(super().lock(timeout))
            yield


def _apply_and_record(backend: DatabaseBackend, migration: Migration) -> None:
    """Apply `migration` and record it as applied in one transaction. yoyo's own `apply_one` commits
    a migration over a connection of its own, then records it in another transaction: a stop, a crash
    or a lost connection between the two left the migration made but unrecorded, and every later
    migrate (and every serve of the embedded database) failed making it again ("relation ... already
    exists") for good. A migration yoyo must run outside a transaction (`-- transactional: false`)
    cannot share one, and is applied yoyo's way."""
    migration.load()
    if not migration.use_transactions:
        backend.apply_one(migration)
        return
    backend.ensure_internal_schema_updated()
    with backend.transaction():
        migration.process_steps(backend, "apply")
        backend.mark_one(migration, log=False)
    backend.log_migration(migration, "apply")  # yoyo's history of who did what, as apply_one writes it


@contextlib.contextmanager
def _yoyo_backend(url: str) -> Iterator[DatabaseBackend]:
    """yoyo's backend for `url` (`yoyo.get_backend`'s, made stop-safe: `_StopSafeBackend`), its
    connection closed on the way out. yoyo leaves it open until the garbage collector ends the
    backend: a `serve --migrate` kept an idle session it no longer used, and a database just migrated
    could not be copied (CREATE DATABASE ... TEMPLATE refuses one with sessions;
    tests/db/test_migrations.py)."""
    backend = _StopSafeBackend(parse_uri(url), default_migration_table)
    backend.init_database()
    try:
        yield backend
    finally:
        backend.connection.close()


def _refuse_a_newer_releases_database(backend: DatabaseBackend) -> None:
    """An older release's migrate (a `serve --migrate` restarted mid-way through a rolling upgrade, a
    rollback of the code alone) found nothing pending and refreshed the policies with its own under
    the newer release's instances. Read under yoyo's lock, so that a newer release's migrate cannot
    land in between."""
    (newest,) = backend.execute(read_sql(NEWEST_MIGRATION_APPLIED)).fetchone()
    if migrated_by_a_newer_release(newest):
        raise MigratedByANewerRelease(newest)


def apply_migrations(
    database_url: str,
    *,
    connect_timeout_seconds: int = DEFAULT_CONNECT_TIMEOUT_SECONDS,
    setting: str = "DATABASE_URL",
) -> list[str]:
    """Apply what is pending and the policies; return the ids of the migrations applied.

    Raises MigrationFailed for what the operator can fix (naming `setting`, the variable the URL
    came from, where the fix is to point it elsewhere), and psycopg.OperationalError when the
    database cannot be reached at all, or does not answer within `connect_timeout_seconds`."""
    migrations = _migrations()
    _refuse_what_cannot_migrate(database_url, connect_timeout_seconds, setting)
    try:
        # Connects, and creates yoyo's own tables.
        with (
            _yoyo_backend(_yoyo_url(database_url, connect_timeout_seconds)) as backend,
            backend.lock(MIGRATION_LOCK_WAIT_SECONDS),
        ):
            pending = backend.to_apply(migrations)
            _refuse_a_newer_releases_database(backend)
            for migration in pending:
                _apply_and_record(backend, migration)
            backend.run_post_apply(migrations)
    except LockTimeout as error:
        raise migration_failure(error, database_url, setting=setting) from None
    except psycopg.Error as error:
        if (stopped := stop_asked()) is not None:
            # What a stop cut short failing after it (a rollback on a connection it interrupted): the
            # command was stopped, not failed.
            raise SystemExit(stopped) from None
        if type(error) is psycopg.OperationalError:  # the connection, not a statement
            raise
        raise migration_failure(error, database_url) from None
    return [migration.id for migration in pending]


def rollback_migrations(database_url: str) -> list[str]:
    """Roll back every applied migration; return the ids rolled back."""
    migrations = _migrations()
    with _yoyo_backend(_yoyo_url(database_url, DEFAULT_CONNECT_TIMEOUT_SECONDS)) as backend, backend.lock():
        applied = backend.to_rollback(migrations)
        backend.rollback_migrations(applied)
    return [migration.id for migration in applied]
