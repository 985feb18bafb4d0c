"""Who sends the NOTIFY that wakes a user's event streams (sql/migrations/0009_wake_after_commit.sql).

The API's writes say `app.notify_after_commit` = on and send it themselves after COMMIT
(`api.db.statements.WAKE_STREAMS`), so the trigger sends none inside their transaction; any other
writer (a DBA at psql) still gets one from the trigger. Either way the payload is the listener's
`wake_tag`, and a write that did not commit wakes nobody.
"""

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from api.db.database import Database
from api.db.errors import CheckRefused
from api.db.listener import CHANNEL, wake_tag
from tests.support import sql
from tests.test_transactions import way, with_database

__all__ = ["way"]  # the fixture, shared with tests/test_transactions.py

Conn = psycopg.Connection[tuple[Any, ...]]

# Long enough for a NOTIFY sent at commit to arrive on another connection of the same server.
QUIET_SECONDS = 0.5


@pytest.fixture
def listener(migrated_db_url: str) -> Iterator[Conn]:
    with psycopg.connect(migrated_db_url, autocommit=True) as connection:
        connection.execute(f"LISTEN {CHANNEL}")
        yield connection


def wake_ups(listener: Conn) -> list[str]:
    """The payloads that arrive within QUIET_SECONDS."""
    return [notify.payload for notify in listener.notifies(timeout=QUIET_SECONDS)]


def test_a_write_that_does_not_wake_after_commit_is_woken_by_the_trigger_with_the_listeners_tag(
    migrated_db: Conn, listener: Conn
) -> None:
    """A DBA's write at psql: no setting, so the trigger NOTIFYs, with the tag the API listens for.
    A user id that is not ASCII: md5 hashes the same UTF-8 bytes on both sides."""
    user = "wake-dba-écrit-☃"
    migrated_db.autocommit = True
    migrated_db.execute("insert into users (id) values (%s)", [user])
    migrated_db.execute("insert into tasks (user_id, title) values (%s, 'by hand')", [user])

    assert wake_ups(listener) == [wake_tag(user)]

    migrated_db.execute("update tasks set completed = true where user_id = %s", [user])
    migrated_db.execute("delete from tasks where user_id = %s", [user])
    assert wake_ups(listener) == [wake_tag(user), wake_tag(user)]


def test_a_transaction_that_wakes_after_commit_gets_no_notify_from_the_trigger(
    migrated_db: Conn, listener: Conn
) -> None:
    user = "wake-says-it-will"
    migrated_db.autocommit = True
    migrated_db.execute("insert into users (id) values (%s)", [user])
    with migrated_db.transaction():
        migrated_db.execute("select set_config('app.notify_after_commit', 'on', true)")
        migrated_db.execute("insert into tasks (user_id, title) values (%s, 'one')", [user])
        migrated_db.execute("update tasks set title = 'two' where user_id = %s", [user])
        migrated_db.execute("delete from tasks where user_id = %s", [user])

    assert wake_ups(listener) == []
    # The events were written all the same.
    kinds = migrated_db.execute("select kind from task_events where user_id = %s order by id", [user])
    assert kinds.fetchall() == [("task.created",), ("task.updated",), ("task.deleted",)]

    # The setting was the transaction's own: the next write on this connection is woken by the trigger.
    migrated_db.execute("insert into tasks (user_id, title) values (%s, 'three')", [user])
    assert wake_ups(listener) == [wake_tag(user)]


def test_database_run_wakes_the_writers_streams_once_after_commit_and_never_for_a_read(
    migrated_db_url: str, listener: Conn, way: dict[str, Any]
) -> None:
    async def scenario(database: Database) -> None:
        await database.run("alice", sql("insert into public.users (id) values ('alice')", read_only=False))
        assert wake_ups(listener) == [wake_tag("alice")]  # no task changed: still one, after COMMIT

        rows = await database.run(
            "alice",
            sql(
                "insert into public.tasks (user_id, title) values ('alice', 'a'), ('alice', 'b')"
                " returning title",
                read_only=False,
            ),
        )
        # The statement's rows, not the NOTIFY's: the trigger sent none for the two events.
        assert rows == [{"title": "a"}, {"title": "b"}]
        assert wake_ups(listener) == [wake_tag("alice")]

        assert await database.run("alice", sql("select count(*) as n from public.tasks")) == [{"n": 2}]
        assert wake_ups(listener) == []

    with_database(migrated_db_url, scenario, db_pool_size=1, **way)


def test_a_write_that_failed_wakes_nobody(migrated_db_url: str, listener: Conn, way: dict[str, Any]) -> None:
    async def scenario(database: Database) -> None:
        await database.run("alice", sql("insert into public.users (id) values ('alice')", read_only=False))
        assert wake_ups(listener) == [wake_tag("alice")]

        with pytest.raises(CheckRefused, match="tasks_title_check"):
            await database.run(
                "alice",
                sql("insert into public.tasks (user_id, title) values ('alice', '')", read_only=False),
            )
        assert wake_ups(listener) == []
        # The connection is clean for the next transaction, which wakes as any write does.
        await database.run(
            "alice", sql("insert into public.tasks (user_id, title) values ('alice', 'ok')", read_only=False)
        )
        assert wake_ups(listener) == [wake_tag("alice")]

    with_database(migrated_db_url, scenario, db_pool_size=1, **way)
