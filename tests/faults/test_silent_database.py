"""A database that stops answering without closing anything (a wedged pooler, a silent network), and
a network that drops idle connections without a word from the database.

The server-side statement timeout cannot help when no bytes arrive at all; the API's own bound on
each answer (statement timeout + connect timeout) turns such a request into a 503, and the
connection is not reused afterwards. At the bound the connection is shut without asking the silent
server to cancel the query (which costs psycopg up to 10 s more), so the bound is kept.
"""

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from pytest_postgresql.executors import NoopExecutor

from api.app import create_app
from api.db import isolation, listener
from tests.support import ApiUser, assert_problem, new_user, serving_client, settings_for


class SilenceableProxy:
    """TCP on loopback to the test Postgres's Unix socket; `silent` holds every byte back,
    `answers_held` only the server's (what the API sends still reaches the database), `hold_next` the
    next bytes the API sends that hold a given text, and `refusing` closes each new connection."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.silent = threading.Event()
        self.answers_held = threading.Event()
        # New connections are closed as they come, as by a database that is restarting.
        self.refusing = threading.Event()
        self._held_once: tuple[bytes, float] | None = None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._closed = False
        self._clients: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing.is_set():
                client.close()
                continue
            self._clients.append(client)
            server = socket.socket(socket.AF_UNIX)
            server.connect(str(self.socket_path))
            for source, target, gates, sent_by_api in (
                (client, server, (self.silent,), True),
                (server, client, (self.silent, self.answers_held), False),
            ):
                threading.Thread(
                    target=self._pump, args=(source, target, gates, sent_by_api), daemon=True
                ).start()

    def hold_next(self, text: bytes, seconds: float) -> None:
        """Hold the next bytes the API sends that contain `text` for `seconds`, once."""
        self._held_once = (text, seconds)

    @property
    def holding(self) -> bool:
        """Whether what `hold_next` waits for has yet to be sent."""
        return self._held_once is not None

    def _pump(
        self,
        source: socket.socket,
        target: socket.socket,
        gates: tuple[threading.Event, ...],
        sent_by_api: bool,
    ) -> None:
        try:
            while data := source.recv(65536):
                while any(gate.is_set() for gate in gates) and not self._closed:
                    time.sleep(0.01)
                if sent_by_api and (held := self._held_once) is not None and held[0] in data:
                    self._held_once = None
                    time.sleep(held[1])
                target.sendall(data)
        except OSError:
            pass
        finally:
            source.close()
            target.close()

    def while_silent(self, send: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
        """What `send` got while the database said nothing, and how long it waited for it."""
        self.silent.set()
        started = time.monotonic()
        try:
            return send(), time.monotonic() - started
        finally:
            self.silent.clear()

    def drop_connections(self) -> None:
        """Close every connection to the API as a load balancer's idle timeout would: the API's
        side sees the end of the stream, with no farewell from the database."""
        for client in self._clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        self._clients.clear()

    def close(self) -> None:
        self._closed = True
        self.silent.clear()
        self.answers_held.clear()
        self.listener.close()


@pytest.fixture
def proxy(migrated_template: NoopExecutor) -> Iterator[SilenceableProxy]:
    silenceable = SilenceableProxy(Path(migrated_template.host) / f".s.PGSQL.{migrated_template.port}")
    try:
        yield silenceable
    finally:
        silenceable.close()


def test_a_silent_database_is_a_fast_503_and_the_api_recovers(
    proxy: SilenceableProxy, migrated_db: psycopg.Connection[Any], migrated_template: NoopExecutor
) -> None:
    url = f"postgresql://{migrated_template.user}@127.0.0.1:{proxy.port}/{migrated_db.info.dbname}"
    # One pooled connection, used just before: no liveness check comes between the request and the
    # silence (a connection never handed out yet would be asked first, and wait out its own bound).
    settings = settings_for(url, db_statement_timeout_ms=500, db_connect_timeout_seconds=1, db_pool_size=1)
    user = new_user()
    with serving_client(create_app(settings)) as client:
        assert client.post(user.tasks_url, json={"title": "before"}, headers=user.headers).status_code == 201

        response, waited = proxy.while_silent(lambda: client.get(user.tasks_url, headers=user.headers))

        assert_problem(response, 503, "database-unavailable")
        assert waited < 1.5 + 1, f"the request hung for {waited:.1f} s"
        listed = client.get(user.tasks_url, headers=user.headers)
        assert listed.status_code == 200
        assert [task["title"] for task in listed.json()] == ["before"]


def test_a_silent_database_costs_a_request_one_liveness_check_within_the_pool_timeout(
    proxy: SilenceableProxy, migrated_db: psycopg.Connection[Any], migrated_template: NoopExecutor
) -> None:
    """Every connection has sat unused long enough to be asked whether it is alive: the request's
    connection does not answer the check in time, and is discarded alone. The other idle
    connections are not checked one after another while the request waits, and the request does
    not wait for psycopg to ask the silent server to cancel."""
    url = f"postgresql://{migrated_template.user}@127.0.0.1:{proxy.port}/{migrated_db.info.dbname}"
    settings = settings_for(url, db_connect_timeout_seconds=1, db_pool_timeout_seconds=1, db_pool_size=4)
    user = new_user()
    with serving_client(create_app(settings), timeout=60) as client:
        assert client.post(user.tasks_url, json={"title": "before"}, headers=user.headers).status_code == 201
        time.sleep(1.2)  # longer than CHECK_CONNECTIONS_UNUSED_FOR_SECONDS

        response, waited = proxy.while_silent(lambda: client.get(user.tasks_url, headers=user.headers))

        assert_problem(response, 503, "database-unavailable")
        assert waited < 1 + 1, f"the request hung for {waited:.1f} s"
        assert client.get(user.tasks_url, headers=user.headers).status_code == 200


def test_readiness_says_503_within_its_three_seconds_on_a_silent_database(
    proxy: SilenceableProxy, migrated_db: psycopg.Connection[Any], migrated_template: NoopExecutor
) -> None:
    """Its ping is not cancelled at the bound, which would have psycopg ask the silent server to
    cancel it first (docs/operations.md promises the answer within 3 s); and once the database
    answers again, so does /readyz."""
    url = f"postgresql://{migrated_template.user}@127.0.0.1:{proxy.port}/{migrated_db.info.dbname}"
    settings = settings_for(url, db_connect_timeout_seconds=5, db_pool_timeout_seconds=5, db_pool_size=2)
    with serving_client(create_app(settings), timeout=60) as client:
        assert client.get("/readyz").status_code == 200
        time.sleep(1.2)  # longer than CHECK_CONNECTIONS_UNUSED_FOR_SECONDS: the ping checks first

        response, waited = proxy.while_silent(lambda: client.get("/readyz"))

        assert response.status_code == 503
        assert waited < 3 + 1, f"/readyz took {waited:.1f} s"
        deadline = time.monotonic() + 15
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "/readyz never came back"
            time.sleep(0.2)


def test_an_isolation_check_that_gets_no_answer_fails_closed_and_checks_again(
    proxy: SilenceableProxy,
    migrated_db: psycopg.Connection[Any],
    migrated_template: NoopExecutor,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A check whose connection stopped answering waited for ever: the worker went on serving on the
    verdict before it, /readyz and the metrics said "verified", and no check came after it, so a
    weakening made meanwhile was never found. Bounded, it is a finding like any check that cannot
    complete, and the checks go on."""
    monkeypatch.setattr(isolation, "_ANSWER_TIMEOUT_SECONDS", 1.0)
    url = f"postgresql://{migrated_template.user}@127.0.0.1:{proxy.port}/{migrated_db.info.dbname}"
    # One connection, used by a check every 0.2 s: never idle long enough to be asked whether it is
    # alive before the check gets it, so the check itself meets the silence.
    settings = settings_for(
        url, isolation_check_interval_seconds=0.2, db_pool_size=1, db_connect_timeout_seconds=1
    )
    user = new_user()
    with serving_client(create_app(settings), timeout=60) as client:
        assert client.get(user.tasks_url, headers=user.headers).status_code == 200
        with caplog.at_level(logging.ERROR, logger="api.db.isolation"):
            proxy.answers_held.set()
            try:
                deadline = time.monotonic() + 10
                while (ready := client.get("/readyz")).json().get("type") != (
                    "urn:todo-api:problem:isolation-unverified"
                ):
                    assert time.monotonic() < deadline, f"the check kept its last verdict: {ready.text}"
                assert_problem(client.get(user.tasks_url, headers=user.headers), 503, "isolation-unverified")
            finally:
                proxy.answers_held.clear()
        assert any(
            "the isolation check could not complete (TimeoutError: no answer from the database within 1 s)"
            in record.getMessage()
            for record in caplog.records
        ), [record.getMessage() for record in caplog.records]
        deadline = time.monotonic() + 15
        while client.get(user.tasks_url, headers=user.headers).status_code != 200:
            assert time.monotonic() < deadline, "never served again"
            time.sleep(0.2)
        assert client.get("/readyz").status_code == 200


