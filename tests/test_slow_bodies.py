"""One user's slow bodies cannot hold the server `todo-api serve` runs: each user has at most
MAX_REQUESTS_IN_FLIGHT_PER_USER requests in flight (429 before the body is read), a body has
BODY_TIMEOUT_SECONDS to arrive (408, connection closed), and another user is served throughout."""

import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.support import SECRET, ApiUser, cli_env, new_user, serve_command, serve_process

IN_FLIGHT = 4
# Half a second off the trickle's beat: a byte landing after the server closed would reset the
# connection before its answer is read.
BODY_TIMEOUT_SECONDS = 4.5
SLOW_CONNECTIONS = 60
DECLARED_BYTES = 60_000
PROBLEM_PREFIX = "urn:todo-api:problem:"
# How long a watch may last before the server counts as hung: far past every deadline under test, so
# that a loaded machine is slow, not wrong; a watch ends as soon as what it waits for has come.
HUNG_SECONDS = 60


@pytest.fixture(scope="module")
def served(api_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("slow-bodies")
    env = cli_env(
        DATABASE_URL=api_db_url,
        BETTER_AUTH_SECRET=SECRET,
        MAX_REQUESTS_IN_FLIGHT_PER_USER=str(IN_FLIGHT),
        BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT_SECONDS),
    )
    with serve_process(serve_command(env), cwd=folder, env=env, output=folder / "serve.log") as (base_url, _):
        yield base_url


@dataclass
class SlowBody:
    """A create whose body trickles in: `{` at once, then a byte a second."""

    connection: socket.socket
    opened: float
    answer: bytes = b""
    answered_after: float | None = None
    closed_by_server: bool = False
    closed_after: float | None = None
    sent: int = field(default=1)

    @property
    def status(self) -> int | None:
        return int(self.answer.split(b" ", 2)[1]) if self.answer.startswith(b"HTTP/1.1 ") else None

    def trickle(self) -> None:
        """One more byte, if a second has passed since the last (on the beat of its own opening)."""
        due = time.monotonic() >= self.opened + self.sent
        if due and self.answered_after is None and self.sent < DECLARED_BYTES:
            try:
                self.connection.sendall(b" ")
                self.sent += 1
            except OSError:
                pass

    def read(self) -> None:
        try:
            chunk = self.connection.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.closed_by_server = True
            self.closed_after = time.monotonic() - self.opened
            return
        if not self.answer:
            self.answered_after = time.monotonic() - self.opened
        self.answer += chunk

    def header(self, name: str) -> str | None:
        head = self.answer.partition(b"\r\n\r\n")[0].decode("latin-1")
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def problem_type(self) -> str:
        return self.answer.partition(b"\r\n\r\n")[2].decode().split('"type":"', 1)[1].split('"', 1)[0]


def _open_slow_body(base_url: str, user: ApiUser) -> SlowBody:
    host, port = base_url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=5)
    head = (
        f"POST {user.tasks_url} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {user.token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {DECLARED_BYTES}\r\n\r\n{{"
    )
    connection.sendall(head.encode())
    connection.setblocking(False)
    return SlowBody(connection, time.monotonic())


def _watch(slow: list[SlowBody], seconds: float, *, until_answered: bool = False) -> None:
    """Trickle a byte a second into every unanswered body, and read what the server says, for
    `seconds` or until every connection has been answered and closed (or only answered)."""
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as watching:  # epoll: more sockets than select() takes
        for body in slow:
            if not body.closed_by_server:
                watching.register(body.connection, selectors.EVENT_READ, body)
        while time.monotonic() < deadline and watching.get_map():
            if until_answered and all(body.answer for body in slow):
                return
            for body in slow:
                body.trickle()
            for key, _ in watching.select(0.05):
                body = key.data
                body.read()
                if body.closed_by_server:
                    watching.unregister(body.connection)


def _close(slow: list[SlowBody]) -> None:
    for body in slow:
        body.connection.close()


