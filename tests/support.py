"""Small helpers the tests lean on: users with tokens in one line, and a real HTTP server."""

import asyncio
import functools
import itertools
import os
import random
import secrets
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from sqlalchemy import text

from api.auth.dev_tokens import mint_token
from api.db.database import Query
from api.db.statements import compiled
from api.ops.cli import AUDIT_NOT_RUN
from api.ops.server import served_url
from api.settings import Settings
from api.tasks import queries
from api.tasks.listing import TaskListParams
from tests.cli_forkserver import CLIENT, start_up_variables

# Like Neon's neondb_owner: logs in, creates roles and databases, and bypasses row-level security,
# so every test proves that the API's role switch, not the login role, keeps users apart.
LOGIN_ROLE = "todo_owner"
# What `BodyLimits` refuses from the request head alone, on every method and path, before a route is
# chosen: a body declared larger than any MAX_BODY_BYTES admits, a Content-Length that is not a
# number, chunked twice, and a transfer coding other than chunked.
HEAD_REFUSALS: dict[str, tuple[dict[str, str], int]] = {
    "too-large": ({"Content-Length": "99999999"}, 413),
    # More digits than Python reads as one number (sys.get_int_max_str_digits): it was a 500.
    "too-many-digits": ({"Content-Length": "9" * 5000}, 413),
    "content-length-not-a-number": ({"Content-Length": "abc"}, 400),
    "chunked-twice": ({"Transfer-Encoding": "chunked, chunked"}, 400),
    "gzip": ({"Transfer-Encoding": "gzip, chunked"}, 501),
}
# What production should serve as (PostgREST's "authenticator"): logs in, owns nothing, bypasses
# nothing, inherits nothing, member of todo_app only. `todo-api migrate --login-role` creates it.
API_LOGIN_ROLE = "todo_login"

# A role that must give its password, though the test cluster trusts socket logins (conftest's
# `password_login_url`).
PASSWORD_ROLE, RIGHT_PASSWORD = "minder", "the-right-password-1f9c"


def ask_for_passwords(superuser_url: str, *roles: str) -> None:
    """Have the cluster ask `roles` for their password over its socket, which it trusts for every other
    login: a pg_hba.conf line for each, put first, so every other login matches the lines below as
    before. Each xdist worker has a cluster of its own, so no other run sees the change."""
    with psycopg.connect(superuser_url, autocommit=True) as connection:
        row = connection.execute("show hba_file").fetchone()
        assert row is not None
        hba = Path(row[0])
        asked = "".join(f"local all {role} scram-sha-256\n" for role in roles)
        hba.write_text(f"{asked}{hba.read_text()}")
        connection.execute("select pg_reload_conf()")


# How the API acts for a user inside a transaction (api/db/database.py), less the settings a test of
# who sees what does not need: `set_config(..., true)` ends with the transaction.
ACT_AS = "select set_config('role', 'todo_app', true), set_config('app.user_id', %s, true)"


def as_role(database_url: str, role: str = API_LOGIN_ROLE) -> str:
    """The same database's URL, logging in as `role`."""
    return database_url.replace(f"postgresql://{LOGIN_ROLE}@", f"postgresql://{role}@", 1)


SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
_BASE62 = string.ascii_letters + string.digits


def listed_types(response: dict[str, Any]) -> list[str]:
    """The problem types a documented error response lists: the `enum` of its schema's `type`
    (api/http/problems.py, `problem_content`)."""
    schema = response["content"]["application/problem+json"]["schema"]
    assert schema["allOf"][0] == {"$ref": "#/components/schemas/Problem"}
    enum: list[str] = schema["allOf"][1]["properties"]["type"]["enum"]
    return enum


class _GivenSettings(Settings):
    """Settings of what they are given alone, and the defaults: pydantic-settings reads the environment
    first of all for any setting not given, and `Settings(_env_file=None)` leaves out only the .env."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def settings_for(database_url: str, **overrides: Any) -> Settings:
    """Settings for a test app: explicit, so neither a developer's .env nor their environment leaks in
    (a test of what the environment does builds `Settings` itself)."""
    return _GivenSettings(database_url=database_url, better_auth_secret=SECRET, **overrides)


def better_auth_id() -> str:
    """An id shaped like Better Auth's: 32 base62 characters."""
    return "".join(secrets.choice(_BASE62) for _ in range(32))


@dataclass(frozen=True)
class ApiUser:
    id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def tasks_url(self) -> str:
        return f"/api/{self.id}/tasks"

    def task_url(self, task_id: int | str) -> str:
        return f"/api/{self.id}/tasks/{task_id}"


