"""Behind PgBouncer in transaction mode (Neon's pooled endpoint), users share server connections.

Settings are transaction-scoped, so whatever server connection a request lands on, it starts as
nobody and ends as nobody. (`.ci/run` also runs the whole API suite with --via-pgbouncer.)
"""

import asyncio
import json
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from pytest_postgresql.executors import NoopExecutor
from yoyo import get_backend, read_migrations

from api.app import create_app
from api.db.prepared import preparing_setting, url_reaches_postgres_itself
from api.db.sql_files import MIGRATIONS_DIR
from api.db.urls import yoyo_url
from api.events.services import live_services
from tests.api.events_client import async_client, opened
from tests.pgbouncer import pgbouncer, require_pgbouncer
from tests.support import (
    LOGIN_ROLE,
    SECRET,
    ApiUser,
    cli_env,
    failure_status,
    new_user,
    refusal,
    run_cli,
    serve_command,
    serve_process,
    serving,
    serving_client,
    settings_for,
)


def _bouncer(
    migrated_db: psycopg.Connection[Any],
    migrated_template: NoopExecutor,
    *,
    pool_mode: str,
    other_users: Sequence[str] = (),
    ignored_startup_parameters: Sequence[str] = (),
) -> Iterator[str]:
    require_pgbouncer()
    with pgbouncer(
        socket_dir=migrated_template.host,
        port=migrated_template.port,
        user=migrated_template.user,
        dbname=migrated_db.info.dbname,
        server_pool_size=1,
        pool_mode=pool_mode,
        other_users=other_users,
        ignored_startup_parameters=ignored_startup_parameters,
    ) as url:
        yield url


@pytest.fixture
def bouncer_url(migrated_db: psycopg.Connection[Any], migrated_template: NoopExecutor) -> Iterator[str]:
    yield from _bouncer(migrated_db, migrated_template, pool_mode="transaction")


@pytest.fixture
def options_dropping_bouncer_url(
    migrated_db: psycopg.Connection[Any], migrated_template: NoopExecutor
) -> Iterator[str]:
    """A pooler that lets a client send `options` and drops them, as PgBouncer does with
    `ignore_startup_parameters = options`, set so that clients which send them can connect."""
    yield from _bouncer(
        migrated_db, migrated_template, pool_mode="transaction", ignored_startup_parameters=["options"]
    )


@pytest.fixture
def fresh_role_bouncer_url(
    migrated_db: psycopg.Connection[Any], migrated_template: NoopExecutor, fresh_role: str
) -> Iterator[str]:
    """The pooled URL of the database as `fresh_role`, whom the pooler admits before it exists."""
    for url in _bouncer(migrated_db, migrated_template, pool_mode="transaction", other_users=[fresh_role]):
        yield url.replace(f"//{migrated_template.user}@", f"//{fresh_role}@", 1)


@pytest.fixture
def statement_bouncer_url(
    migrated_db: psycopg.Connection[Any], migrated_template: NoopExecutor
) -> Iterator[str]:
    yield from _bouncer(migrated_db, migrated_template, pool_mode="statement")


def test_users_sharing_one_server_connection_never_see_each_others_tasks(bouncer_url: str) -> None:
    users = [new_user() for _ in range(6)]

    def session(client: httpx.Client, user: ApiUser) -> list[str]:
        problems = []
        for i in range(15):
            created = client.post(user.tasks_url, json={"title": f"{user.id} {i}"}, headers=user.headers)
            if created.status_code != 201:
                problems.append(f"create: {created.status_code}")
            listed = client.get(user.tasks_url, headers=user.headers).json()
            if {task["user_id"] for task in listed} != {user.id} or len(listed) != i + 1:
                problems.append(
                    f"list {i}: {len(listed)} tasks of {len({t['user_id'] for t in listed})} users"
                )
        return problems

    app = create_app(settings_for(bouncer_url, db_pool_size=6))
    with serving_client(app) as client:
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(lambda user: session(client, user), users))
        assert results == [[]] * 6

    # The one server connection served every user; through the pooler it now belongs to nobody.
    with psycopg.connect(bouncer_url, autocommit=True, prepare_threshold=None) as probe:
        for _ in range(3):
            identity = probe.execute(
                "select current_user, current_setting('role'),"
                " coalesce(current_setting('app.user_id', true), '')"
            ).fetchone()
            assert identity == (LOGIN_ROLE, "none", "")


