"""The server `todo-api serve` runs refuses hostile request heads before the API spends anything, and
keeps answering however many connections its clients hold."""

import asyncio
import concurrent.futures
import gzip
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from api.auth.principal import USER_ID_MAX_LENGTH
from api.http.caller import MAX_AUTHORIZATION_BYTES
from api.ops.server import files_beside_connections
from api.tasks.listing import CURSOR_MAX_LENGTH, MAX_TASK_ID, Cursor
from api.tasks.models import TITLE_MAX_LENGTH
from tests.api.events_client import async_client, opened
from tests.support import (
    CLI,
    SECRET,
    assert_problem,
    cli_env,
    free_port,
    new_user,
    now,
    scrape,
    serve_command,
    serve_process,
    sign,
    value,
)


@pytest.fixture(scope="module")
def served(api_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("limits")
    env = cli_env(DATABASE_URL=api_db_url, BETTER_AUTH_SECRET=SECRET)
    with serve_process(serve_command(env), cwd=folder, env=env, output=folder / "serve.log") as (base_url, _):
        yield base_url


def _raw(base_url: str, head: bytes, *, wait: float = 5) -> tuple[bytes, float]:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as connection:
        started = time.monotonic()
        connection.sendall(head)
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except TimeoutError:
            pass
        return received, time.monotonic() - started


def test_a_head_over_64_kib_is_431(served: str) -> None:
    """hyper checks its 32 KiB buffer between reads: a head that arrives in one piece may be read whole
    up to twice that, never beyond."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * (65 * 1024) + b"\r\n\r\n"
    answer, _ = _raw(served, head)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]


def test_a_head_under_the_limit_is_served(served: str) -> None:
    head = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: "
        + b"a" * (20 * 1024)
        + b"\r\nConnection: close\r\n\r\n"
    )
    answer, _ = _raw(served, head)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]


def test_more_than_100_header_fields_are_431_however_short(served: str) -> None:
    """hyper's count, which granian does not let the server raise: a head of 101 short fields (1 KiB)
    is refused like one over 32 KiB, with no body; 100 are served."""
    for fields, status in ((100, b"200"), (101, b"431")):
        lines = b"Host: x\r\nConnection: close\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(fields - 2))
        answer, _ = _raw(served, b"GET /healthz HTTP/1.1\r\n" + lines + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 %s " % status), (fields, answer[:100])


# Heads the server (granian, through hyper) refuses itself, before the app runs: what a client of
# `todo-api serve` gets for them, which the README, docs/ and the document's 400 cite. The app's
# problem for a Content-Length that is not a number (api/http/body_limit.py) is given only where a
# server passes such a head on.
BARE_REFUSALS = [
    pytest.param(b"Content-Length: abc\r\n", 400, id="content-length-not-a-number"),
    pytest.param(b"Content-Length: 1e3\r\n", 400, id="content-length-with-an-exponent"),
    pytest.param(b"Content-Length: 13, 13\r\n", 400, id="content-length-as-a-list"),
    pytest.param(b"Content-Length: 18446744073709551616\r\n", 400, id="content-length-past-64-bits"),
    # A request whose last transfer coding is not chunked has no length a server can find (RFC 9112,
    # section 6.3): hyper refuses it; one that ends in chunked reaches the app, whose 501 it gets.
    pytest.param(b"Transfer-Encoding: gzip\r\n", 400, id="transfer-coding-not-ending-in-chunked"),
    pytest.param(b"Transfer-Encoding: chunked, gzip\r\n", 400, id="transfer-coding-after-chunked"),
    pytest.param(b"Idempotency-Key: a\x7fb\r\n", 400, id="del-in-a-field-value"),
    pytest.param(b"".join(b"X-%d: y\r\n" % n for n in range(101)), 431, id="over-100-fields"),
    pytest.param(b"X-Padding: " + b"a" * (65 * 1024) + b"\r\n", 431, id="head-over-64-kib"),
]


@pytest.mark.parametrize(("fields", "status"), BARE_REFUSALS)
def test_a_head_the_server_cannot_take_is_its_own_empty_answer_with_the_connection_closed(
    served: str, api_db: psycopg.Connection[Any], fields: bytes, status: int
) -> None:
    """No problem document, no X-Request-ID and no count in the metrics: the app never saw the request,
    and granian (2.8) has no setting that changes what it answers (docs/operations.md)."""
    alice = new_user()
    head = (
        f"POST {alice.tasks_url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice.token}\r\n"
        "Content-Type: application/json\r\n"
    ).encode()
    counted = {"method": "POST", "route": "/api/{user_id}/tasks", "status": str(status)}
    before = value(scrape(served), "todo_api_http_requests_total", **counted)

    answer, waited = _raw(served, head + fields + b"\r\n", wait=10)

    head_part, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head_part.split(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    sent = dict(line.lower().split(b": ", 1) for line in lines)
    assert set(sent) == {b"connection", b"content-length", b"date"}, answer[:300]
    assert (sent[b"connection"], sent[b"content-length"], body) == (b"close", b"0", b"")
    assert waited < 10, "the server closes the connection after its answer"
    assert api_db.execute("select count(*) from tasks where user_id = %s", [alice.id]).fetchone() == (0,)
    assert value(scrape(served), "todo_api_http_requests_total", **counted) == before
    # The document's 400 promised a problem from the API, and it had no 431: it says what this server
    # answers.
    spec = httpx.get(f"{served}/openapi.json").json()
    documented = spec["paths"]["/api/{user_id}/tasks"]["post"]["responses"][str(status)]
    assert "Under `todo-api serve`" in documented["description"]
    if status == 400:
        assert "a 400 with no body and no X-Request-ID" in documented["description"]
    else:
        assert "no body and no X-Request-ID" in documented["description"]
        assert "content" not in documented
        assert "headers" not in documented


def test_a_client_that_never_finishes_its_head_or_sends_nothing_is_disconnected(served: str) -> None:
    """A head that never ends is cut off after the server's head timeout. A connection that never sends
    a byte holds one of the worker's connections as a slow head does, and is closed as one is (under
    granian's automatic HTTP/1-or-2 detection it was held until the client left, and 1,024 of them
    kept everyone else out). Both wait out the same timeout, so they wait together."""
    host, port = served.removeprefix("http://").split(":")
    with (
        socket.create_connection((host, int(port)), timeout=30) as silent,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        slow_head = pool.submit(_raw, served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", wait=20)
        assert silent.recv(1) == b"", "closed by the server, with no answer"
        answer, waited = slow_head.result()
    assert b" 200 " not in answer
    assert 9 <= waited < 15, f"disconnected after {waited:.1f} s"


def test_keep_alive_timeout_seconds_is_how_long_a_kept_connection_waits_for_its_next_request(
    api_db_url: str, tmp_path: Path
) -> None:
    """A load balancer that keeps its connections to the API open longer than the API (nginx's 60 s
    against the fixed 10 s) sent requests on connections the API had just closed, and answered 502
    (the proxy probe, /tmp/s79-proxy): KEEP_ALIVE_TIMEOUT_SECONDS is how long one waits."""
    env = cli_env(DATABASE_URL=api_db_url, BETTER_AUTH_SECRET=SECRET, KEEP_ALIVE_TIMEOUT_SECONDS="3")
    with serve_process(serve_command(env), cwd=tmp_path, env=env, output=tmp_path / "serve.log") as (
        base_url,
        _,
    ):
        host, port = base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as kept:
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b" 200 " in kept.recv(65536)
            answered = time.monotonic()
            assert kept.recv(1) == b"", "closed by the server"
            waited = time.monotonic() - answered
    assert 2.5 <= waited < 8, f"closed after {waited:.1f} s"


def test_the_longest_next_page_url_is_served_with_the_longest_token(served: str) -> None:
    """A next page's Link is the list's own parameters of the request with a cursor of the API's: at
    their longest, a user id and a search of four-byte characters (12 bytes each, percent-encoded) and
    the longest cursor, with an Authorization header at the API's own limit, the whole head is well
    within 32 KiB."""
    user_id = "🙂" * USER_ID_MAX_LENGTH
    claims = {"sub": user_id, "iat": now(), "exp": now() + 3600, "padding": ""}
    # Base64 makes three bytes four characters.
    claims["padding"] = "p" * ((MAX_AUTHORIZATION_BYTES - len("Bearer " + sign(claims))) * 3 // 4)
    authorization = "Bearer " + sign(claims)
    assert MAX_AUTHORIZATION_BYTES - 8 < len(authorization) <= MAX_AUTHORIZATION_BYTES
    cursor = Cursor("title", "desc", "\x01" * TITLE_MAX_LENGTH, MAX_TASK_ID).encode()
    assert len(cursor) == CURSOR_MAX_LENGTH
    params = {
        "status": "completed",
        "sort": "title",
        "order": "desc",
        "q": "🙂" * 200,
        "limit": "500",
        "cursor": cursor,
    }

    response = httpx.get(
        f"{served}/api/{user_id}/tasks", params=params, headers={"Authorization": authorization}, timeout=30
    )

    assert response.status_code == 200, response.text
    assert response.json() == []


def test_a_next_page_url_leaves_out_parameters_the_list_ignores(served: str) -> None:
    """However long a parameter the list ignores is, the next page's URL is no longer for it, and the
    server serves it: copied and re-encoded (each `/` as %2F), 22,000 slashes made a URL of 66,000
    characters that the same server then refused with 431."""
    alice = new_user()
    older, newer = [
        httpx.post(f"{served}{alice.tasks_url}", json={"title": title}, headers=alice.headers).json()
        for title in ("older", "newer")
    ]

    first = httpx.get(
        f"{served}{alice.tasks_url}?limit=1&utm=" + "/" * 22_000, headers=alice.headers, timeout=30
    )

    assert first.status_code == 200, first.text
    assert first.json() == [newer]
    link = re.fullmatch(r'<([^>]+)>; rel="next"', first.headers["link"])
    assert link is not None, first.headers["link"]
    next_url = link.group(1)
    assert "utm" not in next_url
    assert len(next_url) < len(first.request.url.raw_path)
    following = httpx.get(f"{served}{next_url}", headers=alice.headers, timeout=30)
    assert following.status_code == 200, following.text
    assert following.json() == [older]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"zz\r\n{}\r\n0\r\n\r\n", id="size-not-hexadecimal"),
        pytest.param(b"ffffffffffffffffff1\r\n{}\r\n0\r\n\r\n", id="size-past-any-integer"),
        pytest.param(b"2\n{}\n0\n\n", id="bare-line-feeds"),
    ],
)
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_a_malformed_chunked_body_is_400_and_changes_nothing(
    served: str, api_db: psycopg.Connection[Any], method: str, body: bytes
) -> None:
    """RFC 9112, section 7.1: a body whose chunks cannot be framed was never received, so it is a bad
    request, not a body that is not JSON (it was a 422 saying so)."""
    alice = new_user()
    task = httpx.post(f"{served}{alice.tasks_url}", json={"title": "kept"}, headers=alice.headers).json()
    target = {
        "POST": alice.tasks_url,
        "PUT": alice.task_url(task["id"]),
        "PATCH": alice.task_url(task["id"]) + "/complete",
    }[method]
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice.token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    answer, _ = _raw(served, head.encode() + body)

    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    fields, _, problem = answer.partition(b"\r\n\r\n")
    assert b"\r\ncontent-type: application/problem+json\r\n" in fields.lower()
    assert b"\r\nconnection: close\r\n" in fields.lower()  # where the body ended is unknown
    assert json.loads(problem)["type"] == "urn:todo-api:problem:bad-request"
    stored = api_db.execute(
        "select id, title, completed, version from tasks where user_id = %s", [alice.id]
    ).fetchall()
    assert stored == [(task["id"], "kept", False, 1)]


def test_a_large_authorization_header_is_401_from_the_real_server(served: str) -> None:
    alice = new_user()
    response = httpx.get(f"{served}{alice.tasks_url}", headers={"Authorization": "Bearer " + "a" * 10_000})
    assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_a_body_near_the_limit_is_judged_and_one_over_it_refused(served: str, tmp_path: Path) -> None:
    alice = new_user()
    near = httpx.post(
        f"{served}{alice.tasks_url}", json={"title": "t" * (60 * 1024)}, headers=alice.headers, timeout=30
    )
    assert_problem(near, 422, "validation-error", "body.title")
    over = httpx.post(
        f"{served}{alice.tasks_url}", json={"title": "t" * (70 * 1024)}, headers=alice.headers, timeout=30
    )
    assert_problem(over, 413, "payload-too-large")
    listed = httpx.get(f"{served}{alice.tasks_url}", headers=alice.headers)
    assert listed.status_code == 200, listed.text
    assert listed.json() == [], "neither was stored"


def _chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


_TASK = b'{"title": "x"}'


@pytest.mark.parametrize(
    ("transfer_encoding", "body", "status", "slug"),
    [
        # granian undid chunked and handed these over as if the first coding were not there: a 201.
        pytest.param("gzip, chunked", _chunked(_TASK), 501, "not-implemented", id="gzip-plain-body"),
        pytest.param("foo, chunked", _chunked(_TASK), 501, "not-implemented", id="unknown"),
        pytest.param(
            "gzip\r\nTransfer-Encoding: chunked", _chunked(_TASK), 501, "not-implemented", id="two-lines"
        ),
        # ... and this one compressed, a 422.
        pytest.param("gzip, chunked", _chunked(gzip.compress(_TASK)), 501, "not-implemented", id="gzip"),
        # The inner chunk framing was the body: a 422.
        pytest.param("chunked, chunked", _chunked(_chunked(_TASK)), 400, "bad-request", id="chunked-twice"),
    ],
)
def test_a_transfer_coding_other_than_chunked_is_refused_with_the_connection_closed(
    served: str, api_db: psycopg.Connection[Any], transfer_encoding: str, body: bytes, status: int, slug: str
) -> None:
    """RFC 9112, section 6.1: a coding the server does not implement is a 501, chunked twice a 400;
    either way the body is not read, so the connection cannot carry another request."""
    alice = new_user()
    head = (
        f"POST {alice.tasks_url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice.token}\r\n"
        f"Content-Type: application/json\r\nTransfer-Encoding: {transfer_encoding}\r\n\r\n"
    )
    host, port = served.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head.encode() + body)
        answer = b""
        while chunk := connection.recv(65536):  # ends when the server closes; a timeout fails the test
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    head_part, _, problem = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head_part.lower()
    assert b"connection: close" in head_part.lower()
    assert json.loads(problem)["type"] == f"urn:todo-api:problem:{slug}"
    assert api_db.execute("select count(*) from tasks where user_id = %s", [alice.id]).fetchone() == (0,)


def test_a_search_typed_with_raw_bytes_beyond_ascii_is_a_422_naming_it_not_a_search_for_other_text(
    served: str,
) -> None:
    """curl sends `?q=Café` as typed, raw UTF-8, where RFC 3986 asks `q=Caf%C3%A9`: granian passes it
    on, Starlette reads the query string as Latin-1, and the list searched for `CafÃ©` (found only
    such titles, and put that in its next page's link). Percent-encoded, it finds the task."""
    alice = new_user()
    created = httpx.post(f"{served}{alice.tasks_url}", json={"title": "Café"}, headers=alice.headers)
    assert created.status_code == 201
    head = (
        f"GET {alice.tasks_url}?q=Café&limit=5 HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {alice.token}\r\nConnection: close\r\n\r\n"
    )
    answer, _ = _raw(served, head.encode())
    assert answer.startswith(b"HTTP/1.1 422 "), answer[:200]
    problem = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert [(error["field"], error["message"][:18]) for error in problem["errors"]] == [
        ("query.q", "Not percent-encode")
    ]
    found = httpx.get(f"{served}{alice.tasks_url}", params={"q": "Café"}, headers=alice.headers)
    assert [task["title"] for task in found.json()] == ["Café"]


@pytest.mark.parametrize("transfer_encoding", ["chunked", "Chunked ", ", CHUNKED"])
def test_chunked_alone_in_any_case_is_served(
    served: str, api_db: psycopg.Connection[Any], transfer_encoding: str
) -> None:
    """Case, spaces and an empty list element (RFC 9110, section 5.6.1) do not make chunked another coding."""
    alice = new_user()
    head = (
        f"POST {alice.tasks_url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice.token}\r\n"
        f"Content-Type: application/json\r\nTransfer-Encoding: {transfer_encoding}\r\n"
        "Connection: close\r\n\r\n"
    )
    answer, _ = _raw(served, head.encode() + _chunked(_TASK))
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:200]
    assert api_db.execute("select title from tasks where user_id = %s", [alice.id]).fetchall() == [("x",)]


