"""Statements are prepared on a connection to Postgres itself, and only there (api/db/prepared.py).

That users stay apart over prepared statements, on generic plans too, is tested with every other
promise of the transaction helper in tests/test_transactions.py; through PgBouncer, in
tests/faults/test_pgbouncer.py.
"""

import asyncio
import logging
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import pq
from sqlalchemy import text

from api.auth.principal import Principal
from api.db.database import Database, Query
from api.db.prepared import url_reaches_postgres_itself
from api.db.statements import CompiledStatement, compiled
from api.tasks import queries
from api.tasks.listing import TaskListParams
from api.tasks.models import TaskCreate
from tests.support import new_user, settings_for


def prepared_after_requests(url: str, **settings: Any) -> list[str]:
    """The statements the pool's one connection holds after a create, a list and a get."""

    async def run() -> list[str]:
        database = Database.from_settings(settings_for(url, db_pool_size=1, **settings))
        await database.open()
        try:
            user = new_user()
            owner = Principal(user.id)
            created = await database.run(user.id, queries.create_task(owner, TaskCreate(title="Prepared")))
            await database.run(user.id, queries.list_tasks(user.id, TaskListParams()))
            rows = await database.run(user.id, queries.get_task(user.id, created[0]["id"]))
            assert [row["title"] for row in rows] == ["Prepared"]
            async with database.pool.connection() as connection:
                cursor = await connection.execute("select statement from pg_prepared_statements order by 1")
                return [row["statement"] for row in await cursor.fetchall()]
        finally:
            await database.close()

    return asyncio.run(run())


@pytest.mark.parametrize("setting", ["auto", "on"])
def test_on_a_direct_connection_each_statement_is_prepared_once(migrated_db_url: str, setting: str) -> None:
    statements = prepared_after_requests(migrated_db_url, db_prepared_statements=setting)
    assert len(statements) == 3, statements
    # Each in the one message of its own transaction (api/db/statements.py, prepare_in_a_transaction).
    assert all(" PREPARE todo_api_" in statement for statement in statements), statements


def test_a_statement_is_prepared_in_one_message_before_its_first_run(
    migrated_db_url: str, tmp_path: Path
) -> None:
    """Far from the database every message is a round trip: the PREPARE's transaction went as three
    (BEGIN with its timeout, the PREPARE, COMMIT), 160 ms more at 40 ms from the database (the
    database-far-away probe of stop 80). In one, a statement's first run on a connection is two
    messages, and every run after it one (libpq's trace of what the connection sent)."""
    trace = tmp_path / "sent"

    async def run() -> None:
        database = Database.from_settings(settings_for(migrated_db_url, db_pool_size=1))
        await database.open()
        try:
            user = new_user()
            listing = queries.list_tasks(user.id, TaskListParams())
            with trace.open("w") as sent:
                async with database.pool.connection() as connection:
                    connection.pgconn.trace(sent.fileno())
                    connection.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
                assert await database.run(user.id, listing) == []
                assert await database.run(user.id, listing) == []
                async with database.pool.connection() as connection:
                    connection.pgconn.untrace()
        finally:
            await database.close()

    asyncio.run(run())
    # One message a record: "F" (from the front end) or "B", its length and its type; a query's text
    # may span lines.
    messages = re.split(r"^(?=[FB]\t\d+\t)", trace.read_text(), flags=re.MULTILINE)
    queries_sent = [message for message in messages if message.startswith("F\t") and "\tQuery\t" in message]
    assert len(queries_sent) == 3, "\n".join(queries_sent)
    assert " PREPARE todo_api_" in queries_sent[0], queries_sent[0]
    assert all("EXECUTE todo_api_" in sent and "PREPARE" not in sent for sent in queries_sent[1:]), (
        queries_sent
    )


def test_off_prepares_nothing(migrated_db_url: str) -> None:
    assert prepared_after_requests(migrated_db_url, db_prepared_statements="off") == []


def test_a_direct_connection_is_told_from_a_pooled_one(migrated_db_url: str) -> None:
    assert asyncio.run(url_reaches_postgres_itself(migrated_db_url)) is True


def test_the_prepared_form_is_the_one_compilation_with_positions_bound_by_psycopg(
    migrated_db_url: str,
) -> None:
    """One compilation serves every way of sending: the PREPARE is its text with $n where each
    placeholder stood (a parameter used twice is one position, a literal % stays one), and the
    EXECUTE passes the values in that order."""
    statement = compiled(
        text("SELECT CAST(:a AS text), CAST(:b AS bigint), CAST(:a AS text) WHERE 'x' LIKE 'x%'")
    )
    constant = compiled(text("SELECT 1"))
    with psycopg.connect(migrated_db_url, autocommit=True) as connection:
        prepare, prepare_constant = asyncio.run(_prepare_texts(migrated_db_url, statement, constant))
        connection.execute(prepare)
        assert connection.execute(f"EXECUTE {statement.name}('x', 2)").fetchone() == ("x", 2, "x")
    assert prepare == (
        f"PREPARE {statement.name} AS"
        " SELECT CAST($1 AS text), CAST($2 AS bigint), CAST($1 AS text) WHERE 'x' LIKE 'x%'"
    )
    assert statement.sql.endswith("WHERE 'x' LIKE 'x%%'")  # as psycopg binds it, in the one message
    assert statement.execute == f"EXECUTE {statement.name}(%(a)s, %(b)s)"
    assert prepare_constant == f"PREPARE {constant.name} AS SELECT 1"
    assert constant.execute == f"EXECUTE {constant.name}"


