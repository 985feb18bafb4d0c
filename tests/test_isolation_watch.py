"""Isolation is checked while serving: a database weakened under a running API is refused within a
check interval, logged once, and served again once repaired, all without a restart."""

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from pytest_postgresql.executors import NoopExecutor

from api.app import create_app
from api.db import isolation
from api.db.database import Database
from api.db.errors import IsolationBreach
from api.db.isolation import IsolationWatch
from api.db.listener import wake_tag
from api.db.reach import read_reach
from api.http.readiness import READY_MAX_AGE_SECONDS
from api.ops.policy_audit import audit_database
from tests.api.events_client import async_client, opened
from tests.own_postgres import OwnPostgres
from tests.support import (
    ApiUser,
    as_role,
    assert_problem,
    new_user,
    scrape,
    serving,
    serving_client,
    sessions_waiting_on_a_lock,
    settings_for,
    value,
    wait_until,
)

Conn = psycopg.Connection[tuple[Any, ...]]
INTERVAL = 0.2


@pytest.fixture
def db(migrated_db: Conn) -> Conn:
    migrated_db.autocommit = True
    return migrated_db


@pytest.fixture
def api(migrated_db_url: str) -> Iterator[httpx.Client]:
    settings = settings_for(migrated_db_url, isolation_check_interval_seconds=INTERVAL)
    with serving_client(create_app(settings)) as client:
        yield client


# `wait_until`'s ceiling for what comes with a check: twenty checks and then some. Its poll, every
# 0.05 s, is a quarter interval: what is awaited comes with a check, and a poll is one cheap request.
CHECKS_SECONDS = 20 * INTERVAL + 5


def eventually_logged(caplog: pytest.LogCaptureFixture, text: str, what: str) -> None:
    wait_until(lambda: any(text in record.getMessage() for record in caplog.records), what, CHECKS_SECONDS)


def refused(api: httpx.Client, user: ApiUser) -> bool:
    response = api.get(user.tasks_url, headers=user.headers)
    return (
        response.status_code == 503 and response.json()["type"] == "urn:todo-api:problem:isolation-unverified"
    )


def _verified_gauge(api: httpx.Client) -> float:
    # Eventually, not at once: the session's shared API (a safe database) checks in the same
    # process now and then, and the gauge holds the latest check of any of them.
    return value(scrape(str(api.base_url).rstrip("/")), "todo_api_isolation_verified")


def _current_user_id_definition(db: Conn) -> str:
    row = db.execute("select pg_get_functiondef('app.current_user_id()'::regprocedure)").fetchone()
    assert row is not None
    return str(row[0])


_BOB = (
    "create or replace function app.current_user_id() returns text language sql stable as $$ select 'bob' $$"
)


@dataclass(frozen=True)
class Weakening:
    weaken: str
    repair: str  # {original} is app.current_user_id()'s definition before the weakening
    expected: str  # part of the finding


WEAKENINGS = {
    "force turned off": Weakening(
        "alter table tasks no force row level security",
        "alter table tasks force row level security",
        "without row-level security forced",
    ),
    "a policy for all, using true": Weakening(
        'create policy "everyone" on tasks for all to todo_app using (true)',
        'drop policy "everyone" on tasks',
        'policy public.tasks "everyone" is not in what todo-api ships',
    ),
    "a policy granted to public": Weakening(
        'create policy "peek" on tasks for select to public using (user_id is not null)',
        'drop policy "peek" on tasks',
        'policy public.tasks "peek" is not in what todo-api ships',
    ),
    "a policy loosened": Weakening(
        'alter policy "tasks are visible to their owner" on tasks using (1 = 1)',
        'alter policy "tasks are visible to their owner" on tasks '
        "using (user_id = (select app.current_user_id()))",
        'policy public.tasks "tasks are visible to their owner" differs from what todo-api ships',
    ),
    "the identity function replaced": Weakening(
        _BOB, "{original}", "function app.current_user_id() differs from what todo-api ships"
    ),
    "truncate granted": Weakening(
        "grant truncate on tasks to todo_app",
        "revoke truncate on tasks from todo_app",
        "role todo_app has TRUNCATE on public.tasks",
    ),
}


