"""CPU per request of the transaction path alone, without HTTP, for each way `Database.run` sends it:
the Python process's and the Postgres backend's serving it.

- one message: BEGIN, the settings, the statement and COMMIT as one simple-protocol message, values
  bound client-side (DB_PREPARED_STATEMENTS=off, and what the default sends through a pooler);
- one message, prepared: the same with the statement an EXECUTE of one prepared once per connection
  (the default on a direct connection, DB_PREPARED_STATEMENTS=auto);
- pipelined: DB_PREPARE_THRESHOLD set, on a connection told to prepare nothing: four
  extended-protocol statements (five for a write) in psycopg's pipeline mode, never prepared;
- pipelined and prepared: DB_PREPARE_THRESHOLD=0, the same, prepared on first use; what pgbench's
  prepared pipeline, the benchmark's ceiling, sends (bench/pgbench_scripts.py);
- and, for scale:
  - the default's message, its values bound once, sent on libpq through psycopg's `pgconn` and its
    results taken as they come, with no cursor: what psycopg's cursor costs above the wire;
  - a bare `select 1` on a plain psycopg connection: the least any request costs that reaches the
    database through the driver at all, whatever the statements.

One connection, sequential requests, a user with 20 tasks; the toggle is the write a caller whose
user row is stored sends (api/db/stored_owners.py):

    .venv/bin/python -m bench.transaction_paths
"""

import argparse
import asyncio
import time
from abc import ABC, abstractmethod

import psycopg
from psycopg.generators import execute

from api.auth.principal import Principal
from api.db.database import Database, Query
from api.db.statements import as_user_values, compiled, one_message
from api.settings import Settings
from api.tasks import queries
from api.tasks.listing import TaskListParams
from bench.cpu import process_cpu_seconds
from bench.postgres import embedded_postgres_server

# Each way runs _BATCH requests in turn with the others, _ROUNDS times; the figure is its quietest
# batch, so a neighbour's burst on this shared machine lands in one batch and not in the result.
_ROUNDS = 7
_BATCH = 1000
_WAYS: dict[str, dict[str, object]] = {
    "one message": {"db_prepared_statements": "off"},
    "one message, prepared": {"db_prepared_statements": "auto"},
    # Any DB_PREPARE_THRESHOLD pipelines, and none the setting admits outlasts the requests a way
    # sends: the connection itself is told to prepare nothing (`_DatabaseRun.open`).
    "pipelined": {"db_prepare_threshold": 0},
    "pipelined and prepared": {"db_prepare_threshold": 0},
}
_NEVER_PREPARED = {"pipelined"}


class _Way(ABC):
    """One way of sending the transaction, on one connection whose backend's CPU is counted."""

    backend: int

    def __init__(self) -> None:
        self.batches: list[tuple[float, float]] = []

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def send(self, query: Query) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def batch(self, query: Query, *, requests: int) -> None:
        started, backend_started = time.process_time(), process_cpu_seconds(self.backend)
        for _ in range(requests):
            await self.send(query)
        python, backend = time.process_time() - started, process_cpu_seconds(self.backend) - backend_started
        self.batches.append((python / requests * 1e6, backend / requests * 1e6))

    def quietest(self) -> tuple[float, float]:
        """The (Python, Postgres) CPU us per request of the quietest batch, by their sum."""
        return min(self.batches[1:], key=sum)  # the first batch warms up


class _DatabaseRun(_Way):
    """`Database.run` with the given settings: a database of its own with a pool of one."""

    def __init__(self, url: str, settings: dict[str, object], *, prepares: bool = True) -> None:
        super().__init__()
        self.prepares = prepares
        self.database = Database.from_settings(
            Settings(
                _env_file=None,
                database_url=url,
                better_auth_secret="x" * 32,
                db_pool_size=1,
                **settings,  # type: ignore[arg-type]
            )
        )

    async def open(self) -> None:
        await self.database.open()
        async with self.database.pool.connection() as connection:
            self.backend = connection.info.backend_pid
            if not self.prepares:
                connection.prepare_threshold = None  # psycopg's "never"; the pool holds this one only

    async def send(self, query: Query) -> None:
        await self.database.run("alice", query)

    async def close(self) -> None:
        await self.database.close()