def test_nothing_is_prepared_through_the_pooler(bouncer_url: str) -> None:
    """In transaction mode a PREPARE may land on one server connection and its EXECUTE on another,
    so DB_PREPARED_STATEMENTS=auto (the default) prepares nothing here (api/db/prepared.py)."""
    assert asyncio.run(url_reaches_postgres_itself(bouncer_url)) is False

    user = new_user()
    with serving_client(create_app(settings_for(bouncer_url, db_pool_size=2))) as client:
        for _ in range(3):
            assert client.post(user.tasks_url, json={"title": "x"}, headers=user.headers).status_code == 201
            assert client.get(user.tasks_url, headers=user.headers).status_code == 200

    # The pooler's one server connection ran every statement, and holds none prepared.
    with psycopg.connect(bouncer_url, autocommit=True, prepare_threshold=None) as probe:
        assert probe.execute("select count(*) from pg_prepared_statements").fetchone() == (0,)


def _one_event_reaches_a_stream(base_url: str) -> dict[str, Any]:
    """Open a stream, write a task, and return the event the stream got for it."""
    user = new_user()

    async def scenario() -> dict[str, Any]:
        async with async_client(base_url) as client, opened(client, user) as stream:
            await stream.opening_id()
            created = await client.post(user.tasks_url, json={"title": "live"}, headers=user.headers)
            event = await stream.next()
            assert (event.kind, event.data) == ("task.created", created.json())
            return dict(event.data)

    return asyncio.run(scenario())


def test_behind_a_transaction_pooler_streams_poll(bouncer_url: str) -> None:
    app = create_app(settings_for(bouncer_url, events_poll_milliseconds=200))
    with serving(app) as base_url:
        assert live_services(app).events_hub.poll_seconds == 0.2
        _one_event_reaches_a_stream(base_url)


def test_with_a_direct_url_the_worker_listens_even_behind_a_pooler(
    bouncer_url: str, migrated_db_url: str
) -> None:
    app = create_app(settings_for(bouncer_url, database_direct_url=migrated_db_url))
    with serving(app) as base_url:
        assert live_services(app).events_hub.poll_seconds is None
        _one_event_reaches_a_stream(base_url)


def test_a_direct_url_that_reaches_the_pooler_is_not_listened_on_and_streams_poll(
    bouncer_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """LISTEN through a transaction pooler succeeds and hears nothing: the stream would only ever
    send heartbeats. The worker sees that DATABASE_DIRECT_URL is a pooler, and polls; the warning is
    `todo-api serve`'s, once for every worker (below)."""
    app = create_app(settings_for(bouncer_url, database_direct_url=bouncer_url, events_poll_milliseconds=200))
    with caplog.at_level(logging.INFO, logger="api.db.listener"), serving(app) as base_url:
        assert live_services(app).events_hub.poll_seconds == 0.2
        _one_event_reaches_a_stream(base_url)
    said = [
        (record.levelno, record.getMessage()) for record in caplog.records if record.name == "api.db.listener"
    ]
    assert said == [
        (logging.INFO, "DATABASE_DIRECT_URL reaches a pooler, not Postgres itself: it is not listened on")
    ]


def test_serve_warns_once_for_every_worker_of_a_direct_url_that_reaches_a_pooler(
    bouncer_url: str, migrated_db_url: str, tmp_path: Path
) -> None:
    """Each worker warned, as it started: once per worker, and again whenever one was replaced."""
    log = tmp_path / "serve.log"
    env = cli_env(
        DATABASE_URL=migrated_db_url,
        DATABASE_DIRECT_URL=bouncer_url,
        BETTER_AUTH_SECRET=SECRET,
        DB_POOL_SIZE="2",
    )

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]

    def about_the_direct_url() -> list[dict[str, Any]]:
        return [line for line in lines() if "DATABASE_DIRECT_URL reaches a pooler" in line["message"]]

    with serve_process(serve_command(env, "--workers", "2"), cwd=tmp_path, env=env, output=log) as (
        base_url,
        _,
    ):
        deadline = time.monotonic() + 60
        # Both workers have made up their minds: each says so, at info.
        while len({line["pid"] for line in about_the_direct_url() if line["name"] == "api.db.listener"}) < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        # DATABASE_URL reaches Postgres itself: the workers listen on it instead.
        _one_event_reaches_a_stream(base_url)
    warnings = [line for line in about_the_direct_url() if line["level"] == "WARNING"]
    assert len(warnings) == 1, log.read_text()
    assert warnings[0]["message"].startswith(
        "todo-api: DATABASE_DIRECT_URL reaches a pooler, not Postgres itself"
    )
    assert "on Neon, the one without -pooler" in warnings[0]["message"]


