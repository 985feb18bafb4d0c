"""A database that refuses every write, a hot standby (`pg_basebackup -R`) or one whose sessions are
read-only by default (default_transaction_read_only): `serve` and `migrate` refuse it at start-up in
one line; met while serving (a failover that lands on a standby, the setting changed meanwhile),
a write is a 503 database-unavailable that wrote nothing, never a 500, and /readyz is 503 too; the
events listener says so in one line, never a traceback per retry.

The standby is a real one, of a cluster of the module's own: it takes a few seconds to make.
"""

import asyncio
import logging
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from api.app import create_app
from api.db.listener import Listener
from tests.own_postgres import OwnPostgres, OwnStandby
from tests.support import SECRET, as_role, assert_problem, new_user, run_cli, serving_client, settings_for
from tests.test_cli_failures import assert_one_clear_failure


@pytest.fixture(scope="module")
def primary() -> Iterator[OwnPostgres]:
    with OwnPostgres() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def standby(primary: OwnPostgres) -> Iterator[OwnStandby]:
    replica = OwnStandby(primary)
    try:
        yield replica
    finally:
        replica.remove()


def _read_only_sessions(database_url: str) -> None:
    """Every session that starts from now on in the database of `database_url` is read-only."""
    with psycopg.connect(database_url, autocommit=True) as owner:
        owner.execute(
            sql.SQL("alter database {} set default_transaction_read_only = on").format(
                sql.Identifier(owner.info.dbname)
            )
        )


def _tasks_of(database_url: str, user_id: str) -> int:
    with psycopg.connect(database_url) as db:
        row = db.execute("select count(*) from tasks where user_id = %s", [user_id]).fetchone()
    assert row is not None
    return int(row[0])


def _one_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert_one_clear_failure(result.stderr, result.returncode, *expected)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_serve_refuses_a_standby(tmp_path: Path, standby: OwnStandby) -> None:
    """It served: /readyz said 200 and every write was a 500."""
    result = run_cli(
        "serve", "--port", "0", cwd=tmp_path, DATABASE_URL=standby.url, BETTER_AUTH_SECRET=SECRET
    )
    _one_line(result, "Refusing to serve: DATABASE_URL reaches a standby in recovery", "the primary")


def test_migrate_refuses_a_standby_and_blames_no_other_migration(tmp_path: Path, standby: OwnStandby) -> None:
    """yoyo's lock was refused and retried until its wait was over: "another migration holds this
    database's migration lock ... remove the stale lock with yoyo break-lock"."""
    result = run_cli("migrate", cwd=tmp_path, DATABASE_URL=standby.url)
    _one_line(result, "DATABASE_URL reaches a standby in recovery", "point DATABASE_URL at the primary")
    assert "another migration" not in result.stderr
    assert "break-lock" not in result.stderr


def test_serve_refuses_a_direct_url_that_reaches_a_standby(
    tmp_path: Path, primary: OwnPostgres, standby: OwnStandby
) -> None:
    """Its LISTEN was refused: an ERROR traceback per retry, and streams woke only when they polled."""
    result = run_cli(
        "serve", "--port", "0", cwd=tmp_path,
        DATABASE_URL=primary.url, DATABASE_DIRECT_URL=standby.url, BETTER_AUTH_SECRET=SECRET,
    )  # fmt: skip
    _one_line(result, "Refusing to serve: DATABASE_DIRECT_URL reaches a standby in recovery")


