"""GET /api/{user_id}/events: each real change of the caller's tasks, in order, to every open stream of
theirs and nobody else's; resumable with Last-Event-ID; bounded per user.

Under tests/api, so `.ci/run` runs these through PgBouncer in transaction mode too, where the
streams poll instead of being woken by LISTEN.
"""

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import httpx
import jsonschema_rs
import psycopg
import pytest
from httpx_sse import aconnect_sse
from starlette.types import Message

from api.app import create_app, openapi_document
from api.auth.dev_tokens import mint_token
from api.events import queries as event_queries
from api.events import stream as event_stream
from api.events.routes import ITEM_SCHEMA
from api.events.services import live_services
from tests.api.events_client import (
    EVENT_TIMEOUT_SECONDS,
    Event,
    Stream,
    async_client,
    opened,
)
from tests.db.test_sql_policy_tests import forget, rows_holding
from tests.support import SECRET, ApiUser, assert_problem, http_scope, new_user, serving, settings_for

Scenario = Callable[[httpx.AsyncClient], Awaitable[None]]

# A write reaches an open stream within this, woken by NOTIFY (or, behind PgBouncer, by its next poll).
PROMPTLY_SECONDS = 2.0


def run(api_url: str, scenario: Scenario) -> None:
    async def main() -> None:
        async with async_client(api_url) as client:
            await scenario(client)

    asyncio.run(main())


async def write_four_changes(
    client: httpx.AsyncClient, user: ApiUser, *watching: Stream
) -> tuple[list[tuple[str, Any]], list[list[Event]]]:
    """Create, rename, rename to the same title (no change), complete, delete: the four events the
    streams must show, each with the task as the write and GET answered with it; and the four each
    stream `watching` sent. Each is read up to the third before the delete: the delete clears the
    task from its earlier events (sql/migrations/0016_deleted_tasks_leave_no_copy_in_events.sql), so
    a stream that came to them after it would rightly send the task.deleted alone."""
    created = await client.post(user.tasks_url, json={"title": "Buy milk"}, headers=user.headers)
    assert created.status_code == 201
    task = created.json()
    url = user.task_url(task["id"])
    renamed = await client.put(url, json={"title": "Buy oat milk"}, headers=user.headers)
    assert renamed.status_code == 200
    same = await client.put(url, json={"title": "Buy oat milk"}, headers=user.headers)
    assert same.status_code == 200
    completed = await client.patch(f"{url}/complete", json={"completed": True}, headers=user.headers)
    assert completed.status_code == 200
    as_got = await client.get(url, headers=user.headers)
    assert as_got.json() == completed.json()
    sent = [await stream.take(3) for stream in watching]
    deleted = await client.delete(url, headers=user.headers)
    assert deleted.status_code == 204
    for events, stream in zip(sent, watching, strict=True):
        events += await stream.take(1)
    expected = [
        ("task.created", task),
        ("task.updated", renamed.json()),
        ("task.updated", as_got.json()),
        ("task.deleted", {"id": task["id"]}),
    ]
    return expected, sent


def kinds_and_bodies(events: list[Event]) -> list[tuple[str, Any]]:
    return [(event.kind, event.data) for event in events]


def test_two_tabs_of_one_user_both_get_every_change_in_order_as_get_returns_it(api_url: str) -> None:
    alice = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        async with opened(client, alice) as tab1, opened(client, alice) as tab2:
            assert tab1.response.status_code == 200
            assert tab1.response.headers["content-type"].startswith("text/event-stream")
            assert tab1.response.headers["cache-control"] == "no-store"
            await tab1.opening_id()
            await tab2.opening_id()
            expected, (first, second) = await write_four_changes(client, alice, tab1, tab2)
            assert kinds_and_bodies(first) == expected
            assert kinds_and_bodies(second) == expected
            # Every event has an id, increasing, the same on both tabs.
            ids = [int(event.id) for event in first]
            assert ids == sorted(set(ids))
            assert ids == [int(event.id) for event in second]

    run(api_url, scenario)


def test_an_event_reads_whole_where_a_reader_splits_lines_at_every_unicode_line_break(api_url: str) -> None:
    """U+2028, U+2029 and U+0085 went raw into an event's data line: valid in an event stream, where
    only CR and LF end a line, but a reader that splits lines as str.splitlines() does (httpx's
    iter_lines) cut the task's JSON at them (the content probe of stop 80). They go escaped."""
    alice = new_user()
    title, description = "ls\u2028ps\u2029nel\x85end", "one\u2028two"

    async def scenario(client: httpx.AsyncClient) -> None:
        async with client.stream("GET", f"/api/{alice.id}/events", headers=alice.headers) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            opening = await _next_block(lines)  # the stream's position, before any write
            assert [line for line in opening if line.startswith("id: ")], opening
            body = {"title": title, "description": description}
            created = await client.post(alice.tasks_url, json=body, headers=alice.headers)
            assert created.status_code == 201, created.text
            event = await _next_block(lines)

        data = [line.removeprefix("data: ") for line in event if line.startswith("data: ")]
        assert [json.loads(line) for line in data] == [created.json()], event
        assert (created.json()["title"], created.json()["description"]) == (title, description)

    run(api_url, scenario)


async def _next_block(lines: AsyncIterator[str]) -> list[str]:
    """The lines of the stream's next block, as a line reader gives them: up to a blank line."""
    block: list[str] = []
    async for line in lines:
        if not line and block:
            return block
        if line:
            block.append(line)
    return block


def test_other_users_streams_receive_nothing_of_one_users_writes(api_url: str) -> None:
    alice, others = new_user(), [new_user() for _ in range(4)]

    async def scenario(client: httpx.AsyncClient) -> None:
        async with (
            opened(client, alice) as own,
            opened(client, others[0]) as s0,
            opened(client, others[1]) as s1,
            opened(client, others[2]) as s2,
            opened(client, others[3]) as s3,
        ):
            streams = [s0, s1, s2, s3]
            for stream in (own, *streams):
                await stream.opening_id()
            expected, (sent,) = await write_four_changes(client, alice, own)
            assert kinds_and_bodies(sent) == expected
            # Each other user now writes once: the first event their stream shows is their own.
            for user, stream in zip(others, streams, strict=True):
                made = await client.post(user.tasks_url, json={"title": "mine"}, headers=user.headers)
                assert kinds_and_bodies([await stream.next()]) == [("task.created", made.json())]

    run(api_url, scenario)


def test_a_write_made_in_the_database_by_hand_reaches_an_open_stream_promptly(
    api_url: str, api_db: psycopg.Connection[Any]
) -> None:
    """A DBA's INSERT at psql does not promise to wake the streams after COMMIT as the API does
    (app.notify_after_commit), so the trigger wakes them itself."""
    alice = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        api_db.execute("insert into users (id) values (%s)", [alice.id])
        async with opened(client, alice) as stream:
            await stream.opening_id()
            api_db.execute("insert into tasks (user_id, title) values (%s, 'by hand')", [alice.id])
            event = await asyncio.wait_for(stream.next(), PROMPTLY_SECONDS)
            assert (event.kind, event.data["title"]) == ("task.created", "by hand")

    run(api_url, scenario)


