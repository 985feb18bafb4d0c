"""The events listener meets an error that is no lost connection: it says so with the traceback,
listens again, and every stream catches up, as after a lost connection, rather than stop waking the
streams of its worker until it shuts down. And around a lost connection: while the listener cannot
connect, streams poll; once it listens again, whatever was written meanwhile reaches them at once."""

import asyncio
import logging
from typing import Any

import psycopg
import pytest

from api.app import create_app
from api.db.listener import CHANNEL
from api.events.hub import Hub
from tests.api.events_client import async_client, opened
from tests.support import new_user, serving, settings_for, wait_until


def test_an_error_the_listener_did_not_expect_is_logged_and_streams_still_get_every_event(
    migrated_db_url: str,
    migrated_db: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error that is no lost connection (a bug in what the listener calls with a payload, or one
    psycopg raises as another class: a payload it could not decode, when a session's client_encoding
    could be SQL_ASCII) must not end the wake-ups of every stream of the worker. Here the hub fails on
    a payload of a NOTIFY on its channel, which any role may send."""
    alice = new_user()
    db = migrated_db
    db.autocommit = True
    settings = settings_for(migrated_db_url)
    wake = Hub.wake

    def wake_failing_on_a_strange_payload(hub: Hub, tag: str) -> None:
        if tag == "é":
            raise ValueError(f"a payload the hub cannot read: {tag!r}")
        wake(hub, tag)

    monkeypatch.setattr(Hub, "wake", wake_failing_on_a_strange_payload)

    async def scenario(base_url: str) -> None:
        async with async_client(base_url) as client, opened(client, alice) as stream:
            await stream.opening_id()
            # One transaction, so the trigger's wake-up for the task comes after the payload the
            # listener cannot read, and is lost with it: only the catching up after it brings the task.
            with db.transaction():
                db.execute("select pg_notify(%s, 'é')", [CHANNEL])
                db.execute("insert into users (id) values (%s)", [alice.id])
                db.execute("insert into tasks (user_id, title) values (%s, 'by hand')", [alice.id])
            event = await stream.next()
            assert (event.kind, event.data["title"]) == ("task.created", "by hand")
            # And the listener wakes the stream for the next write, as before.
            created = await client.post(alice.tasks_url, json={"title": "later"}, headers=alice.headers)
            assert created.status_code == 201
            event = await stream.next()
            assert (event.kind, event.data) == ("task.created", created.json())

    with caplog.at_level(logging.ERROR, logger="api.db.listener"), serving(create_app(settings)) as base_url:
        asyncio.run(scenario(base_url))
    (failure,) = [record for record in caplog.records if record.name == "api.db.listener"]
    assert failure.getMessage() == "the events listener failed; reconnecting"
    assert failure.exc_info is not None, "logged with its traceback"
    assert failure.exc_info[0] is ValueError
    assert db.execute("select title from tasks where user_id = %s order by id", [alice.id]).fetchall() == [
        ("by hand",),
        ("later",),
    ]


def test_while_the_listener_cannot_connect_streams_poll_and_get_each_event_promptly(
    migrated_db_url: str,
) -> None:
    """A DATABASE_DIRECT_URL that stops letting the listener in (here: every try refused, its database
    gone) while DATABASE_URL still serves: the listener tries again with its backoff, seconds apart
    once it has grown, and each stream read only when it woke them at a try, so a write reached a
    stream seconds late. Streams poll every EVENTS_POLL_MILLISECONDS meanwhile, as behind a pooler."""
    alice = new_user()
    address, options = migrated_db_url.split("?", 1)
    refused = f"{address.rsplit('/', 1)[0]}/no_such_database?{options}"
    settings = settings_for(migrated_db_url, database_direct_url=refused, events_poll_milliseconds=200)

    async def scenario(base_url: str) -> None:
        async with async_client(base_url) as client, opened(client, alice) as stream:
            await stream.opening_id()
            # Past the listener's first tries: its next ones are seconds apart.
            await asyncio.sleep(7)
            for title in ("one", "two", "three"):
                created = await client.post(alice.tasks_url, json={"title": title}, headers=alice.headers)
                assert created.status_code == 201
                event = await asyncio.wait_for(stream.next(), 2.5)
                assert (event.kind, event.data) == ("task.created", created.json())

    with serving(create_app(settings)) as base_url:
        asyncio.run(scenario(base_url))


def test_a_write_made_while_the_listener_reconnects_reaches_an_open_stream_without_waiting_for_a_poll(
    migrated_db_url: str, migrated_db: psycopg.Connection[Any]
) -> None:
    """A write whose wake-up was sent while the listener had no session (its session ended by a
    failover or a network cut, and not yet back) reaches no listener: the listener reads everything
    once it listens again, and a stream gets the write then. Without that it came only at the
    stream's next poll, EVENTS_POLL_MILLISECONDS later (up to a minute; a second by default)."""
    alice = new_user()
    db = migrated_db
    db.autocommit = True  # each look at pg_stat_activity a new snapshot
    settings = settings_for(migrated_db_url, events_poll_milliseconds=60_000)
    where = " from pg_stat_activity where application_name = 'todo-api-listener' and datname = %s"

    def listener_gone() -> bool:
        return db.execute("select count(*)" + where, [db.info.dbname]).fetchone() == (0,)

    async def scenario(base_url: str) -> None:
        async with async_client(base_url) as client, opened(client, alice) as stream:
            await stream.opening_id()
            # As a failover or a network cut would: the listener's session ends (the API logs in as
            # the role the test's session has, which may end it).
            db.execute("select pg_terminate_backend(pid)" + where, [db.info.dbname])
            wait_until(listener_gone, "the listener's session ends", timeout=30, every=0.005)
            created = await client.post(alice.tasks_url, json={"title": "in the gap"}, headers=alice.headers)
            assert created.status_code == 201
            try:  # within the stream's read timeout (10 s), far below the poll's minute
                event = await stream.next()
            except TimeoutError:
                pytest.fail("the write in the listener's gap was not sent before the stream's next poll")
            assert (event.kind, event.data) == ("task.created", created.json())

    with serving(create_app(settings)) as base_url:
        asyncio.run(scenario(base_url))
