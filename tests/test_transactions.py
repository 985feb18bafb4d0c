"""The one transaction helper: identity is per transaction and never outlives it on a pooled connection."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.sql import SQL, Identifier

from api.app import create_app
from api.db.database import Database
from api.db.errors import CheckRefused, StatementCancelled
from tests.support import (
    LOGIN_ROLE,
    TRANSACTION_WAYS,
    assert_problem,
    new_user,
    serving_client,
    settings_for,
    sql,
    wait_until,
)

_IDENTITY = (
    "select current_user as who, current_setting('role') as role,"
    " coalesce(current_setting('app.user_id', true), '') as uid"
)
NOBODY = {"who": LOGIN_ROLE, "role": "none", "uid": ""}


async def identity_between_requests(database: Database) -> dict[str, Any]:
    async with database.pool.connection() as connection:
        row = await (await connection.execute(_IDENTITY)).fetchone()
        return dict(row or {})


@pytest.fixture(params=TRANSACTION_WAYS)
def way(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Every way the helper sends a transaction (see api/db/database.py) must keep the same promises."""
    settings: dict[str, Any] = request.param
    return settings


def with_database(url: str, scenario: Callable[[Database], Awaitable[None]], **settings: Any) -> None:
    async def run() -> None:
        database = Database.from_settings(settings_for(url, **settings))
        await database.open()
        try:
            await scenario(database)
        finally:
            await database.close()

    asyncio.run(run())


def test_login_role_bypasses_rls_so_the_role_switch_is_what_protects(
    migrated_db: psycopg.Connection[Any],
) -> None:
    row = migrated_db.execute("select rolbypassrls from pg_roles where rolname = current_user").fetchone()
    assert row == (True,), "the suite runs as a Neon-like BYPASSRLS login role"


def test_a_reused_connection_never_carries_identity_into_the_next_transaction(
    migrated_db_url: str, way: dict[str, Any]
) -> None:
    async def scenario(database: Database) -> None:
        assert await database.run("alice", sql(_IDENTITY)) == [
            {"who": "todo_app", "role": "todo_app", "uid": "alice"}
        ]
        assert await identity_between_requests(database) == NOBODY

        await database.run("alice", sql("insert into public.users (id) values ('alice')", read_only=False))
        await database.run(
            "alice",
            sql("insert into public.tasks (user_id, title) values ('alice', 'mine')", read_only=False),
        )
        assert await identity_between_requests(database) == NOBODY

        with pytest.raises(psycopg.errors.DivisionByZero):
            await database.run("alice", sql("select 1 / 0", read_only=False))
        assert await identity_between_requests(database) == NOBODY

        count = "select count(*) as n from public.tasks"
        assert await database.run("bob", sql(count)) == [{"n": 0}]
        assert await database.run("bob", sql("select count(*) as n from public.users")) == [{"n": 0}]
        assert await database.run("alice", sql(count)) == [{"n": 1}]

    with_database(migrated_db_url, scenario, db_pool_size=1, **way)


def test_a_failed_statement_changes_nothing(migrated_db_url: str, way: dict[str, Any]) -> None:
    async def scenario(database: Database) -> None:
        await database.run("alice", sql("insert into public.users (id) values ('alice')", read_only=False))
        with pytest.raises(CheckRefused, match="tasks_title_check"):
            # Two statements in one: the first would succeed, the second fails; neither may stay.
            await database.run(
                "alice",
                sql("with t as (insert into public.tasks (user_id, title) values ('alice', 'kept?')) "
                    "insert into public.tasks (user_id, title) values ('alice', '')", read_only=False),
            )  # fmt: skip
        assert await database.run("alice", sql("select count(*) as n from public.tasks")) == [{"n": 0}]

    with_database(migrated_db_url, scenario, db_pool_size=1, **way)


def test_read_transactions_are_read_only(migrated_db_url: str, way: dict[str, Any]) -> None:
    async def scenario(database: Database) -> None:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await database.run("alice", sql("insert into public.users (id) values ('alice')", read_only=True))

    with_database(migrated_db_url, scenario, **way)


