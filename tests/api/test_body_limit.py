"""Request bodies are capped: 413 beyond the limit, with nothing written."""

from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from api.app import create_app
from tests.support import ApiUser, serving, settings_for

LIMIT = 2048


@pytest.fixture(scope="module")
def small_limit(api_db_url: str) -> Iterator[httpx.Client]:
    with (
        serving(create_app(settings_for(api_db_url, max_body_bytes=LIMIT))) as base_url,
        httpx.Client(base_url=base_url) as client,
    ):
        yield client


def _assert_413(response: httpx.Response) -> None:
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] == "urn:todo-api:problem:payload-too-large"
    assert str(LIMIT) in response.json()["detail"]


def test_a_declared_large_body_is_refused(
    small_limit: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any]
) -> None:
    body = b'{"title": "x", "description": "' + b"y" * LIMIT + b'"}'
    _assert_413(small_limit.post(alice.tasks_url, content=body, headers=alice.headers))
    assert api_db.execute("select count(*) from tasks where user_id = %s", [alice.id]).fetchone() == (0,)


def test_a_chunked_large_body_is_refused(
    small_limit: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any]
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"title": "x", "description": "'
        for _ in range(8):
            yield b"y" * 512
        yield b'"}'

    response = small_limit.post(
        alice.tasks_url, content=chunks(), headers={**alice.headers, "Content-Type": "application/json"}
    )
    _assert_413(response)
    assert api_db.execute("select count(*) from tasks where user_id = %s", [alice.id]).fetchone() == (0,)


def test_a_body_within_the_limit_is_fine(small_limit: httpx.Client, alice: ApiUser) -> None:
    response = small_limit.post(alice.tasks_url, json={"title": "x" * 200}, headers=alice.headers)
    assert response.status_code == 201
