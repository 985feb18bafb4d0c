"""What one user's costliest searches cost another user: the other's throughput, searcher busy over idle.

    .venv/bin/python -m bench.search_neighbour --workers 2 --seconds 15 --rounds 2

Starts an embedded Postgres holding a searcher with `--searcher-tasks` tasks made to cost a search the
most (docs/operations.md, "What one user can make the service hold": title and description of one
4-byte character repeated, `q` another letter and then 199 of that one, seconds of a database core
each), and `todo-api serve --workers W` over it at its default settings, but for
RATE_LIMIT_PER_MINUTE, turned off so that it does not cap the neighbour's throughput (the searcher
never reaches it: each of her searches takes seconds). Then, `--rounds` times, for `--seconds` each:
the neighbour alone, sending gets, lists and creates in turn from `--concurrency` clients; then the
same while the searcher keeps `--searches` searches in flight (her share: DB_MAX_CONNECTIONS_PER_USER
of each worker, 2 by default, times the workers), each on a new connection so that the kernel spreads
them over the workers. It prints the neighbour's requests a second in each phase, their ratio (busy
over idle; 1.0 is no harm), and what the searcher's requests were answered.

The server is the `todo-api` beside the interpreter that runs this: to measure another checkout's
server with this script, run that checkout's interpreter from this one
(`/path/to/other/.venv/bin/python -m bench.search_neighbour`). `--api-env NAME=VALUE` sets an API
setting for the run (DB_MAX_CONNECTIONS_PER_USER=1, say). A figure for RESULTS.md, never a test.
"""

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg

from api.auth.dev_tokens import mint_token
from api.ops.migrations import apply_migrations
from bench.api_server import running_api
from bench.postgres import embedded_postgres_server

_DBNAME = "search_neighbour"
_SEARCHER = "searcher" + "s" * 24
_NEIGHBOUR = "neighbour" + "n" * 23
_WIDE = "\U00010000"
_COSTLIEST_SEARCH = "b" + _WIDE * 199
# The neighbour's own tasks, for its gets and lists (a list's first page of 20).
_NEIGHBOUR_TASKS = 50


def _load(superuser_url: str, searcher_tasks: int) -> list[int]:
    """The searcher's costly tasks and the neighbour's plain ones; the neighbour's task ids."""
    with psycopg.connect(superuser_url, autocommit=True) as db:
        db.execute("insert into users (id) values (%s), (%s)", [_SEARCHER, _NEIGHBOUR])
        db.execute(
            "insert into tasks (user_id, title, description)"
            " select %s, repeat(%s, 200), repeat(%s, 1000) from generate_series(1, %s)",
            [_SEARCHER, _WIDE, _WIDE, searcher_tasks],
        )
        rows = db.execute(
            "insert into tasks (user_id, title) select %s, 'Buy milk ' || n from generate_series(1, %s) as n"
            " returning id",
            [_NEIGHBOUR, _NEIGHBOUR_TASKS],
        ).fetchall()
        db.execute("vacuum analyze")
    return [row[0] for row in rows]


async def _neighbour(
    base_url: str, token: str, task_ids: list[int], concurrency: int, seconds: float
) -> float:
    """The neighbour's answered requests a second, over `seconds`: get, list, create in turn."""
    headers = {"Authorization": f"Bearer {token}"}
    tasks_url = f"/api/{_NEIGHBOUR}/tasks"
    answered = 0
    deadline = time.monotonic() + seconds

    async def client_loop(client: httpx.AsyncClient, lane: int) -> None:
        nonlocal answered
        turn = lane
        while time.monotonic() < deadline:
            kind = turn % 3
            if kind == 0:
                response = await client.get(f"{tasks_url}/{task_ids[turn % len(task_ids)]}", headers=headers)
            elif kind == 1:
                response = await client.get(tasks_url, params={"limit": 20}, headers=headers)
            else:
                response = await client.post(tasks_url, json={"title": f"n{turn}"}, headers=headers)
            response.raise_for_status()  # the neighbour is never refused: a refusal is a finding
            answered += 1
            turn += 1

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        await asyncio.gather(*(client_loop(client, lane) for lane in range(concurrency)))
    return answered / (time.monotonic() - started)


async def _searcher(
    base_url: str, token: str, searches: int, stop: asyncio.Event, answers: Counter[str]
) -> None:
    headers = {"Authorization": f"Bearer {token}"}

    async def search_loop() -> None:
        # A new connection for each search: the kernel picks its worker, as it does for a browser's.
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
            while not stop.is_set():
                response = await client.get(
                    f"/api/{_SEARCHER}/tasks", params={"q": _COSTLIEST_SEARCH, "limit": 20}, headers=headers
                )
                kind = (
                    response.json().get("type", "").rpartition(":")[2] if response.status_code >= 400 else ""
                )
                answers[f"{response.status_code} {kind}".strip()] += 1

    await asyncio.gather(*(search_loop() for _ in range(searches)))


async def _rounds(args: argparse.Namespace, base_url: str, secret: str, task_ids: list[int]) -> None:
    neighbour_token = mint_token(secret, _NEIGHBOUR)
    searcher_token = mint_token(secret, _SEARCHER)
    searches = args.searches or 2 * args.workers
    idle_rates: list[float] = []
    busy_rates: list[float] = []
    answers: Counter[str] = Counter()
    await _neighbour(base_url, neighbour_token, task_ids, args.concurrency, 2)  # warm up
    for _ in range(args.rounds):
        idle_rates.append(
            await _neighbour(base_url, neighbour_token, task_ids, args.concurrency, args.seconds)
        )
        stop = asyncio.Event()
        searching = asyncio.create_task(_searcher(base_url, searcher_token, searches, stop, answers))
        await asyncio.sleep(1)  # her searches reach the database
        busy_rates.append(
            await _neighbour(base_url, neighbour_token, task_ids, args.concurrency, args.seconds)
        )
        stop.set()
        await searching  # her searches in flight end (cut by the statement timeout at the latest)
    print("| round | neighbour alone, req/s | while she searches, req/s | ratio |")
    print("| ---: | ---: | ---: | ---: |")
    for number, (idle, busy) in enumerate(zip(idle_rates, busy_rates, strict=True), 1):
        print(f"| {number} | {idle:.1f} | {busy:.1f} | {busy / idle:.2f} |")
    ratio = statistics.median(busy / idle for idle, busy in zip(idle_rates, busy_rates, strict=True))
    print(f"\nmedian ratio {ratio:.2f}; {searches} searches in flight; her answers: {dict(answers)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.search_neighbour",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15, help="each phase's length")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8, help="the neighbour's requests in flight")
    parser.add_argument(
        "--searches", type=int, default=0, help="her searches in flight (default: 2 x workers)"
    )
    parser.add_argument("--searcher-tasks", type=int, default=10_000)
    parser.add_argument("--port", type=int, default=None, help="the API's port (default: a free one)")
    parser.add_argument("--api-env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    extra_env = {"RATE_LIMIT_PER_MINUTE": "0", **dict(pair.split("=", 1) for pair in args.api_env)}
    secret = secrets.token_urlsafe(32)
    with embedded_postgres_server() as postgres, tempfile.TemporaryDirectory() as run_dir:
        url = postgres.create_database(_DBNAME)
        apply_migrations(url)
        task_ids = _load(postgres.superuser_url(_DBNAME), args.searcher_tasks)
        with running_api(
            url, secret, workers=args.workers, run_dir=Path(run_dir), extra_env=extra_env, port=args.port
        ) as api:
            asyncio.run(_rounds(args, api.base_url, secret, task_ids))


if __name__ == "__main__":
    main()
