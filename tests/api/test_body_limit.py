"""Request bodies are capped: 413 beyond the size limit, 408 past the deadline, with nothing written."""

import asyncio
import contextlib
import errno
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from starlette.types import Message

from api.app import create_app
from tests.support import ApiUser, assert_problem, http_scope, new_user, serving, serving_client, settings_for

LIMIT = 2048


@pytest.fixture(scope="module")
def small_limit(api_db_url: str) -> Iterator[httpx.Client]:
    with serving_client(create_app(settings_for(api_db_url, max_body_bytes=LIMIT))) as client:
        yield client


def _assert_413(response: httpx.Response) -> None:
    assert_problem(response, 413, "payload-too-large")
    assert str(LIMIT) in response.json()["detail"]
    # The rest of the body may still be on its way, unread: the connection cannot carry another request.
    assert response.headers["connection"] == "close"


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


@pytest.mark.parametrize("declared", ["abc", "-1", "1e3", "", "2048, 2048"])
def test_a_content_length_that_is_not_a_number_is_400_and_the_connection_closed(
    api_db_url: str, alice: ApiUser, api_db: psycopg.Connection[Any], declared: str
) -> None:
    """RFC 9112, section 6.3: the body's end is unknowable. uvicorn's parser and granian answer such
    a request themselves; this is the app's answer under a server that passes the header on, called
    as an ASGI server calls it."""
    app = create_app(settings_for(api_db_url, max_body_bytes=LIMIT))

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            headers = {**alice.headers, "Content-Type": "application/json", "Content-Length": declared}
            return await client.post(alice.tasks_url, content=b'{"title": "x"}', headers=headers)

    response = asyncio.run(send())
    assert_problem(response, 400, "bad-request")
    assert response.headers["connection"] == "close"
    assert "Content-Length" in response.json()["detail"]
    assert api_db.execute("select count(*) from tasks where user_id = %s", [alice.id]).fetchone() == (0,)


def test_a_body_within_the_limit_is_fine(small_limit: httpx.Client, alice: ApiUser) -> None:
    response = small_limit.post(alice.tasks_url, json={"title": "x" * 200}, headers=alice.headers)
    assert response.status_code == 201


def _body_of(size: int) -> bytes:
    """A valid create of exactly `size` bytes: JSON lets white space pad it."""
    start, end = b'{"title": "at the limit"', b"}"
    return start + b" " * (size - len(start) - len(end)) + end


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_a_body_of_exactly_the_limit_is_taken_and_one_byte_more_is_not(
    small_limit: httpx.Client, alice: ApiUser, api_db: psycopg.Connection[Any], chunked: bool
) -> None:
    """MAX_BODY_BYTES is the largest body taken, as README says (the mutation probe, /tmp/s77-mut: a
    `>=` for the `>` refused a body of exactly the limit as "larger than" it, and no test sent one)."""
    headers = {**alice.headers, "Content-Type": "application/json"}

    def send(body: bytes) -> httpx.Response:
        content: bytes | Iterator[bytes] = iter([body[:100], body[100:]]) if chunked else body
        return small_limit.post(alice.tasks_url, content=content, headers=headers)

    assert send(_body_of(LIMIT)).status_code == 201
    _assert_413(send(_body_of(LIMIT + 1)))
    titles = api_db.execute("select title from tasks where user_id = %s", [alice.id]).fetchall()
    assert titles == [("at the limit",)]


@pytest.fixture(scope="module")
def short_deadline(api_db_url: str) -> Iterator[str]:
    with serving(create_app(settings_for(api_db_url, body_timeout_seconds=DEADLINE_SECONDS))) as base_url:
        yield base_url


DEADLINE_SECONDS = 1.0