@contextlib.contextmanager
def _found_away(
    proxy: SilenceableProxy,
    migrated_db: psycopg.Connection[Any],
    migrated_template: NoopExecutor,
    *,
    pool_timeout_seconds: float,
    check_held_seconds: float,
) -> Iterator[tuple[httpx.Client, ApiUser]]:
    """An API a check has found the database away from (the proxy refused it), served again with
    the next check's first statement held back `check_held_seconds`: its client, and a user."""
    url = f"postgresql://{migrated_template.user}@127.0.0.1:{proxy.port}/{migrated_db.info.dbname}"
    settings = settings_for(
        url,
        isolation_check_interval_seconds=0.5,
        db_pool_size=1,
        db_connect_timeout_seconds=1,
        db_pool_timeout_seconds=pool_timeout_seconds,
    )
    user = new_user()
    with serving_client(create_app(settings), timeout=60) as client:
        assert client.get(user.tasks_url, headers=user.headers).status_code == 200
        proxy.refusing.set()
        proxy.drop_connections()
        deadline = time.monotonic() + 10
        while (ready := client.get("/readyz")).json().get(
            "type"
        ) != "urn:todo-api:problem:isolation-unverified":
            assert time.monotonic() < deadline, f"no check found the database away: {ready.text}"
            time.sleep(0.1)
        proxy.hold_next(b"repeatable read, read only", check_held_seconds)  # the check's first statement
        proxy.refusing.clear()
        yield client, user


