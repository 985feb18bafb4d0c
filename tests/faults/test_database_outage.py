"""Postgres goes away while the API serves: fail fast with 503, recover alone, lose nothing; open
event streams stay open, and every write reaches them once the database is back.

These tests share a Postgres of their own (`module_postgres`: the session's shared one must stay up
for everyone else), each with users of its own.
"""

import asyncio
import contextlib
import gc
import logging
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from api.app import create_app
from api.db.listener import CHANNEL, Listener
from api.http.services import services
from tests.api.events_client import async_client, opened
from tests.own_postgres import OwnPostgres
from tests.pgbouncer import pgbouncer, require_pgbouncer
from tests.support import (
    CLI,
    LOGIN_ROLE,
    SECRET,
    ApiUser,
    assert_problem,
    cli_env,
    new_user,
    scrape,
    serve_command,
    serve_process,
    serving,
    serving_client,
    settings_for,
    value,
    wait_for_pool_gauges,
)

FAIL_FAST_SECONDS = 8.0
UNAVAILABLE = "todo_api_http_unavailable_total"


def test_outage_fails_fast_recovers_by_itself_and_loses_nothing(module_postgres: OwnPostgres) -> None:
    user = new_user()
    # A request during the outage waits out the pool's timeout, whatever it is: one second, well
    # within the bound asserted below.
    settings = settings_for(module_postgres.url, db_connect_timeout_seconds=2, db_pool_timeout_seconds=1)
    acknowledged: list[int] = []
    failed_writes: list[str] = []

    def write(client: httpx.Client, title: str) -> httpx.Response:
        response = client.post(user.tasks_url, json={"title": title}, headers=user.headers)
        if response.status_code == 201:
            acknowledged.append(response.json()["id"])
        else:
            failed_writes.append(title)
        return response

    with serving_client(create_app(settings)) as client:
        for i in range(5):
            assert write(client, f"before {i}").status_code == 201

        module_postgres.stop()
        for i in range(3):
            started = time.monotonic()
            response = write(client, f"during {i}")
            elapsed = time.monotonic() - started
            assert_problem(response, 503, "database-unavailable")
            assert response.headers["retry-after"].isdigit()
            assert elapsed < FAIL_FAST_SECONDS
            assert client.get(user.tasks_url, headers=user.headers).status_code == 503
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200

        module_postgres.start()
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the API did not notice Postgres came back"
            time.sleep(0.2)
        recovered = [write(client, f"after {i}").status_code for i in range(5)]
        assert recovered == [201] * 5, "no restart needed"

        listed = client.get(user.tasks_url, params={"limit": 500}, headers=user.headers).json()

    # As the superuser: the login role here has no BYPASSRLS, so it would see no rows at all.
    with psycopg.connect(module_postgres.server.get_uri(database="todo")) as connection:
        stored: list[Any] = connection.execute(
            "select id from tasks where user_id = %s order by id", [user.id]
        ).fetchall()
    assert [row[0] for row in stored] == sorted(acknowledged), "every 2xx write is stored, nothing else"
    assert sorted(task["id"] for task in listed) == sorted(acknowledged)
    assert len(failed_writes) == 3


