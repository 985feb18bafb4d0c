"""Statements are prepared on a connection to Postgres itself, and only there (api/db/prepared.py).

That users stay apart over prepared statements, on generic plans too, is tested with every other
promise of the transaction helper in tests/test_transactions.py; through PgBouncer, in
tests/faults/test_pgbouncer.py.
"""

import asyncio
from typing import Any

import psycopg
import pytest

from api.auth.principal import Principal
from api.db.database import Database
from api.db.prepared import prepared_statement, reaches_postgres_itself
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
            created = await database.run(
                user.id, queries.create_task(owner, TaskCreate(title="Prepared")), read_only=False
            )
            await database.run(user.id, queries.list_tasks(user.id, TaskListParams()), read_only=True)
            rows = await database.run(user.id, queries.get_task(user.id, created[0]["id"]), read_only=True)
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
    assert all(statement.startswith("PREPARE todo_api_") for statement in statements), statements


def test_off_prepares_nothing(migrated_db_url: str) -> None:
    assert prepared_after_requests(migrated_db_url, db_prepared_statements="off") == []


def test_a_direct_connection_is_told_from_a_pooled_one(migrated_db_url: str) -> None:
    async def direct() -> bool:
        async with await psycopg.AsyncConnection.connect(migrated_db_url, autocommit=True) as connection:
            return await reaches_postgres_itself(connection)

    assert asyncio.run(direct()) is True


def test_the_prepared_form_keeps_values_apart_from_the_sql() -> None:
    statement = prepared_statement(
        "SELECT %(a)s::VARCHAR, %(b)s::BIGINT, %(a)s::VARCHAR WHERE title LIKE 'x%%'"
    )
    assert statement.prepare == (
        f"PREPARE {statement.name} AS SELECT $1::VARCHAR, $2::BIGINT, $1::VARCHAR WHERE title LIKE 'x%'"
    )
    assert statement.execute == f"EXECUTE {statement.name}(%(a)s, %(b)s)"
    assert prepared_statement("SELECT 1").execute == f"EXECUTE {prepared_statement('SELECT 1').name}"
