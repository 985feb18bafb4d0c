"""Audit the live database's isolation: what `todo-api policies` reports.

Every query is a file a DBA can run with psql: sql/audit/*.sql describe the roles, tables, policies
and grants; the findings are sql/checks/isolation.sql and sql/checks/session_settings.sql, the very
check the API runs at start-up, plus drift between the live policies and sql/policies/.

Drift is measured by letting Postgres normalise both sides: read the live policies, apply the files
in a transaction, read them again, roll back. CREATE and DROP POLICY take an ACCESS EXCLUSIVE lock on
their table; the transaction takes all of those locks first, in one statement, as migrate does
(sql/lock_policy_tables.sql), so for those few milliseconds requests touching users or tasks wait
rather than deadlock with it. `lock_timeout`, set for the whole session, bounds how long any
statement of the audit waits behind a long transaction (reading a policy's expressions waits for
any lock on its table too), and nothing is ever committed.
"""

import asyncio
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import sqlparse
from psycopg import sql
from psycopg.rows import class_row

from api.db.errors import in_one_line
from api.db.host_lookup import LookupBoundedAsyncConnection
from api.db.isolation import Finding, isolation_findings, login_role
from api.db.reach import CATALOG_AS_WRITTEN, read_reach, write_expected
from api.db.sql_files import (
    AUDIT_DIR,
    EXPECTED_REACH,
    LOCK_POLICY_TABLES,
    SCHEMA_OWNER_CHECK,
    display_path,
    policy_files,
    read_sql,
)
from api.db.statements import NAMES_ONLY_PG_CATALOG
from api.db.urls import libpq_url
from api.settings import DEFAULT_CONNECT_TIMEOUT_SECONDS

LOCK_TIMEOUT = "5s"


def _audit_settings() -> str:
    """Each transaction of the audit's: reading a policy's expressions (pg_get_expr) waits for any lock
    on its table as long as that is held; for the transaction only, since behind a pooler in
    transaction mode a session's setting stays on the server session that the API's requests share
    next. And the catalog read as the isolation check reads it (api/db/isolation.py): names with their
    schema, so that no operator another role made in schema public runs, as the login role or as the
    tables' owner."""
    return (
        f"select pg_catalog.set_config('lock_timeout', '{LOCK_TIMEOUT}', true), {CATALOG_AS_WRITTEN},"
        f" {NAMES_ONLY_PG_CATALOG}"
    )


Connection = psycopg.AsyncConnection[tuple[object, ...]]
Row = TypeVar("Row")


@dataclass(frozen=True)
class Role:
    name: str
    is_login_role: bool
    superuser: bool
    bypassrls: bool
    can_login: bool
    inherits: bool
    createrole: bool
    createdb: bool
    member_of: list[str]
    can_switch_to_todo_app: bool


@dataclass(frozen=True)
class TodoAppMember:
    """A role that can become todo_app, and so act as any user; `how` says through which grants."""

    name: str
    how: list[str]


@dataclass(frozen=True)
class Table:
    name: str
    owner: str
    rls_enabled: bool
    rls_forced: bool
    policies: int
    open_to_todo_app: bool


@dataclass(frozen=True)
class Policy:
    # Which row of pg_policy this is; not part of what the policy means.
    oid: int = field(compare=False, repr=False)
    table_name: str
    name: str
    kind: str
    command: str
    roles: list[str]
    using_expression: str | None
    with_check_expression: str | None


@dataclass(frozen=True)
class Grant:
    object_type: str
    object: str
    privilege: str
    columns: str | None


@dataclass(frozen=True)
class Audit:
    database: str
    login_role: str
    # Which kind of role that is (the schema's owner, BYPASSRLS, or one that owns nothing), and why
    # it is riskier than it needs to be, if it is.
    login_role_kind: str
    login_role_warning: str | None
    server_version: str
    roles: list[Role]
    can_become_todo_app: list[TodoAppMember]
    tables: list[Table]
    policies: list[Policy]
    grants: list[Grant]
    findings: list[Finding]


def _statements(path: Path) -> list[str]:
    """The statements of a file, split as yoyo splits sql/policies/ when it applies them."""
    return [statement for statement in sqlparse.split(read_sql(path)) if statement.strip()]


async def _rows(connection: Connection, row_type: type[Row], path: Path) -> list[Row]:
    async with connection.cursor(row_factory=class_row(row_type)) as cursor:
        await cursor.execute(read_sql(path))
        return await cursor.fetchall()


async def read_policies(connection: Connection) -> list[Policy]:
    return await _rows(connection, Policy, AUDIT_DIR / "policies.sql")


@dataclass(frozen=True)
class _Expected:
    policies: list[Policy]
    source_of_table: dict[str, str]


async def _apply_policy_files(connection: Connection, files: Sequence[Path]) -> _Expected:
    """Apply the files (inside the caller's transaction); return the result and who made what."""
    source_of_table: dict[str, str] = {}
    for path in files:
        before = {policy.oid for policy in await read_policies(connection)}
        for statement in _statements(path):
            await connection.execute(statement)
        for policy in await read_policies(connection):
            if policy.oid not in before:
                source_of_table[policy.table_name] = display_path(path)
    return _Expected(await read_policies(connection), source_of_table)