def _send_slowly(base_url: str, head: str, first: bytes) -> tuple[bytes, float, bool]:
    """Send the head and the body's first bytes, then a byte every half second, a quarter second
    off the deadline, until the deadline (a byte landing after the server closed would reset the
    connection before its answer is read: one CI run's server, loaded, answered 383 ms late, after the
    byte at 1.25 s); what came back, when, and whether the server closed the connection."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=0.05) as connection:
        started = time.monotonic()
        connection.sendall(head.encode() + first)
        answer, answered_after, next_byte = b"", 0.0, started + 0.25
        while time.monotonic() - started < DEADLINE_SECONDS + 5:
            if not answer and time.monotonic() >= next_byte and next_byte - started < DEADLINE_SECONDS:
                connection.sendall(b" ")
                next_byte += 0.5
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return answer, answered_after, True
            answer, answered_after = answer + chunk, answered_after or time.monotonic() - started
        return answer, answered_after, False


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_slower_than_the_deadline_is_408_and_the_connection_closed(
    short_deadline: str, alice: ApiUser, api_db: psycopg.Connection[Any], framing: str
) -> None:
    length = "Content-Length: 60000" if framing == "content-length" else "Transfer-Encoding: chunked"
    head = (
        f"POST {alice.tasks_url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice.token}\r\n"
        f"Content-Type: application/json\r\n{length}\r\n\r\n"
    )
    first = b"{" if framing == "content-length" else b"1\r\n{\r\n"
    answer, answered_after, closed = _send_slowly(short_deadline, head, first)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head_part.lower()
    assert json.loads(body)["type"] == "urn:todo-api:problem:request-timeout"
    assert DEADLINE_SECONDS <= answered_after < DEADLINE_SECONDS + 2
    assert closed, "the rest of the body may be on its way: the connection is closed"
    assert api_db.execute("select count(*) from tasks where user_id = %s", [alice.id]).fetchone() == (0,)


def test_bodies_sent_at_once_and_an_idle_connection_are_not_late(short_deadline: str, alice: ApiUser) -> None:
    with httpx.Client(base_url=short_deadline) as client:
        for _ in range(3):
            response = client.post(alice.tasks_url, json={"title": "on time"}, headers=alice.headers)
            assert response.status_code == 201
        time.sleep(DEADLINE_SECONDS + 0.5)  # an idle keep-alive connection is not a late body either
        assert client.get(alice.tasks_url, headers=alice.headers).status_code == 200


@pytest.mark.parametrize("body", ["never sent", "past the size limit"])
def test_a_stream_whose_body_breaks_its_limits_after_its_200_ends_quietly(
    short_deadline: str, alice: ApiUser, caplog: pytest.LogCaptureFixture, body: str
) -> None:
    """An event stream reads on after its 200 (to notice its client leave), so a body that GET
    carries is read then too: one that never comes, or grows past MAX_BODY_BYTES, ends the stream as
    its client leaving would. It was a 500 and a traceback, past the 200, that any caller could cause."""
    host, port = short_deadline.removeprefix("http://").split(":")
    framing = "Content-Length: 10" if body == "never sent" else "Transfer-Encoding: chunked"
    head = (
        f"GET /api/{alice.id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice.token}\r\n"
        f"{framing}\r\n\r\n"
    )
    with (
        caplog.at_level(logging.INFO),
        socket.create_connection((host, int(port)), timeout=10) as connection,
    ):
        started = time.monotonic()
        connection.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += connection.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        connection.settimeout(0.5)
        if body == "past the size limit":
            piece = b"x" * (65 * 1024)
            connection.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        closed = False
        while not closed and time.monotonic() - started < DEADLINE_SECONDS + 5:
            try:
                closed = not connection.recv(65536)
            except TimeoutError:
                continue
        assert closed, "the stream ends, and the connection with it"
    ended_after = time.monotonic() - started
    if body == "never sent":
        assert DEADLINE_SECONDS <= ended_after < DEADLINE_SECONDS + 3
    # Ours only: uvicorn remarks on an answer left incomplete, as for every stream cut off (granian
    # closes the connection without a word).
    ours = [record for record in caplog.records if record.name.startswith("api.")]
    assert not [record for record in ours if record.levelno >= logging.ERROR]
    # The stream's own access line: a line of the test before may land while this one runs.
    streams = [record for record in ours if getattr(record, "route", None) == "/api/{user_id}/events"]
    assert [getattr(record, "status", None) for record in streams] == [200]
    assert any("ended a request whose answer had begun" in record.getMessage() for record in ours)


def test_a_body_the_server_fails_to_read_is_its_own_failure_not_the_clients_invalid_json(
    api_db_url: str, api_db: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """FastAPI answers whatever fails while it reads a body with a 400, which was a 422 saying the
    body "is not valid JSON in UTF-8": with no file descriptor left, a worker's first body (its codec
    not loaded yet) was refused so, and a well-behaved client did not send it again (the limits probe,
    /tmp/s79-limits). A failure of the server's own is a 500, logged, and changes nothing."""
    alice = new_user()
    app = create_app(settings_for(api_db_url))
    headers = [
        (b"authorization", f"Bearer {alice.token}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", b"15"),
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        raise OSError(errno.EMFILE, "Too many open files")

    async def send(message: Message) -> None:
        sent.append(message)

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            with contextlib.suppress(
                OSError
            ):  # what the server's error middleware raises on, after its answer
                await app(http_scope("POST", alice.tasks_url, headers), receive, send)

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    (start,) = [message for message in sent if message["type"] == "http.response.start"]
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    assert start["status"] == 500, body
    assert json.loads(body)["type"] == "urn:todo-api:problem:internal-error"
    assert [record.exc_info[0] for record in caplog.records if record.exc_info] == [OSError], (
        "logged, traceback and all"
    )
    assert api_db.execute("select count(*) from tasks where user_id = %s", [alice.id]).fetchone() == (0,)
