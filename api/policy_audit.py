"""Audit the live database's isolation: what `todo-api policies` reports.

Every query is a file a DBA can run with psql: sql/audit/*.sql describe the roles, tables, policies
and grants; the findings are sql/checks/isolation.sql, the very check the API runs at start-up, plus
drift between the live policies and sql/policies/.

Drift is measured by letting Postgres normalise both sides: read the live policies, apply the files
in a transaction, read them again, roll back. CREATE and DROP POLICY take an ACCESS EXCLUSIVE lock on
their table, so for those few milliseconds requests touching users or tasks wait; `lock_timeout`
bounds how long the audit itself waits behind a long transaction, and nothing is ever committed.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import psycopg
import sqlparse
from psycopg.rows import class_row

from api.database_url import libpq_url
from api.settings import SQL_DIR

AUDIT_DIR = SQL_DIR / "audit"
CHECK_FILE = SQL_DIR / "checks" / "isolation.sql"
POLICIES_DIR = SQL_DIR / "policies"
LOCK_TIMEOUT = "5s"

Connection = psycopg.Connection[tuple[object, ...]]
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
class Finding:
    kind: Literal["isolation", "drift"]
    message: str
    table: str | None = None
    policy: str | None = None


@dataclass(frozen=True)
class Audit:
    database: str
    login_role: str
    server_version: str
    roles: list[Role]
    tables: list[Table]
    policies: list[Policy]
    grants: list[Grant]
    findings: list[Finding]


def _sql(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _statements(path: Path) -> list[str]:
    """The statements of a file, split as yoyo splits sql/policies/ when it applies them."""
    return [statement for statement in sqlparse.split(_sql(path)) if statement.strip()]


def read_policies(connection: Connection) -> list[Policy]:
    with connection.cursor(row_factory=class_row(Policy)) as cursor:
        return cursor.execute(_sql(AUDIT_DIR / "policies.sql")).fetchall()


def isolation_findings(connection: Connection) -> list[Finding]:
    rows = connection.execute(_sql(CHECK_FILE)).fetchall()
    return [Finding("isolation", str(message)) for (message,) in rows]


@dataclass(frozen=True)
class _Expected:
    policies: list[Policy]
    source_of_table: dict[str, str]


def _apply_policy_files(connection: Connection, files: Sequence[Path]) -> _Expected:
    """Apply the files (inside the caller's transaction); return the result and who made what."""
    source_of_table: dict[str, str] = {}
    for path in files:
        before = {policy.oid for policy in read_policies(connection)}
        for statement in _statements(path):
            connection.execute(statement)
        for policy in read_policies(connection):
            if policy.oid not in before:
                source_of_table[policy.table_name] = _display(path)
    return _Expected(read_policies(connection), source_of_table)


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(SQL_DIR.parent))
    except ValueError:
        return str(path)


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


def policy_drift(connection: Connection, files: Sequence[Path] | None = None) -> list[Finding]:
    """Compare the live policies with sql/policies/ (or `files`), changing nothing.

    Runs as the login role, which must own the tables (as the migrating role does) to re-create
    their policies. When it cannot, that is itself a finding: drift was not checked.
    """
    policy_files = sorted(POLICIES_DIR.glob("*.sql")) if files is None else files
    try:
        with connection.transaction(force_rollback=True):
            connection.execute(f"set local lock_timeout = '{LOCK_TIMEOUT}'")
            live = read_policies(connection)
            expected = _apply_policy_files(connection, policy_files)
    except psycopg.Error as error:
        reason = (error.diag.message_primary or str(error)).strip()
        return [Finding("drift", f"could not compare the live policies with sql/policies/: {reason}")]
    return compare_policies(live, expected)


def _rows(connection: Connection, row_type: type[Row], path: Path) -> list[Row]:
    with connection.cursor(row_factory=class_row(row_type)) as cursor:
        return cursor.execute(_sql(path)).fetchall()


def audit(connection: Connection, policy_files: Sequence[Path] | None = None) -> Audit:
    """Everything `todo-api policies` shows, read in one session as the login role."""
    identity = connection.execute(
        "select current_database(), current_user, current_setting('server_version')"
    ).fetchone()
    assert identity is not None
    database, login_role, server_version = (str(value) for value in identity)
    with connection.transaction():
        described = (
            _rows(connection, Role, AUDIT_DIR / "roles.sql"),
            _rows(connection, Table, AUDIT_DIR / "tables.sql"),
            read_policies(connection),
            _rows(connection, Grant, AUDIT_DIR / "grants.sql"),
            isolation_findings(connection),
        )
    roles, tables, policies, grants, findings = described
    return Audit(
        database=database,
        login_role=login_role,
        server_version=server_version,
        roles=roles,
        tables=tables,
        policies=policies,
        grants=grants,
        findings=findings + policy_drift(connection, policy_files),
    )


def audit_database(database_url: str, policy_files: Sequence[Path] | None = None) -> Audit:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as connection:
        return audit(connection, policy_files)