def _differences(live: Policy, expected: Policy) -> list[str]:
    fields = [
        ("kind", live.kind, expected.kind),
        ("command", live.command, expected.command),
        ("roles", ", ".join(live.roles), ", ".join(expected.roles)),
        ("USING", live.using_expression, expected.using_expression),
        ("WITH CHECK", live.with_check_expression, expected.with_check_expression),
    ]
    return [
        f"{label} is {_shown(now)} live but {_shown(wanted)} in the file"
        for label, now, wanted in fields
        if now != wanted
    ]


def _shown(value: str | None) -> str:
    return "(none)" if value is None else f"`{value}`"


def compare_policies(live: Iterable[Policy], expected: _Expected) -> list[Finding]:
    """Drift: every policy the files would add, remove or change."""
    live_by_key = {(p.table_name, p.name): p for p in live}
    expected_by_key = {(p.table_name, p.name): p for p in expected.policies}
    findings: list[Finding] = []
    for key in sorted(live_by_key.keys() | expected_by_key.keys()):
        table, name = key
        source = expected.source_of_table.get(table, "sql/policies/")
        now, wanted = live_by_key.get(key), expected_by_key.get(key)
        if now == wanted:
            continue
        if now is None:
            message = f'policy "{name}" on {table} is in {source} but not live: apply it (todo-api migrate)'
        elif wanted is None:
            message = (
                f'policy "{name}" on {table} is live but not in {source}: '
                "it was created by hand, or its file changed and is not yet applied"
            )
        else:
            changes = "; ".join(_differences(now, wanted))
            message = f'policy "{name}" on {table} differs from {source}: {changes}'
        findings.append(Finding("drift", message, table=table, policy=name))
    return findings


async def _schema_owners(connection: Connection) -> list[str]:
    cursor = await connection.execute(read_sql(SCHEMA_OWNER_CHECK))
    return [str(owner) for (owner,) in await cursor.fetchall()]


async def _act_as_the_owner(connection: Connection, owner: str) -> None:
    """Inside the caller's transaction, become the tables' owner, as migrate runs: the files' `TO
    CURRENT_USER` means that role, whoever audits (a superuser, or a member of the owner). Raises
    psycopg.Error when the login role may not become it."""
    cursor = await connection.execute("select current_user")
    current = await cursor.fetchone()
    if current is not None and current[0] != owner:
        await connection.execute(sql.SQL("set local role {}").format(sql.Identifier(owner)))


def _not_compared(reason: str) -> list[Finding]:
    return [Finding("drift", f"could not compare the live policies with sql/policies/: {reason}")]


async def policy_drift(connection: Connection, files: Sequence[Path] | None = None) -> list[Finding]:
    """Compare the live policies with sql/policies/ (or `files`), changing nothing.

    Applies the files as the tables' owner (as migrate does), which the login role must be, or be
    able to become, to re-create their policies. When it cannot, that is itself a finding: drift was
    not checked.
    """
    try:
        async with connection.transaction(force_rollback=True):
            await connection.execute(_audit_settings())
            owners = await _schema_owners(connection)
            if len(owners) > 1:
                return _not_compared(f"schema app and its tables have several owners ({', '.join(owners)})")
            if owners:
                await _act_as_the_owner(connection, owners[0])
            # Before anything else, as migrate does: a lock taken later, by reading or applying, could
            # close a cycle with a write that holds another.
            for statement in _statements(LOCK_POLICY_TABLES):
                await connection.execute(statement)
            live = await read_policies(connection)
            expected = await _apply_policy_files(connection, policy_files() if files is None else files)
    except psycopg.errors.DeadlockDetected:
        # Postgres cancelled the check to end a cycle of waits with another transaction (a DBA's,
        # say) that took the same tables' locks in another order: nothing is wrong with the policies.
        return _not_compared(
            "another transaction locked the same tables in another order, and Postgres cancelled the "
            "check to end the deadlock; audit again"
        )
    except psycopg.Error as error:
        return _not_compared((error.diag.message_primary or str(error)).strip())
    return compare_policies(live, expected)


async def audit(connection: Connection, files: Sequence[Path] | None = None) -> Audit:
    """Everything `todo-api policies` shows, read in one session as the login role."""
    cursor = await connection.execute(
        "select current_database(), current_user, current_setting('server_version')"
    )
    identity = await cursor.fetchone()
    assert identity is not None
    database, login_role_name, server_version = (str(value) for value in identity)
    async with connection.transaction():
        await connection.execute(_audit_settings())
        role = await login_role(connection)
        roles = await _rows(connection, Role, AUDIT_DIR / "roles.sql")
        members = await _rows(connection, TodoAppMember, AUDIT_DIR / "todo_app_members.sql")
        tables = await _rows(connection, Table, AUDIT_DIR / "tables.sql")
        policies = await read_policies(connection)
        grants = await _rows(connection, Grant, AUDIT_DIR / "grants.sql")
    findings = await isolation_findings(connection)
    # Re-creating the policies from the files takes their owner; a login role that owns nothing
    # (as production should serve) relies on the check's comparison with what the package ships.
    drift = await policy_drift(connection, files) if role.owns or role.superuser else []
    return Audit(
        database=database,
        login_role=login_role_name,
        login_role_kind=role.kind,
        login_role_warning=role.warning,
        server_version=server_version,
        roles=roles,
        can_become_todo_app=members,
        tables=tables,
        policies=policies,
        grants=grants,
        findings=_merged(findings, drift),
    )


