"""What one search costs the database: `q` of 200 characters over a user with 10,000 tasks.

    .venv/bin/python -m bench.search

The list statement the API sends (api.tasks.queries), run through `Database.run` as that user, on
an embedded Postgres holding the user's 10,000 tasks (a third with a 1,000-character description)
and 100,000 tasks of other users. Reports the p50 and p95 of `--runs` searches for text that no task
holds (every row is tested, the common case for a miss), and for text crafted to make a pattern
match backtrack.
"""

import argparse
import statistics
import time

import psycopg
import uvloop

from api.db.database import Database
from api.ops.migrations import apply_migrations
from api.settings import Settings
from api.tasks import queries
from api.tasks.listing import TaskListParams
from bench.postgres import embedded_postgres_server

_OWNER = "u" * 32
_SEARCHES = {
    "plain text no task holds": ("quarterly budget review with the northern regional office " * 4)[:200],
    "crafted to backtrack": ("aaaa bbbb " * 20)[:199] + "x",
}


def _load(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("insert into users (id) select 'other' || n from generate_series(1, 1000) as n")
        db.execute("insert into users (id) values (%s)", [_OWNER])
        db.execute(
            "insert into tasks (user_id, title, description)"
            " select %s, 'Renew the passport ' || n,"
            " case when n %% 3 = 0 then left(repeat('aaaa bbbb ', 100), 990) || n end"
            " from generate_series(1, 10000) as n",
            [_OWNER],
        )
        db.execute(
            "insert into tasks (user_id, title) select 'other' || (n % 1000 + 1), 'Buy milk ' || n"
            " from generate_series(1, 100000) as n"
        )
        db.execute("vacuum analyze")


async def _measure(url: str, runs: int) -> dict[str, list[float]]:
    settings = Settings(_env_file=None, database_url=url, better_auth_secret="x" * 32, db_pool_size=1)
    database = Database.from_settings(settings)
    await database.open()
    timings: dict[str, list[float]] = {}
    try:
        for name, text in _SEARCHES.items():
            query = queries.list_tasks(_OWNER, TaskListParams(q=text, limit=20))
            await database.run(_OWNER, query)  # warm up
            timings[name] = []
            for _ in range(runs):
                started = time.perf_counter()
                await database.run(_OWNER, query)
                timings[name].append((time.perf_counter() - started) * 1000)
    finally:
        await database.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.search",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with embedded_postgres_server() as postgres:
        url = postgres.create_database("search")
        apply_migrations(url)
        _load(postgres.superuser_url("search"))
        timings = uvloop.run(_measure(url, args.runs))
    print("| search (200 characters, 10,000 tasks) | p50 ms | p95 ms |")
    print("| --- | ---: | ---: |")
    for name, values in timings.items():
        p95 = statistics.quantiles(values, n=20)[-1]
        print(f"| {name} | {statistics.median(values):.1f} | {p95:.1f} |")


if __name__ == "__main__":
    main()