@pytest.mark.parametrize("setting", ["DB_PREPARE_THRESHOLD", "DB_PREPARED_STATEMENTS=on"])
def test_serve_refuses_prepared_statements_the_pooler_would_lose(
    bouncer_url: str, tmp_path: Path, setting: str
) -> None:
    """In transaction mode PgBouncer 1.18 hands one server session to every client: a statement
    prepared in one transaction may be gone, or another client's, in the next. With
    DB_PREPARE_THRESHOLD each worker's pool failed to start (PoolTimeout, in a crash loop)."""
    name, _, value = setting.partition("=")
    stderr = refusal(
        bouncer_url,
        tmp_path,
        says=f"todo-api: {setting} asks for prepared statements",
        **{name: value or "0"},
    )
    (line,) = stderr.strip().splitlines()
    assert "DATABASE_URL reaches a pooler in transaction mode" in line, line
    # The fix in the words a worker's warning uses: one home, api.db.prepared.preparing_setting.
    fix = preparing_setting(prepare_threshold=None if value else 0, prepared_statements=value or "auto").fix
    assert f": {fix}" in line, line
    # The check's own statement is gone again from the one server session every client shares.
    with psycopg.connect(bouncer_url, autocommit=True, prepare_threshold=None) as probe:
        assert probe.execute("select count(*) from pg_prepared_statements").fetchone() == (0,)


