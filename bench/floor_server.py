"""The stack's floor: what granian, uvloop and the API's database layer cost with nothing above them.

    python -m bench.floor_server --host 127.0.0.1 --port 8001 --workers 2 [--bare]

`bench.run --server floor` (or `bare`) starts this in place of `todo-api serve` and drives it with the
same wrk scripts, so that its ratio to pgbench is the most any app built on this server and this
driver could reach on this machine:

- floor: a bare ASGI callable (no FastAPI, no token check, no logs, no metrics, no validation) that
  answers get and list with `Database.run` and the API's own statements, the same one message with
  the same prepared statements, and the rows as JSON;
- bare: the same, but each request only sends `select 1` on a pooled connection: no role switch, no
  statement of ours, the least a request that reaches the database can cost.

It believes the user id in the path. It is a measuring instrument for loopback only, never a server.
"""

import argparse
import gc
import json
from collections.abc import Awaitable, Callable
from datetime import datetime

from granian.constants import Interfaces, Loops
from granian.server import Server
from starlette.types import ASGIApp, Receive, Scope, Send

from api.db.database import Database, Rows
from api.settings import Settings
from api.tasks import queries
from api.tasks.listing import TaskListParams
from bench.scenarios import LIST_PAGE_SIZE

Answer = Callable[[Database, str, str | None], Awaitable[Rows]]

ANSWERED_SCENARIOS = ("get", "list")  # of bench.scenarios: the GETs; any other request is refused
_LIST_PAGE = TaskListParams(limit=LIST_PAGE_SIZE)  # the page wrk asks for


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


async def _tasks(database: Database, user_id: str, task_id: str | None) -> Rows:
    if task_id is None:
        return await database.run(user_id, queries.list_tasks(user_id, _LIST_PAGE), read_only=True)
    return await database.run(user_id, queries.get_task(user_id, int(task_id)), read_only=True)


async def _select_one(database: Database, _user_id: str, _task_id: str | None) -> Rows:
    async with database.pool.connection() as connection:
        cursor = await connection.execute("SELECT 1 AS one")
        return await cursor.fetchall()


async def _respond(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _app(answer: Answer) -> ASGIApp:
    database: Database | None = None

    async def lifespan(receive: Receive, send: Send) -> None:
        nonlocal database
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                database = Database.from_settings(Settings())
                await database.open()
                gc.freeze()  # as api/ops/worker.py does for the API's workers
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if database is not None:
                    await database.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        if scope["path"] == "/readyz":
            return await _respond(send, 200, b'{"status":"ok"}')
        # /api/{user_id}/tasks or /api/{user_id}/tasks/{task_id}
        parts = scope["path"].split("/")
        if database is None or scope["method"] != "GET" or len(parts) not in (4, 5) or parts[3] != "tasks":
            return await _respond(send, 404, b"{}")
        rows = await answer(database, parts[2], parts[4] if len(parts) == 5 else None)
        # A list's query fetches one row past the page, to tell whether another page follows.
        shown = rows[:LIST_PAGE_SIZE] if len(parts) == 4 else rows[0]
        await _respond(send, 200, json.dumps(shown, default=_iso).encode())

    return app


def floor_app() -> ASGIApp:
    return _app(_tasks)


def bare_app() -> ASGIApp:
    return _app(_select_one)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bare", action="store_true", help="only select 1 per request")
    args = parser.parse_args()
    Server(
        f"bench.floor_server:{'bare_app' if args.bare else 'floor_app'}",
        factory=True,
        address=args.host,
        port=args.port,
        interface=Interfaces.ASGI,
        workers=args.workers,
        loop=Loops.uvloop,
        log_access=False,
    ).serve()


if __name__ == "__main__":
    main()
