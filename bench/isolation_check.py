"""What the isolation check costs the database: Postgres's CPU per check, and per query of it.

    .venv/bin/python -m bench.isolation_check --rounds 50

Every worker runs the check (`isolation_findings`, api/db/isolation.py) before it serves, on a new
connection, whose backend first reads the catalog into its caches; then again every
ISOLATION_CHECK_INTERVAL_SECONDS on a pooled one; `todo-api serve` runs it once more before it starts
its workers. This starts an embedded Postgres (as bench.run does), migrates a database, and runs the
check as the login role: once on each of `--rounds` new connections, then `--rounds` times on one; then
each query of it alone. The CPU is the backend's own, read from /proc (the
server runs on this machine): the database's work alone, whatever else the machine runs. To measure
another checkout's SQL, run that checkout's interpreter from this one
(`/path/to/other/.venv/bin/python -m bench.isolation_check`). A figure for RESULTS.md, never a test.
"""

import argparse
import asyncio
import statistics
import time
from typing import Any

import psycopg

from api.db.isolation import isolation_findings
from api.db.sql_files import ISOLATION_CHECK, REACH_CHECK, SESSION_SETTINGS_CHECK, read_sql
from api.ops.migrations import apply_migrations
from bench.cpu import process_cpu_seconds
from bench.postgres import embedded_postgres_server

_DBNAME = "isolation_check"
# The reach is read with an empty search_path, as api/db/reach.py reads it.
_QUERIES = {
    "isolation.sql": ("", read_sql(ISOLATION_CHECK)),
    "session_settings.sql": ("", read_sql(SESSION_SETTINGS_CHECK)),
    "reach.sql": ("select set_config('search_path', '', true)", read_sql(REACH_CHECK)),
}


async def _backend_pid(connection: psycopg.AsyncConnection[Any]) -> int:
    cursor = await connection.execute("select pg_backend_pid()")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def _check(connection: psycopg.AsyncConnection[Any], pid: int) -> tuple[float, float]:
    """One check: the backend's CPU and the wall time it took, in seconds."""
    cpu, wall = process_cpu_seconds(pid), time.perf_counter()
    findings = await isolation_findings(connection)
    assert not findings, findings  # a check that finds something stops early: not what is timed
    return process_cpu_seconds(pid) - cpu, time.perf_counter() - wall


async def _on_new_connections(url: str, rounds: int) -> list[tuple[float, float]]:
    timings = []
    for _ in range(rounds):
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
            timings.append(await _check(connection, await _backend_pid(connection)))
    return timings


async def _on_one_connection(url: str, rounds: int) -> list[tuple[float, float]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        pid = await _backend_pid(connection)
        await _check(connection, pid)  # its caches filled: what the checks that follow find
        return [await _check(connection, pid) for _ in range(rounds)]


async def _each_query(url: str, rounds: int) -> dict[str, float]:
    """Each query's backend CPU per run, on one connection, in a transaction each (rolled back)."""

    async def run(connection: psycopg.AsyncConnection[Any], pid: int, setup: str, query: str) -> float:
        async with connection.transaction(force_rollback=True):
            if setup:
                await connection.execute(setup)
            before = process_cpu_seconds(pid)
            await (await connection.execute(query)).fetchall()
            return process_cpu_seconds(pid) - before

    cpu = {}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        pid = await _backend_pid(connection)
        for name, (setup, query) in _QUERIES.items():
            await run(connection, pid, setup, query)  # its caches filled
            cpu[name] = sum([await run(connection, pid, setup, query) for _ in range(rounds)]) / rounds
    return cpu


def _report(label: str, timings: list[tuple[float, float]]) -> None:
    cpu = sum(spent for spent, _ in timings) / len(timings)
    wall = statistics.median(took for _, took in timings)
    print(f"| {label} | {cpu * 1000:.1f} | {wall * 1000:.1f} |")


async def _measure(url: str, rounds: int) -> None:
    print("| the check | Postgres CPU, ms a check (mean) | wall, ms (median) |")
    print("| --- | --- | --- |")
    _report("first on a new connection", await _on_new_connections(url, rounds))
    _report("again on the same connection", await _on_one_connection(url, rounds))
    print("\n| query (a connection that has checked before) | Postgres CPU, ms a run (mean) |")
    print("| --- | --- |")
    for name, spent in (await _each_query(url, rounds)).items():
        print(f"| {name} | {spent * 1000:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.isolation_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=50, help="checks of each kind")
    args = parser.parse_args()
    with embedded_postgres_server() as postgres:
        url = postgres.create_database(_DBNAME)
        apply_migrations(url)
        asyncio.run(_measure(url, args.rounds))


if __name__ == "__main__":
    main()