def test_streams_past_max_streams_per_worker_are_503_and_everything_else_is_still_served(
    api_db_url: str, tmp_path: Path
) -> None:
    """Users each within MAX_STREAMS_PER_USER but together at the worker's MAX_STREAMS_PER_WORKER: the
    next stream is refused, whoever asks, while /healthz and the tasks are served; a closed stream
    gives its place back."""
    alice, bob, carol = new_user(), new_user(), new_user()
    env = cli_env(
        DATABASE_URL=api_db_url,
        BETTER_AUTH_SECRET=SECRET,
        MAX_STREAMS_PER_USER="2",
        MAX_STREAMS_PER_WORKER="3",
    )

    async def scenario(base_url: str) -> None:
        async with (
            async_client(base_url) as client,
            opened(client, alice) as first,
            opened(client, alice) as second,
        ):
            for stream in (first, second):
                await stream.opening_id()
            async with opened(client, bob) as bobs:
                await bobs.opening_id()
                for user in (carol, bob):  # bob holds one of his two
                    async with opened(client, user) as refused:
                        problem = refused.refusal(503, "streams-unavailable")
                        assert "MAX_STREAMS_PER_WORKER" in problem["detail"]
                        assert problem["detail"].startswith("This server process holds")
                assert (await client.get("/healthz")).status_code == 200
                created = await client.post(carol.tasks_url, json={"title": "served"}, headers=carol.headers)
                assert created.status_code == 201
            # Bob's stream closed: its place is free again once the server notices the client left
            # (granian says so tens of milliseconds after the close; the worker's cap does not wait
            # for it as a user's own does, so that a full worker's refusal sends the retry elsewhere).
            deadline = asyncio.get_running_loop().time() + 5
            while True:
                async with opened(client, carol) as carols:
                    if carols.response.status_code == 200:
                        await carols.opening_id()
                        break
                    carols.refusal(503, "streams-unavailable")
                assert asyncio.get_running_loop().time() < deadline, "bob's place was not given back"
                await asyncio.sleep(0.05)

    with serve_process(serve_command(env), cwd=tmp_path, env=env, output=tmp_path / "serve.log") as (
        base_url,
        _,
    ):
        asyncio.run(scenario(base_url))
    with psycopg.connect(api_db_url) as db:
        titles = db.execute("select title from tasks where user_id = %s", [carol.id]).fetchall()
    assert titles == [("served",)]


