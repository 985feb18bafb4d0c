"""Re-apply every file in sql/policies/ after each `yoyo apply`.

yoyo runs files named post-apply* after applying migrations, without recording them, so a plain
`yoyo apply` by a DBA leaves the live policies equal to the files, exactly as `todo-api migrate` does.
"""

from pathlib import Path

import sqlparse
from yoyo import step

POLICIES = Path(__file__).resolve().parent.parent / "policies"

steps = [
    step(statement)
    for policy_file in sorted(POLICIES.glob("*.sql"))
    for statement in sqlparse.split(policy_file.read_text(encoding="utf-8"))
    if statement.strip()
]