def test_a_request_once_the_database_answers_again_waits_for_a_check_slower_than_a_second(
    proxy: SilenceableProxy, migrated_db: psycopg.Connection[Any], migrated_template: NoopExecutor
) -> None:
    """Far from the database (Neon's region is not the API's) a check is 2 s: a new connection and a
    dozen round trips of 80 ms. A request waited for the check it asked for at most 1 s and was
    refused, 503 isolation-unverified, though the database answered (the database-far-away probe of
    stop 80). It waits as long as it would for a connection; /readyz, whose caller's timeout is short,
    still answers within about a second (503 until the check passes)."""
    with _found_away(
        proxy, migrated_db, migrated_template, pool_timeout_seconds=5, check_held_seconds=3.0
    ) as (client, user):
        asked = time.monotonic()
        ready = client.get("/readyz")
        answered_in = time.monotonic() - asked
        listed = client.get(user.tasks_url, headers=user.headers)

        assert_problem(ready, 503, "isolation-unverified")
        assert answered_in < 2, f"/readyz took {answered_in:.1f} s"
        assert listed.status_code == 200, listed.text
        assert not proxy.holding, "a check met the hold: the request waited for it"


def test_a_request_waits_for_the_check_it_asked_for_no_longer_than_for_a_connection(
    proxy: SilenceableProxy, migrated_db: psycopg.Connection[Any], migrated_template: NoopExecutor
) -> None:
    """The bound of the wait above: a check that hangs (its first statement answered after 8 s) holds
    the request until DB_POOL_TIMEOUT_SECONDS, then it is refused; without the bound it waited the
    whole 8 s and no test said so (the mutation probe of stop 81)."""
    with _found_away(
        proxy, migrated_db, migrated_template, pool_timeout_seconds=2, check_held_seconds=8.0
    ) as (client, user):
        asked = time.monotonic()
        listed = client.get(user.tasks_url, headers=user.headers)
        answered_in = time.monotonic() - asked

        assert_problem(listed, 503, "isolation-unverified")
        assert answered_in < 5, f"the request waited {answered_in:.1f} s for a check that hung"