def test_a_stream_reopened_the_moment_its_users_last_place_closed_is_served_not_refused(
    api_db_url: str, tmp_path: Path
) -> None:
    """A client that closes its stream and opens another at once (a React effect run twice, a
    reconnect with a fresh token), holding MAX_STREAMS_PER_USER: granian tells the app the client
    left tens of milliseconds after, the closed stream's place was held meanwhile, and the new one
    was refused with 429 and Retry-After 5. Now it waits for the place, briefly."""
    alice = new_user()
    env = cli_env(DATABASE_URL=api_db_url, BETTER_AUTH_SECRET=SECRET, MAX_STREAMS_PER_USER="1")

    async def scenario(base_url: str) -> None:
        async with async_client(base_url) as client:
            for _ in range(10):
                async with opened(client, alice) as stream:
                    assert stream.response.status_code == 200
                    await stream.opening_id()
            async with opened(client, alice) as held, opened(client, alice) as refused:
                await held.opening_id()
                refused.refusal(429, "too-many-requests")  # one not given back is still refused

    with serve_process(serve_command(env), cwd=tmp_path, env=env, output=tmp_path / "serve.log") as (
        base_url,
        _,
    ):
        asyncio.run(scenario(base_url))


def _with_open_file_limit(files: int) -> list[str]:
    """`todo-api serve` under `ulimit -n files`, hard and soft, as a machine set so would run it."""
    return ["bash", "-c", f'ulimit -n {files} && exec "$@"', "bash", *CLI, "serve"]


