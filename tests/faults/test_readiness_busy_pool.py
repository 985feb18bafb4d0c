"""/readyz asks whether the database answers, not whether the pool has a connection free.

Requests waiting on row locks can hold every pooled connection of a worker while the database
answers anyone else at once; a ping that waited for a pooled connection answered 503 then and took a
healthy worker out of the load balancer, and so did an isolation check that waited for one past
DB_POOL_TIMEOUT_SECONDS (it could not complete, and refused every request). A database that is down
is still a 503.
"""

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from api.app import create_app
from api.db.database import Database
from api.db.errors import UNAVAILABLE
from tests.own_postgres import OwnPostgres
from tests.support import (
    LOGIN_ROLE,
    SECRET,
    assert_problem,
    cli_env,
    database_answers,
    new_user,
    scrape,
    serve_command,
    serve_process,
    serving_client,
    sessions_waiting_on_a_lock,
    settings_for,
    sql,
    value,
)

POOL_SIZE = 4
PER_USER = 2  # each user's share of the pool: POOL_SIZE // PER_USER users fill it


def test_a_pool_taken_by_requests_waiting_on_locks_is_still_ready_and_verified(
    migrated_db: psycopg.Connection[Any], migrated_db_url: str
) -> None:
    settings = settings_for(
        migrated_db_url,
        db_pool_size=POOL_SIZE,
        db_max_connections_per_user=PER_USER,
        # The blocked writes wait for the lock, not for a timeout, however slow the machine.
        db_statement_timeout_ms=120_000,
        # A wait for a pooled connection ends long before the lock goes.
        db_pool_timeout_seconds=1,
        # Checks keep coming while the pool is taken, each of which would wait out the pool's timeout.
        isolation_check_interval_seconds=0.2,
    )
    users = [new_user() for _ in range(POOL_SIZE // PER_USER)]
    bystander = new_user()
    with (
        serving_client(create_app(settings), timeout=120) as client,
        ThreadPoolExecutor(POOL_SIZE) as senders,
    ):
        tasks = []
        for user in users:
            for n in range(PER_USER):
                created = client.post(user.tasks_url, json={"title": f"before {n}"}, headers=user.headers)
                assert created.status_code == 201, created.text
                tasks.append((user, created.json()["id"]))

        # As an operator's session would, a lock on every one of those tasks.
        migrated_db.execute(
            "select 1 from tasks where id = any(%s) for update", [[task_id for _, task_id in tasks]]
        )
        updates = [
            senders.submit(client.put, user.task_url(task_id), json={"title": "after"}, headers=user.headers)
            for user, task_id in tasks
        ]
        deadline = time.monotonic() + 60
        while sessions_waiting_on_a_lock(migrated_db_url) < POOL_SIZE:
            assert time.monotonic() < deadline, "every pooled connection waits on the lock"
            time.sleep(0.05)

        time.sleep(2 * 1 + 1)  # past the pool's timeout, twice: several checks ran meanwhile
        ready = client.get("/readyz")
        # Told the truth: the pool had no connection for them, not that isolation is unverified.
        waited = client.get(bystander.tasks_url, headers=bystander.headers)

        migrated_db.rollback()  # the lock goes, and the writes go through
        updated = [update.result() for update in updates]

    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready"}
    assert_problem(waited, 503, "database-unavailable")
    assert [response.status_code for response in updated] == [200] * POOL_SIZE
    titles = migrated_db.execute(
        "select title from tasks where id = any(%s)", [[task_id for _, task_id in tasks]]
    ).fetchall()
    assert titles == [("after",)] * POOL_SIZE


def test_a_database_that_is_down_is_not_ready_and_ready_again_once_back(module_postgres: OwnPostgres) -> None:
    settings = settings_for(module_postgres.url, db_connect_timeout_seconds=2)
    with serving_client(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200  # the readiness connection is made, and kept

        module_postgres.stop()
        time.sleep(1.1)  # past the shared answer's second (api/http/readiness.py)
        down = client.get("/readyz")

        assert_problem(down, 503, "database-unavailable")
        assert down.headers["retry-after"].isdigit()

        module_postgres.start()
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "/readyz never came back"
            time.sleep(0.2)


def test_the_first_readiness_ping_once_the_database_answers_again_finds_it_ready(
    module_postgres: OwnPostgres,
) -> None:
    """A load balancer puts a worker back once /readyz answers 200, and the first ping that reaches
    the database after an outage must say ready. It judged the pool by its tries made while the
    database was away, none of which could succeed, and said "database-unavailable" until the pool's
    next try, about a second later, keeping a healthy worker out of rotation for nothing. Pinged as
    /readyz's shared check pings, the moment the database answers."""
    settings = settings_for(
        module_postgres.url, db_connect_timeout_seconds=2, db_pool_size=1, db_pool_timeout_seconds=1
    )

    async def scenario() -> None:
        database = Database.from_settings(settings)
        await database.open()
        try:
            await database.pool.wait()
            await database.ping()
            await asyncio.to_thread(module_postgres.stop)
            # A request finds the pool's connection gone, and the pool tries in vain to make another.
            with pytest.raises(UNAVAILABLE):
                await database.run("alice", sql("select count(*) as n from public.tasks"))
            with pytest.raises(UNAVAILABLE):
                await database.ping()
            # Pinged as soon as the database answers: the wheel's start returns some time after that.
            starting = asyncio.create_task(asyncio.to_thread(module_postgres.start))
            deadline = time.monotonic() + 30
            while not await asyncio.to_thread(database_answers, module_postgres.url):
                assert time.monotonic() < deadline, "the database never answered again"
                await asyncio.sleep(0.01)
            await database.ping()
            await starting
        finally:
            await database.close()

    asyncio.run(scenario())


def test_a_pool_that_cannot_connect_is_not_ready_and_counts_no_connection(
    module_postgres: OwnPostgres, tmp_path: Path
) -> None:
    """Found with `serve --workers 2`: the login role's CONNECTION LIMIT reached (by other clients,
    say) once the pool's connections were gone, every task request waited out DB_POOL_TIMEOUT_SECONDS
    for a 503 while /readyz, whose own connection was made before, kept answering 200, and the pool
    gauge counted the connections the pool was only trying to make."""
    user = new_user()
    env = cli_env(
        DATABASE_URL=module_postgres.url,
        BETTER_AUTH_SECRET=SECRET,
        DB_POOL_SIZE="2",
        DB_POOL_TIMEOUT_SECONDS="1",
        # No check falls in the test: it would fail for want of a connection, and refuse for its own reason.
        ISOLATION_CHECK_INTERVAL_SECONDS="3600",
    )
    with (
        serve_process(serve_command(env), cwd=tmp_path, env=env, output=tmp_path / "serve.log") as (
            base_url,
            _,
        ),
        httpx.Client(base_url=base_url, timeout=30) as client,
        psycopg.connect(module_postgres.superuser_url, autocommit=True) as superuser,
        contextlib.ExitStack() as lifted,
    ):
        assert client.get(user.tasks_url, headers=user.headers).status_code == 200
        # The cluster is the module's: the limit is lifted below, and again however the test ends.
        lifted.callback(superuser.execute, f"alter role {LOGIN_ROLE} connection limit -1")
        superuser.execute(f"alter role {LOGIN_ROLE} connection limit 0")  # sessions already in stay
        superuser.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where usename = %s and application_name = 'todo-api'",
            [LOGIN_ROLE],
        )
        # The pool finds its connections gone when a request asks for one.
        refused = client.get(user.tasks_url, headers=user.headers)
        deadline = time.monotonic() + 30
        while (not_ready := client.get("/readyz")).status_code == 200:
            assert time.monotonic() < deadline, "/readyz stays 200 while the pool cannot connect"
            time.sleep(0.2)
        time.sleep(1.5)  # the pool gauges are read once a second
        held_while_refused = value(scrape(base_url), "todo_api_db_pool_size")

        superuser.execute(f"alter role {LOGIN_ROLE} connection limit -1")
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "/readyz never came back"
            time.sleep(0.2)
        served_again = client.get(user.tasks_url, headers=user.headers)

    assert_problem(not_ready, 503, "database-unavailable")
    assert not_ready.headers["retry-after"].isdigit()
    assert_problem(refused, 503, "database-unavailable")
    assert held_while_refused == 0
    assert served_again.status_code == 200, served_again.text


def test_readiness_says_once_that_the_database_is_not_ready_and_once_that_it_is_again(
    module_postgres: OwnPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """A load balancer asks every few seconds, and each check that found the database down logged
    the same warning again: a line per check for as long as the outage lasted."""
    settings = settings_for(module_postgres.url, db_connect_timeout_seconds=2)
    with (
        caplog.at_level(logging.INFO, logger="api.http.readiness"),
        serving_client(create_app(settings)) as client,
    ):
        assert client.get("/readyz").status_code == 200
        module_postgres.stop()
        not_ready = []
        for _ in range(2):  # the same warning again was the bug
            time.sleep(1.1)  # past the shared answer's second: a check of its own each time
            not_ready.append(client.get("/readyz").status_code)
        module_postgres.start()
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "/readyz never came back"
            time.sleep(0.2)

    assert not_ready == [503] * 2
    said = [
        (record.levelno, record.getMessage())
        for record in caplog.records
        if record.name == "api.http.readiness"
    ]
    assert [level for level, _ in said] == [logging.WARNING, logging.INFO], said
    assert said[0][1].startswith("readiness: the database is not ready: "), said
    assert said[1][1] == "readiness: the database is ready again"