def test_a_write_whose_answer_never_came_is_outcome_unknown_and_a_read_is_not(
    proxy: SilenceableProxy, migrated_db: psycopg.Connection[Any], migrated_template: NoopExecutor
) -> None:
    """The write reaches the database and commits; only its answer is held back. So the API cannot
    know, and must not say "nothing was changed"; the same Idempotency-Key then settles it."""
    url = f"postgresql://{migrated_template.user}@127.0.0.1:{proxy.port}/{migrated_db.info.dbname}"
    # One pooled connection, used just before: no liveness check comes between the request and the
    # silence (a connection never handed out yet would be asked first, and wait out its own bound).
    # The write's bound closes it, and the read waits out the pool's timeout for another, whose making
    # the silence holds back: 3 s, not the default 5, and still time enough for the retry after it to
    # get one made once the answers flow again (the pool tries again a second after a failed try).
    settings = settings_for(
        url,
        db_statement_timeout_ms=500,
        db_connect_timeout_seconds=1,
        db_pool_size=1,
        db_pool_timeout_seconds=3,
    )
    user = new_user()
    key = {"Idempotency-Key": "held-answer-1"}
    with serving_client(create_app(settings)) as client:
        assert client.post(user.tasks_url, json={"title": "before"}, headers=user.headers).status_code == 201

        proxy.answers_held.set()
        written = client.post(user.tasks_url, json={"title": "held"}, headers={**user.headers, **key})
        read = client.get(user.tasks_url, headers=user.headers)
        proxy.answers_held.clear()

        problem = assert_problem(written, 503, "outcome-unknown")
        assert written.headers["retry-after"].isdigit()
        assert "Idempotency-Key" in problem["detail"]
        assert_problem(read, 503, "database-unavailable")  # a read commits nothing

        retried = client.post(user.tasks_url, json={"title": "held"}, headers={**user.headers, **key})
        assert retried.status_code == 201, retried.text
        listed = client.get(user.tasks_url, headers=user.headers)
    assert sorted(task["title"] for task in listed.json()) == ["before", "held"], "it had committed, once"
    stored = migrated_db.execute("select count(*) from tasks where title = 'held'").fetchone()
    assert stored == (1,)


def test_a_write_on_a_connection_dropped_while_idle_runs_again_once(
    proxy: SilenceableProxy, migrated_db: psycopg.Connection[Any], migrated_template: NoopExecutor
) -> None:
    """Within a second of its last use a connection is not asked whether it is alive. The write
    finds the connection's end waiting before it is sent, so nothing of it went out: it runs on a
    new connection, once. Its statement was prepared on that connection before, so nothing else is
    sent first that would break on the way."""
    url = f"postgresql://{migrated_template.user}@127.0.0.1:{proxy.port}/{migrated_db.info.dbname}"
    settings = settings_for(url, db_connect_timeout_seconds=2, db_pool_size=1)
    user = new_user()
    with serving_client(create_app(settings)) as client:
        for title in ("before", "before again"):  # the second writes as a stored owner, as the next
            assert client.post(user.tasks_url, json={"title": title}, headers=user.headers).status_code == 201

        proxy.drop_connections()
        time.sleep(0.2)  # the end of each stream reaches the API's sockets
        written = client.post(user.tasks_url, json={"title": "after the drop"}, headers=user.headers)

        assert written.status_code == 201, written.text
        listed = client.get(user.tasks_url, headers=user.headers)
    assert sorted(task["title"] for task in listed.json()) == ["after the drop", "before", "before again"]
    stored = migrated_db.execute("select count(*) from tasks where title = 'after the drop'").fetchone()
    assert stored == (1,)