def _open_files_of_its_worker(server: "subprocess.Popen[str]") -> int:
    """The file descriptors held by the one worker of `server`, granian's main process."""
    tasks = Path(f"/proc/{server.pid}/task")
    (worker,) = [pid for task in tasks.iterdir() for pid in (task / "children").read_text().split()]
    return len(list(Path(f"/proc/{worker}/fd").iterdir()))


def test_a_low_open_file_limit_serves_with_fewer_connections_and_says_so(
    api_db_url: str, tmp_path: Path
) -> None:
    """Past the file descriptor limit granian's accept fails and is retried at once, for ever, while
    nobody gets in: under a hard limit too low for MAX_STREAMS_PER_WORKER + 4096 connections, each
    worker accepts what fits beside the files it holds itself (its pool and 64), and the log says how
    many and how to have more. Under 400, where a reserve of 512 left one connection, an open event
    stream kept everyone else out."""
    alice = new_user()
    env = cli_env(DATABASE_URL=api_db_url, BETTER_AUTH_SECRET=SECRET)
    log = tmp_path / "serve.log"

    async def scenario(base_url: str, server: "subprocess.Popen[str]") -> dict[str, Any]:
        async with async_client(base_url) as streaming, opened(streaming, alice) as stream:
            await stream.opening_id()
            async with async_client(base_url) as other:
                healthz = await other.get("/healthz")
                assert (healthz.status_code, healthz.json()) == (200, {"status": "ok"})
                created = await other.post(
                    alice.tasks_url, json={"title": "beside a stream"}, headers=alice.headers
                )
                assert created.status_code == 201, created.text
                assert created.json()["title"] == "beside a stream"
                event = await stream.next()
                assert (event.kind, event.data) == ("task.created", created.json())
                # The worker's own files fit the reserve: its pool and 64, beside these two connections.
                assert _open_files_of_its_worker(server) - 2 <= files_beside_connections(db_pool_size=10)
                return dict(created.json())

    with serve_process(_with_open_file_limit(400), cwd=tmp_path, env=env, output=log) as (base_url, server):
        task = asyncio.run(scenario(base_url, server))
    assert "the open-file limit (ulimit -Hn) is 400: each worker accepts 326 connections" in log.read_text()
    with psycopg.connect(api_db_url) as db:
        stored = db.execute("select id, title from tasks where user_id = %s", [alice.id]).fetchall()
    assert stored == [(task["id"], "beside a stream")]


