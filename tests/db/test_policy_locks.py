"""The transaction that re-applies sql/policies/ (`todo-api migrate`, and the drift check of `todo-api
policies`) and the API's writes wait for one another; neither is cancelled for a deadlock.

Each test stops a write at the step where the deadlock used to close: the write holds tasks and its
trigger has not yet reached task_events, because a test session holds the row of
app.task_event_counts that the trigger updates first. The command starts meanwhile; once it waits
for the write, the row is let go. Applied file by file, the policies held task_events by then, and
the write waited for them while they waited for tasks: one of the two was cancelled. A write that
Postgres cancels for a deadlock all the same (with a DBA's transaction) is run once more.
"""

import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from api.app import create_app
from api.db.sql_files import LOCK_POLICY_TABLES, SQL_DIR
from api.ops.migrations import apply_migrations
from api.ops.policy_audit import audit_database
from tests.support import ApiUser, new_user, serving_client, settings_for, wait_until_it_waits_for

Conn = psycopg.Connection[tuple[Any, ...]]

BLOCKED_BY = "select pid from pg_stat_activity where %s = any(pg_blocking_pids(pid))"


def test_the_lock_names_every_table_with_a_policy_file_once() -> None:
    named = re.findall(r"public\.(\w+)", LOCK_POLICY_TABLES.read_text(encoding="utf-8"))
    with_files = [path.stem for path in (SQL_DIR / "policies").glob("*.sql")]
    assert sorted(named) == sorted(with_files)
    assert named[0] == "tasks", "every write locks tasks when it starts: it is locked first"


@pytest.fixture
def api(migrated_db_url: str) -> Iterator[httpx.Client]:
    # No isolation check while serving: one that met a test's lock would refuse the writes.
    settings = settings_for(migrated_db_url, rate_limit_per_minute=0, isolation_check_interval_seconds=3600)
    with serving_client(create_app(settings)) as client:
        yield client


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


def _events(db: Conn, user: ApiUser) -> list[tuple[str, int]]:
    rows = db.execute("select kind, task_id from task_events where user_id = %s order by id", [user.id])
    return [(str(kind), int(task_id)) for kind, task_id in rows.fetchall()]


def _hold_the_event_count(migrated_db_url: str, user: ApiUser) -> Conn:
    """A transaction holding the user's row of app.task_event_counts: the user's next write stops in
    its trigger, holding tasks, before it locks task_events."""
    holder = psycopg.connect(migrated_db_url)
    row = holder.execute(
        "select events from app.task_event_counts where user_id = %s for update", [user.id]
    ).fetchone()
    assert row is not None
    return holder


def _wait_until_another_waits_for_it(db: Conn, holder: Conn, command: "Future[Any]") -> None:
    """Return once a backend waits for the one that waits for `holder`: the command's, waiting for the
    stopped write."""
    (write,) = db.execute(BLOCKED_BY, [holder.info.backend_pid]).fetchone() or (None,)
    assert write is not None, "the write waits for the held row"
    deadline = time.monotonic() + 30
    while db.execute(BLOCKED_BY, [write]).fetchone() is None:
        assert not command.done(), f"the command did not wait for the write: {command.result()}"
        assert time.monotonic() < deadline, "the command waits for the write"
        time.sleep(0.02)


def _migrate(url: str) -> object:
    return apply_migrations(url)


def _check_drift(url: str) -> object:
    return audit_database(url).findings


COMMANDS: dict[str, tuple[Callable[[str], object], object]] = {
    # Nothing pending: migrate re-applies the policies, and applies no migration.
    "migrate": (_migrate, []),
    "policies": (_check_drift, []),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_toggle_and_the_policies_wait_for_each_other(
    command: str, migrated_db_url: str, api: httpx.Client, background: ThreadPoolExecutor
) -> None:
    run, succeeded = COMMANDS[command]
    alice = new_user()
    task = api.post(alice.tasks_url, headers=alice.headers, json={"title": "milk"}).json()
    holder = _hold_the_event_count(migrated_db_url, alice)
    with holder, psycopg.connect(migrated_db_url, autocommit=True) as db:
        toggle = background.submit(api.patch, f"{alice.task_url(task['id'])}/complete", headers=alice.headers)
        wait_until_it_waits_for(holder, toggle)
        ran = background.submit(run, migrated_db_url)
        _wait_until_another_waits_for_it(db, holder, ran)
        holder.commit()
        assert ran.result() == succeeded
        response = toggle.result()
        assert response.status_code == 200, response.text
        assert response.json()["completed"] is True
        assert response.json()["version"] == 2
        assert _events(db, alice) == [("task.created", task["id"]), ("task.updated", task["id"])]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_create_and_the_policies_wait_for_each_other(
    command: str, migrated_db_url: str, api: httpx.Client, background: ThreadPoolExecutor
) -> None:
    run, succeeded = COMMANDS[command]
    alice = new_user()
    first = api.post(alice.tasks_url, headers=alice.headers, json={"title": "milk"}).json()
    holder = _hold_the_event_count(migrated_db_url, alice)
    with holder, psycopg.connect(migrated_db_url, autocommit=True) as db:
        create = background.submit(api.post, alice.tasks_url, headers=alice.headers, json={"title": "eggs"})
        wait_until_it_waits_for(holder, create)
        ran = background.submit(run, migrated_db_url)
        _wait_until_another_waits_for_it(db, holder, ran)
        holder.commit()
        assert ran.result() == succeeded
        response = create.result()
        assert response.status_code == 201, response.text
        second = response.json()["id"]
        assert [task["title"] for task in api.get(alice.tasks_url, headers=alice.headers).json()] == [
            "eggs",
            "milk",
        ]
        assert _events(db, alice) == [("task.created", first["id"]), ("task.created", second)]


def test_a_write_cancelled_for_a_deadlock_is_run_once_more(
    migrated_db: Conn,
    migrated_db_url: str,
    superuser_url: str,
    api: httpx.Client,
    background: ThreadPoolExecutor,
) -> None:
    """A DBA's transaction holds task_events and asks for tasks while a toggle holds tasks and then
    asks for task_events. The DBA's session never looks for the deadlock (its deadlock_timeout is an
    hour), so Postgres cancels the toggle, which the API runs again once the DBA is done: toggled
    once, with one event, and a 200."""
    alice = new_user()
    task = api.post(alice.tasks_url, headers=alice.headers, json={"title": "milk"}).json()
    holder = _hold_the_event_count(migrated_db_url, alice)
    dba_url = superuser_url.replace("/postgres?", f"/{migrated_db.info.dbname}?", 1)
    with holder, psycopg.connect(dba_url) as dba, psycopg.connect(migrated_db_url, autocommit=True) as db:
        dba.execute("set deadlock_timeout = '1h'")
        dba.execute("lock table task_events in access exclusive mode")
        toggle = background.submit(api.patch, f"{alice.task_url(task['id'])}/complete", headers=alice.headers)
        wait_until_it_waits_for(holder, toggle)
        wants_tasks = background.submit(dba.execute, "lock table tasks in access exclusive mode")
        _wait_until_another_waits_for_it(db, holder, wants_tasks)
        holder.commit()  # the toggle goes on to task_events, which the DBA holds: a deadlock
        wants_tasks.result()  # the toggle was cancelled and let go of tasks
        assert not toggle.done(), "the toggle waits to run again"
        dba.commit()
        response = toggle.result()
        assert response.status_code == 200, response.text
        assert response.json()["completed"] is True
        assert response.json()["version"] == 2
        assert _events(db, alice) == [("task.created", task["id"]), ("task.updated", task["id"])]
