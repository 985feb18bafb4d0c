"""Retry-safe creates (the IETF Idempotency-Key draft): a repeat gets the first response and makes
nothing; the key is stored with the task in one transaction, under row-level security."""

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
import pytest

from api.app import create_app
from tests.support import ApiUser, new_user, serving, settings_for


def _tasks(db: psycopg.Connection[Any], user: ApiUser) -> int:
    row = db.execute("select count(*) from tasks where user_id = %s", [user.id]).fetchone()
    assert row is not None
    return int(row[0])


def _keys(db: psycopg.Connection[Any], user: ApiUser) -> list[str]:
    return [key for (key,) in db.execute("select key from idempotency_keys where user_id = %s", [user.id])]


def _post(client: httpx.Client, user: ApiUser, key: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(user.tasks_url, json=body, headers={**user.headers, "Idempotency-Key": key})


def test_a_repeat_gets_the_first_response_and_creates_nothing(
    client: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    alice = new_user()
    first = _post(client, alice, "create-milk-1", {"title": "Buy milk", "description": "two litres"})
    # The same body, spelled otherwise, after the task changed: still the first response.
    client.put(alice.task_url(first.json()["id"]), json={"title": "Buy oat milk"}, headers=alice.headers)
    repeat = _post(client, alice, "create-milk-1", {"description": "two litres", "title": "Buy milk"})
    assert first.status_code == repeat.status_code == 201
    assert repeat.json() == first.json()
    for header in ("location", "etag"):
        assert repeat.headers[header] == first.headers[header]
    assert _tasks(api_db, alice) == 1
    assert _keys(api_db, alice) == ["create-milk-1"]


def test_the_same_key_with_another_body_is_refused(
    client: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    alice = new_user()
    assert _post(client, alice, "k", {"title": "one"}).status_code == 201
    reused = _post(client, alice, "k", {"title": "two"})
    assert reused.status_code == 422
    assert reused.headers["content-type"] == "application/problem+json"
    assert reused.json()["type"] == "urn:todo-api:problem:idempotency-key-reused"
    assert _tasks(api_db, alice) == 1


def test_twenty_concurrent_creates_with_one_key_make_one_task(
    client: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    alice = new_user()

    def create(_: int) -> httpx.Response:
        return _post(client, alice, "retried-after-timeout", {"title": "exactly once"})

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(create, range(20)))
    assert [response.status_code for response in responses] == [201] * 20
    assert len({response.json()["id"] for response in responses}) == 1
    assert _tasks(api_db, alice) == 1


def test_keys_belong_to_their_user(client: httpx.Client, api_db: psycopg.Connection[Any]) -> None:
    alice, bob = new_user(), new_user()
    for_alice = _post(client, alice, "shared-name", {"title": "alice's"})
    for_bob = _post(client, bob, "shared-name", {"title": "bob's"})
    assert for_alice.status_code == for_bob.status_code == 201
    assert for_bob.json()["user_id"] == bob.id
    assert for_bob.json()["id"] != for_alice.json()["id"]
    assert (_tasks(api_db, alice), _tasks(api_db, bob)) == (1, 1)


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "caf\u00e9", "tab\tkey"])
def test_a_malformed_key_is_422_and_creates_nothing(
    client: httpx.Client, api_db: psycopg.Connection[Any], key: str
) -> None:
    alice = new_user()
    response = client.post(
        alice.tasks_url,
        json={"title": "t"},
        headers=[(b"authorization", f"Bearer {alice.token}".encode()), (b"idempotency-key", key.encode())],
    )
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["header.idempotency-key"]
    assert _tasks(api_db, alice) == 0


def test_a_quoted_key_is_the_structured_field_form_of_the_same_key(client: httpx.Client) -> None:
    alice = new_user()
    first = _post(client, alice, '"8e03978e-40d5"', {"title": "t"})
    assert _post(client, alice, "8e03978e-40d5", {"title": "t"}).json() == first.json()


@pytest.fixture
def short_memory(api_db_url: str) -> Iterator[httpx.Client]:
    settings = settings_for(api_db_url, idempotency_ttl_hours=1 / 3600)  # one second
    with serving(create_app(settings)) as base_url, httpx.Client(base_url=base_url) as client:
        yield client


def test_expired_keys_are_forgotten_by_their_users_next_keyed_create(
    short_memory: httpx.Client, api_db: psycopg.Connection[Any]
) -> None:
    alice = new_user()
    first = _post(short_memory, alice, "old", {"title": "t"})
    _post(short_memory, alice, "older", {"title": "u"})
    time.sleep(1.5)
    again = _post(short_memory, alice, "old", {"title": "t"})
    assert again.status_code == 201
    assert again.json()["id"] != first.json()["id"], "past IDEMPOTENCY_TTL_HOURS a key is new again"
    assert _keys(api_db, alice) == ["old"], "the expired keys are gone"
    assert _tasks(api_db, alice) == 3
