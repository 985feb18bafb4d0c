"""The server `todo-api serve` runs refuses hostile request heads before the API spends anything."""

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import CLI, SECRET, cli_env, new_user, serve_process


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


def test_a_head_over_32_kib_is_431(served: str) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * (33 * 1024) + b"\r\n\r\n"
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
