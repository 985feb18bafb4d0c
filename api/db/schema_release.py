"""Which release's schema the database is at, beside this package's, in one line an operator can act on.

The isolation check refuses any schema it does not expect; a database a migration behind (or one a
newer release migrated) is the common case, and listing every difference it makes (function bodies,
triggers, policies) buried the fix. The newest migration applied, as the last migrate recorded it in
the catalog (sql/mark_newest_migration.sql), tells those cases apart. Two readers word it so:
`todo-api serve` as it refuses to start (api/ops/startup_checks.py), and the running server's
isolation check as it logs why it refuses (api/db/isolation.py), so that an operator reads the same
diagnosis in both. It only words: whether to serve is the isolation check's alone.
"""

from typing import Any

import psycopg
from psycopg.rows import tuple_row

from api.db.sql_files import NEWEST_MIGRATION_APPLIED, NEWEST_MIGRATION_CHECK, read_sql, shipped_migrations

_ROLLING_BACK = 'docs/operations.md, "Upgrading a fleet, and rolling back"'


async def newest_migration_applied(connection: psycopg.AsyncConnection[Any]) -> str | None:
    """The newest migration applied: from yoyo's own table when this role may read it, else as the
    database's last migrate recorded it; None when neither says.

    A `yoyo rollback` leaves the record naming the migration it undid (no hook of yoyo's runs after
    a rollback) until the next migrate, and serve's line then named a release the database is no
    longer at: tests/test_serve_across_releases.py, test_serve_after_a_rollback_says_where_the_database_is.
    """
    async with connection.cursor(row_factory=tuple_row) as cursor:  # whatever the connection's own rows
        await cursor.execute(read_sql(NEWEST_MIGRATION_CHECK))
        row = await cursor.fetchone()
        assert row is not None  # one row, always
        recorded, may_read_applied = row
        if may_read_applied:
            await cursor.execute(read_sql(NEWEST_MIGRATION_APPLIED))
            applied = await cursor.fetchone()
            return str(applied[0]) if applied and applied[0] else None
    return str(recorded) if recorded else None


def migrated_by_a_newer_release(newest_applied: str | None) -> bool:
    """Whether the newest migration applied is none of this release's, and after them all."""
    shipped = shipped_migrations()
    return newest_applied is not None and newest_applied not in shipped and newest_applied > shipped[-1]


def release_mismatch(newest_applied: str | None) -> str | None:
    """Why the database's schema is not this release's, and the fix, in words either reader frames;
    None when it is this release's as far as the record tells (or nothing is recorded), and the
    findings are the news."""
    shipped = shipped_migrations()
    if newest_applied is None or newest_applied == shipped[-1]:
        return None
    if newest_applied in shipped:
        pending = shipped[shipped.index(newest_applied) + 1 :]
        return (
            f"the database is migrated up to {newest_applied}, and this release also needs "
            f"{', '.join(pending)}: run `todo-api migrate` with this release (or serve with --migrate), "
            # After a rollback (docs/operations.md) the same state means the operator went back on
            # purpose; the record a login role that owns nothing may read cannot tell the two apart.
            "or, if the database was rolled back on purpose, serve the release that ships up to "
            f"{newest_applied}"
        )
    if not migrated_by_a_newer_release(newest_applied):  # not one of ours: the findings tell
        return None
    return (
        f"the database was migrated by a newer release (up to {newest_applied}; this release ships up to "
        f"{shipped[-1]}): serve that release, or roll the database back to {shipped[-1]} and run this "
        f"release's `todo-api migrate` ({_ROLLING_BACK})"
    )
