"""Re-apply every file in sql/policies/ after each `yoyo apply`.

yoyo runs files named post-apply* after applying migrations, without recording them, so a plain
`yoyo apply` by a DBA leaves the live policies equal to the files, exactly as `todo-api migrate` does.
What the policies then look like in the catalog is part of sql/checks/expected_reach.json, which the
isolation check compares the live database with.

The steps run in one transaction, which first locks every table with a policy file at once, in the
order the API's writes lock them (sql/lock_policy_tables.sql says why): applied file by file, the
policies deadlocked with those writes. The last step records the newest migration applied where
`todo-api serve` can read it (sql/mark_newest_migration.sql says why).
"""

from pathlib import Path
from typing import Any

import sqlparse
from yoyo import step

SQL = Path(__file__).resolve().parent.parent
POLICIES = SQL / "policies"
FILES = [SQL / "lock_policy_tables.sql", *sorted(POLICIES.glob("*.sql")), SQL / "mark_newest_migration.sql"]
MIGRATIONS = sorted(
    path.name.removesuffix(".sql")
    for path in (SQL / "migrations").glob("[0-9]*.sql")
    if not path.name.endswith(".rollback.sql")
)


def every_migration_applied(connection: Any) -> None:
    """The policy files are written for the schema every migration makes: after `yoyo apply
    --revision` short of the last one they name tables and columns that are not there yet, and failed
    with a traceback. Ends yoyo in one line instead (exit 1), the migrations applied kept, and the
    policies left as they were: `todo_app` reads nothing a policy does not grant."""
    cursor = connection.cursor()
    cursor.execute("select migration_id from _yoyo_migration")
    applied = {row[0] for row in cursor.fetchall()}
    if missing := [migration for migration in MIGRATIONS if migration not in applied]:
        raise SystemExit(
            f"yoyo: the policies in sql/policies/ were not applied: they are written for the schema of "
            f"every migration, and these are not applied yet: {', '.join(missing)}. "
            "Run `yoyo apply` without --revision to apply them and the policies"
        )


steps = [
    step(every_migration_applied),
    *(
        step(statement)
        for policy_file in FILES
        for statement in sqlparse.split(policy_file.read_text(encoding="utf-8"))
        if statement.strip()
    ),
]