async def _prepare_texts(url: str, *statements: CompiledStatement) -> list[str]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        return [statement.prepare(connection) for statement in statements]


def test_every_statement_the_api_sends_prepares_and_runs(migrated_db_url: str) -> None:
    """Each write shape, conditional or not, with the values psycopg binds into its EXECUTE."""

    async def run() -> None:
        database = Database.from_settings(settings_for(migrated_db_url, db_pool_size=1))
        await database.open()
        try:
            user = new_user()
            owner = Principal(user.id, email="a@example.com", name="A")

            async def write(query: Query) -> list[dict[str, Any]]:
                return [dict(row) for row in await database.run(user.id, query)]

            created = await write(queries.create_task(owner, TaskCreate(title="100% done")))
            task_id, version = created[0]["id"], created[0]["version"]
            once = await write(
                queries.create_task_once(
                    owner, TaskCreate(title="Once"), "key-1", "0" * 64, timedelta(hours=1), tombstones_kept=5
                )
            )
            assert [(row["outcome"], row["task"]["title"]) for row in once] == [("created", "Once")]
            updated = await write(
                queries.update_task(owner, task_id, {"title": "50%"}, queries.Conditions([version]))
            )
            assert [(row["title"], row["written"]) for row in updated] == [("50%", True)]
            searched = await database.run(user.id, queries.list_tasks(user.id, TaskListParams(q="%")))
            assert [row["title"] for row in searched] == ["50%"]
            toggled = await write(queries.set_completed(owner, task_id, None))
            assert [row["completed"] for row in toggled] == [True]
            stale = await write(queries.delete_task(owner, task_id, queries.Conditions([version])))
            assert [row["written"] for row in stale] == [False]
            assert [row["id"] for row in await write(queries.delete_task(owner, task_id))] == [task_id]
            async with database.pool.connection() as connection:
                cursor = await connection.execute("select count(*) as n from pg_prepared_statements")
                assert await cursor.fetchone() == {"n": 7}
        finally:
            await database.close()

    asyncio.run(run())


def test_a_statement_found_gone_runs_the_request_again_unprepared_leaving_the_pool_alone(
    migrated_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A statement gone from its session (behind a pooler: another server session; here, DEALLOCATE
    ALL) is no broken connection: the worker stops preparing and runs the write, which did not
    commit, once more, unprepared. The pool's other connections are not checked, as they are when a
    connection broke: one left idle still shows the last statement the test sent on it."""
    user = new_user()
    owner = Principal(user.id)
    idle_marker = "SELECT 'left idle by the test'"

    async def run() -> tuple[list[str], list[str]]:
        database = Database.from_settings(settings_for(migrated_db_url, db_pool_size=3))
        await database.open()
        try:
            await database.pool.wait()
            for i in range(3):  # the pool hands its connections out in turn: each prepares the create
                create = queries.create_task(owner, TaskCreate(title=f"before {i}"))
                await database.run(user.id, create)
            async with (
                database.pool.connection() as first,
                database.pool.connection() as second,
                database.pool.connection() as third,
            ):
                for connection in (first, second, third):
                    await connection.execute("DEALLOCATE ALL")
                    await connection.execute(idle_marker)
            # On the connection returned last (`third`): its EXECUTE fails; the rerun takes `second`.
            created = await database.run(user.id, queries.create_task(owner, TaskCreate(title="after")))
            async with await psycopg.AsyncConnection.connect(migrated_db_url, autocommit=True) as probe:
                cursor = await probe.execute(
                    "SELECT query FROM pg_stat_activity"
                    " WHERE application_name = 'todo-api' AND datname = current_database()"
                )
                last_statements = [row[0] for row in await cursor.fetchall()]
            return [row["title"] for row in created], last_statements
        finally:
            await database.close()

    with caplog.at_level(logging.INFO, logger="api.db.database"):
        created, last_statements = asyncio.run(run())
    assert created == ["after"]
    with psycopg.connect(migrated_db_url, autocommit=True) as database:
        stored = database.execute("SELECT title FROM tasks WHERE user_id = %s ORDER BY id", [user.id])
        assert [row[0] for row in stored] == ["before 0", "before 1", "before 2", "after"]  # none twice
    assert len(last_statements) == 3, last_statements
    assert last_statements.count(idle_marker) == 1, last_statements
    said = [
        (record.levelno, record.getMessage()) for record in caplog.records if record.name == "api.db.database"
    ]
    warnings = [message for level, message in said if level == logging.WARNING]
    assert len(warnings) == 1, said
    assert warnings[0].startswith("DB_PREPARED_STATEMENTS=auto asks for prepared statements"), warnings[0]
    assert warnings[0].endswith("set DB_PREPARED_STATEMENTS=off"), warnings[0]
    assert any(message.startswith("running a transaction again, unprepared") for _, message in said), said
    assert not any("another connection" in message for _, message in said), said
