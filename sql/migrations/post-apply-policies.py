"""Re-apply every file in sql/policies/ after each `yoyo apply`, then record the isolation baseline.

yoyo runs files named post-apply* after applying migrations, without recording them, so a plain
`yoyo apply` by a DBA leaves the live policies equal to the files, exactly as `todo-api migrate` does.
The last step records what is now in place (app.record_isolation_baseline, from
0004_isolation_baseline.sql), with each file's SHA-256 and the table it replaces the policies of, so
that the running API can tell when the catalog or the shipped files have moved on since.
"""

import hashlib
import json
import re
from pathlib import Path

import sqlparse
from yoyo import step

POLICIES = Path(__file__).resolve().parent.parent / "policies"
FILES = sorted(POLICIES.glob("*.sql"))


def _table(text: str) -> str:
    """The table a policy file is for: every file starts by dropping that table's policies."""
    found = re.search(r"CALL app\.drop_all_policies\('([^']+)'\)", text)
    if found is None:
        raise ValueError("a policy file must CALL app.drop_all_policies('<table>') first")
    return found.group(1)


_BASELINE = {
    f"sql/policies/{path.name}": {
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "table": _table(path.read_text(encoding="utf-8")),
    }
    for path in FILES
}

steps = [
    *(
        step(statement)
        for policy_file in FILES
        for statement in sqlparse.split(policy_file.read_text(encoding="utf-8"))
        if statement.strip()
    ),
    step("CALL app.record_isolation_baseline('{}'::jsonb)".format(json.dumps(_BASELINE).replace("'", "''"))),
]
