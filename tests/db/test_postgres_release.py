"""The Postgres releases the API runs on (docs/operations.md, "Postgres releases"): on one older than
the oldest supported, `migrate` and `serve` refuse in one line naming the release found and the oldest
supported, and change nothing. On PostgreSQL 14, migrate failed half-way (0007's `ON DELETE SET NULL
(task_id)` is PostgreSQL 15's), leaving six migrations applied and a traceback-free but misleading
"a migration failed (SyntaxError ...)", and serve then said only that the database was not migrated.

The suite's own Postgres is the newest release; here it stands for one too old by raising the oldest
supported past it in the command's process, so the refusal is exercised against a real server without
an older one to download. The rest of the suite is the newest release's happy path; the releases in
between are tested as docs/operations.md says.
"""

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from api.ops.startup_checks import OLDEST_POSTGRES_RELEASE, RELEASE_STATE, release_refusal
from tests.support import PROJECT, SECRET, cli_env
from tests.test_cli_failures import assert_one_clear_failure


def test_releases_from_the_oldest_supported_pass_older_ones_are_refused_and_the_docs_say_which() -> None:
    oldest = OLDEST_POSTGRES_RELEASE
    for version_num, version in [(oldest * 10000, f"{oldest}.0"), (180006, "18.6")]:
        assert release_refusal(version_num=version_num, version=version, setting="DATABASE_URL") is None
    older, older_num = f"{oldest - 1}.23", (oldest - 1) * 10000 + 23
    refusal = release_refusal(version_num=older_num, version=older, setting="MIGRATION_DATABASE_URL")
    assert refusal is not None
    assert f"MIGRATION_DATABASE_URL reaches PostgreSQL {older}" in refusal
    assert f"needs PostgreSQL {oldest} or later" in refusal
    assert f"On PostgreSQL {oldest} or later" in (PROJECT / "README.md").read_text(encoding="utf-8")
    operations = (PROJECT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert f"The API runs on PostgreSQL {oldest} and later." in operations


@pytest.mark.parametrize(
    "command",
    [("migrate",), ("serve", "--port", "0"), ("serve", "--port", "0", "--migrate")],
    ids=["migrate", "serve", "serve --migrate"],
)
def test_a_postgres_older_than_the_oldest_supported_is_refused_in_one_line_and_nothing_is_migrated(
    tmp_path: Path, empty_db_url: str, command: tuple[str, ...]
) -> None:
    with psycopg.connect(empty_db_url) as db:
        row = db.execute(RELEASE_STATE).fetchone()
    assert row is not None
    version_num, version = row
    oldest = version_num // 10000 + 1
    program = (
        f"import api.ops.startup_checks as checks; checks.OLDEST_POSTGRES_RELEASE = {oldest}; "
        "from api.ops.cli import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", program, *command],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        env=cli_env(DATABASE_URL=empty_db_url, BETTER_AUTH_SECRET=SECRET, LOG_FORMAT="text"),
    )  # fmt: skip
    assert_one_clear_failure(
        result.stderr,
        result.returncode,
        f"DATABASE_URL reaches PostgreSQL {version}, and todo-api needs PostgreSQL {oldest} or later",
        "Postgres releases",
    )
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    with psycopg.connect(empty_db_url) as db:
        tables = db.execute("select to_regclass('public._yoyo_migration'), to_regclass('public.tasks')")
        assert tables.fetchone() == (None, None)
