"""A flood of /readyz calls (it needs no token) costs the database at most one check a second.

Round trips are counted as connections handed out by the worker's pool (psycopg_pool's
`requests_num`), where every request's statement takes one, plus the pings sent on the readiness
check's own connection (`Database.pings_sent`). Postgres' own count
(`pg_stat_database.xact_commit`) would do too, but a backend reports it up to ten seconds late.
"""

import asyncio
import threading
import time

import httpx
from fastapi import FastAPI

from api.app import create_app
from api.http.services import services
from tests.support import new_user, serving, settings_for

CALLERS = 64


def round_trips_so_far(app: FastAPI) -> int:
    """Connections the app's pool has handed out so far, and readiness pings sent."""
    database = services(app).database
    return database.pool.get_stats()["requests_num"] + database.pings_sent


def flood_readyz(base_url: str, stop: threading.Event, statuses: list[int]) -> None:
    """CALLERS clients, each calling /readyz in a loop until `stop`."""

    async def caller(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            statuses.append((await client.get("/readyz")).status_code)

    async def run() -> None:
        limits = httpx.Limits(max_connections=CALLERS)
        async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:
            await asyncio.gather(*(caller(client) for _ in range(CALLERS)))

    asyncio.run(run())


def test_concurrent_readiness_calls_share_one_database_check(migrated_db_url: str) -> None:
    # No background isolation check during the test: it would count as round trips too.
    settings = settings_for(migrated_db_url, isolation_check_interval_seconds=3600)
    user = new_user()
    app = create_app(settings)
    with serving(app) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        created = client.post(user.tasks_url, json={"title": "mine"}, headers=user.headers)
        assert created.status_code == 201
        task_url = user.task_url(created.json()["id"])

        before = round_trips_so_far(app)

        async def burst() -> list[int]:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as burst_client:
                responses = await asyncio.gather(*(burst_client.get("/readyz") for _ in range(CALLERS)))
            return [response.status_code for response in responses]

        started = time.monotonic()
        assert asyncio.run(burst()) == [200] * CALLERS
        burst_seconds = time.monotonic() - started
        burst_round_trips = round_trips_so_far(app) - before
        # One check per started second.
        assert burst_round_trips <= burst_seconds + 2, (
            f"{burst_round_trips} round trips in {burst_seconds:.1f} s"
        )

        # Another user's requests, with the flood going on beside them.
        stop, flood_statuses = threading.Event(), list[int]()
        flood = threading.Thread(target=flood_readyz, args=(base_url, stop, flood_statuses))
        before = round_trips_so_far(app)
        flood.start()
        started = time.monotonic()
        gets = [client.get(task_url, headers=user.headers) for _ in range(50)]
        stop.set()
        flood.join(timeout=30)
        flood_seconds = time.monotonic() - started
        round_trips = round_trips_so_far(app) - before

    assert [response.status_code for response in gets] == [200] * len(gets)
    assert {response.json()["title"] for response in gets} == {"mine"}
    assert len(flood_statuses) > CALLERS
    assert set(flood_statuses) == {200}
    readiness_round_trips = round_trips - len(gets)
    assert readiness_round_trips <= flood_seconds + 1, (
        f"{readiness_round_trips} round trips, {len(flood_statuses)} /readyz calls, {flood_seconds:.1f} s"
    )
