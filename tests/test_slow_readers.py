"""A client that asks and then does not read its answer (a phone gone to sleep, or one that never
reads) holds neither the answer nor its connection without bound: a large answer goes out in pieces,
and one whose client takes no piece for SEND_TIMEOUT_SECONDS is cut off; until then it holds one of
its user's in-flight slots, so one user's unread answers hold at most
MAX_REQUESTS_IN_FLIGHT_PER_USER of them, and every other user is served throughout."""

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import psycopg
import pytest

from api.app import create_app
from api.tasks.listing import PAGE_SIZE_MAX
from api.tasks.models import DESCRIPTION_MAX_LENGTH, TITLE_MAX_LENGTH
from tests.support import (
    SECRET,
    ApiUser,
    assert_problem,
    cli_env,
    new_user,
    serve_command,
    serve_process,
    serving,
    settings_for,
    wait_until,
)

SEND_TIMEOUT_SECONDS = 2.0
IN_FLIGHT = 2
# A control character is six bytes in JSON (\u0001): the longest page is then a few megabytes, more
# than the kernel takes of an answer nobody reads.
LONGEST_TASK = {"title": "\x01" * TITLE_MAX_LENGTH, "description": "\x01" * DESCRIPTION_MAX_LENGTH}


def _ask_and_never_read(base_url: str, user: ApiUser, path: str) -> socket.socket:
    address = urlsplit(base_url)
    assert address.hostname is not None
    reader = socket.socket(socket.AF_INET6 if ":" in address.hostname else socket.AF_INET)
    # Before connecting, so that the window it offers stays small: the kernel then takes only a few
    # megabytes of an answer that is not read.
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect((address.hostname, address.port))
    reader.sendall(
        f"GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {user.token}\r\n\r\n".encode()
    )
    return reader


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


def _read_all(reader: socket.socket) -> tuple[int, int]:
    """Read as fast as it comes, until the whole answer is in or the server closes the connection:
    the answer's Content-Length, and how many bytes of its body came."""
    reader.settimeout(10)
    received = b""
    while True:
        try:
            chunk = reader.recv(1 << 20)
        except ConnectionResetError:
            chunk = b""
        received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        declared = _content_length(head)
        if not chunk or (declared is not None and len(body) >= declared):
            break
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert declared is not None
    return declared, len(body)


@pytest.fixture
def served(api_db_url: str) -> Iterator[str]:
    settings = settings_for(
        api_db_url,
        send_timeout_seconds=SEND_TIMEOUT_SECONDS,
        max_requests_in_flight_per_user=IN_FLIGHT,
        rate_limit_per_minute=0,
    )
    with serving(create_app(settings)) as base_url:
        yield base_url


def _longest_page_of(user: ApiUser, database_url: str, tasks: int = PAGE_SIZE_MAX) -> str:
    """The path of `user`'s page of `tasks` of the longest tasks, written in one statement: what is
    tested is the reading of it, and a create over HTTP for each task cost more than all the rest."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("insert into users (id) values (%s)", [user.id])
        connection.execute(
            "insert into tasks (user_id, title, description) select %s, %s, %s from generate_series(1, %s)",
            [user.id, LONGEST_TASK["title"], LONGEST_TASK["description"], tasks],
        )
    return f"{urlsplit(user.tasks_url).path}?limit={tasks}"


def _held_by_the_server(base_url: str, readers: list[socket.socket]) -> int:
    """How many of `readers`' connections the server still holds open (its side, as the kernel lists it)."""
    port = urlsplit(base_url).port
    ours = {reader.getsockname()[1] for reader in readers}
    return sum(
        1
        for connection in psutil.net_connections(kind="tcp")
        if connection.laddr and connection.laddr.port == port
        and connection.raddr and connection.raddr.port in ours
        and connection.status == psutil.CONN_ESTABLISHED
    )  # fmt: skip


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "::1"]
)  # each family's listening socket (the mutation round of stop 86)
def test_serve_closes_the_connection_of_a_client_it_cut_off(
    migrated_db_url: str, tmp_path: Path, host: str
) -> None:
    """granian has no write timeout: the API gave up on an answer nobody read, and freed its user's
    slot, but the connection stayed open with the rest of the answer for as long as its client did,
    and one user who did so every SEND_TIMEOUT_SECONDS held a worker's connections until it took no one
    (the slow readers' probe of stop 85). The kernel closes it once the client has taken nothing for ten
    times SEND_TIMEOUT_SECONDS."""
    send_timeout_seconds = 1.0
    alice, bob = new_user(), new_user()
    page = _longest_page_of(alice, migrated_db_url)
    env = cli_env(
        DATABASE_URL=migrated_db_url,
        BETTER_AUTH_SECRET=SECRET,
        SEND_TIMEOUT_SECONDS=str(send_timeout_seconds),
        RATE_LIMIT_PER_MINUTE="0",
    )
    command = serve_command(env, "--workers", "1", "--host", host)
    with serve_process(command, cwd=tmp_path, env=env, output=tmp_path / "serve.log", host=host) as (
        base_url,
        _,
    ):
        readers = [_ask_and_never_read(base_url, alice, page) for _ in range(IN_FLIGHT)]
        try:
            time.sleep(send_timeout_seconds / 4)
            assert _held_by_the_server(base_url, readers) == IN_FLIGHT
            wait_until(
                lambda: _held_by_the_server(base_url, readers) == 0,
                "the server closed the connections of the clients it cut off",
                timeout=30 * send_timeout_seconds,
                every=0.2,
            )
            with httpx.Client(base_url=base_url, timeout=30) as client:
                assert client.get(bob.tasks_url, headers=bob.headers).status_code == 200
                assert (
                    client.get(alice.tasks_url, headers=alice.headers, params={"limit": 1}).status_code == 200
                )
        finally:
            for reader in readers:
                reader.close()
    said = (tmp_path / "serve.log").read_text()
    assert said.count("cut off a client that took none of its answer") == IN_FLIGHT, said
    assert "Traceback" not in said, said
    assert '"level":"ERROR"' not in said, said


