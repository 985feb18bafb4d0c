"""HTTP's method rules: a 405 names every method its resource takes; HEAD answers every GET route."""

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi.responses import StreamingResponse

from api.app import create_app
from tests.support import ApiUser, assert_problem, create_task, new_user, serving_client, settings_for

# What a HEAD must answer exactly as its GET does (RFC 9110, section 9.3.2).
_SAME_HEADERS = ("content-type", "content-length", "etag", "link", "www-authenticate", "allow")


def _assert_405(response: httpx.Response, allow: str) -> None:
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allow
    if response.request.method != "HEAD":
        assert allow in assert_problem(response, 405, "method-not-allowed")["detail"]


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_the_task_list_names_get_head_and_post(client: httpx.Client, alice: ApiUser, method: str) -> None:
    response = client.request(method, alice.tasks_url, headers=alice.headers)
    _assert_405(response, "GET, HEAD, POST")


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_task_names_get_head_put_and_delete(client: httpx.Client, alice: ApiUser, method: str) -> None:
    task, _ = create_task(client, alice)
    url = alice.task_url(task["id"])
    _assert_405(
        client.request(method, url, json={"title": "x"}, headers=alice.headers), "GET, HEAD, PUT, DELETE"
    )
    assert client.get(url, headers=alice.headers).json()["title"] == task["title"], "nothing changed"


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE"])
def test_completion_names_patch_only(client: httpx.Client, alice: ApiUser, method: str) -> None:
    url = f"{alice.task_url(create_task(client, alice)[0]['id'])}/complete"
    response = client.request(method, url, headers=alice.headers)
    _assert_405(response, "PATCH")
    if method == "HEAD":
        assert response.content == b""


@pytest.mark.parametrize(
    "path",
    ["/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json", "/docs/assets/favicon.png"],
)
def test_an_unauthenticated_get_route_names_get_and_head(client: httpx.Client, path: str) -> None:
    _assert_405(client.post(path), "GET, HEAD")


def test_a_405_needs_no_token_and_names_the_methods_anyway(client: httpx.Client) -> None:
    _assert_405(client.delete(new_user().tasks_url), "GET, HEAD, POST")


def _assert_head_is_get_without_a_body(client: httpx.Client, url: str, headers: dict[str, str]) -> None:
    get = client.get(url, headers=headers)
    head = client.head(url, headers=headers)
    assert head.status_code == get.status_code
    assert head.content == b""
    for name in _SAME_HEADERS:
        assert head.headers.get(name) == get.headers.get(name), name
    assert "x-request-id" in head.headers


@pytest.mark.parametrize(
    "path",
    ["/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json", "/docs/assets/favicon.png"],
)
def test_head_answers_every_unauthenticated_get_route(client: httpx.Client, path: str) -> None:
    get = client.get(path)
    assert get.status_code == 200
    assert get.content
    head = client.head(path)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    if path not in ("/metrics", "/readyz"):  # these change between two calls
        assert head.headers["content-length"] == get.headers["content-length"]


def test_head_answers_the_task_list_with_gets_headers(client: httpx.Client, alice: ApiUser) -> None:
    for _ in range(3):
        create_task(client, alice)
    _assert_head_is_get_without_a_body(client, f"{alice.tasks_url}?limit=2", alice.headers)
    assert 'rel="next"' in client.head(f"{alice.tasks_url}?limit=2", headers=alice.headers).headers["link"]


def test_head_answers_a_task_with_its_etag_and_honours_if_none_match(
    client: httpx.Client, alice: ApiUser
) -> None:
    url = alice.task_url(create_task(client, alice)[0]["id"])
    _assert_head_is_get_without_a_body(client, url, alice.headers)
    tag = client.head(url, headers=alice.headers).headers["etag"]
    unchanged = client.head(url, headers={**alice.headers, "If-None-Match": tag})
    assert unchanged.status_code == 304
    assert unchanged.headers["etag"] == tag


def test_head_answers_as_get_does_for_a_missing_task_and_a_missing_token(
    client: httpx.Client, alice: ApiUser
) -> None:
    _assert_head_is_get_without_a_body(client, alice.task_url(999_999_999), alice.headers)
    _assert_head_is_get_without_a_body(client, alice.tasks_url, {})
    assert client.head(alice.tasks_url).status_code == 401


def test_head_of_a_streamed_get_ends_it_and_the_connection_serves_on(api_db_url: str) -> None:
    app = create_app(settings_for(api_db_url))
    chunks_made = 0

    async def forever() -> AsyncIterator[bytes]:
        nonlocal chunks_made
        while True:
            chunks_made += 1
            yield b"tick\n"
            await asyncio.sleep(0.01)

    @app.get("/forever")
    async def stream() -> StreamingResponse:
        return StreamingResponse(forever(), media_type="text/event-stream")

    with serving_client(app, timeout=5) as client:
        head = client.head("/forever")
        assert head.status_code == 200
        assert head.headers["content-type"].startswith("text/event-stream")
        assert head.content == b""
        assert client.get("/healthz").status_code == 200, "the connection is free for the next request"
        made = chunks_made
        time.sleep(0.3)
        assert chunks_made == made <= 2, "the stream stopped once its HEAD was answered"


def test_head_of_the_event_stream_answers_at_once_and_holds_no_stream(api_db_url: str) -> None:
    """RFC 9110's HEAD is GET without the body: for the event stream, its head, and the stream ended
    at once, its place given back. The document lists HEAD nowhere: every GET answers it."""
    alice = new_user()
    with serving_client(create_app(settings_for(api_db_url, max_streams_per_user=1)), timeout=5) as client:
        url = f"/api/{alice.id}/events"
        for _ in range(3):  # past MAX_STREAMS_PER_USER, were any held
            started = time.monotonic()
            head = client.head(url, headers=alice.headers)
            assert time.monotonic() - started < 2, "answered before the first heartbeat"
            assert head.status_code == 200
            assert head.headers["content-type"].startswith("text/event-stream")
            assert head.headers["cache-control"] == "no-store"
            assert head.content == b""
        assert client.head(url).status_code == 401
        with client.stream("GET", url, headers=alice.headers) as stream:
            assert stream.status_code == 200
