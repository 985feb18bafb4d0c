"""The isolation check: whether the database will keep users apart, in findings a person can act on.

One check for every use: start-up refuses to serve on any finding, the running server repeats it
every ISOLATION_CHECK_INTERVAL_SECONDS and answers 503 while it finds anything
(`IsolationWatch`), and `todo-api policies` reports it beside its own drift check. It is:

- `sql/checks/isolation.sql`: roles, RLS enabled and forced, policies that admit every row,
  functions, views, privileges that row-level security does not govern;
- `sql/checks/drift.sql`: policies and functions of schema app that changed since `todo-api
  migrate` recorded its baseline, and the shipped `sql/policies/` files against the baseline's
  checksums (a deploy whose policy files were never applied);
- proving the role switch by doing it, as every request will.

It only reads: the catalogs and the baseline, with a lock timeout so that it never queues behind
DDL, and a role switch in a transaction that is rolled back.
"""

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import psycopg
from psycopg.rows import tuple_row

from api.db.database import APP_ROLE, Database
from api.db.errors import UNAVAILABLE
from api.db.sql_files import DRIFT_CHECK, ISOLATION_CHECK, display_path, policy_files, read_sql
from api.telemetry import metrics

logger = logging.getLogger(__name__)

_NOT_MIGRATED = "the database is not migrated"
# The check could not run this time: the next one will tell. Requests meet the same trouble anyway.
_CANNOT_RUN_NOW: tuple[type[Exception], ...] = (*UNAVAILABLE, psycopg.errors.LockNotAvailable)
# Long enough for a catalog read, short enough that a check never waits long behind DDL.
_LOCK_TIMEOUT = "2s"


@dataclass(frozen=True)
class Finding:
    """One reason the database does not, or may not, isolate users."""

    kind: Literal["isolation", "drift"]
    message: str
    table: str | None = None
    policy: str | None = None


@cache
def _sql(path_name: Literal["isolation", "drift"]) -> str:
    return read_sql(ISOLATION_CHECK if path_name == "isolation" else DRIFT_CHECK)


async def _rows(connection: psycopg.AsyncConnection[Any], query: str) -> list[tuple[Any, ...]]:
    async with connection.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(query)
        return await cursor.fetchall()


async def _file_drift(connection: psycopg.AsyncConnection[Any]) -> list[Finding]:
    """The shipped policy files against the checksums the baseline recorded when they were applied."""
    recorded = dict(await _rows(connection, "select file, sha256 from app.policy_file_baseline"))
    shipped = {display_path(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in policy_files()}
    findings = []
    for file in sorted(recorded.keys() | shipped.keys()):
        if recorded.get(file) != shipped.get(file):
            change = "is new" if file not in recorded else "is gone" if file not in shipped else "changed"
            findings.append(
                Finding("drift", f"{file} {change} since the database was migrated: run todo-api migrate")
            )
    return findings


async def isolation_findings(connection: psycopg.AsyncConnection[Any]) -> list[Finding]:
    """Every finding, read as the connection's login role; empty when users are isolated."""
    findings: list[Finding] = []
    try:
        async with connection.transaction(force_rollback=True):
            await connection.execute(f"set local lock_timeout = '{_LOCK_TIMEOUT}'")
            rows = await _rows(connection, _sql("isolation"))
            findings += [Finding("isolation", str(message)) for (message,) in rows]
            if any(_NOT_MIGRATED in finding.message for finding in findings):
                return findings
            drift = await _rows(connection, _sql("drift"))
            findings += [Finding("drift", str(message), table, policy) for message, table, policy in drift]
            findings += await _file_drift(connection)
    except psycopg.ProgrammingError as error:
        # A view or table the check reads was dropped or made unreadable: that blinds the check,
        # so it is a finding of its own, never a pass.
        reason = (error.diag.message_primary or str(error)).strip()
        findings.append(Finding("isolation", f"the isolation check could not run: {reason}"))
    if findings:
        return findings
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
    return findings


class IsolationError(RuntimeError):
    def __init__(self, findings: Sequence[Finding]) -> None:
        self.findings = list(findings)
        lines = "\n".join(f"  - {finding.message}" for finding in findings)
        super().__init__(
            "Refusing to serve: the database cannot guarantee that users are isolated.\n"
            f"{lines}\nRun `todo-api migrate` (or fix the roles and policies by hand), then start again."
        )


class IsolationWatch:
    """The last verdict of the isolation check in this worker, kept current in the background.

    `verified` is what every task request asks (api/http/caller.py): while the last check found
    anything, requests are refused rather than trusted to a database that may not isolate users.
    """

    def __init__(self, database: Database, *, interval_seconds: float) -> None:
        self.database = database
        self.interval_seconds = interval_seconds
        self.findings: tuple[Finding, ...] = ()
        self.verified = False

    async def check(self) -> tuple[Finding, ...]:
        async with self.database.pool.connection() as connection:
            findings = tuple(await isolation_findings(connection))
        metrics.record_isolation_check(len(findings))
        if findings != self.findings:
            if findings:
                logger.error(
                    "isolation is not verified; task requests are refused until it is: %s",
                    "; ".join(finding.message for finding in findings),
                    extra={"findings": [finding.message for finding in findings]},
                )
            elif self.findings:
                logger.warning("isolation is verified again; task requests are served")
        self.findings, self.verified = findings, not findings
        return findings

    async def ensure(self) -> None:
        """The start-up check: refuse to serve (IsolationError) on any finding."""
        if findings := await self.check():
            raise IsolationError(findings)

    async def keep_checking(self) -> None:
        """Repeat the check until cancelled; a check that cannot run keeps the last verdict."""
        while True:
            await asyncio.sleep(self.interval_seconds)
            try:
                await self.check()
            except _CANNOT_RUN_NOW as error:
                logger.warning("isolation check could not run: %s", type(error).__name__)
            except Exception:
                logger.exception("isolation check failed")