def test_an_open_file_limit_that_leaves_a_worker_too_few_connections_is_refused(
    api_db_url: str, tmp_path: Path
) -> None:
    """Rather than serve with a handful of connections that a stream or two take whole: one line
    naming the number of files and how to allow them, exit 1, and nothing left serving."""
    port = free_port()
    result = subprocess.run(
        [*_with_open_file_limit(137), "--port", str(port)],
        cwd=tmp_path, env=cli_env(DATABASE_URL=api_db_url, BETTER_AUTH_SECRET=SECRET),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "open-file limit" in line]
    assert "(ulimit -Hn) is 137, too low: each worker needs 138 open files at least" in line, line
    assert "ulimit -n 5170" in line, line
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_a_stream_never_says_keep_alive_to_a_client_that_asked_for_close(served: str, version: str) -> None:
    """sse-starlette says `Connection: keep-alive` on every stream: granian sent `keep-alive, close` to
    a client asking for `close`, and to an HTTP/1.0 client a connection kept that only its close ends
    (the HTTP clients probe of stop 82). The connection is the server's to manage, as for every answer."""
    alice = new_user()
    host = served.removeprefix("http://")
    head = (
        f"GET /api/{alice.id}/events {version}\r\nHost: {host}\r\n"
        f"Authorization: Bearer {alice.token}\r\nConnection: close\r\n\r\n"
    ).encode()
    received, _ = _raw(served, head, wait=2)
    answer_head = received.partition(b"\r\n\r\n")[0].decode()
    assert answer_head.startswith(f"{version} 200"), answer_head
    assert "keep-alive" not in answer_head.lower(), answer_head