@pytest.mark.parametrize("name", list(WEAKENINGS))
def test_weakened_while_serving_then_repaired(
    api: httpx.Client, db: Conn, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    weakening = WEAKENINGS[name]
    original = _current_user_id_definition(db)
    alice = new_user()
    assert api.post(alice.tasks_url, json={"title": "mine"}, headers=alice.headers).status_code == 201

    with caplog.at_level(logging.INFO, logger="api.db.isolation"):
        db.execute(weakening.weaken)
        wait_until(lambda: refused(api, alice), f"{name}: task requests are refused", CHECKS_SECONDS)
        ready = api.get("/readyz")
        assert_problem(ready, 503, "isolation-unverified")
        assert (
            api.post(alice.tasks_url, json={"title": "while weakened"}, headers=alice.headers).status_code
            == 503
        )
        wait_until(
            lambda: _verified_gauge(api) == 0,
            f"{name}: the metric shows isolation unverified",
            CHECKS_SECONDS,
        )
        time.sleep(3 * INTERVAL)  # more checks, the same findings
        errors = [record for record in caplog.records if record.levelno == logging.ERROR]
        assert len(errors) == 1, "logged once per change, not once per check"
        assert weakening.expected in errors[0].getMessage()

        db.execute(weakening.repair.format(original=original))
        wait_until(
            lambda: api.get(alice.tasks_url, headers=alice.headers).status_code == 200,
            f"{name}: served again",
            CHECKS_SECONDS,
        )
        eventually_logged(caplog, "isolation is verified again", f"{name}: told it is served again")
        (told,) = [record for record in caplog.records if "verified again" in record.getMessage()]
        assert told.levelno == logging.INFO, "a recovery, as the pool's and readiness's are"
    assert api.get("/readyz").status_code == 200
    wait_until(
        lambda: _verified_gauge(api) == 1,
        f"{name}: the metric shows isolation verified again",
        CHECKS_SECONDS,
    )
    assert [task["title"] for task in api.get(alice.tasks_url, headers=alice.headers).json()] == ["mine"]


def test_an_open_stream_reads_nothing_while_isolation_is_unverified_then_catches_up(
    api: httpx.Client, db: Conn
) -> None:
    """A stream outlives the verdict it was admitted under: each of its reads asks again."""
    alice = new_user()
    db.execute("insert into users (id) values (%s)", [alice.id])

    async def scenario() -> None:
        async with async_client(str(api.base_url)) as client, opened(client, alice) as stream:
            await stream.opening_id()
            db.execute(WEAKENINGS["truncate granted"].weaken)
            await asyncio.to_thread(
                wait_until, lambda: refused(api, alice), "task requests are refused", CHECKS_SECONDS
            )
            # Written by hand (a DBA's INSERT wakes the stream too), while nothing may be read.
            db.execute("insert into tasks (user_id, title) values (%s, 'while unverified')", [alice.id])
            waiting = asyncio.ensure_future(stream.next())
            # A read let through would send the event as soon as the insert's NOTIFY wakes the stream;
            # this long also spans several checks, each of which finds the weakening again.
            await asyncio.sleep(5 * INTERVAL)
            assert not waiting.done(), "the stream read the database while isolation was unverified"
            db.execute(WEAKENINGS["truncate granted"].repair)
            event = await waiting
            assert (event.kind, event.data["title"]) == ("task.created", "while unverified")

    asyncio.run(scenario())


def test_an_open_stream_reads_only_its_users_events_even_before_a_weakened_policy_is_found(
    migrated_db_url: str, db: Conn
) -> None:
    """Until the next check finds a weakened policy, the statements' owner filter keeps a stream its
    user's, as it keeps every task statement."""
    alice, bob = new_user(), new_user()
    settings = settings_for(migrated_db_url, isolation_check_interval_seconds=3600)

    async def scenario(base_url: str) -> None:
        async with async_client(base_url) as client, opened(client, alice) as stream:
            await stream.opening_id()
            db.execute('alter policy "task events are visible to their owner" on task_events using (true)')
            db.execute("insert into users (id) values (%s), (%s)", [bob.id, alice.id])
            db.execute("insert into tasks (user_id, title) values (%s, 'bob''s')", [bob.id])
            db.execute("insert into tasks (user_id, title) values (%s, 'alice''s')", [alice.id])
            event = await stream.next()
            assert (event.kind, event.data["title"]) == ("task.created", "alice's")

    with serving(create_app(settings)) as base_url:
        asyncio.run(scenario(base_url))


def test_a_change_committed_while_a_check_runs_is_logged_once_whole(
    migrated_db_url: str, db: Conn, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """has_table_privilege reads the catalog as it is now, not as the check's snapshot saw it: a grant
    committed between the check's two queries was seen by the second alone, and logged twice, first
    half (found by the weakening test above, when the suite ran on every core)."""
    granted: list[bool] = []

    async def grant_then_read_reach(connection: psycopg.AsyncConnection[Any]) -> list[Any]:
        if not granted:
            db.execute("grant truncate on tasks to todo_app")  # another session's, committed mid-check
            granted.append(True)
        return await read_reach(connection)  # api.db.reach's own, not the patched name

    monkeypatch.setattr(isolation, "read_reach", grant_then_read_reach)

    async def two_checks() -> None:
        database = Database.from_settings(settings_for(migrated_db_url, db_pool_size=1))
        await database.open()
        try:
            watch = IsolationWatch(database, interval_seconds=3600)
            await watch.check()
            await watch.check()
        finally:
            await database.close()

    with caplog.at_level(logging.ERROR, logger="api.db.isolation"):
        asyncio.run(two_checks())
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert granted
    assert len(errors) == 1, errors
    assert "role todo_app has TRUNCATE on public.tasks" in errors[0]
    assert "table public.tasks differs from what todo-api ships" in errors[0]


def test_a_check_and_a_readiness_ping_the_server_has_no_slot_for_run_over_an_idle_pooled_connection(
    db: Conn, migrated_db_url: str, fresh_role: str
) -> None:
    """Postgres restarted with fewer connection slots than the workers' pools, checks and listeners
    need: the pools reconnected first and took them all, the check's own connection was refused
    ("too many connections"), and the worker answered every task request 503 isolation-unverified for
    good, and /readyz 503, though its pool held idle connections. Here the login role's CONNECTION
    LIMIT is the pool's size, and the pool holds them all before the check and the ping run."""
    pool_size = 2
    db.execute(
        sql.SQL("create role {} login noinherit connection limit {} in role todo_app").format(
            sql.Identifier(fresh_role), sql.Literal(pool_size)
        )
    )

    def sessions() -> int:
        query = "select count(*) from pg_stat_activity where usename = %s and datname = current_database()"
        (count,) = db.execute(query, [fresh_role]).fetchone() or (0,)
        return int(count)

    async def check_with_every_slot_taken() -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        settings = settings_for(as_role(migrated_db_url, fresh_role), db_pool_size=pool_size)
        database = Database.from_settings(settings)
        await database.open()
        try:
            await database.pool.wait(timeout=30)  # every slot the role has
            assert sessions() == pool_size
            watch = IsolationWatch(database, interval_seconds=3600)
            clean = await watch.check()
            await database.ping()  # ready
            # Every pooled connection lent out: none idle to check over, and the refusal is the finding.
            async with database.pool.connection() as first, database.pool.connection() as second:
                assert first is not second
                busy = await watch.check()
                with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
                    await database.ping()
            return clean, busy
        finally:
            await database.close()

    clean, busy = asyncio.run(check_with_every_slot_taken())
    assert clean == ()
    (finding,) = busy
    assert finding.message.startswith("the isolation check could not complete (OperationalError: "), finding
    assert "too many connections for role" in finding.message, finding


def test_a_breach_met_while_a_check_runs_is_not_forgotten_when_that_check_comes_back_clean(
    migrated_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check that began before a request met a breach read the database as it may have been before
    it: its clean verdict replaced the breach's refusal, and the worker served until the check the
    breach asked for came back."""
    watches: list[IsolationWatch] = []

    async def breach_then_read_reach(connection: psycopg.AsyncConnection[Any]) -> list[Any]:
        if len(watches) == 1:  # once: a request's breach, met while the check runs
            watches[0].distrust(IsolationBreach("new row violates row-level security", read_only=False))
            watches.append(watches[0])
        return await read_reach(connection)  # api.db.reach's own, not the patched name

    monkeypatch.setattr(isolation, "read_reach", breach_then_read_reach)

    async def check_met_by_a_breach() -> tuple[bool, tuple[str, ...], bool]:
        database = Database.from_settings(settings_for(migrated_db_url, db_pool_size=1))
        await database.open()
        try:
            watch = IsolationWatch(database, interval_seconds=3600)
            watches.append(watch)
            await watch.check()
            during = (watch.verified, tuple(finding.message for finding in watch.findings))
            await watch.check()  # the check the breach asked for, with nothing met during it
            return *during, watch.verified
        finally:
            await watch.close()
            await database.close()

    verified, findings, verified_after_the_next_check = asyncio.run(check_met_by_a_breach())
    assert len(watches) == 2, "the breach was met while the check ran"
    assert not verified
    assert findings == ("new row violates row-level security",)
    assert verified_after_the_next_check


def test_the_audit_reports_a_replaced_function(db: Conn, migrated_db_url: str) -> None:
    db.execute(_BOB)
    messages = [finding.message for finding in audit_database(migrated_db_url).findings]
    assert any(
        message.startswith("function app.current_user_id() differs from what todo-api ships")
        for message in messages
    )


def _as_superuser(superuser_url: str, database_url: str) -> str:
    """The superuser's URL for the test's own database."""
    database = database_url.split("/")[3].split("?")[0]
    return superuser_url.replace("/postgres?", f"/{database}?")


def test_a_blinded_check_is_a_finding_not_a_pass(
    api: httpx.Client, superuser_url: str, migrated_db_url: str
) -> None:
    alice = new_user()
    with psycopg.connect(_as_superuser(superuser_url, migrated_db_url), autocommit=True) as superuser:
        superuser.execute("revoke select on pg_catalog.pg_policy from public")
        try:
            wait_until(
                lambda: refused(api, alice), "a check that cannot run refuses requests", CHECKS_SECONDS
            )
        finally:
            superuser.execute("grant select on pg_catalog.pg_policy to public")
    wait_until(
        lambda: api.get(alice.tasks_url, headers=alice.headers).status_code == 200,
        "served again",
        CHECKS_SECONDS,
    )


def test_a_check_that_waits_on_a_lock_fails_closed(
    api: httpx.Client,
    superuser_url: str,
    migrated_db_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's case: a lock held on what the check reads kept the last verdict, "verified"."""
    monkeypatch.setattr(isolation, "_LOCK_TIMEOUT", "50ms")
    alice = new_user()
    assert api.get(alice.tasks_url, headers=alice.headers).status_code == 200
    with (
        caplog.at_level(logging.ERROR, logger="api.db.isolation"),
        psycopg.connect(_as_superuser(superuser_url, migrated_db_url)) as superuser,
    ):
        superuser.execute("lock table pg_catalog.pg_default_acl in access exclusive mode")
        wait_until(
            lambda: refused(api, alice), "a check that cannot take its lock refuses requests", CHECKS_SECONDS
        )
        ready = api.get("/readyz")
        assert_problem(ready, 503, "isolation-unverified")
        time.sleep(5 * INTERVAL)  # more checks that cannot complete, for the same reason
        superuser.rollback()
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert (
        "the isolation check could not complete (LockNotAvailable: canceling statement due to lock timeout)"
        in errors[0]
    )
    wait_until(
        lambda: api.get(alice.tasks_url, headers=alice.headers).status_code == 200,
        "served again",
        CHECKS_SECONDS,
    )
    assert api.get("/readyz").status_code == 200


def test_a_row_security_violation_is_refused_and_checked_at_once(
    migrated_db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """A write the policies refuse means they are not what they should be: 503, never a 500, and a
    check at once rather than at the next interval (an hour away here)."""
    settings = settings_for(migrated_db_url, isolation_check_interval_seconds=3600)
    alice = new_user()
    with serving_client(create_app(settings)) as api:
        assert api.get(alice.tasks_url, headers=alice.headers).status_code == 200
        db.execute('alter policy "tasks are created by their owner" on tasks with check (false)')
        with caplog.at_level(logging.ERROR, logger="api.db.isolation"):
            created = api.post(alice.tasks_url, json={"title": "refused"}, headers=alice.headers)
            assert_problem(created, 503, "isolation-unverified")
            assert refused(api, alice), "refused until a check completes clean"
            eventually_logged(
                caplog,
                'policy public.tasks "tasks are created by their owner" differs',
                "the check ran at once and found the policy changed",
            )
        assert api.get("/readyz").status_code == 503
    assert db.execute("select count(*) from tasks where title = 'refused'").fetchone() == (0,)


def test_a_revoked_privilege_is_refused_and_checked_then_served_once_granted_again(
    migrated_db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """A grant revoked from todo_app under a running API made every request that needed it a 500
    until the next check, its traceback logged each time: a privilege the check verified and the
    database now refuses is the DBA's change, refused as a weakening is."""
    settings = settings_for(migrated_db_url, isolation_check_interval_seconds=2)
    alice = new_user()
    with serving_client(create_app(settings)) as api:
        created = api.post(alice.tasks_url, json={"title": "kept"}, headers=alice.headers)
        assert created.status_code == 201
        task_id = created.json()["id"]
        with caplog.at_level(logging.ERROR, logger="api.db.isolation"):
            db.execute("revoke delete on public.tasks from todo_app")
            try:
                deleted = api.delete(alice.task_url(task_id), headers=alice.headers)
                assert_problem(deleted, 503, "isolation-unverified")
                assert deleted.headers["Retry-After"].isdigit()
                assert refused(api, alice), "refused until a check completes clean"
                eventually_logged(
                    caplog,
                    "table public.tasks: todo_app lacks grants todo-api ships",
                    "a check ran and found the privilege gone",
                )
                assert_problem(api.get("/readyz"), 503, "isolation-unverified")
            finally:
                db.execute("grant delete on public.tasks to todo_app")
        wait_until(
            lambda: api.get(alice.tasks_url, headers=alice.headers).status_code == 200,
            "served again",
            CHECKS_SECONDS,
        )
        assert db.execute("select title from tasks where id = %s", [task_id]).fetchall() == [("kept",)]
        assert api.delete(alice.task_url(task_id), headers=alice.headers).status_code == 204
    assert db.execute("select count(*) from tasks where id = %s", [task_id]).fetchone() == (0,)


def test_retry_after_is_the_time_until_the_next_check_not_the_whole_interval(
    migrated_db_url: str, db: Conn
) -> None:
    """A refused client is told when a check may serve it again: at once after a distrust starts one,
    the interval (an hour here) once that check has found the weakening."""
    settings = settings_for(migrated_db_url, isolation_check_interval_seconds=3600)
    alice = new_user()
    with serving_client(create_app(settings)) as api:
        db.execute('alter policy "tasks are created by their owner" on tasks with check (false)')
        distrusted = api.post(alice.tasks_url, json={"title": "refused"}, headers=alice.headers)

        def retry_after() -> int:
            response = api.get(alice.tasks_url, headers=alice.headers)
            assert_problem(response, 503, "isolation-unverified")
            return int(response.headers["retry-after"])

        wait_until(
            lambda: retry_after() > 1, "the check the distrust started found the policy", CHECKS_SECONDS
        )
        after_the_check = retry_after()
    assert_problem(distrusted, 503, "isolation-unverified")
    assert distrusted.headers["retry-after"] == "1", "the check the refusal started is due at once"
    assert 3000 < after_the_check <= 3600, "the next check is an interval after the one that found it"
    assert db.execute("select count(*) from tasks where title = 'refused'").fetchone() == (0,)


def test_after_a_check_that_could_not_complete_the_next_comes_within_a_second() -> None:
    """Failing closed through a database restart must not cost a whole interval once it is back."""
    interval = 5.0
    database = OwnPostgres()
    try:
        # A check waits at most 1 s for a connection, so the outage is found soon after an interval.
        settings = settings_for(
            database.url, isolation_check_interval_seconds=interval, db_pool_timeout_seconds=1
        )
        alice = new_user()
        with serving_client(create_app(settings)) as api:
            database.stop()
            deadline = time.monotonic() + 3 * interval
            while api.get("/readyz").json().get("type") != "urn:todo-api:problem:isolation-unverified":
                assert time.monotonic() < deadline, "a check that cannot reach the database is a finding"
                time.sleep(0.2)
            database.start()
            back = time.monotonic()
            while api.get(alice.tasks_url, headers=alice.headers).status_code != 200:
                assert time.monotonic() - back < interval - 1, "served again well before the next interval"
                time.sleep(0.1)
    finally:
        database.remove()


@pytest.mark.parametrize("key", [None, "guess"], ids=["without-key", "with-idempotency-key"])
def test_a_unique_key_the_api_does_not_expect_is_refused_and_checked_at_once(
    migrated_db_url: str, db: Conn, caplog: pytest.LogCaptureFixture, key: str | None
) -> None:
    """A unique index on what users write answers a conflict with a row the writer cannot see: a 503
    for everyone, never a 500 that tells alice bob stored that text, and a check at once that finds
    the index (the next interval is an hour away here). With an Idempotency-Key too: its create
    once took the conflict for a repeat of the key and answered 409 idempotency-key-in-use (201 for
    a text nobody stored), and served on."""
    settings = settings_for(migrated_db_url, isolation_check_interval_seconds=3600)
    alice, bob = new_user(), new_user()
    with serving_client(create_app(settings)) as api:
        secret = {"title": "bob's", "description": "bob's secret"}
        assert api.post(bob.tasks_url, json=secret, headers=bob.headers).status_code == 201
        db.execute("create unique index tasks_description_unique on public.tasks (description)")
        with caplog.at_level(logging.ERROR, logger="api.db.isolation"):
            guess = {"title": "alice's", "description": "bob's secret"}
            keyed = {} if key is None else {"Idempotency-Key": key}
            probed = api.post(alice.tasks_url, json=guess, headers={**alice.headers, **keyed})
            assert_problem(probed, 503, "isolation-unverified")
            assert refused(api, alice), "refused until a check completes clean"
            other = {"title": "alice's", "description": "nobody's"}
            assert api.post(alice.tasks_url, json=other, headers=alice.headers).status_code == 503
            eventually_logged(
                caplog,
                "unique index tasks_description_unique on public.tasks starts with description",
                "the check ran at once and found the index",
            )
        assert api.get("/readyz").status_code == 503
    assert db.execute("select count(*) from tasks where title = 'alice''s'").fetchone() == (0,)
    keys = db.execute("select count(*) from idempotency_keys where user_id = %s", (alice.id,))
    assert keys.fetchone() == (0,)


def test_a_foreign_key_the_api_does_not_expect_is_refused_and_checked_at_once(
    migrated_db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """A foreign key from what users write to another user's row (here: a description must name a
    user) stored a task that named bob and answered 500 to one that named nobody, so alice could tell
    which ids exist; now a 503 for everyone, and a check at once that finds the key (the next
    interval is an hour away here)."""
    settings = settings_for(migrated_db_url, isolation_check_interval_seconds=3600)
    alice, bob = new_user(), new_user()
    with serving_client(create_app(settings)) as api:
        assert api.post(bob.tasks_url, json={"title": "bob's"}, headers=bob.headers).status_code == 201
        assert api.post(alice.tasks_url, json={"title": "alice's"}, headers=alice.headers).status_code == 201
        db.execute(
            "alter table public.tasks add constraint description_names_a_user "
            "foreign key (description) references public.users (id) not valid"
        )
        try:
            with caplog.at_level(logging.ERROR, logger="api.db.isolation"):
                probe = {"title": "probe", "description": "nobody"}
                probed = api.post(alice.tasks_url, json=probe, headers=alice.headers)
                assert_problem(probed, 503, "isolation-unverified")
                guess = {"title": "probe", "description": bob.id}
                assert_problem(
                    api.post(alice.tasks_url, json=guess, headers=alice.headers), 503, "isolation-unverified"
                )
                eventually_logged(
                    caplog,
                    "foreign key description_names_a_user on public.tasks starts with description",
                    "the check ran at once and found the key",
                )
            assert api.get("/readyz").status_code == 503
        finally:
            db.execute("alter table public.tasks drop constraint description_names_a_user")
    assert db.execute("select count(*) from tasks where title = 'probe'").fetchone() == (0,)


def test_a_read_refused_for_row_level_security_is_logged_as_a_read_and_its_session_dropped(
    migrated_db_url: str, db: Conn, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """row_security off in the login role's sessions turns every read the policies filter into an
    error. The check reports the setting (tests/test_isolation_blind_spots.py); here it is blinded to
    it, as it was, to see what a request meets: a 503 whose log says read, and a session not reused,
    so that once the setting is reset the next session reads again."""
    monkeypatch.setattr(isolation, "_sql", lambda: "select 'nothing' where false")
    monkeypatch.setattr(isolation, "_settings_sql", lambda: "select 'row_security', 'nothing' where false")
    database = migrated_db_url.split("/")[3].split("?")[0]
    alice = new_user()
    settings = settings_for(migrated_db_url, isolation_check_interval_seconds=3600, db_pool_size=1)
    with serving_client(create_app(settings)) as api:
        assert api.post(alice.tasks_url, json={"title": "mine"}, headers=alice.headers).status_code == 201
        db.execute(f"alter role todo_owner in database {database} set row_security = off")
        try:
            # The pooled session predates the setting: replace it, as a restart of the server would.
            db.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where datname = current_database() and pid <> pg_backend_pid() and usename = 'todo_owner'"
            )
            with caplog.at_level(logging.ERROR, logger="api.db.isolation"):
                wait_until(
                    lambda: refused(api, alice),
                    "a read refused for row-level security is a 503",
                    CHECKS_SECONDS,
                )
            messages = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
            assert any("the database refused a read for row-level security" in m for m in messages), messages
            assert not any("refused a write" in m for m in messages), messages
        finally:
            db.execute(f"alter role todo_owner in database {database} reset row_security")
        wait_until(
            lambda: api.get(alice.tasks_url, headers=alice.headers).status_code == 200,
            "read again",
            CHECKS_SECONDS,
        )


def test_a_stream_whose_read_is_refused_for_row_level_security_ends_and_is_refused_at_once(
    migrated_db_url: str, db: Conn, caplog: pytest.LogCaptureFixture
) -> None:
    """An open stream meets the refusal after its 200, where no exception handler runs: it fails
    closed itself, at once (the next check is an hour away here), ends without sending anything
    more, and its client's reconnection is refused rather than served."""
    database = migrated_db_url.split("/")[3].split("?")[0]
    alice = new_user()
    db.execute("insert into users (id) values (%s)", [alice.id])
    settings = settings_for(migrated_db_url, isolation_check_interval_seconds=3600)

    async def scenario(base_url: str) -> None:
        async with async_client(base_url) as client:
            async with opened(client, alice) as stream:
                opening_id = await stream.opening_id()
                db.execute(f"alter role todo_owner in database {database} set row_security = off")
                # The API's sessions predate the setting: replace them, as a restart of the server
                # would. The listener's is among them, and wakes the stream once it listens again.
                db.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity where datname = "
                    "current_database() and pid <> pg_backend_pid() and usename = 'todo_owner'"
                )
                db.execute("insert into tasks (user_id, title) values (%s, 'while refused')", [alice.id])
                assert [block for block in await stream.end() if block.data] == []
            ready = await client.get("/readyz")
            assert_problem(ready, 503, "isolation-unverified")
            async with opened(client, alice, opening_id) as again:
                assert_problem(again.response, 503, "isolation-unverified")
                assert int(again.response.headers["Retry-After"]) > 0

    with caplog.at_level(logging.ERROR, logger="api.db.isolation"), serving(create_app(settings)) as base_url:
        try:
            asyncio.run(scenario(base_url))
        finally:
            db.execute(f"alter role todo_owner in database {database} reset row_security")
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert any("the database refused a read for row-level security" in m for m in messages), messages
    assert "unhandled error" not in messages, "failing closed is the stream's end, not a server error"


def test_a_breach_a_stream_meets_after_its_client_left_is_still_refused_at_once(
    migrated_db_url: str, db: Conn
) -> None:
    """A stream's read is shielded so that a client leaving mid-read does not cost the pool its
    connection; the read's failure then went unheard, an isolation breach included, and the worker
    served on as verified until the next check (an hour away here). Here the read waits on a lock
    while its client leaves, and meets a revoked privilege once the lock is released."""
    alice = new_user()
    db.execute("insert into users (id) values (%s)", [alice.id])
    settings = settings_for(migrated_db_url, isolation_check_interval_seconds=3600)

    async def leave_while_the_read_waits(base_url: str, dba: Conn) -> None:
        async with async_client(base_url) as client, opened(client, alice) as stream:
            await stream.opening_id()
            dba.execute("lock table task_events in access exclusive mode")
            db.execute("select pg_notify('task_events', %s)", [wake_tag(alice.id)])
            wait_until(
                lambda: sessions_waiting_on_a_lock(migrated_db_url) > 0,
                "the stream's read waits on the lock",
                CHECKS_SECONDS,
            )

    try:
        with serving(create_app(settings)) as base_url, httpx.Client(base_url=base_url) as api:
            with psycopg.connect(migrated_db_url) as dba:
                asyncio.run(leave_while_the_read_waits(base_url, dba))
                dba.execute("revoke select on task_events from todo_app")
                assert api.get("/readyz").status_code == 200, "verified while the read waits"
            wait_until(
                lambda: api.get("/readyz").status_code == 503,
                "the breach the read met is refused",
                CHECKS_SECONDS,
            )
            assert_problem(api.get("/readyz"), 503, "isolation-unverified")
            assert refused(api, alice)
    finally:
        db.execute("grant select on task_events to todo_app")


def _make_again(db: Conn, superuser_url: str, migrated_template: NoopExecutor) -> None:
    """The test's database dropped and made again under its name, migrated: a restore in place."""
    name = db.info.dbname
    with psycopg.connect(superuser_url, autocommit=True) as superuser:
        superuser.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(name)))
        superuser.execute(
            sql.SQL("create database {} template {} owner {}").format(
                sql.Identifier(name),
                sql.Identifier(migrated_template.template_dbname),
                sql.Identifier(migrated_template.user),
            )
        )


@pytest.mark.parametrize("restored", ["whole", "without-row-level-security-yet"])
def test_a_database_made_again_under_its_name_is_checked_before_a_request_runs_on_it(
    db: Conn,
    migrated_db_url: str,
    migrated_template: NoopExecutor,
    superuser_url: str,
    caplog: pytest.LogCaptureFixture,
    restored: str,
) -> None:
    """A restore in place while serving (docs/operations.md, "Backup and restore": DROP DATABASE, then
    a restore under the same name): the pool reconnected to the new database and served it until the
    next check, an interval away. Restored in sections (pg_restore's pre-data and data before its
    post-data), the tables were there without row-level security, and task requests read and wrote
    them so (the restore probe, /tmp/s78-restore). A session of another database now waits for a
    check of it: a whole restore is served at once, one without its policies yet is refused."""
    alice, bob = new_user(), new_user()
    settings = settings_for(migrated_db_url, isolation_check_interval_seconds=3600)
    with serving_client(create_app(settings)) as api:
        assert api.post(alice.tasks_url, json={"title": "before"}, headers=alice.headers).status_code == 201
        _make_again(db, superuser_url, migrated_template)
        with psycopg.connect(_as_superuser(superuser_url, migrated_db_url), autocommit=True) as new:
            new.execute("insert into users (id) values (%s), (%s)", [alice.id, bob.id])
            new.execute("insert into tasks (user_id, title) values (%s, 'restored')", [bob.id])
            if restored != "whole":
                new.execute("alter table tasks disable row level security")
            with caplog.at_level(logging.WARNING, logger="api.db.isolation"):
                listed = api.get(alice.tasks_url, headers=alice.headers)
                created = api.post(alice.tasks_url, json={"title": "after"}, headers=alice.headers)
            stored = new.execute("select user_id, title from tasks order by id").fetchall()
    logged = [(record.levelno, record.getMessage()) for record in caplog.records]
    # A warning, not an error: a plain restart of the database comes this way too.
    assert any(
        level == logging.WARNING and "another database than the one the last check verified" in message
        for level, message in logged
    ), logged
    if restored == "whole":
        assert listed.status_code == 200, listed.text
        assert listed.json() == []
        assert created.status_code == 201, created.text
        assert stored == [(bob.id, "restored"), (alice.id, "after")]
        assert [message for level, message in logged if level >= logging.ERROR] == []
        return
    assert_problem(listed, 503, "isolation-unverified")
    assert_problem(created, 503, "isolation-unverified")
    assert stored == [(bob.id, "restored")], "nothing was written"
    assert any(
        level == logging.ERROR and "row-level security" in message and "tasks" in message
        for level, message in logged
    ), logged


@pytest.mark.parametrize("restored", ["whole", "without-row-level-security-yet"])
def test_readiness_after_a_database_made_again_under_its_name_is_that_of_the_new_database(
    db: Conn, migrated_db_url: str, migrated_template: NoopExecutor, superuser_url: str, restored: str
) -> None:
    """After a restore in place, /readyz said ready on the verdict of the database before until a
    task request of that worker met the new one, or the next check came (stop 78's verification
    probe): a load balancer kept sending requests that were refused. Its ping now meets the new
    database as a task request would."""
    settings = settings_for(migrated_db_url, isolation_check_interval_seconds=3600)
    with serving_client(create_app(settings)) as api:
        assert api.get("/readyz").status_code == 200
        _make_again(db, superuser_url, migrated_template)
        if restored != "whole":
            with psycopg.connect(_as_superuser(superuser_url, migrated_db_url), autocommit=True) as new:
                new.execute("alter table tasks disable row level security")
        time.sleep(READY_MAX_AGE_SECONDS)  # past the answer the first /readyz left for others to share
        ready = api.get("/readyz")
    if restored == "whole":
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready"}
    else:
        assert_problem(ready, 503, "isolation-unverified")


def test_a_readiness_connection_that_cannot_tell_its_database_is_not_ready(
    migrated_db_url: str, superuser_url: str
) -> None:
    """SELECT on pg_database revoked from the login role, and the readiness ping's new connection
    could not read which database it reached: /readyz was a 500 (InsufficientPrivilege), then 200
    over the connection it had kept without knowing, while every task request was 503 (the pool's
    sessions cannot tell either). It is 503 at every ping until the privilege is back."""
    settings = settings_for(migrated_db_url, isolation_check_interval_seconds=3600)
    alice = new_user()
    with serving_client(create_app(settings)) as api:
        assert api.get("/readyz").status_code == 200
        with psycopg.connect(_as_superuser(superuser_url, migrated_db_url), autocommit=True) as superuser:
            superuser.execute("revoke select on pg_catalog.pg_database from public")
            try:
                superuser.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity"
                    " where datname = current_database() and pid <> pg_backend_pid()"
                )
                answers = []
                for _ in range(2):
                    time.sleep(READY_MAX_AGE_SECONDS)  # a ping of its own each time, not the one before
                    answers.append(api.get("/readyz"))
                listed = api.get(alice.tasks_url, headers=alice.headers)
            finally:
                superuser.execute("grant select on pg_catalog.pg_database to public")
        for ready in answers:
            assert_problem(ready, 503, "database-unavailable")
        assert_problem(listed, 503, "database-unavailable")
        wait_until(lambda: api.get("/readyz").status_code == 200, "ready again", CHECKS_SECONDS)