def test_a_users_concurrent_requests_during_an_outage_are_each_503_within_the_pool_timeout(
    module_postgres: OwnPostgres,
) -> None:
    """Past the user's share of connections, requests waited for a slot for the pool timeout and were
    then 429 too-many-requests, blaming the user for the database being away; those that got a slot
    at the end waited the pool timeout again, for a connection, before their 503."""
    user = new_user()
    pool_timeout = 1
    settings = settings_for(
        module_postgres.url,
        db_connect_timeout_seconds=2,
        db_pool_timeout_seconds=pool_timeout,
        db_max_connections_per_user=2,
    )
    concurrent = 6  # three times the user's share

    def write(client: httpx.Client, n: int) -> httpx.Response:
        return client.post(user.tasks_url, json={"title": f"during {n}"}, headers=user.headers)

    with serving(create_app(settings)) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        assert client.get(user.tasks_url, headers=user.headers).status_code == 200
        unavailable_before = value(scrape(base_url), UNAVAILABLE, cause="database-unavailable")

        module_postgres.stop()
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=concurrent) as pool:
            responses = list(pool.map(lambda n: write(client, n), range(concurrent)))
        elapsed = time.monotonic() - started

        module_postgres.start()
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the API did not notice Postgres came back"
            time.sleep(0.2)
        unavailable_after = value(scrape(base_url), UNAVAILABLE, cause="database-unavailable")
        listed = client.get(user.tasks_url, headers=user.headers)

    assert [response.status_code for response in responses] == [503] * concurrent, [
        response.text for response in responses
    ]
    for response in responses:
        body = assert_problem(response, 503, "database-unavailable")
        # Nothing held a connection: the database is away, not busy.
        assert body["detail"].startswith("The database cannot be reached right now"), body
        assert response.headers["retry-after"].isdigit()
    assert unavailable_after - unavailable_before == concurrent, "counted as the database's, not the user's"
    assert elapsed < FAIL_FAST_SECONDS
    assert listed.status_code == 200
    assert listed.json() == []
    with psycopg.connect(module_postgres.server.get_uri(database="todo")) as connection:
        stored = connection.execute("select count(*) from tasks where user_id = %s", [user.id]).fetchone()
    assert stored == (0,), "a 503 wrote nothing"


def test_an_idle_outage_shows_no_request_waiting_and_no_connection_in_use(
    module_postgres: OwnPostgres, tmp_path: Path
) -> None:
    """The gauges read psycopg_pool's statistics, which keep a request that gave up waiting in the
    pool's queue until a connection turns up, and count connections still being made as lent out:
    with no request in flight they showed a busy pool (requests waiting 6, 8, 14 ..., every
    connection in use) rather than a dead database, until it came back."""
    user = new_user()
    env = cli_env(
        DATABASE_URL=module_postgres.url,
        BETTER_AUTH_SECRET=SECRET,
        DB_POOL_SIZE="2",
        DB_POOL_TIMEOUT_SECONDS="1",
        DB_CONNECT_TIMEOUT_SECONDS="2",
    )
    command = serve_command(env, "--workers", "2")
    with (
        serve_process(command, cwd=tmp_path, env=env, output=tmp_path / "serve.log") as (base_url, _),
        httpx.Client(base_url=base_url, timeout=30) as client,
    ):
        assert client.get(user.tasks_url, headers=user.headers).status_code == 200

        module_postgres.stop()
        for _ in range(4):
            assert client.get(user.tasks_url, headers=user.headers).status_code == 503
        wait_for_pool_gauges(base_url, waiting=0, in_use=0)

        module_postgres.start()
        deadline = time.monotonic() + 30
        while client.get(user.tasks_url, headers=user.headers).status_code != 200:
            assert time.monotonic() < deadline, "the API did not notice Postgres came back"
            time.sleep(0.2)
        wait_for_pool_gauges(base_url, waiting=0, in_use=0)


def test_a_long_outage_is_served_again_within_seconds_of_the_database_answering(
    module_postgres: OwnPostgres,
) -> None:
    """psycopg's pool retries a lost connection after a delay that doubles from 1 s: 40 s away, and
    the API answered 503 for 17 s more once the database was back, until the pool tried again."""
    user = new_user()
    settings = settings_for(module_postgres.url, db_connect_timeout_seconds=2, db_pool_timeout_seconds=2)
    with serving_client(create_app(settings)) as client:
        assert client.get(user.tasks_url, headers=user.headers).status_code == 200
        module_postgres.stop()
        away = time.monotonic()
        assert client.get(user.tasks_url, headers=user.headers).status_code == 503
        # Long enough for the backoff to have grown past what a client would wait: its attempts
        # come 1, 3, 7, 15 and 31 s after the first.
        time.sleep(max(0.0, away + 18 - time.monotonic()))
        module_postgres.start()
        back = time.monotonic()
        while (response := client.get(user.tasks_url, headers=user.headers)).status_code != 200:
            assert response.status_code == 503, response.text
            assert time.monotonic() - back < 4, "served again within seconds of the database answering"
            time.sleep(0.1)


