"""CPU per request of the transaction path alone, without HTTP: `Database.run` against the alternative.

`Database.run` sends BEGIN, the identity settings, the statement and COMMIT as four pipelined
extended-protocol messages (server-side binding, so DB_PREPARE_THRESHOLD can prepare them). The
alternative sends them as one simple-protocol message with the values bound client-side (psycopg's
ClientCursor): also one round trip, fewer Python calls, but never preparable. This measures what
that difference costs per request, one connection, sequential:

    .venv/bin/python -m bench.transaction_paths
"""

import asyncio
import time
from collections.abc import Awaitable, Callable

import psycopg
from psycopg.rows import dict_row

from api import queries
from api.db import Database, compiled
from api.migrations import apply_migrations
from api.settings import Settings
from bench.postgres import embedded_postgres_server

_ROUNDS = 3000
_ACT_AS_USER = (
    "select set_config('role', 'todo_app', true), set_config('app.user_id', %(app_user_id)s, true),"
    " set_config('statement_timeout', %(app_statement_timeout)s, true), set_config('TimeZone', 'UTC', true)"
)


async def _cpu_us_per_call(call: Callable[[], Awaitable[object]]) -> float:
    for _ in range(200):
        await call()
    started = time.process_time()
    for _ in range(_ROUNDS):
        await call()
    return (time.process_time() - started) / _ROUNDS * 1e6


async def _measure(url: str) -> list[tuple[str, float, float]]:
    settings = Settings(_env_file=None, database_url=url, better_auth_secret="x" * 32, db_pool_size=1)
    database = Database.from_settings(settings)
    await database.open()
    single = await psycopg.AsyncConnection.connect(
        url, autocommit=True, row_factory=dict_row, cursor_factory=psycopg.AsyncClientCursor
    )
    first_page = queries.TaskFilter(
        completed=None, search=None, sort="created", order="desc", after=None, limit=100
    )
    results = []
    try:
        for name, query in [
            ("get", queries.get_task("alice", 5)),
            ("list", queries.list_tasks("alice", first_page)),
        ]:
            statement = compiled(query.statement)
            message = f"BEGIN READ ONLY; {_ACT_AS_USER}; {statement.sql}; COMMIT"
            values = {
                "app_user_id": "alice",
                "app_statement_timeout": "5000",
                **statement.params(query.params),
            }

            async def one_message(message: str = message, values: dict[str, object] = values) -> object:
                cursor = single.cursor()
                await cursor.execute(message, values)
                cursor.nextset()
                cursor.nextset()
                return await cursor.fetchall()

            async def pipelined(query: queries.Query = query) -> object:
                return await database.run("alice", query, read_only=True)

            results.append((name, await _cpu_us_per_call(pipelined), await _cpu_us_per_call(one_message)))
    finally:
        await single.close()
        await database.close()
    return results


def main() -> None:
    with embedded_postgres_server() as postgres:
        url = postgres.create_database("paths")
        apply_migrations(url)
        with psycopg.connect(postgres.superuser_url("paths"), autocommit=True) as connection:
            connection.execute("insert into users (id) values ('alice')")
            connection.execute(
                "insert into tasks (user_id, title)"
                " select 'alice', 'task ' || i from generate_series(1, 20) as i"
            )
        rows = asyncio.run(_measure(url))
    print("| request | Database.run (pipeline) CPU us | one simple-protocol message CPU us | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for name, pipeline, message in rows:
        print(f"| {name} | {pipeline:.0f} | {message:.0f} | {message / pipeline:.2f} |")


if __name__ == "__main__":
    main()