def test_serve_refuses_a_direct_url_that_reaches_another_server(
    tmp_path: Path, primary: OwnPostgres, migrated_db_url: str
) -> None:
    """The same database name on another server: a LISTEN there never hears a write of DATABASE_URL's."""
    with psycopg.connect(migrated_db_url) as db:
        name = db.info.dbname
    with psycopg.connect(primary.superuser_url, autocommit=True) as superuser:
        superuser.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        direct = primary.url.replace("/todo?", f"/{name}?")
        result = run_cli(
            "serve", "--port", "0", cwd=tmp_path,
            DATABASE_URL=migrated_db_url, DATABASE_DIRECT_URL=direct, BETTER_AUTH_SECRET=SECRET,
        )  # fmt: skip
        _one_line(result, "Refusing to serve: DATABASE_DIRECT_URL reaches another Postgres server")
        # When each started, as a person reads a time (it was seconds since 1970, 1796610952.114516).
        started = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\+00:00"
        assert re.search(f"one started at {started}, DATABASE_URL's at {started}\\)", result.stderr), (
            result.stderr
        )
    finally:
        with psycopg.connect(primary.superuser_url, autocommit=True) as superuser:
            superuser.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))


def test_a_standby_met_while_serving_is_503_and_writes_nothing(
    primary: OwnPostgres, standby: OwnStandby
) -> None:
    """As after a failover that left DATABASE_URL naming a standby: a write was a 500 with the
    traceback of `ReadOnlySqlTransaction`, and /readyz said 200."""
    user = new_user()
    with serving_client(create_app(settings_for(standby.url))) as http:
        created = http.post(f"/api/{user.id}/tasks", json={"title": "on a standby"}, headers=user.headers)
        _says_writes_are_refused(created)
        assert created.headers["Retry-After"]
        listed = http.get(f"/api/{user.id}/tasks", headers=user.headers)
        assert listed.status_code == 200, "reads are still served"
        _says_writes_are_refused(http.get("/readyz"))
    assert _tasks_of(primary.url, user.id) == 0


def test_read_only_sessions_refuse_serve_and_migrate(tmp_path: Path, migrated_db_url: str) -> None:
    _read_only_sessions(migrated_db_url)
    served = run_cli(
        "serve", "--port", "0", cwd=tmp_path, DATABASE_URL=migrated_db_url, BETTER_AUTH_SECRET=SECRET
    )
    _one_line(served, "DATABASE_URL's sessions are read-only (default_transaction_read_only is on)")
    migrated = run_cli("migrate", cwd=tmp_path, DATABASE_URL=migrated_db_url)
    _one_line(migrated, "DATABASE_URL's sessions are read-only (default_transaction_read_only is on)")
    assert "another migration" not in migrated.stderr


def _says_writes_are_refused(refused: httpx.Response) -> None:
    """Its detail said "The database cannot be reached right now" while reads were served."""
    body = assert_problem(refused, 503, "database-unavailable")
    assert "read-only" in body["detail"], body
    assert "cannot be reached" not in body["detail"], body
    assert "nothing was changed" in body["detail"], body