def test_an_idle_pool_fills_itself_again_once_the_database_is_back(module_postgres: OwnPostgres) -> None:
    """A run of tries to replace a lost connection gives up after RECONNECT_TRIES_FOR_SECONDS and frees
    the connection's place, which psycopg's pool fills again only when a request asks: a worker idle
    through an outage met its next burst short of connections, each one made while a request waited.
    `try_again` starts a new run instead, so the pool is whole again before anyone asks."""
    user = new_user()
    settings = settings_for(
        module_postgres.url, db_pool_size=3, db_connect_timeout_seconds=2, db_pool_timeout_seconds=2
    )
    app = create_app(settings)
    with serving_client(app) as client:
        pool = services(app).database.pool
        assert client.get(user.tasks_url, headers=user.headers).status_code == 200
        module_postgres.stop()
        # A request finds its connection dead, and the pool replaces every idle one in the background.
        assert client.get(user.tasks_url, headers=user.headers).status_code == 503
        time.sleep(4)  # two runs of tries given up
        module_postgres.start()
        deadline = time.monotonic() + 10
        while (stats := pool.get_stats())["pool_size"] < 3 or stats["pool_available"] < 3:
            assert time.monotonic() < deadline, f"the idle pool stayed short of connections: {stats}"
            time.sleep(0.1)


