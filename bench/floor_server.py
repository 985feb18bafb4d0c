"""The stack's floor: what granian, uvloop and the API's database layer cost with nothing above them.

    python -m bench.floor_server --host 127.0.0.1 --port 8001 --workers 2 [--app floor|bare|fastapi]

`bench.run --server floor` (or `bare`, or `fastapi`) starts this in place of `todo-api serve` and
drives it with the same wrk scripts, so that its ratio to pgbench is the most any app built on this
server and this driver could reach on this machine:

- floor: a bare ASGI callable (no FastAPI, no token check, no logs, no metrics, no validation) that
  answers every scenario's request with `Database.run` and the API's own statements, the same one
  message with the same prepared statements, and the rows as JSON. A write sends the statement the
  API sends once its worker has stored the caller's user row (`StoredOwners.run`): the benchmark's
  users all have theirs;
- bare: the same, but each request only sends `select 1` on a pooled connection: no role switch, no
  statement of ours, the least a request that reaches the database can cost;
- fastapi: the floor's answers from FastAPI written the way its docs teach (path parameters, an
  `async` dependency for the database, body models, an `Annotated` query model, `response_model`,
  `include_router`), and nothing of the API's own: no token, no middleware, no logs, no metrics. The
  least an idiomatic FastAPI app on this database layer can cost a request.

It believes the user id in the path. It is a measuring instrument for loopback only, never a server.
"""

import argparse
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi import Query as QueryParameters
from granian.constants import Interfaces, Loops
from granian.server import Server
from psycopg.rows import DictRow
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth.principal import Principal
from api.db.database import Database, Query, Rows
from api.ops.collector import tune_collector_for_serving
from api.settings import Settings
from api.tasks import queries
from api.tasks.listing import TaskListParams
from api.tasks.models import TaskCreate, TaskPublic, TaskUpdate
from bench.scenarios import LIST_PAGE_SIZE

# What wrk asks (bench/common.lua): the method and the path after /api/, split at "/".
Answer = Callable[[Database, str, list[str], bytes], Awaitable[Rows]]

_LIST_PAGE = TaskListParams(limit=LIST_PAGE_SIZE)  # the page wrk asks for


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _query(method: str, path: list[str], body: bytes) -> Query | None:
    """The API's query for one of wrk's requests; None for anything else."""
    match method, path:
        case "GET", [user_id, "tasks"]:
            return queries.list_tasks(user_id, _LIST_PAGE)
        case "GET", [user_id, "tasks", task_id]:
            return queries.get_task(user_id, int(task_id))
        case "POST", [user_id, "tasks"]:
            return queries.create_task(Principal(user_id), TaskCreate.model_construct(**json.loads(body)))
        case "PUT", [user_id, "tasks", task_id]:
            return queries.update_task(Principal(user_id), int(task_id), json.loads(body))
        case "PATCH", [user_id, "tasks", task_id, "complete"]:
            return queries.set_completed(Principal(user_id), int(task_id), None)
        case "DELETE", [user_id, "tasks", task_id]:
            return queries.delete_task(Principal(user_id), int(task_id))
    return None


async def _tasks(database: Database, method: str, path: list[str], body: bytes) -> Rows:
    query = _query(method, path, body)
    if query is None:
        return []
    if method == "GET":
        return await database.run(path[0], query)
    return await database.run(path[0], query.for_stored_owner())


async def _select_one(database: Database, _method: str, _path: list[str], _body: bytes) -> Rows:
    async with database.pool.connection() as connection:
        cursor = await connection.execute("SELECT 1 AS one")
        return await cursor.fetchall()


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


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
                tune_collector_for_serving()  # as the API's workers do
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
        method, path = scope["method"], scope["path"].removeprefix("/api/").split("/")
        rows = await answer(database, method, path, await _body(receive)) if database else []
        if not rows:
            return await _respond(send, 404, b"{}")
        if method == "DELETE":
            return await _respond(send, 204, b"")  # as the API: no body
        # A list's query fetches one row past the page, to tell whether another page follows.
        shown = rows[:LIST_PAGE_SIZE] if (method, len(path)) == ("GET", 2) else rows[0]
        await _respond(send, 200, json.dumps(shown, default=_iso).encode())

    return app


def floor_app() -> ASGIApp:
    return _app(_tasks)


def bare_app() -> ASGIApp:
    return _app(_select_one)


async def _database(request: Request) -> Database:
    # `async`: FastAPI runs a plain function dependency in its thread pool, a thread hop per request.
    database: Database = request.app.state.database
    return database


DatabaseDep = Annotated[Database, Depends(_database)]


def fastapi_app() -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.database = Database.from_settings(Settings())
        await app.state.database.open()
        tune_collector_for_serving()
        yield
        await app.state.database.close()

    router = APIRouter(prefix="/api/{user_id}/tasks")

    def first(rows: Rows) -> DictRow:
        if not rows:
            raise HTTPException(404)
        return rows[0]

    @router.get("", response_model=list[TaskPublic])
    async def list_tasks(
        user_id: str, db: DatabaseDep, wanted: Annotated[TaskListParams, QueryParameters()]
    ) -> Any:
        rows = await db.run(user_id, queries.list_tasks(user_id, wanted))
        return rows[: wanted.limit]

    @router.get("/{task_id}", response_model=TaskPublic)
    async def get_task(user_id: str, task_id: int, db: DatabaseDep) -> Any:
        return first(await db.run(user_id, queries.get_task(user_id, task_id)))

    @router.post("", response_model=TaskPublic, status_code=201)
    async def create_task(user_id: str, data: TaskCreate, db: DatabaseDep) -> Any:
        query = queries.create_task(Principal(user_id), data)
        return first(await db.run(user_id, query.for_stored_owner()))

    @router.put("/{task_id}", response_model=TaskPublic)
    async def update_task(user_id: str, task_id: int, data: TaskUpdate, db: DatabaseDep) -> Any:
        query = queries.update_task(Principal(user_id), task_id, data.changes())
        return first(await db.run(user_id, query.for_stored_owner()))

    @router.delete("/{task_id}", status_code=204, response_class=Response)
    async def delete_task(user_id: str, task_id: int, db: DatabaseDep) -> None:
        query = queries.delete_task(Principal(user_id), task_id)
        first(await db.run(user_id, query.for_stored_owner()))

    @router.patch("/{task_id}/complete", response_model=TaskPublic)
    async def complete_task(user_id: str, task_id: int, db: DatabaseDep) -> Any:
        query = queries.set_completed(Principal(user_id), task_id, None)
        return first(await db.run(user_id, query.for_stored_owner()))

    app = FastAPI(lifespan=lifespan)
    app.include_router(router)

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--app", choices=("floor", "bare", "fastapi"), default="floor", help="which of the apps above"
    )
    args = parser.parse_args()
    Server(
        f"bench.floor_server:{args.app}_app",
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