def _merged(checked: list[Finding], drift: list[Finding]) -> list[Finding]:
    """The isolation check's findings and the file-based drift, each policy reported once.

    The check compares policies with what the package ships (sql/checks/expected_reach.json); the
    audit compares them with the files themselves, which says more (which file, what differs), so
    it wins.
    """
    compared = {(finding.table, finding.policy) for finding in drift if finding.policy is not None}
    kept = [finding for finding in checked if (finding.table, finding.policy) not in compared]
    return kept + drift


class AuditIncomplete(Exception):  # noqa: N818 (what the user sees, not a bug)
    """The audit waited `LOCK_TIMEOUT` for a lock and gave up, or the database refused one of its
    reads (a catalog revoked from the login role): it has nothing to report, and the command exits
    as an audit that did not run (never 0, nor the 1 of findings). `str()` is the whole message."""


async def lock_holders(connection: Connection) -> str:
    """Who holds the lock a catalog read waits for, as far as the catalog shows it now."""
    async with connection.cursor() as cursor:
        await cursor.execute(read_sql(AUDIT_DIR / "lock_holders.sql"))
        holders = [
            f"pid {pid} ({user_name}{f', {application}' if application else ''}) on {relation}"
            for pid, user_name, application, relation in await cursor.fetchall()
        ]
    return "; ".join(holders) if holders else "a session that has let go of it since"


def audit_database(
    database_url: str,
    files: Sequence[Path] | None = None,
    *,
    connect_timeout_seconds: int = DEFAULT_CONNECT_TIMEOUT_SECONDS,
) -> Audit:
    """Audit the database at `database_url` against sql/policies/ (or `files`).

    Raises AuditIncomplete when a lock, or a refused read, kept it from reading what it reports."""
    conninfo = libpq_url(database_url, connect_timeout=connect_timeout_seconds)

    async def run() -> Audit:
        async with await LookupBoundedAsyncConnection.connect(conninfo, autocommit=True) as connection:
            try:
                return await audit(connection, files)
            except psycopg.errors.LockNotAvailable:
                raise AuditIncomplete(
                    f"the audit could not complete: a lock was held for longer than its "
                    f"{LOCK_TIMEOUT} lock_timeout, by {await lock_holders(connection)}; end that "
                    "transaction (or wait for it), then audit again"
                ) from None
            except psycopg.OperationalError:
                raise  # the database out of reach, or the statement cancelled: worded by the command
            except psycopg.errors.InsufficientPrivilege as error:
                raise AuditIncomplete(
                    f"the audit could not complete ({in_one_line(error)}): it reads the system "
                    "catalogs as the role in DATABASE_URL; grant that role back what was revoked from "
                    "it (or from PUBLIC), then audit again"
                ) from None
            except psycopg.Error as error:
                raise AuditIncomplete(f"the audit could not complete ({in_one_line(error)})") from None

    return asyncio.run(run())


def running_from_a_checkout() -> bool:
    """Whether EXPECTED_REACH is the repository's sql/checks/expected_reach.json (api/sql links to
    sql/), the file a developer reviews and commits, rather than an installed package's copy in
    site-packages, which nobody commits and whose rewrite would change what that installation's
    isolation check expects."""
    repository = EXPECTED_REACH.resolve().parents[2]
    return (repository / "pyproject.toml").is_file() and (repository / "api").is_dir()


def write_expected_reach(path: Path = EXPECTED_REACH) -> Path:
    """Regenerate sql/checks/expected_reach.json from a throwaway embedded database, freshly migrated.

    Never from DATABASE_URL: a database that has lived may carry a change made by hand, which would
    then be shipped as expected."""
    from api.ops import embedded
    from api.ops.migrations import apply_migrations

    async def read(url: str) -> tuple[list[Any], str]:
        async with await LookupBoundedAsyncConnection.connect(libpq_url(url), autocommit=True) as connection:
            async with connection.transaction(force_rollback=True):
                rows = await read_reach(connection)
            cursor = await connection.execute("select current_setting('server_version')")
            version = await cursor.fetchone()
        assert version is not None
        return rows, str(version[0])

    with tempfile.TemporaryDirectory(prefix="todo-api-expected-") as folder:
        database = embedded.start(Path(folder))
        try:
            apply_migrations(database.url)
            rows, version = asyncio.run(read(database.url))
        finally:
            database.stop()
    write_expected(rows, version, path)
    return path