def test_prepared_statements_the_pooler_loses_are_never_a_500(
    bouncer_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker started without `todo-api serve`'s check (or where it could not tell): the first
    statement found missing or another client's stops it preparing, with one warning, and that
    request runs again, unprepared (it had not committed, so nothing is written twice)."""
    users = [new_user() for _ in range(6)]
    app = create_app(settings_for(bouncer_url, db_pool_size=6, db_prepared_statements="on"))
    with (
        caplog.at_level(logging.WARNING, logger="api.db.database"),
        serving_client(app) as client,
        ThreadPoolExecutor(max_workers=6) as pool,
    ):

        def create(request: tuple[ApiUser, int]) -> int:
            user, i = request
            return client.post(user.tasks_url, json={"title": f"t{i}"}, headers=user.headers).status_code

        statuses = list(pool.map(create, [(user, i) for i in range(5) for user in users]))
    assert statuses == [201] * 30
    with psycopg.connect(bouncer_url, autocommit=True, prepare_threshold=None) as database:
        stored = database.execute(
            "select user_id, count(*) from tasks where user_id = any(%s) group by user_id",
            [[user.id for user in users]],
        ).fetchall()
    assert sorted(count for _, count in stored) == [5] * 6  # every create once, none twice
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.name == "api.db.database" and record.levelno == logging.WARNING
    ]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("DB_PREPARED_STATEMENTS=on asks for prepared statements"), warnings[0]
    assert warnings[0].endswith(preparing_setting(prepare_threshold=None, prepared_statements="on").fix), (
        warnings[0]
    )
    assert "set DB_PREPARED_STATEMENTS=auto" in warnings[0]


def test_serve_refuses_a_pooler_in_statement_mode_in_one_line_saying_so(
    statement_bouncer_url: str, tmp_path: Path
) -> None:
    """Every request is a transaction of several statements, which PgBouncer in statement mode ends
    the session for. `serve` refused it as "cannot use the database at ...: the connection is
    closed": the isolation check took the pooler's reason for a finding, and the next query found
    the session gone."""
    stderr = refusal(statement_bouncer_url, tmp_path, says="DATABASE_URL reaches a pooler in statement mode")
    (line,) = stderr.strip().splitlines()
    assert "run it in transaction mode (PgBouncer: pool_mode = transaction)" in line, line


def test_the_audit_through_the_pooler_leaves_no_setting_on_the_shared_server_session(
    bouncer_url: str, tmp_path: Path
) -> None:
    """`todo-api policies` where DATABASE_URL is the pooled URL (as README's "Deploying" has it) set
    its lock_timeout for the session, which behind a transaction pooler is a server session every
    client shares next (the fixture's pooler has one): each request that waited for a row lock then
    gave up after 5 s, blamed on a lock_timeout a DBA set, whatever DB_STATEMENT_TIMEOUT_MS said."""
    result = run_cli("policies", cwd=tmp_path, DATABASE_URL=bouncer_url, BETTER_AUTH_SECRET=SECRET)
    assert result.returncode == 0, result.stdout + result.stderr
    with psycopg.connect(bouncer_url, autocommit=True, prepare_threshold=None) as shared:
        assert shared.execute("select current_setting('lock_timeout')").fetchone() == ("0",)


def test_migrate_through_the_pooler_says_to_migrate_through_postgres_itself(
    bouncer_url: str, tmp_path: Path
) -> None:
    """migrate sets its lock_timeout with the connection's `options`, which PgBouncer refuses: it said
    only "cannot use the database at ...: connection failed: ... unsupported startup parameter"."""
    result = run_cli("migrate", cwd=tmp_path, DATABASE_URL=bouncer_url, BETTER_AUTH_SECRET=SECRET)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "DATABASE_URL reaches a pooler" in line, line
    assert "migrate through a URL that reaches Postgres itself" in line, line


@pytest.mark.parametrize("command", ["policies", "serve", "migrate"])
def test_a_command_whose_url_has_options_the_pooler_refuses_says_to_remove_them(
    bouncer_url: str, tmp_path: Path, command: str
) -> None:
    """`policies` and `serve` were told first to "migrate through a URL that reaches Postgres itself",
    though neither migrates: the options the pooler refused were the URL's own (the URL probe). The
    way to migrate stays in the advice, which `migrate` needs as well (the verification probe)."""
    url = f"{bouncer_url}{'&' if '?' in bouncer_url else '?'}options=-c%20statement_timeout%3D5000"
    result = run_cli(
        command,
        *(["--port", "0"] if command == "serve" else []),
        cwd=tmp_path,
        DATABASE_URL=url,
        BETTER_AUTH_SECRET=SECRET,
    )
    assert result.returncode == failure_status(command), result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "DATABASE_URL reaches a pooler" in line, line
    assert "remove DATABASE_URL's options, which the pooler does not pass on; to migrate, use a URL" in line
    assert "PGOPTIONS" not in line, "it is not set"


def test_migrate_through_a_pooler_that_drops_its_options_is_refused_and_changes_nothing(
    options_dropping_bouncer_url: str, migrated_db_url: str, tmp_path: Path
) -> None:
    """A pooler that drops `options` rather than refuse them let migrate through without the
    lock_timeout they carry: behind a transaction reading tasks, migrate then waited for as long as
    that lasted (40 s, seen with PgBouncer's ignore_startup_parameters = options), and every request
    to tasks queued behind its lock. Refused, as serve's pooler checks do, before anything changes."""
    # The last migration rolled back, so that a migrate that ran would apply it again.
    backend = get_backend(yoyo_url(migrated_db_url))
    migrations = read_migrations(str(MIGRATIONS_DIR))
    last = migrations[-1].id
    with backend.lock():
        backend.rollback_migrations(migrations.filter(lambda migration: migration.id == last))
    result = run_cli(
        "migrate", cwd=tmp_path, DATABASE_URL=options_dropping_bouncer_url, BETTER_AUTH_SECRET=SECRET
    )
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "DATABASE_URL reaches a pooler" in line, line
    assert "migrate through a URL that reaches Postgres itself" in line, line
    with psycopg.connect(migrated_db_url, autocommit=True) as owner:
        applied = owner.execute("select count(*) from _yoyo_migration where migration_id = %s", [last])
        assert applied.fetchone() == (0,), "nothing was migrated"


def test_serve_through_the_pooler_right_after_migrate_creates_its_login_role(
    migrated_db_url: str,
    migrated_db: psycopg.Connection[Any],
    fresh_role: str,
    fresh_role_bouncer_url: str,
    tmp_path: Path,
) -> None:
    """README's deploy steps 2 and 3, back to back. migrate logged in with DATABASE_URL, as the role
    it had yet to create, to compare it with MIGRATION_DATABASE_URL: PgBouncer then held every login
    as that role for its server_login_retry (15 s), and the `serve` started next refused to start,
    blaming DB_CONNECT_TIMEOUT_SECONDS."""
    migrated = run_cli(
        "migrate",
        "--login-role",
        fresh_role,
        cwd=tmp_path,
        DATABASE_URL=fresh_role_bouncer_url,
        MIGRATION_DATABASE_URL=migrated_db_url,
    )
    assert migrated.returncode == 0, migrated.stderr
    assert f"login role {fresh_role}: LOGIN NOINHERIT NOBYPASSRLS" in migrated.stdout
    env = cli_env(DATABASE_URL=fresh_role_bouncer_url, BETTER_AUTH_SECRET=SECRET, DB_POOL_SIZE="2")
    user = new_user()
    with serve_process(serve_command(env), cwd=tmp_path, env=env, output=tmp_path / "serve.log") as (
        base_url,
        _,
    ):
        created = httpx.post(f"{base_url}{user.tasks_url}", json={"title": "served"}, headers=user.headers)
    assert created.status_code == 201, created.text
    stored = migrated_db.execute("select title from tasks where user_id = %s", [user.id]).fetchall()
    assert stored == [("served",)]