def create_task(client: httpx.Client, user: ApiUser, **fields: Any) -> tuple[dict[str, Any], str]:
    """A new task of `user`'s, created through the API: the 201's body and its ETag. Titled "A task"
    unless `fields` name a title."""
    response = client.post(user.tasks_url, json={"title": "A task", **fields}, headers=user.headers)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task, response.headers["etag"]


def new_user(*, email: str | None = None, name: str | None = None) -> ApiUser:
    user_id = better_auth_id()
    return ApiUser(user_id, mint_token(SECRET, user_id, email=email, name=name))


def sign(claims: dict[str, Any], *, secret: str = SECRET, algorithm: str = "HS256", **headers: Any) -> str:
    return jwt.encode(claims, secret, algorithm=algorithm, headers=headers or None)


def now() -> int:
    return int(time.time())


# For the HTTP clients the tests make test after test (`verify=TLS`): by default httpx builds a TLS
# context for each client, loading certifi's CA bundle, about 50 ms of CPU a client against 0.6 ms with
# one given (time.process_time over 20 `httpx.Client()` each way). It is the context httpx would build
# (`httpx.create_ssl_context`; its SSL docs show one context passed to many clients).
TLS = httpx.create_ssl_context()

# For the requests a test repeats while it waits (readiness, metrics): httpx.get makes a client for each
# call, and with it a TLS context (above), so a loop polling every 50 ms kept a core busy while the
# server it waited for started. No keep-alive: the servers polled come and go.
PROBE = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0), verify=TLS)

CLI = [sys.executable, "-m", "api.ops.cli"]
PROJECT = Path(__file__).resolve().parent.parent


# Every way the database helper sends a transaction (api/db/database.py), as settings, for tests that
# must hold in each: one message; one message, prepared (on the suite's direct connections, auto
# prepares: tests/db/test_prepared_statements.py); a pipeline of prepared statements.
TRANSACTION_WAYS = [
    pytest.param({"db_prepared_statements": "off"}, id="one-message"),
    pytest.param({"db_prepared_statements": "auto"}, id="one-message-prepared"),
    pytest.param({"db_prepare_threshold": 0}, id="pipelined-and-prepared"),
]


def cli_env(**variables: str) -> dict[str, str]:
    """The caller's environment without any todo-api configuration, plus `variables`."""
    names = {name.upper() for name in Settings.model_fields}
    env = {name: value for name, value in os.environ.items() if name.upper() not in names}
    env["PYTHONPATH"] = str(PROJECT)
    return {**env, **variables}


def failure_status(command: Sequence[str] | str) -> int:
    """The exit status of `command` when it cannot do its job: 1, but for `policies`, whose 1 means
    findings."""
    first = command if isinstance(command, str) else command[0]
    return AUDIT_NOT_RUN if first == "policies" else 1


@functools.cache
def _cli_fork_server() -> tuple[Path, dict[str, str], "subprocess.Popen[str]"]:
    """The folder of this pytest worker's CLI fork server (tests/cli_forkserver.py), started once,
    the start-up variables of its interpreter, and its process, kept here so that its stdin stays
    open: it ends when the worker does (its stdin closes)."""
    env = cli_env()
    folder = Path(tempfile.mkdtemp(prefix="todo-api-cli-"))
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.cli_forkserver", str(folder)],
        cwd=PROJECT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    assert server.stdout.readline() == "ready\n", "the CLI fork server did not start"
    return folder, start_up_variables(env), server


def cli_command(env: dict[str, str]) -> list[str]:
    """The command line of `python -m api.ops.cli` run with `env` (three words, as CLI): forked from
    the fork server, which imported the CLI once, unless `env` would start the interpreter differently
    from the server's."""
    folder, start_up, _ = _cli_fork_server()
    if start_up_variables(env) != start_up:
        return CLI
    return [sys.executable, "-I", str(folder / CLIENT)]


def serve_command(env: dict[str, str], *options: str) -> list[str]:
    """`python -m api.ops.cli serve OPTIONS` (all but --port) for `serve_process`, in a test that talks
    to the server and stops it: forked as `cli_command` forks it, which a stop reaches as it would
    reach the real command, for a second of CPU less a start. A test that looks at the process itself
    (its children, its process group, its pid) starts `[*CLI, "serve"]`."""
    return [*cli_command(env), "serve", *options]