def test_a_stream_survives_a_database_restart_and_misses_nothing(module_postgres: OwnPostgres) -> None:
    alice = new_user()
    settings = settings_for(module_postgres.url, db_connect_timeout_seconds=2, db_pool_timeout_seconds=2)

    async def scenario(base_url: str) -> None:
        async with async_client(base_url) as client, opened(client, alice) as stream:
            await stream.opening_id()
            before = await client.post(alice.tasks_url, json={"title": "before"}, headers=alice.headers)
            assert (await stream.next()).data == before.json()

            await asyncio.to_thread(module_postgres.stop)
            await asyncio.sleep(1)
            await asyncio.to_thread(module_postgres.start)
            deadline = time.monotonic() + 30
            while (await client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "the API did not notice Postgres came back"
                await asyncio.sleep(0.2)

            # At once, before the listener may have reconnected: caught up all the same.
            written = []
            for i in range(3):
                response = await client.post(
                    alice.tasks_url, json={"title": f"after {i}"}, headers=alice.headers
                )
                assert response.status_code == 201
                written.append(response.json())
            assert [event.data for event in await stream.take(3)] == written

    with serving(create_app(settings)) as base_url:
        asyncio.run(scenario(base_url))


def test_a_stream_left_while_its_read_waits_for_the_database_logs_no_error(
    module_postgres: OwnPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """A read the client no longer waits for still finishes (shielded, so that the pool keeps its
    connection), and its failure is no error of anyone's: it was a `Task exception was never
    retrieved` traceback, an ERROR line per stream that alerting would page on."""
    alice = new_user()
    pool_timeout = 1
    settings = settings_for(
        module_postgres.url, db_connect_timeout_seconds=2, db_pool_timeout_seconds=pool_timeout
    )

    async def scenario(base_url: str) -> None:
        async with async_client(base_url) as client:
            async with opened(client, alice) as stream:
                await stream.opening_id()
                await asyncio.to_thread(module_postgres.stop)
                await asyncio.sleep(0.5)  # the listener has woken the stream, whose read now waits
            # Past the pool timeout: the read has failed, with nobody to tell.
            await asyncio.sleep(pool_timeout + 1.5)
        await asyncio.to_thread(module_postgres.start)

    with serving(create_app(settings)) as base_url:
        asyncio.run(scenario(base_url))
    gc.collect()  # an unretrieved exception is reported when its task is freed
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == [], [record.getMessage() for record in errors]


def test_the_listener_warns_once_of_a_lost_connection_and_says_when_it_listens_again(
    module_postgres: OwnPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """It warned on every try to reconnect, up to one every 5 s per worker for as long as the
    database was away, and said nothing once it listened again: after an outage shorter than the
    isolation check's interval, nothing said when live changes resumed."""
    tries = 0
    woken: list[str] = []

    def lost() -> None:
        nonlocal tries
        tries += 1

    async def outage() -> None:
        listener = Listener(module_postgres.url, on_wake=woken.append, on_lost=lost)
        running = asyncio.create_task(listener.run())
        await asyncio.wait_for(listener.listening.wait(), 30)
        listened = tries  # it catches up once it listens

        await asyncio.to_thread(module_postgres.stop)
        deadline = time.monotonic() + 30
        while tries < listened + 4:  # the loss, and three tries that failed
            assert time.monotonic() < deadline, "the listener tries to reconnect"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(module_postgres.start)
        await asyncio.wait_for(listener.listening.wait(), 30)

        # A wake-up sent now is heard.
        with psycopg.connect(module_postgres.url, autocommit=True) as db:
            db.execute("select pg_notify(%s, 'back')", [CHANNEL])
        deadline = time.monotonic() + 30
        while not woken:
            assert time.monotonic() < deadline, "the listener hears a wake-up once it listens again"
            await asyncio.sleep(0.05)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    with caplog.at_level(logging.DEBUG, logger="api.db.listener"):
        asyncio.run(outage())
    said = [
        (record.levelno, record.getMessage()) for record in caplog.records if record.name == "api.db.listener"
    ]
    warnings = [message for level, message in said if level >= logging.WARNING]
    assert len(warnings) == 1, said
    assert warnings[0].startswith("the events listener lost its connection ("), said
    failed_tries = [message for level, message in said if level == logging.DEBUG]
    assert len(failed_tries) >= 3, said
    assert all(message.startswith("the events listener could not reconnect (") for message in failed_tries)
    back = [message for level, message in said if level == logging.INFO]
    assert len(back) == 1, said
    assert re.fullmatch(
        r"the events listener is listening again, \d+\.\d s after it lost its connection", back[0]
    )
    assert woken == ["back"]


@pytest.mark.parametrize("through_pgbouncer", [False, True], ids=["direct", "through-pgbouncer"])
def test_the_pool_warns_once_that_it_cannot_connect_and_says_when_it_connects_again(
    module_postgres: OwnPostgres, caplog: pytest.LogCaptureFixture, through_pgbouncer: bool
) -> None:
    """Found with `serve --workers 2` under load: psycopg's pool warned at every try to reconnect each
    of its connections, and again as each run of tries gave up, 170 lines in a 15 s outage. Behind
    PgBouncer, whose login succeeds while the database is away, the pool said it "connects to the
    database again" at every try, each followed by the warning again: 280 lines in a 30 s outage."""
    user = new_user()
    with contextlib.ExitStack() as stack:
        url = module_postgres.url
        if through_pgbouncer:
            url = stack.enter_context(_pgbouncer_in_front_of(module_postgres))
        _warns_once_while_away(module_postgres, url, user, caplog)

    said = [(record.name, record.getMessage()) for record in caplog.records]
    tries = [message for name, message in said if name == "psycopg.pool" and "connecting" in message]
    assert len(tries) == 1, said
    assert tries[0].startswith("error connecting in "), said
    assert "it tries again about once a second" in tries[0]
    assert not [message for _, message in said if message.startswith("reconnection attempt")], said
    back = [message for name, message in said if name == "api.db.pool"]
    assert len(back) == 1, said
    assert re.fullmatch(
        r"the pool connects to the database again, \d+\.\d s after a try first failed \(\d+ tries failed\)",
        back[0],
    ), back


@contextlib.contextmanager
def _pgbouncer_in_front_of(cluster: OwnPostgres) -> Iterator[str]:
    """PgBouncer in transaction mode in front of `cluster` (as Neon's pooled URL is): its URL."""
    require_pgbouncer()
    info = cluster.server.get_postmaster_info()
    with pgbouncer(
        socket_dir=str(info.socket_dir), port=info.port, user=LOGIN_ROLE, dbname="todo", server_pool_size=3
    ) as url:
        yield url


def _warns_once_while_away(
    cluster: OwnPostgres, url: str, user: ApiUser, caplog: pytest.LogCaptureFixture
) -> None:
    """Serves through `url` while `cluster` stops for a few runs of the pool's tries, then starts."""
    settings = settings_for(
        url,
        db_pool_size=3,
        db_pool_timeout_seconds=1,
        db_connect_timeout_seconds=2,
        # No check falls in the outage: requests go on asking the pool for a connection.
        isolation_check_interval_seconds=3600,
    )
    with (
        caplog.at_level(logging.WARNING, logger="psycopg.pool"),
        caplog.at_level(logging.INFO, logger="api.db.pool"),
        serving_client(create_app(settings)) as client,
    ):
        assert client.get(user.tasks_url, headers=user.headers).status_code == 200
        cluster.stop()
        away = time.monotonic()
        # A run of tries of every connection, given up after RECONNECT_TRIES_FOR_SECONDS (2 s), and
        # the next run begun.
        while time.monotonic() - away < 4:
            assert client.get(user.tasks_url, headers=user.headers).status_code == 503
        cluster.start()
        deadline = time.monotonic() + 30
        while client.get(user.tasks_url, headers=user.headers).status_code != 200:
            assert time.monotonic() < deadline, "the API did not notice Postgres came back"
            time.sleep(0.2)


def test_a_worker_that_dies_while_the_database_is_away_is_replaced_and_serve_serves_on_once_it_is_back(
    module_postgres: OwnPostgres, tmp_path: Path
) -> None:
    """Found by killing a worker (as the OOM killer does) of `serve --workers 2` during a Postgres
    stop: its replacement failed its start-up check with a traceback, again on each respawn, and
    granian gave up on the crash loop and stopped the whole server, the other worker with it, so
    nothing served once the database was back. A worker that starts during an outage now serves
    503s until its isolation check completes, as a running one does."""
    user = new_user()
    env = cli_env(DATABASE_URL=module_postgres.url, BETTER_AUTH_SECRET=SECRET, DB_POOL_TIMEOUT_SECONDS="1")
    with (
        serve_process(
            [*CLI, "serve", "--workers", "2"], cwd=tmp_path, env=env, output=tmp_path / "serve.log"
        ) as (
            base_url,
            server,
        ),
        httpx.Client(base_url=base_url, timeout=30) as client,
    ):
        workers = psutil.Process(server.pid).children()
        assert len(workers) == 2
        module_postgres.stop()
        workers[0].kill()
        # Until the replacement has started into the outage (its start-up's last step says it cannot
        # reach the database), or granian has given up on the server: a worker that dies within 5.5 s
        # of its respawn is a crash loop to granian (2.8), which then stops the whole server.
        serve_log = tmp_path / "serve.log"
        deadline = time.monotonic() + 60
        while "cannot reach DATABASE_URL yet" not in serve_log.read_text() and server.poll() is None:
            assert time.monotonic() < deadline, (
                f"the replacement neither started nor failed:\n{serve_log.read_text()}"
            )
            time.sleep(0.1)
        assert server.poll() is None, serve_log.read_text()
        away = client.post(user.tasks_url, json={"title": "while away"}, headers=user.headers)
        assert away.status_code == 503, away.text
        module_postgres.start()

        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "/readyz never came back"
            time.sleep(0.2)
        created = [
            client.post(user.tasks_url, json={"title": f"back {i}"}, headers=user.headers) for i in range(8)
        ]
        assert [response.status_code for response in created] == [201] * 8
        assert len(psutil.Process(server.pid).children()) == 2
    log = serve_log.read_text()
    # The replacement polls because it could not tell what DATABASE_URL reaches, and says so; it was
    # also told it had no direct database URL, which sent an operator after the settings.
    assert "cannot reach DATABASE_URL yet" in log, log
    assert "no direct database URL" not in log, log
    with psycopg.connect(module_postgres.superuser_url) as db:
        titles = [row[0] for row in db.execute("select title from tasks where user_id = %s", [user.id])]
    assert sorted(titles) == sorted(f"back {i}" for i in range(8))
