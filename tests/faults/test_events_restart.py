"""A database restart under open event streams: the streams stay open, the worker's LISTEN connection
comes back by itself, and every write from before, during the recovery and after reaches the stream
once, in order. Runs its own Postgres (the session's shared one must stay up for everyone else)."""

import asyncio
import time
from collections.abc import Iterator

import pytest

from api.app import create_app
from tests.api.events_client import async_client, opened
from tests.own_postgres import OwnPostgres
from tests.support import new_user, serving, settings_for


@pytest.fixture
def outage() -> Iterator[OwnPostgres]:
    database = OwnPostgres()
    try:
        yield database
    finally:
        database.remove()


def test_a_stream_survives_a_database_restart_and_misses_nothing(outage: OwnPostgres) -> None:
    alice = new_user()
    settings = settings_for(outage.url, db_connect_timeout_seconds=2, db_pool_timeout_seconds=2)

    async def scenario(base_url: str) -> None:
        async with async_client(base_url) as client, opened(client, alice) as stream:
            await stream.opening_id()
            before = await client.post(alice.tasks_url, json={"title": "before"}, headers=alice.headers)
            assert (await stream.next()).data == before.json()

            await asyncio.to_thread(outage.stop)
            await asyncio.sleep(1)
            await asyncio.to_thread(outage.start)
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