def test_a_runaway_statement_is_cancelled(migrated_db_url: str, way: dict[str, Any]) -> None:
    async def scenario(database: Database) -> None:
        assert await database.run(
            "alice", sql("select current_setting('statement_timeout') as statement_timeout")
        ) == [{"statement_timeout": "200ms"}]
        with pytest.raises(StatementCancelled, match="statement timeout"):
            await database.run("alice", sql("select pg_sleep(5)"))
        async with database.pool.connection() as connection:
            row = await (await connection.execute("show statement_timeout")).fetchone()
            assert row == {"statement_timeout": "0"}, "the limit ended with its transaction"

    with_database(migrated_db_url, scenario, db_statement_timeout_ms=200, **way)


def test_a_write_that_waits_on_a_row_lock_past_the_statement_timeout_is_503_and_changes_nothing(
    migrated_db_url: str, way: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Its 503 said "The database cannot be reached right now" and its log "database unavailable:
    QueryCanceled", while /readyz said ready: the database answered, it only cancelled the statement."""
    alice = new_user()
    settings = settings_for(migrated_db_url, db_statement_timeout_ms=200, **way)
    with serving_client(create_app(settings)) as client:
        created = client.post(alice.tasks_url, json={"title": "locked"}, headers=alice.headers)
        assert created.status_code == 201
        task_id = created.json()["id"]
        with (
            psycopg.connect(migrated_db_url) as holder,
            caplog.at_level(logging.WARNING, logger="api.http.problems"),
        ):
            holder.execute("select 1 from tasks where id = %s for update", [task_id])
            completed = client.patch(f"{alice.task_url(task_id)}/complete", headers=alice.headers)
            holder.rollback()
        assert client.get("/readyz").status_code == 200
    body = assert_problem(completed, 503, "statement-timeout")
    assert "DB_STATEMENT_TIMEOUT_MS" in body["detail"], body
    assert "cannot be reached" not in body["detail"], body
    assert "nothing was changed" in body["detail"], body
    assert completed.headers["Retry-After"].isdigit()
    messages = [record.getMessage() for record in caplog.records]
    assert "statement cancelled: canceling statement due to statement timeout" in messages, messages
    with psycopg.connect(migrated_db_url) as connection:
        stored = connection.execute("select completed, version from tasks where id = %s", [task_id])
        assert stored.fetchall() == [(False, created.json()["version"])], "the write changed nothing"


def test_a_write_past_the_login_roles_lock_timeout_is_503_naming_it_and_changes_nothing(
    migrated_db_url: str, superuser_url: str, way: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A DBA's `ALTER ROLE ... SET lock_timeout` cancels a write behind another's row lock long before
    DB_STATEMENT_TIMEOUT_MS: its 503 said "The database cannot be reached right now" and its log
    "database unavailable: LockNotAvailable", while the database answered at once."""
    alice = new_user()
    dbname = conninfo_to_dict(migrated_db_url)["dbname"]
    with psycopg.connect(superuser_url, autocommit=True) as dba:
        dba.execute(
            SQL("alter role {} in database {} set lock_timeout = '10ms'").format(
                Identifier(LOGIN_ROLE), Identifier(str(dbname))
            )
        )
    with serving_client(create_app(settings_for(migrated_db_url, **way))) as client:
        created = client.post(alice.tasks_url, json={"title": "locked"}, headers=alice.headers)
        assert created.status_code == 201
        task_id = created.json()["id"]
        with (
            psycopg.connect(migrated_db_url) as holder,
            caplog.at_level(logging.WARNING, logger="api.http.problems"),
        ):
            holder.execute("select 1 from tasks where id = %s for update", [task_id])
            renamed = client.put(alice.task_url(task_id), json={"title": "renamed"}, headers=alice.headers)
            holder.rollback()
        assert client.get("/readyz").status_code == 200
    body = assert_problem(renamed, 503, "database-unavailable")
    assert "lock_timeout" in body["detail"], body
    assert "cannot be reached" not in body["detail"], body
    assert "nothing was changed" in body["detail"], body
    assert renamed.headers["Retry-After"].isdigit()
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("lock wait given up: ") for message in messages), messages
    with psycopg.connect(migrated_db_url) as connection:
        stored = connection.execute("select title, version from tasks where id = %s", [task_id])
        assert stored.fetchall() == [("locked", created.json()["version"])], "the write changed nothing"


def test_one_pooled_connection_shared_by_users_over_http(migrated_db_url: str, way: dict[str, Any]) -> None:
    alice, bob = new_user(), new_user()
    with serving_client(create_app(settings_for(migrated_db_url, db_pool_size=1, **way))) as client:
        # Past the fifth execution, Postgres may run a prepared statement on a generic plan.
        for _ in range(8):
            assert (
                client.post(alice.tasks_url, json={"title": "alice's"}, headers=alice.headers).status_code
                == 201
            )
            assert {t["user_id"] for t in client.get(bob.tasks_url, headers=bob.headers).json()} <= {bob.id}
            assert client.post(bob.tasks_url, json={"title": "bob's"}, headers=bob.headers).status_code == 201
        assert {t["title"] for t in client.get(alice.tasks_url, headers=alice.headers).json()} == {"alice's"}
        assert {t["title"] for t in client.get(bob.tasks_url, headers=bob.headers).json()} == {"bob's"}


def test_a_write_whose_statement_is_first_prepared_behind_a_table_lock_is_cancelled_too(
    migrated_db_url: str, way: dict[str, Any]
) -> None:
    """A statement is prepared on each connection the first time it is sent there, before its
    transaction: that PREPARE waited for a DBA's table lock with no statement timeout of its own, until
    the API gave the answer up and said 503 outcome-unknown, a write that may or may not have been
    made, though nothing had been sent but the PREPARE."""
    alice = new_user()
    settings = settings_for(migrated_db_url, db_statement_timeout_ms=200, db_connect_timeout_seconds=2, **way)
    with serving_client(create_app(settings)) as client:
        created = client.post(alice.tasks_url, json={"title": "behind a lock"}, headers=alice.headers)
        assert created.status_code == 201
        task_id = created.json()["id"]
        with psycopg.connect(migrated_db_url) as holder:
            holder.execute("lock table tasks in access exclusive mode")
            completed = client.patch(f"{alice.task_url(task_id)}/complete", headers=alice.headers)
            holder.rollback()
        body = assert_problem(completed, 503, "statement-timeout")
        assert "DB_STATEMENT_TIMEOUT_MS" in body["detail"], body
        assert client.get(alice.task_url(task_id), headers=alice.headers).json()["completed"] is False


# A full disk as Postgres reports it when a table cannot grow (SQLSTATE 53100), raised by a trigger:
# a tablespace on a tiny file system takes root. Installed once the app serves, before any isolation
# check after start-up could report the trigger.
_DISK_FULL = """create function public.disk_full() returns trigger language plpgsql as $$ begin
    raise exception using errcode = 'disk_full',
        message = 'could not extend file "base/16384/16385": No space left on device';
end $$"""
# Out of memory as a read meets it (SQLSTATE 53200), raised by a policy's function.
_OUT_OF_MEMORY = """create function public.out_of_memory() returns boolean language plpgsql as $$ begin
    raise exception using errcode = 'out_of_memory', message = 'out of memory';
end $$"""


def test_a_database_out_of_disk_or_memory_is_503_saying_so_not_unreachable_and_changes_nothing(
    migrated_db_url: str, way: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A write refused for a full disk was a 503 saying "The database cannot be reached right now",
    logged as "database unavailable: DiskFull", while /readyz said ready and reads were served: the
    operator looked at the network, not at the disk."""
    alice = new_user()
    with serving_client(create_app(settings_for(migrated_db_url, **way))) as client:
        kept = client.post(alice.tasks_url, json={"title": "kept"}, headers=alice.headers)
        assert kept.status_code == 201
        with psycopg.connect(migrated_db_url, autocommit=True) as owner:
            owner.execute(_DISK_FULL)
            owner.execute(
                "create trigger disk_full before insert on public.tasks"
                " for each row execute function public.disk_full()"
            )
        with caplog.at_level(logging.WARNING, logger="api.http.problems"):
            created = client.post(alice.tasks_url, json={"title": "no room"}, headers=alice.headers)
            assert client.get(alice.tasks_url, headers=alice.headers).status_code == 200
            assert client.get("/readyz").status_code == 200
            with psycopg.connect(migrated_db_url, autocommit=True) as owner:
                owner.execute(_OUT_OF_MEMORY)
                owner.execute(
                    "create policy out_of_memory on public.tasks as restrictive for select to todo_app"
                    " using (public.out_of_memory())"
                )
            listed = client.get(alice.tasks_url, headers=alice.headers)
    for refused in (created, listed):
        body = assert_problem(refused, 503, "database-unavailable")
        assert "out of a resource" in body["detail"], body
        assert "cannot be reached" not in body["detail"], body
        assert "nothing was changed" in body["detail"], body
        assert refused.headers["Retry-After"].isdigit()
    said = [record for record in caplog.records if record.name == "api.http.problems"]
    assert [(record.levelno, record.getMessage()) for record in said] == [
        (
            logging.ERROR,
            "the database is out of a resource it needs: DiskFull: could not extend file"
            ' "base/16384/16385": No space left on device',
        ),
        (logging.ERROR, "the database is out of a resource it needs: OutOfMemory: out of memory"),
    ]
    with psycopg.connect(migrated_db_url) as connection:
        stored = connection.execute("select title from tasks where user_id = %s", [alice.id])
        assert stored.fetchall() == [("kept",)], "the write changed nothing"


# Temporary files the server's sessions hold (pg_ls_tmpdir: a superuser's, or pg_monitor's).
_TEMPORARY_FILES = "select count(*) from pg_catalog.pg_ls_tmpdir()"


def test_a_list_refused_for_temporary_file_space_is_503_out_of_a_resource_and_leaves_no_file_held(
    migrated_db_url: str, superuser_url: str, way: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """With temp_file_limit = 0, a list that sorts on disk is refused by Postgres (SQLSTATE 53400).
    Once the list's statement, prepared on the connection, ran by its generic plan (from its sixth
    run), Postgres refused the ROLLBACK after it with the same 53400: the answer was "The database
    cannot be reached right now", logged at WARNING, and the list was run again on another connection
    (the disk probe of stop 83). A second ROLLBACK ended the transaction but left the session holding
    the temporary file, which counted against every later statement on that connection (the
    verification probe): such a connection is closed."""
    alice = new_user()
    with psycopg.connect(migrated_db_url, autocommit=True) as owner:
        database = owner.info.dbname
        owner.execute("insert into public.users (id) values (%s)", [alice.id])
        owner.execute(
            "insert into public.tasks (user_id, title, description)"
            " select %s, 'task ' || to_char(i, 'FM000'), repeat('d', 1000) from generate_series(1, 500) i",
            [alice.id],
        )
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        # 500 tasks of 1,000 characters outgrow 256kB, and sort on disk; the isolation check's own
        # queries do not (at 64kB they did, and it refused every request).
        superuser.execute(SQL("alter database {} set work_mem = '256kB'").format(Identifier(database)))
        superuser.execute(SQL("alter database {} set temp_file_limit = 0").format(Identifier(database)))
    settings = settings_for(migrated_db_url, db_pool_size=2, **way)
    with (
        serving_client(create_app(settings)) as client,
        psycopg.connect(superuser_url, autocommit=True) as observer,
    ):
        with caplog.at_level(logging.WARNING):
            # Twelve runs, which the pool's two connections take in turn: each runs the list past the
            # five after which Postgres plans a prepared statement generically.
            listed = [
                client.get(alice.tasks_url, params={"sort": "title", "limit": 500}, headers=alice.headers)
                for _ in range(12)
            ]
        wait_until(
            lambda: observer.execute(_TEMPORARY_FILES).fetchone() == (0,),
            "no session holds a temporary file",
            30,
        )
        first = client.get(alice.tasks_url, params={"sort": "title", "limit": 1}, headers=alice.headers)
    for refused in listed:
        body = assert_problem(refused, 503, "database-unavailable")
        assert "out of a resource" in body["detail"], body
        assert "cannot be reached" not in body["detail"], body
        assert "nothing was changed" in body["detail"], body
    said = [record for record in caplog.records if record.name == "api.http.problems"]
    assert [(record.levelno, record.getMessage()) for record in said] == 12 * [
        (
            logging.ERROR,
            "the database is out of a resource it needs: ConfigurationLimitExceeded: temporary file size"
            ' exceeds "temp_file_limit" (0kB)',
        )
    ]
    assert first.status_code == 200, first.text
    assert [task["title"] for task in first.json()] == ["task 001"]


def test_a_read_the_database_fails_with_an_error_of_its_own_is_503_logged_with_its_words(
    migrated_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing disk (SQLSTATE 58030, raised here by a policy's function) was logged as "database
    unavailable: IoError", the class alone, which reads the same for every cause; and then, with
    Postgres's words, at WARNING, in a 503 saying "The database cannot be reached right now", while
    the database had answered."""
    alice = new_user()
    with serving_client(create_app(settings_for(migrated_db_url))) as client:
        assert client.post(alice.tasks_url, json={"title": "kept"}, headers=alice.headers).status_code == 201
        with psycopg.connect(migrated_db_url, autocommit=True) as owner:
            owner.execute(
                "create function public.io_error() returns boolean language plpgsql as $$ begin"
                " raise exception using errcode = 'io_error',"
                " message = 'could not read blocks 0..0 in file \"base/5/16385\": Input/output error';"
                " end $$"
            )
            owner.execute(
                "create policy io_error on public.tasks as restrictive for select to todo_app"
                " using (public.io_error())"
            )
        with caplog.at_level(logging.WARNING, logger="api.http.problems"):
            listed = client.get(alice.tasks_url, headers=alice.headers)
    body = assert_problem(listed, 503, "database-unavailable")
    assert "an error of its own" in body["detail"], body
    assert "cannot be reached" not in body["detail"], body
    said = [record for record in caplog.records if record.name == "api.http.problems"]
    assert [(record.levelno, record.getMessage()) for record in said] == [
        (
            logging.ERROR,
            "the database failed with an error of its own: IoError: could not read blocks 0..0 in file"
            ' "base/5/16385": Input/output error',
        )
    ]


# A conflict Postgres ends by rolling a transaction back (a deadlock, a serialization failure), raised
# by a trigger for the first `times` tasks written: the sequence counts attempts, rolled back or not
# (as its owner: todo_app may not use the sequence).
def _conflicts(sqlstate: str, times: int) -> str:
    return f"""create or replace function public.conflict() returns trigger language plpgsql
    security definer as $$ begin
    if nextval('public.conflicts') <= {times} then
        raise exception using errcode = '{sqlstate}', message = 'a conflict, for the test';
    end if;
    return new;
end $$"""


@pytest.mark.parametrize(
    ("sqlstate", "named"),
    [("40001", "SerializationFailure"), ("40P01", "DeadlockDetected")],
    ids=["serialization-failure", "deadlock"],
)
def test_a_write_rolled_back_for_a_conflict_is_run_once_more_and_a_second_is_503_saying_so(
    migrated_db_url: str, way: dict[str, Any], sqlstate: str, named: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A serialization failure (40001) was answered 503 at once, though Postgres rolled it back whole
    and asks that it be run again, as a deadlock is; and either one met twice was a 503 saying "The
    database cannot be reached right now", while the database answered both times."""
    alice = new_user()
    with serving_client(create_app(settings_for(migrated_db_url, **way))) as client:
        with psycopg.connect(migrated_db_url, autocommit=True) as owner:
            owner.execute("create sequence public.conflicts")
            owner.execute(_conflicts(sqlstate, times=1))
            owner.execute(
                "create trigger conflict before insert on public.tasks"
                " for each row execute function public.conflict()"
            )
        once = client.post(alice.tasks_url, json={"title": "once"}, headers=alice.headers)
        with psycopg.connect(migrated_db_url, autocommit=True) as owner:
            owner.execute("alter sequence public.conflicts restart")
            owner.execute(_conflicts(sqlstate, times=2))
        with caplog.at_level(logging.WARNING, logger="api.http.problems"):
            twice = client.post(alice.tasks_url, json={"title": "twice"}, headers=alice.headers)
    assert once.status_code == 201, once.text
    body = assert_problem(twice, 503, "database-unavailable")
    assert "conflict" in body["detail"], body
    assert "cannot be reached" not in body["detail"], body
    assert "nothing was changed" in body["detail"], body
    assert twice.headers["Retry-After"].isdigit()
    messages = [record.getMessage() for record in caplog.records if record.name == "api.http.problems"]
    said = f"Postgres rolled it back: {named}: a conflict, for the test"
    assert messages == [f"transaction conflict, twice: {said}"]
    with psycopg.connect(migrated_db_url) as connection:
        stored = connection.execute("select title from tasks where user_id = %s", [alice.id])
        assert stored.fetchall() == [("once",)], "each write ran to the end once at most"


# Corruption as Postgres reports it (SQLSTATE XX001), raised by a trigger on writes, and an internal
# error (XX000) as a read meets one while a DBA drops what a policy calls, raised by a policy's function.
_DATA_CORRUPTED = """create function public.data_corrupted() returns trigger language plpgsql as $$ begin
    raise exception using errcode = 'data_corrupted',
        message = 'invalid page in block 0 of relation base/16384/16385';
end $$"""
_INTERNAL_ERROR = """create function public.internal_error() returns boolean language plpgsql as $$ begin
    raise exception using errcode = 'internal_error', message = 'cache lookup failed for function 16390';
end $$"""


def test_a_database_failing_with_an_internal_error_is_503_not_a_bug_of_ours_and_changes_nothing(
    migrated_db_url: str, way: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A corrupted page (XX001) or the database's own internal error (XX000) was a 500 saying "This is
    a bug on our side", logged as a traceback of the API's: the database failed, and answered."""
    alice = new_user()
    with serving_client(create_app(settings_for(migrated_db_url, **way))) as client:
        kept = client.post(alice.tasks_url, json={"title": "kept"}, headers=alice.headers)
        assert kept.status_code == 201
        with psycopg.connect(migrated_db_url, autocommit=True) as owner:
            owner.execute(_DATA_CORRUPTED)
            owner.execute(
                "create trigger data_corrupted before update on public.tasks"
                " for each row execute function public.data_corrupted()"
            )
        with caplog.at_level(logging.WARNING, logger="api.http.problems"):
            task_url = alice.task_url(kept.json()["id"])
            renamed = client.put(task_url, json={"title": "no"}, headers=alice.headers)
            with psycopg.connect(migrated_db_url, autocommit=True) as owner:
                owner.execute(_INTERNAL_ERROR)
                owner.execute(
                    "create policy internal_error on public.tasks as restrictive for select to todo_app"
                    " using (public.internal_error())"
                )
            listed = client.get(alice.tasks_url, headers=alice.headers)
    for failed in (renamed, listed):
        body = assert_problem(failed, 503, "database-unavailable")
        assert "an error of its own" in body["detail"], body
        assert "nothing was changed" in body["detail"], body
        assert failed.headers["Retry-After"].isdigit()
    said = [record for record in caplog.records if record.name == "api.http.problems"]
    assert [(record.levelno, record.getMessage()) for record in said] == [
        (
            logging.ERROR,
            "the database failed with an error of its own: DataCorrupted: invalid page in block 0 of"
            " relation base/16384/16385",
        ),
        (
            logging.ERROR,
            "the database failed with an error of its own: InternalError_: cache lookup failed for"
            " function 16390",
        ),
    ]
    with psycopg.connect(migrated_db_url) as connection:
        stored = connection.execute("select title from tasks where user_id = %s", [alice.id])
        assert stored.fetchall() == [("kept",)], "the write changed nothing"


def test_statements_prepared_before_a_migration_changed_a_column_they_return_are_prepared_again(
    migrated_db_url: str, way: dict[str, Any]
) -> None:
    """Postgres refuses to run a statement prepared before a column it returns changed its type
    ("cached plan must not change result type"). After such a migration (here description as
    varchar(1000), which the isolation check rightly finds nothing wrong with), the release still
    serving (docs/operations.md, "Upgrading a fleet, and rolling back") answered every request a
    500 on every connection that had prepared it, for as long as it ran. Nothing of such a
    transaction ran: the request is sent again with its statements prepared anew."""
    alice = new_user()
    with serving_client(create_app(settings_for(migrated_db_url, db_pool_size=2, **way))) as client:

        def every_statement(title: str) -> list[int]:
            created = client.post(alice.tasks_url, json={"title": title}, headers=alice.headers)
            task_url = alice.task_url(created.json()["id"])
            return [
                created.status_code,
                client.get(alice.tasks_url, headers=alice.headers).status_code,
                client.get(task_url, headers=alice.headers).status_code,
                client.put(task_url, json={"description": title}, headers=alice.headers).status_code,
                client.patch(f"{task_url}/complete", headers=alice.headers).status_code,
            ]

        for round_before in range(3):
            assert every_statement(f"before {round_before}") == [201, 200, 200, 200, 200]
        with psycopg.connect(migrated_db_url, autocommit=True) as owner:
            owner.execute("alter table public.tasks alter column description type varchar(1000)")
        for round_after in range(3):
            assert every_statement(f"after {round_after}") == [201, 200, 200, 200, 200]
        listed = client.get(alice.tasks_url, headers=alice.headers, params={"sort": "title"}).json()
    assert [(task["title"], task["description"], task["completed"]) for task in listed] == [
        *((f"after {i}", f"after {i}", True) for i in range(3)),
        *((f"before {i}", f"before {i}", True) for i in range(3)),
    ]
    with psycopg.connect(migrated_db_url) as connection:
        stored = connection.execute("select count(*), max(version) from tasks where user_id = %s", [alice.id])
        assert stored.fetchone() == (6, 3), "each write made once"
