"""Refuse to serve unless the database will enforce isolation (sql/checks/isolation.sql)."""

import psycopg.errors
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.db import APP_ROLE
from api.settings import SQL_DIR

_CHECK = text((SQL_DIR / "checks" / "isolation.sql").read_text(encoding="utf-8"))
_SWITCH = text("select set_config('role', :role, true)")


class IsolationError(RuntimeError):
    def __init__(self, findings: list[str]) -> None:
        self.findings = findings
        lines = "\n".join(f"  - {finding}" for finding in findings)
        super().__init__(
            "Refusing to serve: the database cannot guarantee that users are isolated.\n"
            f"{lines}\nRun `todo-api migrate` (or fix the roles and policies by hand), then start again."
        )


async def isolation_findings(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        findings = [row.finding for row in await connection.execute(_CHECK)]
        login_role = (await connection.execute(text("select current_user"))).scalar_one()
        await connection.rollback()
        if not findings:
            try:
                await connection.execute(_SWITCH, {"role": APP_ROLE})
            except sqlalchemy.exc.ProgrammingError as error:
                if not isinstance(error.orig, psycopg.errors.InsufficientPrivilege):
                    raise
                findings.append(
                    f"login role {login_role} cannot switch to {APP_ROLE}: grant {APP_ROLE} to it"
                )
            await connection.rollback()
    return findings


async def ensure_isolation(engine: AsyncEngine) -> None:
    findings = await isolation_findings(engine)
    if findings:
        raise IsolationError(findings)
