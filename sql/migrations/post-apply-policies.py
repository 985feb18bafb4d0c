"""Re-apply every file in sql/policies/ after each `yoyo apply`.

yoyo runs files named post-apply* after applying migrations, without recording them, so a plain
`yoyo apply` by a DBA leaves the live policies equal to the files, exactly as `todo-api migrate` does.
What the policies then look like in the catalog is part of sql/checks/expected_reach.json, which the
isolation check compares the live database with.
"""

from pathlib import Path

import sqlparse
from yoyo import step

POLICIES = Path(__file__).resolve().parent.parent / "policies"
FILES = sorted(POLICIES.glob("*.sql"))

steps = [
    step(statement)
    for policy_file in FILES
    for statement in sqlparse.split(policy_file.read_text(encoding="utf-8"))
    if statement.strip()
]
