"""Re-apply every file in sql/policies/ after each `yoyo apply`.

yoyo runs files named post-apply* after applying migrations, without recording them, so a plain
`yoyo apply` by a DBA leaves the live policies equal to the files, exactly as `todo-api migrate` does.
What the policies then look like in the catalog is part of sql/checks/expected_reach.json, which the
isolation check compares the live database with.

The steps run in one transaction, which first locks every table with a policy file at once, in the
order the API's writes lock them (sql/lock_policy_tables.sql says why): applied file by file, the
policies deadlocked with those writes.
"""

from pathlib import Path

import sqlparse
from yoyo import step

SQL = Path(__file__).resolve().parent.parent
POLICIES = SQL / "policies"
FILES = [SQL / "lock_policy_tables.sql", *sorted(POLICIES.glob("*.sql"))]

steps = [
    step(statement)
    for policy_file in FILES
    for statement in sqlparse.split(policy_file.read_text(encoding="utf-8"))
    if statement.strip()
]
