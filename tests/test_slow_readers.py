"""A client that asks and then does not read its answer (a phone gone to sleep, or one that never
reads) holds neither the answer nor its connection without bound: a large answer goes out in pieces,
and one whose client takes no piece for SEND_TIMEOUT_SECONDS is cut off; until then it holds one of
its user's in-flight slots, so one user's unread answers hold at most
MAX_REQUESTS_IN_FLIGHT_PER_USER of them, and every other user is served throughout."""

import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from api.app import create_app
from api.tasks.listing import PAGE_SIZE_MAX
from api.tasks.models import DESCRIPTION_MAX_LENGTH, TITLE_MAX_LENGTH
from tests.support import ApiUser, assert_problem, new_user, serving, settings_for

SEND_TIMEOUT_SECONDS = 2.0
IN_FLIGHT = 2
# A control character is six bytes in JSON (\u0001): the longest page is then a few megabytes, more
# than the kernel takes of an answer nobody reads.
LONGEST_TASK = {"title": "\x01" * TITLE_MAX_LENGTH, "description": "\x01" * DESCRIPTION_MAX_LENGTH}


def _ask_and_never_read(base_url: str, user: ApiUser, path: str) -> socket.socket:
    address = urlsplit(base_url)
    reader = socket.socket()
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


def test_an_answer_nobody_reads_holds_a_slot_until_its_client_is_cut_off(
    served: str, api_db: psycopg.Connection[Any]
) -> None:
    alice, bob = new_user(), new_user()
    # Her longest page, written in one statement: what is tested is the reading of it, and a create
    # over HTTP for each task cost more than all the rest.
    api_db.execute("insert into users (id) values (%s)", [alice.id])
    api_db.execute(
        "insert into tasks (user_id, title, description) select %s, %s, %s from generate_series(1, %s)",
        [alice.id, LONGEST_TASK["title"], LONGEST_TASK["description"], PAGE_SIZE_MAX],
    )
    with httpx.Client(base_url=served, timeout=30) as client:
        client.post(bob.tasks_url, json={"title": "bob's"}, headers=bob.headers)
        page = f"{urlsplit(alice.tasks_url).path}?limit={PAGE_SIZE_MAX}"
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
