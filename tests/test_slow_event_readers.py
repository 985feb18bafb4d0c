"""A client that opens an event stream and stops reading is closed once a write to it has waited the
send timeout: the normal end of a stream, logged and counted as the 200 it was, never as a server
error that any user could raise at will."""

import logging
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from api.app import create_app
from api.tasks.models import DESCRIPTION_MAX_LENGTH, TITLE_MAX_LENGTH
from tests.support import new_user, serving, settings_for

SEND_TIMEOUT_SECONDS = 1.0
# Each event carries the task, so the longest task fills the socket's buffers in the fewest writes:
# a control character is six bytes in JSON (\u0001), which makes an event of about seven kilobytes.
DESCRIPTION = "\x01" * DESCRIPTION_MAX_LENGTH
MAX_WRITES = 5000


def _events_access_lines(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [
        record
        for record in records
        if record.name == "api.access" and getattr(record, "route", None) == "/api/{user_id}/events"
    ]


def test_a_stream_whose_client_stopped_reading_ends_as_a_200_not_a_server_error(
    api_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    alice = new_user()
    with serving(
        create_app(
            settings_for(api_db_url, rate_limit_per_minute=0, send_timeout_seconds=SEND_TIMEOUT_SECONDS)
        )
    ) as base_url:
        address = urlsplit(base_url)
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect((address.hostname, address.port))
        reader.sendall(
            f"GET /api/{alice.id}/events HTTP/1.1\r\nHost: test\r\n"
            f"Authorization: Bearer {alice.token}\r\n\r\n".encode()
        )
        assert reader.recv(64).startswith(b"HTTP/1.1 200")
        with httpx.Client(base_url=base_url, headers=alice.headers) as client:
            task = client.post(alice.tasks_url, json={"title": "busy"}).json()
            writes = 0
            # A look at the log after every write: the stream's end is seen as soon as it comes.
            while not _events_access_lines(caplog.records) and writes < MAX_WRITES:
                writes += 1
                title = f"busy {writes} ".ljust(TITLE_MAX_LENGTH, "\x01")
                changed = client.put(
                    alice.task_url(task["id"]), json={"title": title, "description": DESCRIPTION}
                )
                assert changed.status_code == 200
            deadline = time.monotonic() + 10 * SEND_TIMEOUT_SECONDS
            while not _events_access_lines(caplog.records) and time.monotonic() < deadline:
                time.sleep(0.1)
            # The server goes on serving her.
            assert client.get(alice.task_url(task["id"])).status_code == 200
        reader.close()
    (line,) = _events_access_lines(caplog.records)
    assert getattr(line, "status", None) == 200, line.getMessage()
    errors = [
        record
        for record in caplog.records
        if record.name.startswith("api") and record.levelno >= logging.ERROR
    ]
    assert errors == [], [record.getMessage() for record in errors]