def run_cli(*args: str, cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(**variables)
    return subprocess.run(
        [*cli_command(env), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def refusal(database_url: str, tmp_path: Path, *, says: str = "Refusing to serve", **variables: str) -> str:
    """What `todo-api serve` writes to stderr as it refuses to start on `database_url` (with the test
    secret and `variables` in its environment): it must exit 1, say `says`, and show no traceback."""
    result = run_cli(
        "serve",
        "--port",
        str(free_port()),
        cwd=tmp_path,
        DATABASE_URL=database_url,
        BETTER_AUTH_SECRET=SECRET,
        **variables,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


@contextmanager
def serve_process(
    command: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    output: Path,
    timeout: float = 300,
    port: int | None = None,
    host: str = "127.0.0.1",
    own_group: bool = False,
) -> Iterator[tuple[str, "subprocess.Popen[str]"]]:
    """`todo-api serve` as its own process, as operators run it, until /readyz answers 200.

    `command` is everything but `--port` (`port`, else a free one); all it writes goes to the file
    `output`. Yields the base URL (on `host`, which `command` names with --host when it is not the
    default) and the process, and stops it with SIGTERM on the way out if it still runs. `timeout` is a
    ceiling only a hang reaches: a serve that exits is reported at once, and a first start (initdb,
    migrations) on a loaded CI machine takes a good part of a minute. `own_group`:
    in a process group of its own, as a terminal's foreground command is, for a test to signal the
    whole group as the terminal does (os.killpg).
    """
    port = port or free_port()
    with output.open("w") as sink:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=own_group,
        )
        base_url = served_url(host, port)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if process.poll() is not None:
                    raise AssertionError(
                        f"todo-api serve exited with {process.returncode}:\n{output.read_text()}"
                    )
                assert time.monotonic() < deadline, "todo-api serve did not come up"
                try:
                    if PROBE.get(f"{base_url}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                # Short: most of the suite's servers start in about a second, and each waits this
                # long at most past ready. After a 503 too, rather than ask again at once.
                time.sleep(0.05)
            yield base_url, process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)


# Each pytest-xdist worker takes its servers' ports from a block of its own, below the kernel's
# ephemeral range (/proc/sys/net/ipv4/ip_local_port_range: 32768-60999 by default). A port the
# kernel picked and the probe released is free for the kernel to pick again, for another worker's
# server, before this one's server has bound it (a `serve` takes about a second to get there), and
# one of the two would fail to start. The start in the block is random, so that two runs of the
# suite on one machine rarely meet either.
_PORTS_PER_WORKER = 1000
_FIRST_PORT = 20000
_port_offsets = itertools.count(random.randrange(_PORTS_PER_WORKER))


def free_port() -> int:
    """A loopback port nothing is bound to, of this pytest worker's block."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    block = _FIRST_PORT + worker * _PORTS_PER_WORKER
    for _ in range(_PORTS_PER_WORKER):
        port = block + next(_port_offsets) % _PORTS_PER_WORKER
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use, or connections of an earlier server wait in TIME_WAIT there
            return port
    raise AssertionError(f"no free port in {block}-{block + _PORTS_PER_WORKER - 1}")


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Run the app in a real uvicorn on loopback (its own thread and event loop); yield its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serving_client(app: FastAPI, *, timeout: float = 30, **options: Any) -> Iterator[httpx.Client]:
    """`serving(app)` with an httpx client for it; `options` go to `httpx.Client`. The timeout is
    roomy because a shared CI machine can be slow, and a test that waits on purpose says so."""
    with (
        serving(app) as base_url,
        httpx.Client(base_url=base_url, timeout=timeout, verify=TLS, **options) as client,
    ):
        yield client


PROBLEM = "application/problem+json"


def assert_problem(
    response: httpx.Response, status: int, slug: str, field: str | None = None
) -> dict[str, Any]:
    """Assert that `response` is the problem `urn:todo-api:problem:<slug>` with `status`: RFC 9457's
    media type, the status in the body too, a title and a detail in words, and `field` among those a
    422 names. Returns the body, for what else the test asserts. The URN is spelled here, not read from
    api/http/problems.py: a test must not take what it expects from the code under test."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM, response.headers
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:todo-api:problem:{slug}", body
    assert body["status"] == status, body
    for key in ("title", "detail"):
        assert isinstance(body[key], str), body
        assert body[key], body
    if field is not None:
        assert field in [error["field"] for error in body["errors"]], body
    return body


# A bug's shape, for the tests of how a 500 is answered, logged and traced: the database raises an
# error the API expects nowhere, for no fault of the client (DivisionByZero). A refused privilege or a
# name the database no longer knows would not do: those are isolation findings, answered 503; nor
# would a RAISE or an ASSERT, whatever its SQLSTATE: a DBA's rule refusing a write (a 422).
_RAISES = "language plpgsql as $$ begin perform 1 / 0; return null; end $$"


def break_task_updates(db: psycopg.Connection[Any]) -> None:
    """From now on every UPDATE of a task on `db`'s database fails (DivisionByZero), by a trigger."""
    db.execute(f"create function public.a_bug() returns trigger {_RAISES}")
    db.execute(
        "create trigger a_bug before update on public.tasks for each row execute function public.a_bug()"
    )


def break_event_reads(db: psycopg.Connection[Any]) -> None:
    """From now on every read of task_events by todo_app fails (DivisionByZero), by a policy."""
    db.execute(f"create function public.a_bug() returns boolean {_RAISES}")
    db.execute(
        "create policy a_bug on public.task_events as restrictive for select to todo_app"
        " using (public.a_bug())"
    )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base_url: str) -> Samples:
    """Every sample `/metrics` shows, by name and labels."""
    response = PROBE.get(f"{base_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_until(condition: Callable[[], object], what: str, timeout: float, *, every: float = 0.05) -> None:
    """Return once `condition()` is true, asking every `every` seconds; fail saying `what` was awaited
    once `timeout` seconds have passed. The timeout is a ceiling only a hang reaches, not a promised
    speed: a loaded CI machine took more than 5 s for workers to see their server killed."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} (not within {timeout:g} s)"
        time.sleep(every)


def database_answers(url: str) -> bool:
    """Whether the database takes a connection: the wheel's start can return while Postgres still says
    it is starting up."""
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


def sessions_waiting_on_a_lock(url: str) -> int:
    """How many sessions of the database at `url` wait on a lock now. A connection of its own each
    time: a transaction sees pg_stat_activity as it first read it."""
    with psycopg.connect(url, autocommit=True) as probe:
        row = probe.execute(
            "select count(*) from pg_stat_activity"
            " where wait_event_type = 'Lock' and datname = current_database()"
        ).fetchone()
    return row[0] if row else 0


def wait_for_pool_gauges(base_url: str, *, waiting: int, in_use: int) -> None:
    """Return once `/metrics` shows `waiting` requests waiting for a connection and `in_use`
    connections lent out, across the workers; each worker reads its pool once a second."""
    seen: list[tuple[float, float]] = []
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(base_url)
        seen.append(
            (
                value(samples, "todo_api_db_pool_requests_waiting"),
                value(samples, "todo_api_db_pool_connections_in_use"),
            )
        )
        if seen[-1] == (waiting, in_use):
            return
        assert time.monotonic() < deadline, f"(waiting, in use) read {seen[-5:]}, never {(waiting, in_use)}"
        time.sleep(0.2)


def explain_list(db: psycopg.Connection[Any], user_id: str, params: TaskListParams) -> str:
    """EXPLAIN of the list statement as the API sends it, as todo_app acting for `user_id`, in a
    transaction rolled back after."""
    query = queries.list_tasks(user_id, params)
    statement = compiled(query.statement)
    with db.transaction(force_rollback=True), psycopg.ClientCursor(db) as cursor:
        cursor.execute(ACT_AS, [user_id])
        cursor.execute("explain " + cursor.mogrify(statement.sql, statement.params(query.params)))
        return "\n".join(row[0] for row in cursor.fetchall())


def sql(statement: str, *, read_only: bool = True) -> Query:
    """A statement of the test's own, for `Database.run`."""
    return Query(text(statement), {}, read_only=read_only)


def wait_until_it_waits_for(holder: psycopg.Connection[Any], request: "Future[httpx.Response]") -> None:
    """Return once a backend waits for a lock `holder` holds: the one serving `request`, which must
    still be waiting then (a request that answered without waiting fails the test)."""
    waiting = "select count(*) from pg_stat_activity where %s = any(pg_blocking_pids(pid))"

    def it_waits() -> bool:
        if holder.execute(waiting, [holder.info.backend_pid]).fetchone() == (1,):
            return True
        assert not request.done(), f"the request did not wait for the lock: {request.result().text}"
        return False

    wait_until(it_waits, "the request waits for the lock", 30)


@contextmanager
def tmpfs(folder: Path, size: str, *, inodes: int | None = None) -> Iterator[Path]:
    """`folder`, made and mounted as a tmpfs of `size` (and at most `inodes` files and folders), for a
    full disk or a read-only one, unmounted on the way out; the test is skipped where it cannot be
    mounted (as a user other than root)."""
    folder.mkdir()
    options = f"size={size}" if inodes is None else f"size={size},nr_inodes={inodes}"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],  # noqa: S607
        capture_output=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)  # noqa: S607


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """An ASGI HTTP scope for `method` on `path`, for a test that calls the app with a `receive` or a
    `send` of its own making (a client that leaves, a body the server fails to read)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