def test_http2_is_not_spoken_so_no_head_escapes_the_http1_limits(served: str) -> None:
    """granian's default also speaks cleartext HTTP/2, whose head limit was 16 MiB and whose silent
    clients nothing timed out: the server speaks HTTP/1.1 only."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # and SETTINGS
    answer, _ = _raw(served, preface)
    assert not answer.startswith(b"\x00"), f"an HTTP/2 frame came back: {answer[:20]!r}"


def test_a_websocket_upgrade_is_an_ordinary_request_answered_by_the_api(served: str) -> None:
    """The API serves no WebSocket, so an upgrade request is answered as any other (RFC 9110, section
    7.8). granian answered it itself, with an empty 403: no X-Request-ID, no problem, no access line."""
    alice = new_user()
    httpx.post(f"{served}{alice.tasks_url}", json={"title": "kept"}, headers=alice.headers)
    head = (
        f"GET {alice.tasks_url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice.token}\r\n"
        "Connection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ).encode()
    answer, _ = _raw(served, head)

    fields, _, body = answer.partition(b"\r\n\r\n")
    assert fields.startswith(b"HTTP/1.1 200 "), fields
    assert re.search(rb"\r\nx-request-id: \S+", fields, re.IGNORECASE), fields
    assert [task["title"] for task in json.loads(body)] == ["kept"]


def _read_answer(connection: socket.socket) -> tuple[bytes, bytes]:
    """One answer from `connection`, its head and its body (as long as its Content-Length says); an
    AssertionError if the server closes the connection first, ConnectionResetError if it resets it."""
    received = b""

    def more() -> bytes:
        chunk = connection.recv(65536)
        assert chunk, f"the server closed the connection after {received[:300]!r}"
        return chunk

    while b"\r\n\r\n" not in received:
        received += more()
    head, _, body = received.partition(b"\r\n\r\n")
    declared = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    assert declared is not None, head
    while len(body) < int(declared.group(1)):
        body += more()
    return head, body


# Under MAX_BODY_BYTES (64 KiB by default): a body the API would read, were the request not refused.
_LARGE_TASK = b'{"title": "' + b"x" * 58_000 + b'"}'
_SENT_BEFORE_THE_ANSWER = 1024


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.parametrize(
    ("refusal", "status", "slug"),
    [
        ("a-token-that-is-not-one", 401, "unauthorized"),
        ("another-users-tasks", 403, "forbidden"),
        ("not-json", 415, "unsupported-media-type"),
    ],
)
def test_a_refusal_before_the_body_is_read_reaches_a_client_still_sending_it(
    served: str, api_db: psycopg.Connection[Any], method: str, refusal: str, status: int, slug: str
) -> None:
    """RFC 9112, section 9.6: the API answers from the head, while the body is still on its way; the
    server reads what remains and throws it away, so the client can send it all, read its answer, and
    send the next request on the same connection. Closed with the body unread, the connection was reset
    under the client as it sent the rest, or was reused from its pool as the server closed it: "Server
    disconnected" in place of the answer, its Retry-After and X-Request-ID lost."""
    alice, bob = new_user(), new_user()
    task = httpx.post(f"{served}{alice.tasks_url}", json={"title": "kept"}, headers=alice.headers).json()
    token = "not-a-token" if refusal == "a-token-that-is-not-one" else alice.token
    owner = bob if refusal == "another-users-tasks" else alice
    media_type = "text/plain" if refusal == "not-json" else "application/json"
    target = owner.tasks_url if method == "POST" else owner.task_url(task["id"])
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {media_type}\r\nContent-Length: {len(_LARGE_TASK)}\r\n\r\n"
    ).encode()
    host, port = served.removeprefix("http://").split(":")

    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head + _LARGE_TASK[:_SENT_BEFORE_THE_ANSWER])
        answer, problem = _read_answer(connection)  # before the rest of the body is sent
        connection.sendall(_LARGE_TASK[_SENT_BEFORE_THE_ANSWER:])
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        following, health = _read_answer(connection)

    assert answer.startswith(b"HTTP/1.1 %d " % status), answer
    fields = answer.lower()
    assert b"\r\ncontent-type: application/problem+json\r\n" in fields
    assert re.search(rb"\r\nx-request-id: \S+\r\n", fields), answer
    assert b"\r\nconnection: close" not in fields, "the body was read: the connection carries another"
    assert json.loads(problem)["type"] == f"urn:todo-api:problem:{slug}"
    assert following.startswith(b"HTTP/1.1 200 "), following
    assert json.loads(health) == {"status": "ok"}
    stored = api_db.execute("select id, title from tasks where user_id in (%s, %s)", [alice.id, bob.id])
    assert stored.fetchall() == [(task["id"], "kept")]