def test_serve_lets_a_slow_but_steady_reader_take_the_whole_answer(
    migrated_db_url: str, tmp_path: Path
) -> None:
    """The kernel's timeout is ten times SEND_TIMEOUT_SECONDS, not once: a client reading 16 KB/s over
    loopback keeps its window shut about 4 s at a time (it opens it again only once 64 KiB are free), and
    at once the kernel reset its connection mid-answer, after the API had handed all of it over (the
    verification probe and the mutation round of stop 85 and 86)."""
    alice = new_user()
    page = _longest_page_of(alice, migrated_db_url, 18)  # about 133 KB, handed over whole at once
    env = cli_env(
        DATABASE_URL=migrated_db_url,
        BETTER_AUTH_SECRET=SECRET,
        SEND_TIMEOUT_SECONDS="1",
        RATE_LIMIT_PER_MINUTE="0",
    )
    log = tmp_path / "serve.log"
    with serve_process(serve_command(env, "--workers", "1"), cwd=tmp_path, env=env, output=log) as (
        base_url,
        _,
    ):
        address = urlsplit(base_url)
        with socket.create_connection((address.hostname, address.port)) as reader:
            reader.sendall(
                f"GET {page} HTTP/1.1\r\nHost: test\r\n"
                f"Authorization: Bearer {alice.token}\r\nConnection: close\r\n\r\n".encode()
            )
            time.sleep(1.5)
            received, reset = b"", False
            while True:
                try:
                    chunk = reader.recv(1024)
                except ConnectionResetError:
                    reset = True
                    break
                if not chunk:
                    break
                received += chunk
                time.sleep(len(chunk) / 16_000)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert (len(body), reset) == (_content_length(head), False), "the whole answer, no reset"
    assert len(json.loads(body)) == 18
    assert "cut off a client" not in log.read_text()


def test_an_answer_nobody_reads_holds_a_slot_until_its_client_is_cut_off(
    served: str, api_db_url: str
) -> None:
    alice, bob = new_user(), new_user()
    page = _longest_page_of(alice, api_db_url)
    with httpx.Client(base_url=served, timeout=30) as client:
        client.post(bob.tasks_url, json={"title": "bob's"}, headers=bob.headers)
        readers = [_ask_and_never_read(served, alice, page) for _ in range(IN_FLIGHT)]
        time.sleep(SEND_TIMEOUT_SECONDS / 4)
        # Her unread answers hold her slots: one more request of hers is refused, at once...
        refused = client.get(alice.tasks_url, headers=alice.headers)
        assert refused.status_code == 429, f"{refused.status_code}, not 429"
        assert_problem(refused, 429, "too-many-requests")
        # ...and nobody else is kept waiting.
        assert client.get(bob.tasks_url, headers=bob.headers).status_code == 200
        # Each reader is cut off once it has taken nothing for the send timeout: read at last, its
        # answer stops short.
        time.sleep(2 * SEND_TIMEOUT_SECONDS)
        for reader in readers:
            declared, came = _read_all(reader)
            assert came < declared
            reader.close()
        # ...and its slot is hers again.
        assert client.get(alice.tasks_url, headers=alice.headers).status_code == 200