def test_read_only_sessions_met_while_serving_are_503_until_the_setting_is_reset(
    migrated_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each refused session is closed rather than handed out again: once the setting is reset, writes
    get sessions that started after it, and succeed. Kept, a session stayed read-only for as long as
    it lasted (half an hour). The refusal was logged as "database unavailable: DatabaseUnavailable",
    without the database's reason."""
    user = new_user()
    settings = settings_for(as_role(migrated_db_url), db_pool_size=1)
    _read_only_sessions(migrated_db_url)
    with serving_client(create_app(settings)) as http:
        with caplog.at_level(logging.WARNING, logger="api.http.problems"):
            refused = http.post(f"/api/{user.id}/tasks", json={"title": "refused"}, headers=user.headers)
        _says_writes_are_refused(refused)
        assert [record.getMessage() for record in caplog.records if record.name == "api.http.problems"] == [
            "the database refused a write for being read-only:"
            " cannot execute INSERT in a read-only transaction"
        ]
        _says_writes_are_refused(http.get("/readyz"))  # it answers: not "cannot be reached"
        assert _tasks_of(migrated_db_url, user.id) == 0
        writable = "-c default_transaction_read_only=off"
        with psycopg.connect(migrated_db_url, autocommit=True, options=writable) as owner:
            owner.execute(
                sql.SQL("alter database {} reset default_transaction_read_only").format(
                    sql.Identifier(owner.info.dbname)
                )
            )
        # The pool may have replaced the refused session before the reset, read-only again: that one
        # is refused once more and replaced in turn, by a session that starts after the reset.
        statuses = []
        for _ in range(2):
            created = http.post(f"/api/{user.id}/tasks", json={"title": "kept"}, headers=user.headers)
            statuses.append(created.status_code)
            if created.status_code != 503:
                break
        assert statuses[-1] == 201, statuses
    assert _tasks_of(migrated_db_url, user.id) == 1


def test_after_a_reset_of_read_only_sessions_the_first_refused_write_replaces_every_pooled_session(
    migrated_db_url: str,
) -> None:
    """A write refused as read-only replaces every session the pool holds, which started read-only
    too: replaced one at a time, as each was refused, the writes after a DBA's reset failed once for
    each pooled session (ten by default) while /readyz, over a session of its own, said 200. Past the
    once-a-second bound on replacing them, one refused write is the most."""
    user = new_user()
    settings = settings_for(as_role(migrated_db_url), db_pool_size=4)
    _read_only_sessions(migrated_db_url)
    with serving_client(create_app(settings)) as http:
        _says_writes_are_refused(
            http.post(f"/api/{user.id}/tasks", json={"title": "refused"}, headers=user.headers)
        )
        # The pool's sessions now, each started read-only.
        readers = [http.get(f"/api/{user.id}/tasks", headers=user.headers) for _ in range(8)]
        assert {reader.status_code for reader in readers} == {200}
        writable = "-c default_transaction_read_only=off"
        with psycopg.connect(migrated_db_url, autocommit=True, options=writable) as owner:
            owner.execute(
                sql.SQL("alter database {} reset default_transaction_read_only").format(
                    sql.Identifier(owner.info.dbname)
                )
            )
        time.sleep(1.1)  # past the once-a-second bound on replacing them
        statuses = [
            http.post(f"/api/{user.id}/tasks", json={"title": f"after {n}"}, headers=user.headers).status_code
            for n in range(4)
        ]
    assert statuses in ([201] * 4, [503] + [201] * 3), statuses
    assert _tasks_of(migrated_db_url, user.id) == statuses.count(201)


def test_readiness_logs_why_the_database_is_not_ready(
    migrated_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found with read-only sessions, a full max_connections and PgBouncer's server_login_retry under
    `todo-api serve`: /readyz was 503 and its log line said only "the database did not answer:
    OperationalError" (or DatabaseUnavailable, or ProtocolViolation), though the database had
    answered, and why, which the operator who sees the instance leave the load balancer needs."""
    _read_only_sessions(migrated_db_url)
    with (
        caplog.at_level(logging.WARNING, logger="api.http.readiness"),
        serving_client(create_app(settings_for(as_role(migrated_db_url)))) as http,
    ):
        assert_problem(http.get("/readyz"), 503, "database-unavailable")
    (line,) = [record.getMessage() for record in caplog.records if record.name == "api.http.readiness"]
    assert line == (
        "readiness: the database is not ready: WritesRefused: the database refuses writes"
        " (a standby, or read-only sessions)"
    )


def test_the_listener_says_in_one_line_that_a_standby_refuses_listen(
    standby: OwnStandby, caplog: pytest.LogCaptureFixture
) -> None:
    """It logged an ERROR with a traceback on every retry."""
    tries = 0

    async def listen() -> None:
        retried = asyncio.Event()

        def lost() -> None:
            nonlocal tries
            tries += 1
            if tries == 3:
                retried.set()

        listener = Listener(standby.url, on_wake=lambda _: None, on_lost=lost)
        running = asyncio.create_task(listener.run())
        await retried.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    with caplog.at_level(logging.INFO, logger="api.db.listener"):
        asyncio.run(asyncio.wait_for(listen(), timeout=60))
    said = [record for record in caplog.records if record.name == "api.db.listener"]
    assert len(said) >= 3
    assert all(record.exc_info is None and record.levelno == logging.WARNING for record in said), said
    assert all("cannot LISTEN on a standby" in record.getMessage() for record in said)
