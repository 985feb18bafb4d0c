"""A user's in-flight slot is given back however their request ends; the cap's default follows the pool."""

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.http.services import services
from tests.api.events_client import async_client, opened
from tests.support import new_user, serving_client, settings_for


@pytest.fixture(scope="module")
def one_at_a_time(api_db_url: str) -> Iterator[tuple[FastAPI, httpx.Client]]:
    app = create_app(settings_for(api_db_url, max_requests_in_flight_per_user=1))
    with serving_client(app) as client:
        yield app, client


def test_every_way_a_request_ends_gives_its_slot_back(
    one_at_a_time: tuple[FastAPI, httpx.Client], api_db: psycopg.Connection[Any]
) -> None:
    app, client = one_at_a_time
    in_flight = services(app).in_flight
    alice = new_user()
    created = client.post(alice.tasks_url, json={"title": "t"}, headers=alice.headers)
    assert created.status_code == 201
    url = alice.task_url(created.json()["id"])
    endings = {
        "invalid body": client.post(alice.tasks_url, json={"title": ""}, headers=alice.headers),
        "broken JSON": client.post(
            alice.tasks_url, content=b"{", headers={**alice.headers, "Content-Type": "application/json"}
        ),
        "stale If-Match": client.put(
            url, json={"title": "x"}, headers={**alice.headers, "If-Match": '"1.9"'}
        ),
        "missing task": client.get(alice.task_url(999_999_999), headers=alice.headers),
        "bad query": client.get(f"{alice.tasks_url}?limit=0", headers=alice.headers),
        "not JSON": client.post(
            alice.tasks_url, content=b"title", headers={**alice.headers, "Content-Type": "text/plain"}
        ),
    }
    assert {name: response.status_code for name, response in endings.items()} == {
        "invalid body": 422,
        "broken JSON": 422,
        "stale If-Match": 412,
        "missing task": 404,
        "bad query": 422,
        "not JSON": 415,
    }
    assert in_flight.held(alice.id) == 0
    # With one slot, every further request would be 429 had any of them kept it.
    for _ in range(3):
        assert client.get(url, headers=alice.headers).status_code == 200
    row = api_db.execute("select count(*) from tasks where user_id = %s", [alice.id]).fetchone()
    assert row == (1,)


def test_an_open_event_stream_holds_no_slot(one_at_a_time: tuple[FastAPI, httpx.Client]) -> None:
    """A stream lasts as long as its client stays (a tab left open all day): held in flight, two tabs
    at MAX_REQUESTS_IN_FLIGHT_PER_USER=2 made every other request of the user a 429 (the mutation
    probe's C01: no test held it). Streams have limits of their own (MAX_STREAMS_PER_USER)."""
    app, client = one_at_a_time
    alice = new_user()

    async def scenario() -> None:
        async with async_client(str(client.base_url)) as streams, opened(streams, alice) as stream:
            assert stream.response.status_code == 200
            listed = await streams.get(alice.tasks_url, headers=alice.headers)
            assert listed.status_code == 200, listed.text
            assert listed.json() == []
            # The list's own slot comes back once its answer is sent, a moment after the client has
            # it (held() read 1 then, about one run in ten): a slot the stream held would stay.
            deadline = time.monotonic() + 5
            while services(app).in_flight.held(alice.id) != 0:
                assert time.monotonic() < deadline, "the open stream holds a slot"
                await asyncio.sleep(0.01)

    asyncio.run(scenario())


def test_the_default_cap_is_a_multiple_of_the_users_share_of_the_pool(api_db_url: str) -> None:
    assert settings_for(api_db_url).requests_in_flight_per_user == 16 * 2
    assert settings_for(api_db_url, db_pool_size=40).requests_in_flight_per_user == 16 * 10
    assert settings_for(api_db_url, db_max_connections_per_user=1).requests_in_flight_per_user == 16
    assert settings_for(api_db_url, max_requests_in_flight_per_user=3).requests_in_flight_per_user == 3


def test_requests_the_cap_refuses_spend_none_of_the_users_rate(api_db_url: str) -> None:
    """A burst past MAX_REQUESTS_IN_FLIGHT_PER_USER is told to retry in a second; each refused
    request also took one of the user's RATE_LIMIT_PER_MINUTE, so the retries met the rate's 429
    (the races probe: 35 of 50 keyed creates refused in flight, then 11 refused for the rate)."""
    app = create_app(settings_for(api_db_url, max_requests_in_flight_per_user=1, rate_limit_per_minute=5))
    alice = new_user()
    body = b'{"title": "held"}'
    with serving_client(app) as client:
        host, port = str(client.base_url).removeprefix("http://").rstrip("/").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as held:
            held.sendall(
                f"POST {alice.tasks_url} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {alice.token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body[:1]
            )
            while services(app).in_flight.held(alice.id) == 0:  # the held request has its slot
                time.sleep(0.01)
            refused = [client.get(alice.tasks_url, headers=alice.headers) for _ in range(8)]
            assert [response.status_code for response in refused] == [429] * 8
            assert all("in flight" in response.json()["detail"] for response in refused)
            held.sendall(body[1:])
            assert held.recv(100).startswith(b"HTTP/1.1 201 ")
        # Five a minute, one of them the held create's: four more, then the rate's 429.
        statuses = [client.get(alice.tasks_url, headers=alice.headers).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 200, 429]
