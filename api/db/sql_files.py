"""The SQL that ships inside the package: migrations, policies, the isolation check, audit queries
and policy tests.

The repository keeps them in its top-level `sql/`, which `api/sql` links to; the wheel carries them
as `api/sql`. Either way they are found as the package's own resource, so an installed API works
from any directory.
"""

from importlib.resources import files
from pathlib import Path


class SqlFilesMissing(RuntimeError):  # noqa: N818 (a state of the installation)
    """The package was installed without its SQL: nothing can be migrated or checked."""


# Installed from a wheel or a checkout, the package is a folder on disk; yoyo and the audit need
# real paths.
SQL_DIR = Path(str(files("api").joinpath("sql")))
MIGRATIONS_DIR = SQL_DIR / "migrations"
POLICIES_DIR = SQL_DIR / "policies"
# The first statement of every transaction that applies the policy files (why: in the file itself).
LOCK_POLICY_TABLES = SQL_DIR / "lock_policy_tables.sql"
AUDIT_DIR = SQL_DIR / "audit"
ISOLATION_CHECK = SQL_DIR / "checks" / "isolation.sql"
SESSION_SETTINGS_CHECK = SQL_DIR / "checks" / "session_settings.sql"
LOGIN_ROLE_CHECK = SQL_DIR / "checks" / "login_role.sql"
UNFIT_LOGIN_ROLE_CHECK = SQL_DIR / "checks" / "unfit_login_role.sql"
SCHEMA_OWNER_CHECK = SQL_DIR / "checks" / "schema_owner.sql"
REACH_CHECK = SQL_DIR / "checks" / "reach.sql"
EXPECTED_REACH = SQL_DIR / "checks" / "expected_reach.json"
NEWEST_MIGRATION_CHECK = SQL_DIR / "checks" / "newest_migration.sql"
NEWEST_MIGRATION_APPLIED = SQL_DIR / "checks" / "newest_migration_applied.sql"


def read_sql(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise missing(path) from None


def missing(path: Path) -> SqlFilesMissing:
    return SqlFilesMissing(
        f"{path} is missing from the installed package: reinstall todo-api from its wheel or a checkout"
    )


def shipped_migrations() -> list[str]:
    """The ids of the migrations this package ships, oldest first, as yoyo names them."""
    return sorted(
        path.name.removesuffix(".sql")
        for path in MIGRATIONS_DIR.glob("[0-9]*.sql")
        if not path.name.endswith(".rollback.sql")
    )


def policy_files() -> list[Path]:
    """One file per table, applied in name order."""
    return sorted(POLICIES_DIR.glob("*.sql"))


def display_path(path: Path) -> str:
    """A shipped file as a DBA finds it in the repository: `sql/policies/tasks.sql`."""
    try:
        return str(Path("sql") / path.relative_to(SQL_DIR))
    except ValueError:
        return str(path)
