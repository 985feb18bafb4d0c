"""What one user at the quota makes the database hold: bytes per row of each table, at the worst.

    .venv/bin/python -m bench.user_footprint [--tasks 10000]

The real app in process (`create_app`, every middleware) over ASGI, on its own embedded Postgres, as
one user: `--tasks` creates, each with an `Idempotency-Key` of 255 characters and the longest title
and description the API takes, written in random characters of four bytes in UTF-8, which Postgres
cannot compress; then the same number of updates, each replacing a task's content the same way, so
that every event the user keeps is an update's; then every task deleted, leaving the keys' tombstones
and the deletions' events. After each step, VACUUM, then every table's size
(`pg_total_relation_size`: heap, TOAST and indexes) less what it was before the first, per task.
docs/operations.md, "What one user can make the service hold", quotes the figures.
"""

import argparse
import asyncio
import random
import secrets

import httpx
import psycopg
import uvloop

from api.app import create_app
from api.auth.dev_tokens import mint_token
from api.ops.migrations import apply_migrations
from api.settings import POSTGRES_INT_MAX, Settings
from api.tasks.models import DESCRIPTION_MAX_LENGTH, IDEMPOTENCY_KEY_MAX_LENGTH, TITLE_MAX_LENGTH
from bench.postgres import embedded_postgres_server

_SECRET = "bench-user-footprint-" + "s" * 32
_USER = "u" * 32
# Every table a request can make a row in, directly or through a trigger (sql/migrations/).
_TABLES = (
    "public.users",
    "public.tasks",
    "public.idempotency_keys",
    "public.task_events",
    "public.task_event_purges",
    "app.task_counts",
    "app.task_event_counts",
)


def _incompressible(length: int) -> str:
    """Characters of four bytes in UTF-8 (past U+FFFF), drawn at random: nothing for pglz to find."""
    return "".join(chr(random.randint(0x10000, 0x10FFFF)) for _ in range(length))


def _content() -> dict[str, str]:
    return {
        "title": _incompressible(TITLE_MAX_LENGTH),
        "description": _incompressible(DESCRIPTION_MAX_LENGTH),
    }


def _sizes(superuser_url: str) -> dict[str, int]:
    with psycopg.connect(superuser_url, autocommit=True) as db:
        db.execute("VACUUM")
        return {
            table: int(db.execute("SELECT pg_total_relation_size(%s::regclass)", [table]).fetchone()[0])  # type: ignore[index]
            for table in _TABLES
        }


async def _run(url: str, superuser_url: str, tasks: int) -> list[tuple[str, dict[str, int]]]:
    settings = Settings(
        _env_file=None,
        database_url=url,
        better_auth_secret=_SECRET,
        rate_limit_per_minute=0,
        max_tasks_per_user=min(tasks, POSTGRES_INT_MAX),
        log_level="WARNING",
    )
    app = create_app(settings)
    token = mint_token(_SECRET, _USER, email=f"{_USER}@example.com", name="Bench")
    headers = {"Authorization": f"Bearer {token}"}
    steps: list[tuple[str, dict[str, int]]] = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", headers=headers) as client:
            slots = asyncio.Semaphore(settings.max_connections_per_user)

            async def send(method: str, path: str, **kwargs: object) -> int:
                async with slots:
                    response = await client.request(method, path, **kwargs)  # type: ignore[arg-type]
                    if response.status_code >= 300:
                        raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
                    return int(response.json()["id"]) if response.content else 0

            before = _sizes(superuser_url)
            ids = await asyncio.gather(
                *(
                    send(
                        "POST",
                        f"/api/{_USER}/tasks",
                        json=_content(),
                        headers={"Idempotency-Key": secrets.token_urlsafe(192)[:IDEMPOTENCY_KEY_MAX_LENGTH]},
                    )
                    for _ in range(tasks)
                )
            )
            steps.append(("created, each with a key", _sizes(superuser_url)))
            await asyncio.gather(*(send("PUT", f"/api/{_USER}/tasks/{id_}", json=_content()) for id_ in ids))
            steps.append(("updated once each", _sizes(superuser_url)))
            await asyncio.gather(*(send("DELETE", f"/api/{_USER}/tasks/{id_}") for id_ in ids))
            steps.append(("deleted", _sizes(superuser_url)))
    return [(name, {table: size - before[table] for table, size in sizes.items()}) for name, sizes in steps]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.user_footprint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", type=int, default=10_000, help="the quota, and the tasks created")
    args = parser.parse_args()
    with embedded_postgres_server() as postgres:
        url = postgres.create_database("footprint")
        apply_migrations(url)
        steps = uvloop.run(_run(url, postgres.superuser_url("footprint"), args.tasks))
    print(f"| bytes per task, {args.tasks} tasks | " + " | ".join(name for name, _ in steps) + " |")
    print("| --- |" + " ---: |" * len(steps))
    for table in _TABLES:
        per_task = (f"{sizes[table] / args.tasks:,.0f}" for _, sizes in steps)
        print(f"| `{table}` | " + " | ".join(per_task) + " |")
    totals = [sum(sizes.values()) for _, sizes in steps]
    print("| all, MB | " + " | ".join(f"{total / 1e6:,.1f}" for total in totals) + " |")


if __name__ == "__main__":
    main()
