"""CPU per request of the transaction path alone, without HTTP, for each way `Database.run` sends it.

- one message: BEGIN, the settings, the statement and COMMIT as one simple-protocol message, values
  bound client-side (DB_PREPARED_STATEMENTS=off, and what the default sends through a pooler);
- one message, prepared: the same with the statement an EXECUTE of one prepared once per connection
  (the default on a direct connection, DB_PREPARED_STATEMENTS=auto);
- pipelined: DB_PREPARE_THRESHOLD set high, four extended-protocol messages in psycopg's pipeline
  mode, never actually prepared;
- pipelined and prepared: DB_PREPARE_THRESHOLD=0, the same, prepared on first use.

One connection, sequential requests, a user with 20 tasks:

    .venv/bin/python -m bench.transaction_paths
"""

import asyncio
import time

from api.db.database import Database, Query
from api.settings import Settings
from api.tasks import queries
from api.tasks.listing import TaskListParams
from bench.postgres import embedded_postgres_server

_ROUNDS = 3000
_WAYS: dict[str, dict[str, object]] = {
    "one message": {"db_prepared_statements": "off"},
    "one message, prepared": {"db_prepared_statements": "auto"},
    "pipelined": {"db_prepare_threshold": 10**9},
    "pipelined and prepared": {"db_prepare_threshold": 0},
}


async def _cpu_us_per_request(url: str, way: dict[str, object], query: Query) -> float:
    settings = Settings(
        _env_file=None,
        database_url=url,
        better_auth_secret="x" * 32,
        db_pool_size=1,
        **way,  # type: ignore[arg-type]
    )
    database = Database.from_settings(settings)
    await database.open()
    try:
        for _ in range(200):
            await database.run("alice", query, read_only=True)
        started = time.process_time()
        for _ in range(_ROUNDS):
            await database.run("alice", query, read_only=True)
        return (time.process_time() - started) / _ROUNDS * 1e6
    finally:
        await database.close()


def main() -> None:
    first_page = TaskListParams(limit=100)
    requests = {"get": queries.get_task("alice", 5), "list": queries.list_tasks("alice", first_page)}
    with embedded_postgres_server() as postgres:
        url = postgres.one_user_database("paths", "alice", tasks=20)
        figures = {
            (request, way): asyncio.run(_cpu_us_per_request(url, settings, query))
            for request, query in requests.items()
            for way, settings in _WAYS.items()
        }
    print("| request | " + " | ".join(f"{way}, CPU us" for way in _WAYS) + " |")
    print("| --- |" + " ---: |" * len(_WAYS))
    for request in requests:
        print(f"| {request} | " + " | ".join(f"{figures[request, way]:.0f}" for way in _WAYS) + " |")


if __name__ == "__main__":
    main()