class _OtherUser:
    """Another user's GETs, one after another in a thread of their own, each with the moment it was
    answered (`time.monotonic()`, as SlowBody's)."""

    def __init__(self, base_url: str, user: ApiUser) -> None:
        self.answers: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(base_url, user), daemon=True)

    def _run(self, base_url: str, user: ApiUser) -> None:
        # A connection of its own for each GET, as a new visitor's would be: a server that has run
        # out of room for requests stops accepting them first.
        fresh = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=base_url, timeout=5, limits=fresh) as client:
            while not self._stop.wait(0.1):
                try:
                    status = client.get(user.tasks_url, headers=user.headers).status_code
                except httpx.TimeoutException:
                    status = 0
                self.answers.append((status, time.monotonic()))

    def __enter__(self) -> "_OtherUser":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_one_users_slow_bodies_get_429_past_the_cap_and_408_past_the_deadline_while_others_are_served(
    served: str,
) -> None:
    alice, bob = new_user(), new_user()
    with _OtherUser(served, bob) as others:
        slow = [_open_slow_body(served, alice) for _ in range(SLOW_CONNECTIONS)]
        all_open = time.monotonic()
        try:
            _watch(slow, HUNG_SECONDS)
        finally:
            _close(slow)

    refused = [body for body in slow if body.status == 429]
    timed_out = [body for body in slow if body.status == 408]
    assert len(refused) == SLOW_CONNECTIONS - IN_FLIGHT, sorted(str(body.status) for body in slow)
    assert len(timed_out) == IN_FLIGHT
    for body in refused:
        assert body.header("Retry-After") == "1"
        assert body.header("Content-Type") == "application/problem+json"
        assert body.problem_type() == PROBLEM_PREFIX + "too-many-requests"
        assert body.answered_after is not None
        # The rest of the body is read and thrown away, so that closing does not reset the connection
        # under a client still sending (it may lose the answer), but it is not waited for for ever.
        assert body.closed_after is not None, "a body the API will not read is waited for, but not for ever"
    for body in timed_out:
        assert body.problem_type() == PROBLEM_PREFIX + "request-timeout"
        assert body.header("Connection") == "close"
        assert body.answered_after is not None
        assert body.answered_after > BODY_TIMEOUT_SECONDS - 0.5, "a body has its whole deadline"
        assert body.closed_by_server, "the rest of the body may be on its way: the connection is closed"
    # Refused before the body, not after it: every 429 came before the first body's deadline did.
    first_deadline = min(body.opened + body.answered_after for body in timed_out if body.answered_after)
    assert all(body.opened + (body.answered_after or 0) < first_deadline for body in refused)

    # Another user was served throughout: every GET answered (a 5 s client timeout is a 0), some of
    # them while every slot of hers was held by a body still arriving.
    assert {status for status, _ in others.answers} == {200}, others.answers
    assert [at for _, at in others.answers if all_open < at < first_deadline], others.answers

    # Every slot came back: the user is served again, and may hold as many slow bodies as before.
    with httpx.Client(base_url=served) as client:
        assert client.get(alice.tasks_url, headers=alice.headers).status_code == 200
        assert client.get(alice.tasks_url, headers=alice.headers).json() == [], "no slow body was created"
    again = [_open_slow_body(served, alice) for _ in range(IN_FLIGHT)]
    try:
        _watch(again, 1.5)
        assert [body.status for body in again] == [None] * IN_FLIGHT
    finally:
        _close(again)


def test_slots_come_back_when_clients_hang_up_mid_body(served: str) -> None:
    alice = new_user()
    held = [_open_slow_body(served, alice) for _ in range(IN_FLIGHT)]
    _watch(held, 1)
    extra = _open_slow_body(served, alice)
    _watch([extra], HUNG_SECONDS, until_answered=True)
    assert extra.status == 429
    _close([*held, extra])

    deadline = time.monotonic() + HUNG_SECONDS
    while True:  # the server notices the hang-ups as it reads: give it a moment
        again = [_open_slow_body(served, alice) for _ in range(IN_FLIGHT)]
        _watch(again, 1)
        _close(again)
        if all(body.status is None for body in again):
            break
        assert time.monotonic() < deadline, [body.status for body in again]
    with httpx.Client(base_url=served) as client:
        assert client.get(alice.tasks_url, headers=alice.headers).status_code == 200


def test_head_and_allow_on_the_real_server(served: str) -> None:
    head = httpx.head(f"{served}/healthz")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == httpx.get(f"{served}/healthz").headers["content-length"]
    refused = httpx.delete(f"{served}{new_user().tasks_url}")
    assert refused.status_code == 405
    assert refused.headers["allow"] == "GET, HEAD, POST"