def test_a_write_whose_session_the_server_ended_while_preparing_runs_again_once(
    migrated_db_url: str,
) -> None:
    """A write's statement is prepared on each connection in a transaction of its own, sent before
    the write. A session the server ends meanwhile (here an operator's pg_terminate_backend while the
    PREPARE waits behind a DBA's lock; idle_in_transaction_session_timeout did it while the PREPARE
    went in messages of its own) has sent nothing of the write, which runs again on a new connection,
    where it was answered 503 outcome-unknown. The test before the PREPARE went in one message held
    the BEGIN back with it, and passed with the retry removed (the mutation probe of stop 81)."""
    alice = new_user()
    settings = settings_for(migrated_db_url, db_connect_timeout_seconds=2, db_pool_size=2)
    with serving_client(create_app(settings), timeout=60) as client:
        created = client.post(alice.tasks_url, json={"title": "ended while preparing"}, headers=alice.headers)
        assert created.status_code == 201, created.text
        task_url = alice.task_url(created.json()["id"])
        answers: list[httpx.Response] = []
        with (
            psycopg.connect(migrated_db_url) as holder,
            psycopg.connect(migrated_db_url, autocommit=True) as dba,
        ):
            holder.execute("lock table tasks in access exclusive mode")
            toggle = threading.Thread(
                target=lambda: answers.append(client.patch(f"{task_url}/complete", headers=alice.headers))
            )
            toggle.start()
            waiting = (
                "select pid from pg_stat_activity"
                " where query like '%%PREPARE todo_api_%%' and wait_event_type = 'Lock'"
            )
            deadline = time.monotonic() + 10
            while not (preparing := dba.execute(waiting).fetchall()):
                assert time.monotonic() < deadline, "no PREPARE waited behind the lock"
                time.sleep(0.05)
            dba.execute("select pg_terminate_backend(%s)", [preparing[0][0]])
            holder.rollback()
            toggle.join(30)
        assert answers[0].status_code == 200, answers[0].text
        assert answers[0].json()["completed"] is True
        assert client.get(task_url, headers=alice.headers).json()["version"] == 2


def test_the_events_listener_lets_a_silent_database_go_at_its_bound_saying_why(
    proxy: SilenceableProxy,
    migrated_db: psycopg.Connection[Any],
    migrated_template: NoopExecutor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its check of a silent connection was cancelled at the bound, and psycopg then asked the silent
    server to cancel the query and waited for it (10 s more, and a warning "query cancellation failed")
    before the listener saw the loss; and asyncio's TimeoutError says nothing, so the warning read "the
    events listener lost its connection ()". The connection is shut at the bound, as every other wait
    for the database is (`answer_within`)."""
    monkeypatch.setattr(listener, "_IDLE_CHECK_SECONDS", 0.5)
    url = f"postgresql://{migrated_template.user}@127.0.0.1:{proxy.port}/{migrated_db.info.dbname}"
    waited: list[float] = []

    async def silenced() -> None:
        events = listener.Listener(url, on_wake=lambda _: None, on_lost=lambda: None)
        running = asyncio.create_task(events.run())
        await asyncio.wait_for(events.listening.wait(), 30)
        proxy.silent.set()
        started = time.monotonic()
        while events.listening.is_set():
            assert time.monotonic() - started < 30, "the listener notices the silence"
            await asyncio.sleep(0.05)
        waited.append(time.monotonic() - started)
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running

    with caplog.at_level(logging.WARNING):
        asyncio.run(silenced())
    # Its notifications wait 0.5 s, then its check another 0.5 s: nothing like the 10 s a cancel took.
    assert waited[0] < 5, waited
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == [
        "the events listener lost its connection (the database did not answer a check within 0.5 s);"
        " reconnecting, and streams poll meanwhile"
    ]
