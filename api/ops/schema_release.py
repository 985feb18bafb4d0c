"""Which release's schema the database is at, beside this package's, for a refusal in one line.

`todo-api serve` refuses any schema its isolation check does not expect; a database a migration behind
(or one a newer release migrated) is the common case, and listing every difference it makes (function
bodies, triggers, policies) buried the fix. The newest migration applied, as the last migrate recorded
it in the catalog (sql/mark_newest_migration.sql), tells those cases apart. It only words the refusal:
whether to serve is the isolation check's alone.
"""

from typing import Any

import psycopg

from api.db.sql_files import NEWEST_MIGRATION_CHECK, read_sql, shipped_migrations

_ROLLING_BACK = 'docs/operations.md, "Upgrading a fleet, and rolling back"'


async def newest_migration_applied(connection: psycopg.AsyncConnection[Any]) -> str | None:
    """The newest migration the database's last migrate recorded, or None when none is recorded."""
    cursor = await connection.execute(read_sql(NEWEST_MIGRATION_CHECK))
    row = await cursor.fetchone()
    return str(row[0]) if row and row[0] else None


def release_mismatch(newest_applied: str | None) -> str | None:
    """Why the database's schema is not this release's, as serve's refusal says it; None when it is
    this release's as far as the record tells (or nothing is recorded), and the findings are the news."""
    shipped = shipped_migrations()
    if newest_applied is None or newest_applied == shipped[-1]:
        return None
    if newest_applied in shipped:
        pending = shipped[shipped.index(newest_applied) + 1 :]
        return (
            f"Refusing to serve: the database is migrated up to {newest_applied}, and this release also "
            f"needs {', '.join(pending)}: run `todo-api migrate` with this release (or serve with "
            "--migrate), then start again."
        )
    if newest_applied < shipped[-1]:  # not one of this release's, nor after them: the findings tell
        return None
    return (
        f"Refusing to serve: the database was migrated by a newer release (up to {newest_applied}; this "
        f"release ships up to {shipped[-1]}): serve that release, or roll the database back to "
        f"{shipped[-1]} and run this release's `todo-api migrate` ({_ROLLING_BACK}), then start again."
    )
