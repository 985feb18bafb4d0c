"""The isolation check: whether the database will keep users apart, in findings a person can act on.

One source for every use: start-up refuses to serve on any finding, and `todo-api policies` reports
the same findings beside its drift check. The SQL is `sql/checks/isolation.sql`, which a DBA can run
with psql; this module adds what only doing can prove: that the login role can switch to todo_app.
"""

from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import psycopg
from psycopg.rows import tuple_row

from api.db.database import APP_ROLE, Database
from api.db.sql_files import ISOLATION_CHECK, read_sql
from api.telemetry import metrics


@cache
def _check() -> str:
    return read_sql(ISOLATION_CHECK)


@dataclass(frozen=True)
class Finding:
    """One reason the database does not, or may not, isolate users."""

    kind: Literal["isolation", "drift"]
    message: str
    table: str | None = None
    policy: str | None = None


async def isolation_findings(connection: psycopg.AsyncConnection[Any]) -> list[Finding]:
    """Every isolation finding, read as the connection's login role; empty when users are isolated."""
    async with connection.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(_check())
        findings = [Finding("isolation", str(message)) for (message,) in await cursor.fetchall()]
    if findings:
        return findings
    # The catalog says the login role may switch; make sure by doing it, as every request will.
    try:
        async with connection.transaction(force_rollback=True):
            await connection.execute("select set_config('role', %s, true)", [APP_ROLE])
    except psycopg.errors.InsufficientPrivilege:
        async with connection.cursor(row_factory=tuple_row) as cursor:
            await cursor.execute("select current_user")
            login_role = await cursor.fetchone()
        name = login_role[0] if login_role else "(unknown)"
        findings.append(
            Finding("isolation", f"login role {name} cannot switch to {APP_ROLE}: grant {APP_ROLE} to it")
        )
    return findings


class IsolationError(RuntimeError):
    def __init__(self, findings: list[Finding]) -> None:
        self.findings = findings
        lines = "\n".join(f"  - {finding.message}" for finding in findings)
        super().__init__(
            "Refusing to serve: the database cannot guarantee that users are isolated.\n"
            f"{lines}\nRun `todo-api migrate` (or fix the roles and policies by hand), then start again."
        )


async def ensure_isolation(database: Database) -> None:
    """Refuse to serve (IsolationError) unless the database isolates users."""
    async with database.pool.connection() as connection:
        findings = await isolation_findings(connection)
    metrics.record_isolation_check(len(findings))
    if findings:
        raise IsolationError(findings)
