"""The server `todo-api serve` runs refuses hostile request heads before the API spends anything."""

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.auth.principal import USER_ID_MAX_LENGTH
from api.http.caller import MAX_AUTHORIZATION_BYTES
from api.tasks.listing import CURSOR_MAX_LENGTH, MAX_TASK_ID, Cursor
from api.tasks.models import TITLE_MAX_LENGTH
from tests.support import CLI, SECRET, cli_env, new_user, now, serve_process, sign


@pytest.fixture(scope="module")
def served(api_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("limits")
    env = cli_env(DATABASE_URL=api_db_url, BETTER_AUTH_SECRET=SECRET)
    with serve_process([*CLI, "serve"], cwd=folder, env=env, output=folder / "serve.log") as (base_url, _):
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


def test_a_client_that_never_finishes_its_head_is_disconnected(served: str) -> None:
    answer, waited = _raw(served, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", wait=20)
    assert b" 200 " not in answer
    assert 9 <= waited < 15, f"disconnected after {waited:.1f} s"


def test_a_client_that_sends_nothing_is_disconnected(served: str) -> None:
    """A connection that never sends a byte holds one of the worker's connections as a slow head
    does, and is closed as one is (under granian's automatic HTTP/1-or-2 detection it was held until
    the client left, and 1,024 of them kept everyone else out)."""
    host, port = served.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        assert connection.recv(1) == b"", "closed by the server, with no answer"


def test_the_longest_next_page_url_is_served_with_the_longest_token(served: str) -> None:
    """A next page's Link is the request's own URL with a cursor of the API's: at their longest, a
    user id and a search of four-byte characters (12 bytes each, percent-encoded) and the longest
    cursor, with an Authorization header at the API's own limit, the whole head is well within 32 KiB."""
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


def test_a_large_authorization_header_is_401_from_the_real_server(served: str) -> None:
    alice = new_user()
    response = httpx.get(f"{served}{alice.tasks_url}", headers={"Authorization": "Bearer " + "a" * 10_000})
    assert response.status_code == 401


def test_a_body_near_the_limit_is_judged_and_one_over_it_refused(served: str, tmp_path: Path) -> None:
    alice = new_user()
    near = httpx.post(
        f"{served}{alice.tasks_url}", json={"title": "t" * (60 * 1024)}, headers=alice.headers, timeout=30
    )
    assert near.status_code == 422
    over = httpx.post(
        f"{served}{alice.tasks_url}", json={"title": "t" * (70 * 1024)}, headers=alice.headers, timeout=30
    )
    assert over.status_code == 413