class _PlainConnection(_Way):
    """A way on one plain psycopg connection of its own, without `Database` or its pool."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    async def open(self) -> None:
        self.connection = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        self.backend = self.connection.info.backend_pid

    async def close(self) -> None:
        await self.connection.close()


class _LibpqMessage(_PlainConnection):
    """The default's message (one message, prepared), bound once per query, sent on libpq through
    psycopg's `pgconn` with psycopg's own non-blocking generator, its results not read into rows.
    It leaves out what the cursor does in Python on every request: binding, results, rows."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        # By the query's identity: `main` builds each query once, and its values are not hashable.
        self.messages: dict[int, bytes] = {}

    async def _message(self, query: Query) -> bytes:
        statement = compiled(query.statement)
        await self.connection.execute(statement.prepare(self.connection))
        limits = Settings.model_fields
        as_user = as_user_values(
            "alice",
            max_tasks=str(limits["max_tasks_per_user"].default),
            events_retention_hours=str(limits["events_retention_hours"].default),
            statement_timeout_ms=str(limits["db_statement_timeout_ms"].default),
            read_only=query.read_only,
        )
        values = {**as_user, **statement.params(query.params)}
        message = one_message(query.statement, read_only=query.read_only, prepared=True)
        return psycopg.AsyncClientCursor(self.connection).mogrify(message, values).encode()

    async def send(self, query: Query) -> None:
        message = self.messages.get(id(query))
        if message is None:
            message = self.messages[id(query)] = await self._message(query)
        self.connection.pgconn.send_query(message)
        results = await self.connection.wait(execute(self.connection.pgconn))
        # A failed statement skips the rest: the message ran whole only if its last result is no error
        # (COMMIT's, or for a write the NOTIFY's rows after it).
        ok = (psycopg.pq.ExecStatus.COMMAND_OK, psycopg.pq.ExecStatus.TUPLES_OK)
        assert results[-1].status in ok, results[-1].error_message


class _BareRoundTrip(_PlainConnection):
    """`select 1` on a plain psycopg connection, whatever the request: the driver's floor."""

    async def send(self, query: Query) -> None:
        await self.connection.execute("select 1")


async def _cpu_us_per_request(url: str, query: Query) -> dict[str, tuple[float, float]]:
    ways: dict[str, _Way] = {
        name: _DatabaseRun(url, settings, prepares=name not in _NEVER_PREPARED)
        for name, settings in _WAYS.items()
    }
    ways["one message, prepared, on libpq"] = _LibpqMessage(url)
    ways["a bare `select 1`"] = _BareRoundTrip(url)
    for way in ways.values():
        await way.open()
    try:
        for _ in range(_ROUNDS + 1):
            for way in ways.values():
                await way.batch(query, requests=_BATCH)
        return {name: way.quietest() for name, way in ways.items()}
    finally:
        for way in ways.values():
            await way.close()


def main() -> None:
    # No options: the parser is there so that --help describes the run instead of starting it.
    parser = argparse.ArgumentParser(
        prog="python -m bench.transaction_paths",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args()
    first_page = TaskListParams(limit=100)
    toggle = queries.set_completed(Principal("alice"), 5, None)
    assert toggle.without_owner_row is not None
    requests = {
        "get": queries.get_task("alice", 5),
        "list": queries.list_tasks("alice", first_page),
        "toggle": toggle.for_stored_owner(),
    }
    with embedded_postgres_server() as postgres:
        url = postgres.one_user_database("paths", "alice", tasks=20)
        figures = {
            request: asyncio.run(_cpu_us_per_request(url, query)) for request, query in requests.items()
        }
    print("CPU us per request: Python, Postgres backend")
    print()
    ways = list(figures["get"])  # the columns, in the order the ways were run
    print("| request | " + " | ".join(ways) + " |")
    print("| --- |" + " ---: |" * len(ways))
    for request in requests:
        cells = (f"{python:.0f}, {backend:.0f}" for python, backend in figures[request].values())
        print(f"| {request} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
