"""What the trigger on tasks costs a write, this release's migrations against the release before.

    .venv/bin/python -m bench.trigger_cost --rounds 15

Every real change of a task runs `app.publish_task_event` (sql/migrations/, the newest that replaces
it): it writes the event and purges events, the writer's and other users'. A migration that changes it
changes every write's cost, which `bench.run` cannot compare: the release before will not serve on
the newer schema. This starts an embedded Postgres (as bench.run does), makes one database with every
migration and one with the newest rolled back, loads the same users and tasks in each, and sends each
database's backend the same API-shaped updates (the role switch and settings of api/db/statements.py,
then the UPDATE), in batches that alternate between the two. The CPU is the backend's own, from /proc
(the server runs on this machine), so the figures are the database's work alone whatever else the
machine runs; compare the two columns of one run. Three cases:

- nothing to purge: what most writes pay;
- at the cap: MAX_TASKS_PER_USER events held, so each write purges the writer's oldest;
- all expired: EVENTS_RETENTION_HOURS of a millisecond, so each write purges the writer's expired events
  and drains other users' (every user's last event has expired by their next write).

A figure for a migration's note and RESULTS.md, never a test.
"""

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from yoyo import get_backend, read_migrations

from api.db.sql_files import SQL_DIR, shipped_migrations
from api.db.urls import yoyo_url
from api.ops.migrations import apply_migrations
from bench.cpu import process_cpu_seconds
from bench.postgres import BenchPostgres, embedded_postgres_server


@dataclass(frozen=True)
class Case:
    name: str
    max_tasks_per_user: int
    events_retention_hours: str


def _cases(tasks_per_user: int) -> list[Case]:
    return [
        Case("nothing to purge", 10_000, "24"),
        Case("at the cap", tasks_per_user, "24"),
        Case("all expired", 10_000, str(1 / 3_600_000)),
    ]


def _database(postgres: BenchPostgres, dbname: str, *, newest: bool, users: int, tasks_per_user: int) -> str:
    """A fresh database at this release's schema, or with its newest migration rolled back; its URL."""
    url = postgres.create_database(dbname)
    apply_migrations(url)
    if not newest:
        backend = get_backend(yoyo_url(url))
        migrations = read_migrations(str(SQL_DIR / "migrations"))
        with backend.lock():
            backend.rollback_migrations(migrations.filter(lambda m: m.id == shipped_migrations()[-1]))
    with psycopg.connect(postgres.superuser_url(dbname), autocommit=True) as superuser:
        superuser.execute("insert into users (id) select 'u' || n from generate_series(1, %s) as n", [users])
        superuser.execute(
            "insert into tasks (user_id, title) select 'u' || n, 'task ' || i"
            " from generate_series(1, %s) as n, generate_series(1, %s) as i",
            [users, tasks_per_user],
        )
        superuser.execute("vacuum analyze")
    return url


def _writer(postgres: BenchPostgres, dbname: str, url: str, case: Case) -> tuple[int, Callable[[int], None]]:
    """The backend's pid, and a function that sends it that many updates, each of the next user's."""
    connection: psycopg.Connection[Any] = psycopg.connect(url, autocommit=True)
    with psycopg.connect(postgres.superuser_url(dbname)) as superuser:
        rows = superuser.execute("select user_id, array_agg(id order by id) from tasks group by 1").fetchall()
    tasks: dict[str, list[int]] = dict(rows)
    users = sorted(tasks)
    sent = 0

    def send(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            sent += 1
            user = users[sent % len(users)]
            task = tasks[user][sent // len(users) % len(tasks[user])]
            with connection.transaction():
                connection.execute("set local role todo_app")
                connection.execute(
                    "select set_config('app.user_id', %s, true),"
                    " set_config('app.max_tasks_per_user', %s, true),"
                    " set_config('app.events_retention_hours', %s, true)",
                    [user, str(case.max_tasks_per_user), case.events_retention_hours],
                )
                connection.execute(
                    "update tasks set title = %s where user_id = %s and id = %s",
                    [f"change {sent}", user, task],
                )

    return connection.info.backend_pid, send


def _measure(postgres: BenchPostgres, args: argparse.Namespace) -> None:
    newest = shipped_migrations()[-1]
    print(f"| case | backend CPU a write, us: before {newest} | with it | ratio |")
    print("| --- | --- | --- | --- |")
    for number, case in enumerate(_cases(args.tasks_per_user)):
        writers = {}
        for label, with_newest in (("before", False), ("with", True)):
            dbname = f"trigger_cost_{number}_{label}"
            url = _database(
                postgres, dbname, newest=with_newest, users=args.users, tasks_per_user=args.tasks_per_user
            )
            writers[label] = _writer(postgres, dbname, url, case)
        for _, send in writers.values():  # every user writes once: at the cap, the writes that follow purge
            send(args.users)
        spent: dict[str, list[float]] = {label: [] for label in writers}
        for round_ in range(args.rounds):
            for label in ("before", "with") if round_ % 2 == 0 else ("with", "before"):
                pid, send = writers[label]
                before = process_cpu_seconds(pid)
                send(args.batch)
                spent[label].append((process_cpu_seconds(pid) - before) / args.batch * 1e6)
        before_us, with_us = (statistics.median(spent[label]) for label in ("before", "with"))
        print(f"| {case.name} | {before_us:.0f} | {with_us:.0f} | {with_us / before_us:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.trigger_cost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=15, help="batches sent to each database, alternating")
    parser.add_argument("--batch", type=int, default=40, help="updates a batch")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--tasks-per-user", type=int, default=20)
    args = parser.parse_args()
    with embedded_postgres_server() as postgres:
        _measure(postgres, args)


if __name__ == "__main__":
    main()
