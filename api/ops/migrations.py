"""Apply and roll back sql/migrations with yoyo, then re-apply sql/policies.

This is what `yoyo apply` does with the shipped yoyo.ini, with one difference: the policies are
re-applied even when no migration was pending, so the live policies always equal the files.
"""

from yoyo import get_backend, read_migrations
from yoyo.migrations import MigrationList

from api.db.sql_files import MIGRATIONS_DIR, missing
from api.db.urls import yoyo_url


def _migrations() -> MigrationList:
    migrations = read_migrations(str(MIGRATIONS_DIR))
    if not migrations:
        # Never "none pending": a database migrated from nothing would stay empty.
        raise missing(MIGRATIONS_DIR)
    return migrations


def apply_migrations(database_url: str) -> list[str]:
    """Apply what is pending and the policies; return the ids of the migrations applied."""
    backend = get_backend(yoyo_url(database_url))
    migrations = _migrations()
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations_only(pending)
        backend.run_post_apply(migrations)
    return [migration.id for migration in pending]


def rollback_migrations(database_url: str) -> list[str]:
    """Roll back every applied migration; return the ids rolled back."""
    backend = get_backend(yoyo_url(database_url))
    migrations = _migrations()
    with backend.lock():
        applied = backend.to_rollback(migrations)
        backend.rollback_migrations(applied)
    return [migration.id for migration in applied]