def test_a_resume_further_behind_than_one_read_gets_every_missed_event_without_another_write(
    api_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream reads `queries.BATCH` events at a time and reads again at once after a full batch: a
    tab coming back after a bulk change must not stop at the first batch and wait, heartbeats and
    all, for the user's next write (the mutation probe, /tmp/s77-mut2, E07: 100 of 150 sent)."""
    monkeypatch.setattr(event_queries, "BATCH", 3)  # the shared app runs in this process
    alice = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        async with opened(client, alice) as stream:
            last_seen = await stream.opening_id()
        missed = []
        for n in range(3 * event_queries.BATCH + 1):
            created = await client.post(alice.tasks_url, json={"title": f"bulk {n}"}, headers=alice.headers)
            missed.append(("task.created", created.json()))
        async with opened(client, alice, last_event_id=last_seen) as resumed:
            assert await resumed.opening_id() == last_seen
            assert kinds_and_bodies(await resumed.take(len(missed))) == missed

    run(api_url, scenario)


@pytest.mark.parametrize("sent_as", ["Last-Event-ID", "lastEventId"])
def test_resume_after_three_missed_writes_delivers_exactly_those_three(api_url: str, sent_as: str) -> None:
    """Resumed with the Last-Event-ID header, or with the `lastEventId` query parameter, where
    EventSource polyfills that send the Authorization header put it (Yaffle's event-source-polyfill):
    read as the header is, not taken for a stream from now."""
    alice = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        created = await client.post(alice.tasks_url, json={"title": "seen"}, headers=alice.headers)
        async with opened(client, alice) as stream:
            last_seen = await stream.opening_id()
        missed = []
        for title in ("one", "two", "three"):
            response = await client.put(
                alice.task_url(created.json()["id"]), json={"title": title}, headers=alice.headers
            )
            missed.append(("task.updated", response.json()))
        where = (
            {"last_event_id": last_seen}
            if sent_as == "Last-Event-ID"
            else {"last_event_id_in_query": last_seen}
        )
        async with opened(client, alice, **where) as resumed:
            assert await resumed.opening_id() == last_seen
            assert kinds_and_bodies(await resumed.take(3)) == missed
            # Then live, with nothing sent twice: the next event is the next write.
            later = await client.post(alice.tasks_url, json={"title": "later"}, headers=alice.headers)
            assert kinds_and_bodies([await resumed.next()]) == [("task.created", later.json())]

    run(api_url, scenario)


def test_a_stream_resumed_from_before_a_delete_gets_the_deletion_and_no_copy_of_the_deleted_task(
    api_url: str, api_db: psycopg.Connection[Any]
) -> None:
    """Deleted means gone, from the events too (0016_deleted_tasks_leave_no_copy_in_events.sql): the
    delete clears the task from its earlier events in its own transaction, so no stream, whenever it
    resumes, is sent its title again; and no reset either, from before the task or from one of its
    events, whose ids stay where they were."""
    alice = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        async with opened(client, alice) as stream:
            before_the_task = await stream.opening_id()
        created = await client.post(
            alice.tasks_url,
            json={"title": "SECRET PLAN", "description": "very private"},
            headers=alice.headers,
        )
        url = alice.task_url(created.json()["id"])
        await client.put(url, json={"title": "SECRET PLAN v2"}, headers=alice.headers)
        async with opened(client, alice) as stream:
            after_its_rename = await stream.opening_id()
        kept = await client.post(alice.tasks_url, json={"title": "kept"}, headers=alice.headers)
        assert (await client.delete(url, headers=alice.headers)).status_code == 204

        deletion = ("task.deleted", {"id": created.json()["id"]})
        async with opened(client, alice, last_event_id=before_the_task) as resumed:
            await resumed.opening_id()
            assert kinds_and_bodies(await resumed.take(2)) == [("task.created", kept.json()), deletion]
        async with opened(client, alice, last_event_id=after_its_rename) as resumed:
            assert await resumed.opening_id() == after_its_rename
            assert kinds_and_bodies(await resumed.take(2)) == [("task.created", kept.json()), deletion]

        # Nor is anything of it left in any row of any table, for any request to read.
        assert rows_holding(api_db, ("SECRET PLAN", "very private")) == []

    run(api_url, scenario)


def test_an_id_sent_both_as_header_and_query_is_one_claim_only_when_they_agree(api_url: str) -> None:
    """The same id in Last-Event-ID and `lastEventId` is one claim of where the client is; two
    different ids are no id at all (reset), as is a malformed one in the query."""
    alice = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        created = await client.post(alice.tasks_url, json={"title": "seen"}, headers=alice.headers)
        async with opened(client, alice) as stream:
            last_seen = await stream.opening_id()
        response = await client.put(
            alice.task_url(created.json()["id"]), json={"title": "one"}, headers=alice.headers
        )
        async with opened(client, alice, last_seen, last_event_id_in_query=last_seen) as resumed:
            assert await resumed.opening_id() == last_seen
            assert kinds_and_bodies(await resumed.take(1)) == [("task.updated", response.json())]
            newest = resumed.last_id
        async with opened(client, alice, last_seen, last_event_id_in_query=newest) as stream:
            assert (await stream.next()).kind == "reset"
        for malformed in ("abc", "-1"):
            async with opened(client, alice, last_event_id_in_query=malformed) as stream:
                assert kinds_and_bodies([await stream.next()]) == [("reset", {})]

    run(api_url, scenario)


def test_an_open_stream_that_comes_to_a_deleted_tasks_changes_after_the_delete_sends_the_deletion_alone(
    api_url: str, api_db: psycopg.Connection[Any]
) -> None:
    """A stream behind the writes (here: the create, rename and delete commit together, so it cannot
    read between them) finds the task's changes cleared by the time it reads them: it sends the
    task.deleted alone, then goes on live, with no reset."""
    alice = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        await client.post(alice.tasks_url, json={"title": "seen"}, headers=alice.headers)
        async with opened(client, alice) as stream:
            await stream.opening_id()
            with api_db.transaction():
                [(task_id,)] = api_db.execute(
                    "insert into tasks (user_id, title) values (%s, 'SECRET') returning id", [alice.id]
                ).fetchall()
                api_db.execute("update tasks set title = 'SECRET v2' where id = %s", [task_id])
                api_db.execute("delete from tasks where id = %s", [task_id])
            deleted = await asyncio.wait_for(stream.next(), PROMPTLY_SECONDS)
            assert (deleted.kind, deleted.data) == ("task.deleted", {"id": task_id})
            later = await client.post(alice.tasks_url, json={"title": "later"}, headers=alice.headers)
            assert kinds_and_bodies([await stream.next()]) == [("task.created", later.json())]

    run(api_url, scenario)


@pytest.mark.parametrize("sent_as", ["Last-Event-ID", "lastEventId", "both"])
def test_an_empty_last_event_id_is_none_and_the_stream_starts_from_now_without_reset(
    api_url: str, sent_as: str
) -> None:
    """WHATWG's EventSource never sends an empty last event ID: the empty string is none. A client
    that sends one anyway (a fetch-based one that sends what it holds before any id came) has missed
    nothing it could be told about: the stream starts from now, as with no id, not with a reset."""
    alice = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        await client.post(alice.tasks_url, json={"title": "before"}, headers=alice.headers)
        async with opened(client, alice) as stream:
            now = await stream.opening_id()
        where = {
            "Last-Event-ID": {"last_event_id": ""},
            "lastEventId": {"last_event_id_in_query": ""},
            "both": {"last_event_id": "", "last_event_id_in_query": ""},
        }[sent_as]
        async with opened(client, alice, **where) as stream:
            assert await stream.opening_id() == now
            later = await client.post(alice.tasks_url, json={"title": "later"}, headers=alice.headers)
            assert kinds_and_bodies([await stream.next()]) == [("task.created", later.json())]
        # Beside an id in the other place, an empty one is no second claim: the id is resumed from.
        async with opened(client, alice, "", last_event_id_in_query=now) as stream:
            assert await stream.opening_id() == now
            assert kinds_and_bodies([await stream.next()]) == [("task.created", later.json())]

    run(api_url, scenario)


def test_a_malformed_last_event_id_starts_with_reset(api_url: str) -> None:
    alice = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        # Signed, spaced within, past bigint (2**63), or more digits than any bigint has, zeros or not.
        beyond = ("9223372036854775808", "99999999999999999999", "00000000000000000001", "1" * 24)
        for malformed in ("abc", "-1", "+1", "1.5", "1 2", *beyond):
            async with opened(client, alice, last_event_id=malformed) as stream:
                assert stream.response.status_code == 200
                assert kinds_and_bodies([await stream.next()]) == [("reset", {})]
        # Two lines are two claims of where the client is, even when each is an id it may use.
        await client.post(alice.tasks_url, json={"title": "one"}, headers=alice.headers)
        async with opened(client, alice) as stream:
            kept = await stream.opening_id()
        headers = httpx.Headers([*alice.headers.items(), ("Last-Event-ID", kept), ("Last-Event-ID", kept)])
        async with aconnect_sse(client, "GET", f"/api/{alice.id}/events", headers=headers) as source:
            first = await anext(source.aiter_sse())
            assert (first.event, first.data) == ("reset", "{}")

    run(api_url, scenario)


def test_an_event_id_that_is_no_longer_kept_or_not_yours_starts_with_reset(
    api_url: str, api_db: psycopg.Connection[Any]
) -> None:
    alice, bob = new_user(), new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        await client.post(bob.tasks_url, json={"title": "bob's"}, headers=bob.headers)
        async with opened(client, bob) as stream:
            bobs_id = await stream.opening_id()
        async with opened(client, alice, last_event_id=bobs_id) as stream:
            assert kinds_and_bodies([await stream.next()]) == [("reset", {})]
        # Nor is an id not issued yet (a client of a database since restored from a backup).
        for not_yet in (str(int(bobs_id) + 1_000_000), "9223372036854775807"):
            async with opened(client, alice, last_event_id=not_yet) as stream:
                assert kinds_and_bodies([await stream.next()]) == [("reset", {})]

        created = await client.post(alice.tasks_url, json={"title": "old"}, headers=alice.headers)
        async with opened(client, alice) as stream:
            old_id = await stream.opening_id()
        # The event is older than EVENTS_RETENTION_HOURS: alice's next write purges it.
        api_db.execute(
            "update task_events set created_at = now() - interval '25 hours' where user_id = %s", [alice.id]
        )
        renamed = await client.put(
            alice.task_url(created.json()["id"]), json={"title": "new"}, headers=alice.headers
        )
        stored = api_db.execute("select kind from task_events where user_id = %s", [alice.id]).fetchall()
        assert stored == [("task.updated",)]
        async with opened(client, alice, last_event_id=old_id) as stream:
            reset = await stream.next()
            assert (reset.kind, reset.data) == ("reset", {})
            # The reset carries where the stream now is: the event kept after the purge.
            assert int(reset.id) > int(old_id)
            del renamed

    run(api_url, scenario)


def test_an_event_older_than_the_retention_starts_with_reset_before_any_write_purges_it(
    api_url: str, api_db: psycopg.Connection[Any]
) -> None:
    alice = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        created = await client.post(alice.tasks_url, json={"title": "old"}, headers=alice.headers)
        async with opened(client, alice) as stream:
            old_id = await stream.opening_id()
        await client.put(alice.task_url(created.json()["id"]), json={"title": "older"}, headers=alice.headers)
        api_db.execute(
            "update task_events set created_at = now() - interval '25 hours' where user_id = %s", [alice.id]
        )
        # Nothing has purged them: alice has not written since. Ordered by the column, not by the
        # text the select makes of it: '100' sorts before '99'.
        [(first,), (newest,)] = api_db.execute(
            "select id::text from task_events where user_id = %s order by task_events.id", [alice.id]
        ).fetchall()
        assert first == old_id
        # From before her newest event, which is past the retention too (for her newest itself, see
        # the next test).
        async with opened(client, alice, last_event_id=old_id) as stream:
            reset = await stream.next()
            assert (reset.kind, reset.data, reset.id) == ("reset", {}, newest)

    run(api_url, scenario)


def test_an_idle_users_newest_event_older_than_the_retention_is_resumed_from_without_reset(
    api_url: str, api_db: psycopg.Connection[Any]
) -> None:
    """Nothing after the newest event can have been missed, and once a write purges it her streams
    resume from where the purge stopped: so they do before that purge too, on every reconnect."""
    alice = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        await client.post(alice.tasks_url, json={"title": "old"}, headers=alice.headers)
        async with opened(client, alice) as stream:
            newest = await stream.opening_id()
        api_db.execute(
            "update task_events set created_at = now() - interval '25 hours' where user_id = %s", [alice.id]
        )
        # Her tab reconnects, again and again, each time with the id its last stream opened with.
        for _ in range(3):
            async with opened(client, alice, last_event_id=newest) as resumed:
                assert resumed.response.status_code == 200
                assert await resumed.opening_id() == newest
        # Nothing was purged meanwhile: the resume did not wait for a write to do it.
        stored = api_db.execute("select id::text from task_events where user_id = %s", [alice.id]).fetchall()
        assert stored == [(newest,)]
        assert api_db.execute("select from task_event_purges where user_id = %s", [alice.id]).fetchall() == []
        # Then live: her next change is the first thing the resumed stream sends.
        async with opened(client, alice, last_event_id=newest) as resumed:
            assert await resumed.opening_id() == newest
            later = await client.post(alice.tasks_url, json={"title": "later"}, headers=alice.headers)
            assert kinds_and_bodies([await resumed.next()]) == [("task.created", later.json())]

    run(api_url, scenario)


def test_a_stream_resumed_from_before_any_event_starts_with_reset_once_one_was_purged(
    api_url: str, api_db: psycopg.Connection[Any]
) -> None:
    alice, bob = new_user(), new_user()

    def make_events_old(user: ApiUser) -> None:
        """Older than EVENTS_RETENTION_HOURS: the user's next write purges them."""
        api_db.execute(
            "update task_events set created_at = now() - interval '25 hours' where user_id = %s", [user.id]
        )

    async def scenario(client: httpx.AsyncClient) -> None:
        # A user with no event yet is handed 0, "before any event".
        async with opened(client, alice) as stream:
            assert await stream.opening_id() == "0"
        created = await client.post(alice.tasks_url, json={"title": "old"}, headers=alice.headers)
        assert created.status_code == 201
        # Nothing of hers purged: from 0, every event she has.
        async with opened(client, alice, last_event_id="0") as stream:
            assert await stream.opening_id() == "0"
            assert kinds_and_bodies([await stream.next()]) == [("task.created", created.json())]

        # Another user's purge is theirs alone.
        bobs = await client.post(bob.tasks_url, json={"title": "bob's"}, headers=bob.headers)
        make_events_old(bob)
        await client.put(
            bob.task_url(bobs.json()["id"]), json={"title": "bob's, renamed"}, headers=bob.headers
        )
        async with opened(client, alice, last_event_id="0") as stream:
            assert kinds_and_bodies([await stream.next()]) == [("task.created", created.json())]

        make_events_old(alice)
        renamed = await client.put(
            alice.task_url(created.json()["id"]), json={"title": "new"}, headers=alice.headers
        )
        assert renamed.status_code == 200
        kept = api_db.execute("select id from task_events where user_id = %s", [alice.id]).fetchall()
        assert len(kept) == 1, kept
        # From 0 now, the stream would skip her purged create: it starts with a reset instead, at
        # the event kept after the purge, and then goes on live.
        async with opened(client, alice, last_event_id="0") as stream:
            reset = await stream.next()
            assert (reset.kind, reset.data, reset.id) == ("reset", {}, str(kept[0][0]))
            later = await client.post(alice.tasks_url, json={"title": "later"}, headers=alice.headers)
            assert kinds_and_bodies([await stream.next()]) == [("task.created", later.json())]

    run(api_url, scenario)
    purged = api_db.execute(
        "select user_id, purged_through > 0 from task_event_purges where user_id in (%s, %s) order by 1",
        sorted([alice.id, bob.id]),
    ).fetchall()
    assert purged == sorted([(alice.id, True), (bob.id, True)])


def test_an_idle_users_expired_events_are_purged_by_anyones_write_and_her_streams_go_on_without_reset(
    api_url: str, api_db: psycopg.Connection[Any]
) -> None:
    alice, bob = new_user(), new_user()

    def events_of(user: ApiUser) -> list[tuple[str, Any]]:
        rows = api_db.execute("select kind, task from task_events where user_id = %s order by id", [user.id])
        return rows.fetchall()

    async def scenario(client: httpx.AsyncClient) -> None:
        created = await client.post(alice.tasks_url, json={"title": "a secret"}, headers=alice.headers)
        assert (
            await client.delete(alice.task_url(created.json()["id"]), headers=alice.headers)
        ).status_code == 204
        async with opened(client, alice) as stream:
            seen_all = await stream.opening_id()
        assert [kind for kind, _ in events_of(alice)] == ["task.created", "task.deleted"]
        # Past EVENTS_RETENTION_HOURS, and older than any other test's, so the drain takes hers first.
        api_db.execute(
            "update task_events set created_at = now() - interval '400 days' where user_id = %s", [alice.id]
        )

        # Alice writes no more; bob's write purges her events, her deleted task's content with them.
        assert (
            await client.post(bob.tasks_url, json={"title": "bob's"}, headers=bob.headers)
        ).status_code == 201
        assert events_of(alice) == []
        assert [kind for kind, _ in events_of(bob)] == ["task.created"]

        # Her tab, which had seen everything, goes on without a reset, and so does a new one, which
        # opens where the purge stopped; both get her next change.
        async with opened(client, alice, last_event_id=seen_all) as resumed, opened(client, alice) as fresh:
            assert await resumed.opening_id() == seen_all
            assert await fresh.opening_id() == seen_all
            later = await client.post(alice.tasks_url, json={"title": "later"}, headers=alice.headers)
            assert kinds_and_bodies([await resumed.next()]) == [("task.created", later.json())]
            assert kinds_and_bodies([await fresh.next()]) == [("task.created", later.json())]
        # Resuming from where the purge stopped, now that an event came since, is no longer enough.
        async with opened(client, alice, last_event_id=seen_all) as stream:
            assert kinds_and_bodies([await stream.next()]) == [("reset", {})]

    run(api_url, scenario)


def test_a_stream_resumed_from_before_any_event_starts_with_reset_once_one_is_older_than_the_retention(
    api_url: str, api_db: psycopg.Connection[Any]
) -> None:
    """Before any write purges them: 0 must not replay what the retention says is gone, a deleted
    task's title among it, when resuming from that very event would be told to reset."""
    alice = new_user()

    def events_of_alice() -> list[tuple[int, str]]:
        rows = api_db.execute("select id, kind from task_events where user_id = %s order by id", [alice.id])
        return rows.fetchall()

    async def scenario(client: httpx.AsyncClient) -> None:
        created = await client.post(alice.tasks_url, json={"title": "a secret"}, headers=alice.headers)
        assert created.status_code == 201
        deleted = await client.delete(alice.task_url(created.json()["id"]), headers=alice.headers)
        assert deleted.status_code == 204
        # Past EVENTS_RETENTION_HOURS, the create only: one old event is enough.
        api_db.execute(
            "update task_events set created_at = now() - interval '25 hours'"
            " where user_id = %s and kind = 'task.created'",
            [alice.id],
        )
        # Nothing has purged them: no write since, and no purge recorded.
        stored = events_of_alice()
        assert [kind for _, kind in stored] == ["task.created", "task.deleted"]
        assert api_db.execute("select from task_event_purges where user_id = %s", [alice.id]).fetchall() == []
        # The first thing sent, from 0 as from the old event itself: a reset after her newest event.
        for last_event_id in ("0", str(stored[0][0])):
            headers = {**alice.headers, "Last-Event-ID": last_event_id}
            async with aconnect_sse(client, "GET", f"/api/{alice.id}/events", headers=headers) as source:
                first = await anext(source.aiter_sse())
                assert (first.event, first.data, first.id) == ("reset", "{}", str(stored[-1][0]))
        async with opened(client, alice, last_event_id="0") as stream:
            reset = await stream.next()
            assert (reset.kind, reset.data, reset.id) == ("reset", {}, str(stored[-1][0]))
            # Then live, never sending the old events.
            later = await client.post(alice.tasks_url, json={"title": "later"}, headers=alice.headers)
            assert kinds_and_bodies([await stream.next()]) == [("task.created", later.json())]

    run(api_url, scenario)


def test_a_stream_sends_reset_rather_than_an_event_older_than_the_retention(
    api_url: str, api_db: psycopg.Connection[Any]
) -> None:
    """An event is numbered when its transaction takes its user's lock, and stamped when that
    transaction began, so one can be older than the event before it; and an open stream that could
    not read for longer than the retention finds its unsent events old. Either way they count as gone,
    as for a stream resuming from them, purged or not."""
    alice = new_user()

    def add_an_old_event() -> str:
        """A task created by hand, its event aged past EVENTS_RETENTION_HOURS in the same
        transaction, so no stream can read it fresh; the event's id."""
        with api_db.transaction():
            api_db.execute("insert into tasks (user_id, title) values (%s, 'old news')", [alice.id])
            [(event_id,)] = api_db.execute(
                "update task_events set created_at = now() - interval '25 hours'"
                " where id = (select max(id) from task_events where user_id = %s) returning id",
                [alice.id],
            ).fetchall()
        return str(event_id)

    async def scenario(client: httpx.AsyncClient) -> None:
        await client.post(alice.tasks_url, json={"title": "seen"}, headers=alice.headers)
        async with opened(client, alice) as stream:
            await stream.opening_id()
            old = add_an_old_event()
            reset = await asyncio.wait_for(stream.next(), PROMPTLY_SECONDS)
            assert (reset.kind, reset.data, reset.id) == ("reset", {}, old)
            # Then live from there, with nothing sent twice.
            later = await client.post(alice.tasks_url, json={"title": "later"}, headers=alice.headers)
            sent = await stream.next()
            assert kinds_and_bodies([sent]) == [("task.created", later.json())]
            later_id = sent.id
        # A resume from the event before an old one, itself within the retention, is reset too.
        old = add_an_old_event()
        [(before,)] = api_db.execute(
            "select max(id)::text from task_events where user_id = %s and id < %s", [alice.id, int(old)]
        ).fetchall()
        assert before == later_id
        async with opened(client, alice, last_event_id=before) as stream:
            reset = await stream.next()
            assert (reset.kind, reset.data, reset.id) == ("reset", {}, old)

    run(api_url, scenario)


def test_a_stream_resumed_from_before_an_event_removed_by_hand_starts_with_reset(
    api_url: str, api_db: psycopg.Connection[Any]
) -> None:
    alice = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        created = await client.post(alice.tasks_url, json={"title": "one"}, headers=alice.headers)
        async with opened(client, alice) as stream:
            seen_create = await stream.opening_id()
        await client.put(alice.task_url(created.json()["id"]), json={"title": "two"}, headers=alice.headers)
        [(renamed,)] = api_db.execute(
            "select id from task_events where user_id = %s and id > %s", [alice.id, int(seen_create)]
        ).fetchall()
        # A DBA removes the rename's event, and not the create's, which a tab saw last.
        api_db.execute("delete from task_events where id = %s", [renamed])
        async with opened(client, alice, last_event_id=seen_create) as stream:
            reset = await stream.next()
            assert (reset.kind, reset.data, reset.id) == ("reset", {}, str(renamed))

    run(api_url, scenario)


def test_an_event_the_api_cannot_render_is_sent_as_reset_and_logged_and_the_stream_goes_on(
    api_url: str, api_db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """An event whose task the model refuses (stored before the database refused such a task, or
    written by hand) is a reset with its id, once per stream that meets it, rather than a stream cut
    past its 200, and every reconnect from before it cut again, for EVENTS_RETENTION_HOURS."""
    alice = new_user()
    unrenderable: list[int] = []

    async def scenario(client: httpx.AsyncClient) -> None:
        created = await client.post(alice.tasks_url, json={"title": "one"}, headers=alice.headers)
        async with opened(client, alice) as stream:
            opening = await stream.opening_id()
            # A DBA's task with version 0, as its event was stored before 0015.
            [(bad,)] = api_db.execute(
                "insert into task_events (user_id, kind, task_id, task)"
                " select user_id, 'task.updated', id, to_jsonb(t) || '{\"version\": 0}' from tasks as t"
                " where id = %s returning id",
                [created.json()["id"]],
            ).fetchall()
            unrenderable.append(bad)
            renamed = await client.put(
                alice.task_url(created.json()["id"]), json={"title": "two"}, headers=alice.headers
            )
            assert renamed.status_code == 200
            reset, update = await stream.take(2)
            assert (reset.kind, reset.data, reset.id) == ("reset", {}, str(bad))
            assert (update.kind, update.data) == ("task.updated", renamed.json())
        # A tab that reconnects from before it is told the same, and goes on too.
        async with opened(client, alice, last_event_id=opening) as again:
            assert again.response.status_code == 200
            assert kinds_and_bodies(await again.take(2)) == [("reset", {}), ("task.updated", renamed.json())]
        # What the reset asks the client to refetch.
        listed = await client.get(alice.tasks_url, headers=alice.headers)
        assert (listed.status_code, listed.json()) == (200, [renamed.json()])

    with caplog.at_level(logging.ERROR, logger="api.events.stream"):
        run(api_url, scenario)
    (bad,) = unrenderable
    logged = [record.getMessage() for record in caplog.records if record.name == "api.events.stream"]
    expected = (
        f"event {bad} cannot be rendered, so its stream sends reset in its place:"
        " version: Input should be greater than or equal to 1"
    )
    assert logged == [expected, expected], "once for each of the two streams"
    assert api_db.execute("select count(*) from task_events where id = %s", [bad]).fetchone() == (1,)


def test_an_open_stream_whose_next_events_were_purged_before_it_read_them_sends_reset(
    api_url: str, api_db: psycopg.Connection[Any]
) -> None:
    """A stream far enough behind may find the events it was about to send purged (a write keeps at
    most MAX_TASKS_PER_USER of a user's events): it says reset, as a resume from there would, rather
    than go on as if they never happened."""
    alice = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        seen = await client.post(alice.tasks_url, json={"title": "seen"}, headers=alice.headers)
        async with opened(client, alice) as stream:
            await stream.opening_id()
            # Committed together, so the stream cannot read the new events before they are gone.
            with api_db.transaction():
                api_db.execute("insert into tasks (user_id, title) values (%s, 'missed')", [alice.id])
                api_db.execute("delete from task_events where user_id = %s", [alice.id])
            [(purged_through,)] = api_db.execute(
                "select purged_through from task_event_purges where user_id = %s", [alice.id]
            ).fetchall()
            reset = await asyncio.wait_for(stream.next(), PROMPTLY_SECONDS)
            assert (reset.kind, reset.data, reset.id) == ("reset", {}, str(purged_through))
            # Then live from there, with nothing sent twice.
            renamed = await client.put(
                alice.task_url(seen.json()["id"]), json={"title": "renamed"}, headers=alice.headers
            )
            assert kinds_and_bodies([await stream.next()]) == [("task.updated", renamed.json())]

    run(api_url, scenario)


def test_an_erased_users_open_stream_sends_reset_and_goes_on_live(
    api_url: str, api_db_url: str, api_db: psycopg.Connection[Any]
) -> None:
    """An erasure removes the user's events and their purge record (docs/operations.md, "Erasing a
    user"): a stream open meanwhile is told to refetch, as its reconnect would be, rather than leave
    the erased tasks on the screen."""
    alice = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        created = await client.post(alice.tasks_url, json={"title": "secret"}, headers=alice.headers)
        async with opened(client, alice) as stream:
            await stream.opening_id()
            renamed = await client.put(
                alice.task_url(created.json()["id"]), json={"title": "still secret"}, headers=alice.headers
            )
            assert kinds_and_bodies([await stream.next()]) == [("task.updated", renamed.json())]

            erased = forget(api_db_url, "-v", f"user_id={alice.id}")
            assert erased.returncode == 0, erased.stderr
            assert api_db.execute(
                "select count(*) from task_events where user_id = %s", [alice.id]
            ).fetchone() == (0,)

            reset = await asyncio.wait_for(stream.next(), PROMPTLY_SECONDS)
            assert (reset.kind, reset.data) == ("reset", {})
            # What the reset asks the client to refetch: nothing is left.
            listed = await client.get(alice.tasks_url, headers=alice.headers)
            assert (listed.status_code, listed.json()) == (200, [])
            # Then live, for a token of theirs that is still accepted.
            again = await client.post(alice.tasks_url, json={"title": "new"}, headers=alice.headers)
            assert kinds_and_bodies([await stream.next()]) == [("task.created", again.json())]

    run(api_url, scenario)


def test_an_erased_users_open_stream_sends_reset_even_when_her_tasks_were_all_deleted_before(
    api_url: str, api_db_url: str, api_db: psycopg.Connection[Any]
) -> None:
    """With no task left to delete, the erasure fires no trigger on tasks, whose NOTIFY woke the
    streams: the script wakes them itself, so a stream open meanwhile learns of it at once rather
    than at its token's expiry, and is told to reset (its events are gone)."""
    alice = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        created = await client.post(alice.tasks_url, json={"title": "secret"}, headers=alice.headers)
        async with opened(client, alice) as stream:
            await stream.opening_id()
            deleted = await client.delete(alice.task_url(created.json()["id"]), headers=alice.headers)
            assert deleted.status_code == 204
            assert (await stream.next()).kind == "task.deleted"

            erased = forget(api_db_url, "-v", f"user_id={alice.id}")
            assert erased.returncode == 0, erased.stderr
            assert api_db.execute(
                "select (select count(*) from task_events where user_id = %(u)s)"
                " + (select count(*) from task_event_purges where user_id = %(u)s)"
                " + (select count(*) from users where id = %(u)s)",
                {"u": alice.id},
            ).fetchone() == (0,)

            reset = await asyncio.wait_for(stream.next(), PROMPTLY_SECONDS)
            assert (reset.kind, reset.data) == ("reset", {})

    run(api_url, scenario)


def test_the_sixth_stream_of_a_user_is_refused_and_a_closed_one_gives_its_place_back(api_url: str) -> None:
    alice, bob = new_user(), new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        async with (
            opened(client, alice) as s1,
            opened(client, alice) as s2,
            opened(client, alice) as s3,
            opened(client, alice) as s4,
        ):
            for stream in (s1, s2, s3, s4):
                await stream.opening_id()
            async with opened(client, alice) as fifth:
                await fifth.opening_id()
                async with opened(client, alice) as sixth:
                    detail = sixth.refusal(429, "too-many-requests")["detail"]
                    # Per process: under `serve --workers 2` a user refused by one worker may hold
                    # more streams on the other, and "on this server" told them otherwise.
                    assert "MAX_STREAMS_PER_USER" in detail
                    assert "on this server process" in detail
                    # As documented: the rate-limit fields come with RATE_LIMIT_PER_MINUTE's 429 only.
                    assert "RateLimit" not in sixth.response.headers
                    assert "RateLimit-Policy" not in sixth.response.headers
                # Another user is not affected.
                async with opened(client, bob) as bobs:
                    assert bobs.response.status_code == 200
            # The fifth closed: its place is free again, at once (the server waits for it).
            async with opened(client, alice) as again:
                await again.opening_id()

    run(api_url, scenario)


def test_opens_waiting_for_one_place_take_it_in_turn_and_none_is_refused_while_it_comes_back(
    api_db_url: str,
) -> None:
    """Two opens wait for a user's one place (MAX_STREAMS_PER_USER=1): when it is given back one
    takes it and the other waits on, for the place the first gives back in turn. Both used to pass
    the wait, read where the user's events stand, and the second was refused with 429 at once."""
    alice = new_user()
    app = create_app(settings_for(api_db_url, max_streams_per_user=1))

    took_it = asyncio.Event()

    async def open_and_hold(client: httpx.AsyncClient, release: asyncio.Event) -> int:
        async with opened(client, alice) as stream:
            if stream.response.status_code == 200:
                await stream.opening_id()
                took_it.set()
                await release.wait()
            return stream.response.status_code

    async def scenario(client: httpx.AsyncClient) -> None:
        release = asyncio.Event()
        async with opened(client, alice) as holder:
            await holder.opening_id()
            waiting = [asyncio.create_task(open_and_hold(client, release)) for _ in range(2)]
            # Both are waiting for the place: each holds an in-flight slot while it waits (the
            # holder's stream gave its slot back once it started), and neither has a stream yet.
            async with asyncio.timeout(10):
                # The cap has no event to wait on: asked until it says so.
                while live_services(app).in_flight.held(alice.id) < 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert live_services(app).events_hub.streams_of(alice.id) == 1
        # The holder closed: one waiter has the place, and the other waits on.
        await asyncio.wait_for(took_it.wait(), 0.5)
        assert not any(task.done() for task in waiting), "none was refused"
        release.set()  # the first gives it back: the second takes it, and closes at once
        assert await asyncio.gather(*waiting) == [200, 200]

    with serving(app) as base_url:
        run(base_url, scenario)


def test_a_stream_whose_start_the_database_refuses_gives_its_place_back(migrated_db_url: str) -> None:
    """The place is taken before the stream reads where the user's events stand: a read that fails
    (here cancelled by DB_STATEMENT_TIMEOUT_MS behind a lock) must give it back, or the user's one
    place would be held until the worker restarts. In a database of its own: the lock would stall the
    shared app's isolation check, and every request of the tests beside it, while it is held."""
    alice = new_user()
    app = create_app(settings_for(migrated_db_url, max_streams_per_user=1, db_statement_timeout_ms=100))

    async def scenario(client: httpx.AsyncClient) -> None:
        with psycopg.connect(migrated_db_url) as locker:
            locker.execute("lock table task_events in access exclusive mode")
            async with opened(client, alice) as refused:
                assert_problem(refused.response, 503, "statement-timeout")
        assert live_services(app).events_hub.streams_of(alice.id) == 0
        async with opened(client, alice) as again:
            await again.opening_id()

    with serving(app) as base_url:
        run(base_url, scenario)


def test_a_stream_whose_client_left_before_its_first_event_gives_its_place_back(api_db_url: str) -> None:
    """A client that leaves while the stream's head is still being sent: its events are never read,
    and the place the stream took must be given back all the same, or it would count against the
    user's MAX_STREAMS_PER_USER until the worker restarts. Driven over ASGI, to leave at that moment."""
    alice = new_user()
    app = create_app(settings_for(api_db_url))
    scope = http_scope(
        "GET", f"/api/{alice.id}/events", [(b"authorization", f"Bearer {alice.token}".encode())]
    )

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await asyncio.sleep(0.1)  # a slow network: the client leaves meanwhile

    async def scenario() -> int:
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)
            return live_services(app).events_hub.streams_of(alice.id)

    assert asyncio.run(scenario()) == 0


def test_users_refused_by_a_full_worker_leave_nothing_behind_in_it(api_db_url: str) -> None:
    """A refused stream costs the worker nothing it keeps: otherwise every user id a client makes up
    while the worker is full would stay in its memory for the life of the process."""
    holder, refused_users = new_user(), [new_user() for _ in range(20)]
    app = create_app(settings_for(api_db_url, max_streams_per_worker=1))

    async def scenario(client: httpx.AsyncClient) -> None:
        async with opened(client, holder) as held:
            await held.opening_id()
            for user in refused_users:
                async with opened(client, user) as refused:
                    assert_problem(refused.response, 503, "streams-unavailable")
            # The users the hub keeps streams for: the one user who holds a stream, nobody else.
            assert live_services(app).events_hub.users_with_streams() == 1
            assert live_services(app).events_hub.streams_of(holder.id) == 1

    with serving(app) as base_url:
        run(base_url, scenario)


def test_a_stream_refused_for_want_of_a_place_reads_nothing_first(migrated_db_url: str) -> None:
    """A refused try costs the database nothing: each one read where its user's events stand before it
    was refused, so a reconnect storm into a full worker took the pool's connections from the
    requests being served, only to be told 503. Here every read of events waits on a lock, and both
    refusals come all the same, at once (in a database of its own, as the test before)."""
    holder, other, refused_user = new_user(), new_user(), new_user()
    app = create_app(settings_for(migrated_db_url, max_streams_per_user=1, max_streams_per_worker=2))

    async def scenario(client: httpx.AsyncClient) -> None:
        async with opened(client, holder) as held, opened(client, other) as also:
            for stream in (held, also):
                await stream.opening_id()
            with psycopg.connect(migrated_db_url) as locker:
                locker.execute("lock table task_events in access exclusive mode")
                refusals = ((holder, 429, "too-many-requests"), (refused_user, 503, "streams-unavailable"))
                for user, status, problem in refusals:
                    async with asyncio.timeout(PROMPTLY_SECONDS), opened(client, user) as refused:
                        refused.refusal(status, problem)

    with serving(app) as base_url:
        run(base_url, scenario)


def test_a_stream_asked_for_while_the_worker_shuts_down_is_refused_with_retry_after(api_db_url: str) -> None:
    """Not a 200 that ends at once, which a client would reconnect into at once, again and again: a
    503 it already knows to retry after Retry-After, by when another worker takes the stream."""
    alice = new_user()
    app = create_app(settings_for(api_db_url))

    async def scenario(client: httpx.AsyncClient) -> None:
        async with opened(client, alice) as refused:
            assert "shutting down" in refused.refusal(503, "streams-unavailable")["detail"]
        assert live_services(app).events_hub.streams_of(alice.id) == 0

    with serving(app) as base_url:
        # As the worker's SIGTERM handler does (api/ops/worker.py); no stream is open to wake.
        live_services(app).events_hub.close()
        run(base_url, scenario)


def test_streams_are_authenticated_like_the_task_routes(client: httpx.Client) -> None:
    alice, bob = new_user(), new_user()

    missing = client.get(f"/api/{alice.id}/events")
    assert_problem(missing, 401, "unauthorized")
    other = client.get(f"/api/{alice.id}/events", headers=bob.headers)
    assert_problem(other, 403, "forbidden")


def test_a_stream_ends_when_its_token_stops_being_accepted(api_db_url: str) -> None:
    """At `exp` plus JWT_LEEWAY_SECONDS: a token accepted within the leeway gets a stream that lasts
    as long as the token is accepted, not one that ends at once (and is reopened, and ends...)."""
    user_id = new_user().id

    async def scenario(client: httpx.AsyncClient) -> None:
        # Minted once the server is up, so a slow start does not eat the leeway the stream is read in.
        in_leeway = ApiUser(user_id, mint_token(SECRET, user_id, ttl_seconds=-1))
        async with opened(client, in_leeway) as stream:
            await stream.opening_id()
            created = await client.post(
                in_leeway.tasks_url, json={"title": "late"}, headers=in_leeway.headers
            )
            assert created.status_code == 201
            assert kinds_and_bodies([await stream.next()]) == [("task.created", created.json())]
            # Then the server ends it (no further event, heartbeats at most) once the leeway is over.
            assert [block for block in await stream.end() if block.data] == []
        # And a reconnection with the same token is refused.
        async with opened(client, in_leeway) as again:
            assert again.response.status_code == 401

    with serving(create_app(settings_for(api_db_url, jwt_leeway_seconds=8))) as base_url:
        run(base_url, scenario)


def test_a_stream_ends_once_the_wall_clock_passes_its_tokens_expiry_after_a_step_forward(
    api_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token's expiry is on the wall clock, which NTP may step forward: every route refuses the
    token at once, and a waiting stream, which timed one wait on the monotonic clock, stayed open
    until that clock caught up (the clock probe, /tmp/s77-clock/stream_jump.sh: 46 s)."""
    user = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        async with opened(client, user) as stream:
            await stream.opening_id()
            # Woken by a change once the worker listens, so that the step comes while it waits again.
            created = await client.post(user.tasks_url, json={"title": "before"}, headers=user.headers)
            assert kinds_and_bodies([await stream.next()]) == [("task.created", created.json())]
            await asyncio.sleep(0.5)  # back in its wait (sooner, the old code also ended it: no step)
            stepped = SimpleNamespace(time=lambda: time.time() + 10 * 86_400)
            monkeypatch.setattr(event_stream, "time", stepped)  # the stream's view of the clocks
            assert [block for block in await stream.end() if block.data] == []

    with serving(create_app(settings_for(api_db_url))) as base_url:
        run(base_url, scenario)


def test_a_quiet_stream_sends_a_comment_every_heartbeat_uncompressed_whatever_accept_encoding(
    api_db_url: str,
) -> None:
    """What keeps a proxy in front from cutting a stream without changes, and from holding its events
    back (docs/operations.md, "Behind a load balancer"): a `:` comment every
    EVENTS_HEARTBEAT_SECONDS, and a response no proxy is asked to buffer, sent as is even to a client
    that would take gzip."""
    alice = new_user()
    heartbeat_seconds = 1

    async def scenario(client: httpx.AsyncClient) -> None:
        headers = {**alice.headers, "Accept-Encoding": "gzip, br"}
        async with client.stream("GET", f"/api/{alice.id}/events", headers=headers) as response:
            assert response.status_code == 200
            assert "content-encoding" not in response.headers
            assert response.headers["x-accel-buffering"] == "no"
            lines = response.aiter_lines()
            assert (await anext(lines)).startswith("id: ")
            comments_at: list[float] = []
            async with asyncio.timeout(heartbeat_seconds * 10):
                while len(comments_at) < 3:
                    line = await anext(lines)
                    assert line == "" or line.startswith(":"), f"no event was written, yet: {line!r}"
                    if line:
                        comments_at.append(time.monotonic())
            gaps = [later - earlier for earlier, later in itertools.pairwise(comments_at)]
            assert all(heartbeat_seconds * 0.5 < gap < heartbeat_seconds * 2 for gap in gaps), gaps

    settings = settings_for(api_db_url, events_heartbeat_seconds=heartbeat_seconds)
    with serving(create_app(settings)) as base_url:
        run(base_url, scenario)


def test_the_openapi_document_describes_the_stream_and_its_events(client: httpx.Client) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/api/{user_id}/events"]["get"]

    assert operation["operationId"] == "streamEvents"
    parameters = {(parameter["name"], parameter["in"]) for parameter in operation["parameters"]}
    assert {("Last-Event-ID", "header"), ("lastEventId", "query")} <= parameters
    items = operation["responses"]["200"]["content"]["text/event-stream"][ITEM_SCHEMA]["oneOf"]
    kinds = {item["properties"].get("event", {}).get("const") for item in items}
    assert kinds == {None, "task.created", "task.updated", "task.deleted", "reset"}
    updated = next(item for item in items if item["properties"].get("event") == {"const": "task.updated"})
    assert updated["properties"]["data"]["contentSchema"] == {"$ref": "#/components/schemas/TaskPublic"}
    assert {"401", "403", "429"} <= set(operation["responses"])
    # A client written from the document alone must expect a reset mid-stream, not only first
    # (tests above: a stream that fell behind, an event it cannot render), and an end before its
    # token expires.
    description = " ".join(operation["description"].split())
    assert "and at any point after, in place of events the stream fell too far behind" in description
    assert "or once the key that signed it is withdrawn) or the server process shuts down" in description


async def items_sent(lines: AsyncIterator[str], count: int) -> list[dict[str, str]]:
    """The next `count` items of a stream's lines as sent: each block's fields by name, comment lines
    (heartbeats) left out, as OpenAPI 3.2's `itemSchema` counts them."""
    items: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    async with asyncio.timeout(EVENT_TIMEOUT_SECONDS):
        while len(items) < count:
            line = await anext(lines)
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
            elif fields:
                items.append(fields)
                fields = {}
    return items


def test_every_item_a_stream_sends_is_one_the_openapi_document_describes(api_url: str) -> None:
    """The document's schema of each item of the stream (`ITEM_SCHEMA`), which a client may be
    generated from, holds for what the stream really sends: the opening id, each kind of event, and
    a reset, each `data:` against its `contentSchema` too (a JSON Schema validator does not look
    inside a string on its own)."""
    document = openapi_document()
    content = document["paths"]["/api/{user_id}/events"]["get"]["responses"]["200"]["content"]
    kinds = content["text/event-stream"][ITEM_SCHEMA]["oneOf"]

    def validator(schema: dict[str, Any]) -> jsonschema_rs.Validator:
        # Its `$ref`s point into the document's components.
        return jsonschema_rs.validator_for({"components": document["components"], **schema})

    alice = new_user()

    async def scenario(client: httpx.AsyncClient) -> None:
        sent: list[dict[str, str]] = []
        async with client.stream("GET", f"/api/{alice.id}/events", headers=alice.headers) as live:
            assert live.status_code == 200
            lines = live.aiter_lines()
            sent += await items_sent(lines, 1)
            created = await client.post(alice.tasks_url, json={"title": "a"}, headers=alice.headers)
            url = alice.task_url(created.json()["id"])
            await client.put(url, json={"title": "b"}, headers=alice.headers)
            # Read before the delete, which clears the task from its earlier events.
            sent += await items_sent(lines, 2)
            await client.delete(url, headers=alice.headers)
            sent += await items_sent(lines, 1)
        resumed = {**alice.headers, "Last-Event-ID": "not an id"}
        async with client.stream("GET", f"/api/{alice.id}/events", headers=resumed) as reset:
            sent += await items_sent(reset.aiter_lines(), 1)

        assert [item.get("event") for item in sent] == [
            None,
            "task.created",
            "task.updated",
            "task.deleted",
            "reset",
        ]
        for item in sent:
            validator({"oneOf": kinds}).validate(item)
            if "data" in item:
                (kind,) = (k for k in kinds if k["properties"].get("event") == {"const": item["event"]})
                validator(kind["properties"]["data"]["contentSchema"]).validate(json.loads(item["data"]))

    run(api_url, scenario)


def test_a_lost_listen_connection_comes_back_and_streams_miss_nothing(
    api_url: str, api_db: psycopg.Connection[Any], superuser_url: str
) -> None:
    alice = new_user()
    listening = (
        "select pid from pg_stat_activity"
        " where application_name = 'todo-api-listener' and datname = current_database()"
    )
    if not api_db.execute(listening).fetchall():
        pytest.skip("the API polls (a transaction pooler and no DATABASE_DIRECT_URL): nothing listens")

    async def scenario(client: httpx.AsyncClient) -> None:
        async with opened(client, alice) as stream:
            await stream.opening_id()
            # As a database failover or a network cut would: the worker's LISTEN session ends. The
            # API logs in as a role that owns nothing, whose sessions only a superuser may end. Its
            # database's only: the apps of the tests beside it listen on the same cluster.
            with psycopg.connect(superuser_url, autocommit=True) as superuser:
                superuser.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity"
                    " where application_name = 'todo-api-listener' and datname = %s",
                    [api_db.info.dbname],
                )
            written = []
            for title in ("right after", "and again"):
                response = await client.post(alice.tasks_url, json={"title": title}, headers=alice.headers)
                written.append(("task.created", response.json()))
            assert kinds_and_bodies(await stream.take(2)) == written

    run(api_url, scenario)