def test_a_refusal_before_a_chunked_body_is_read_closes_the_connection_once_the_body_is_in(
    served: str, api_db: psycopg.Connection[Any]
) -> None:
    """A chunked body's end is known only once it has come: the refusal says the connection closes,
    and the server reads the body to its end before closing it, so closing does not reset the
    connection under a client that is still sending."""
    alice = new_user()
    head = (
        f"POST {alice.tasks_url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer not-a-token\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunks = [_LARGE_TASK[start : start + 4096] for start in range(0, len(_LARGE_TASK), 4096)]
    host, port = served.removeprefix("http://").split(":")

    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head + _chunked_piece(chunks[0]))
        answer, problem = _read_answer(connection)
        for chunk in chunks[1:]:  # as over a slower link: closed meanwhile, the connection is reset
            connection.sendall(_chunked_piece(chunk))
            time.sleep(0.02)
        connection.sendall(b"0\r\n\r\n")
        assert connection.recv(65536) == b"", "closed once the body was in"

    assert answer.startswith(b"HTTP/1.1 401 "), answer
    assert b"\r\nconnection: close\r\n" in answer.lower()
    assert json.loads(problem)["type"] == "urn:todo-api:problem:unauthorized"
    assert api_db.execute("select count(*) from tasks where user_id = %s", [alice.id]).fetchone() == (0,)


def _chunked_piece(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)
