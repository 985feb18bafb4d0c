"""Refuse to serve unless the database will enforce isolation (sql/checks/isolation.sql)."""

import psycopg.errors

from api.db import APP_ROLE, Database
from api.settings import SQL_DIR

_CHECK = (SQL_DIR / "checks" / "isolation.sql").read_text(encoding="utf-8")


class IsolationError(RuntimeError):
    def __init__(self, findings: list[str]) -> None:
        self.findings = findings
        lines = "\n".join(f"  - {finding}" for finding in findings)
        super().__init__(
            "Refusing to serve: the database cannot guarantee that users are isolated.\n"
            f"{lines}\nRun `todo-api migrate` (or fix the roles and policies by hand), then start again."
        )


async def isolation_findings(database: Database) -> list[str]:
    async with database.pool.connection() as connection:
        findings = [row["finding"] for row in await (await connection.execute(_CHECK)).fetchall()]
        if findings:
            return findings
        # The catalog says the login role may switch; make sure by doing it, as every request will.
        try:
            async with connection.transaction(force_rollback=True):
                await connection.execute("select set_config('role', %s, true)", [APP_ROLE])
        except psycopg.errors.InsufficientPrivilege:
            login_role = await (await connection.execute("select current_user as name")).fetchone() or {}
            findings.append(
                f"login role {login_role.get('name')} cannot switch to {APP_ROLE}: grant {APP_ROLE} to it"
            )
    return findings


async def ensure_isolation(database: Database) -> None:
    findings = await isolation_findings(database)
    if findings:
        raise IsolationError(findings)
