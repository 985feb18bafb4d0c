"""`todo-api serve --workers 2` through what happens to servers: a second server started on its port,
a worker killed as the OOM killer would, SIGTERM while a request is in flight, and the server itself
killed with SIGKILL."""

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psutil
import psycopg
import pytest

from api.ops.startup_checks import refuse_a_taken_port
from api.ops.worker import OOM_SCORE_ADJ_ABOVE_THE_SERVER
from tests.support import (
    CLI,
    SECRET,
    ApiUser,
    assert_problem,
    cli_env,
    free_port,
    new_user,
    run_cli,
    scrape,
    serve_command,
    serve_process,
    sessions_waiting_on_a_lock,
    tmpfs,
    value,
    wait_until,
    wait_until_it_waits_for,
)


def _workers(server: "subprocess.Popen[str]") -> set[int]:
    return {child.pid for child in psutil.Process(server.pid).children() if child.is_running()}


def _oom_score_adj(pid: int) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def _gone(pid: int) -> bool:
    """Exited with all its threads. A process killed with SIGKILL shows as a zombie while its other
    threads still exit, holding its files (granian's listening socket among them) a moment longer:
    a connection the kernel queued on that socket then was reset."""
    try:
        process = psutil.Process(pid)
        return process.status() == psutil.STATUS_ZOMBIE and process.num_threads() <= 1
    except psutil.NoSuchProcess:
        return True


# wait_until's ceiling here: a loaded CI machine took more than 5 s for workers to see their server killed.
_WORKERS_SECONDS = 60


def _stop_the_group(server: "subprocess.Popen[str]", stop: signal.Signals) -> None:
    os.killpg(server.pid, stop)  # what the terminal's Ctrl-C, `kill -- -PGID` or `timeout` do


def _stop_every_process(server: "subprocess.Popen[str]", stop: signal.Signals) -> None:
    """What systemd's stop does by default (KillMode=control-group): every process of the service."""
    for pid in [*_workers(server), server.pid]:
        with contextlib.suppress(ProcessLookupError):  # a worker the server stopped meanwhile
            os.kill(pid, stop)


@pytest.mark.parametrize(
    ("send", "stop", "times"),
    [
        pytest.param(_stop_the_group, signal.SIGINT, 2, id="ctrl-c-twice"),
        # An impatient operator's second and third stops (the mutation round of stop 86).
        pytest.param(_stop_the_group, signal.SIGTERM, 3, id="sigterm-to-the-group-three-times"),
        pytest.param(_stop_every_process, signal.SIGTERM, 1, id="sigterm-to-every-process"),
    ],
)
def test_stops_to_the_group_or_every_process_let_a_request_in_flight_finish_and_stop_at_once(
    api_db_url: str,
    tmp_path: Path,
    send: Callable[["subprocess.Popen[str]", signal.Signals], None],
    stop: signal.Signals,
    times: int,
) -> None:
    """A stop to serve's process group reaches the server alone, which sends each worker SIGTERM once:
    the workers are in sessions of their own. A worker that got the group's stops too got two or three,
    and granian's handler blocked on the third (now and then on the second): the worker answered nothing
    more and was killed once the grace was over, its request reset (the stop probe of stop 85), and a
    background script's serve took the whole grace to stop on Ctrl-C (CI, stop 86). A supervisor that
    signals every process still reaches the workers besides the server's own SIGTERM."""
    alice = new_user()
    log = tmp_path / "serve.log"
    env = cli_env(DATABASE_URL=api_db_url, BETTER_AUTH_SECRET=SECRET, SHUTDOWN_GRACE_SECONDS="60")
    serve = [*CLI, "serve", "--workers", "1"]
    with (
        serve_process(serve, cwd=tmp_path, env=env, output=log, own_group=True) as (base_url, server),
        httpx.Client(base_url=base_url, timeout=90) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        task = client.post(alice.tasks_url, json={"title": "before"}, headers=alice.headers).json()
        with psycopg.connect(api_db_url) as locker:
            locker.execute("select 1 from tasks where id = %s for update", [task["id"]])
            update = pool.submit(
                client.put, alice.task_url(task["id"]), json={"title": "after"}, headers=alice.headers
            )
            wait_until_it_waits_for(locker, update)
            workers = _workers(server)
            assert workers, "a worker serves"
            for pid in workers:
                assert os.getsid(pid) == pid != os.getsid(server.pid), "a worker leads a session of its own"
            for _ in range(times):
                send(server, stop)
                time.sleep(0.3)  # impatient
            time.sleep(0.7)
            stopping_at = time.monotonic()
        assert update.result().status_code == 200, "answered once the lock went"
        assert server.wait(timeout=90) == 0
        took = time.monotonic() - stopping_at
    assert took < 10, f"{took:.1f} s: a worker waited out the grace"
    with psycopg.connect(api_db_url) as connection:
        assert connection.execute("select title from tasks where id = %s", [task["id"]]).fetchone() == (
            "after",
        )
    # granian's "refused to gracefully stop" is not asserted absent: its server joins each worker from
    # two threads, and the one that loses that race takes a worker that has stopped for alive a moment
    # longer, and logs the line for it (seen under load, the worker gone, its request answered).
    assert "Traceback" not in log.read_text(), log.read_text()


def test_a_killed_worker_is_replaced_and_sigterm_lets_requests_in_flight_finish(
    api_db_url: str, tmp_path: Path
) -> None:
    alice = new_user()
    log = tmp_path / "serve.log"
    env = cli_env(DATABASE_URL=api_db_url, BETTER_AUTH_SECRET=SECRET, DB_POOL_SIZE="3")
    with (
        serve_process([*CLI, "serve", "--workers", "2"], cwd=tmp_path, env=env, output=log) as (
            base_url,
            server,
        ),
        httpx.Client(base_url=base_url) as client,
    ):
        task = client.post(alice.tasks_url, json={"title": "before"}, headers=alice.headers).json()
        port = base_url.rpartition(":")[2]
        second = run_cli(
            "serve", "--port", port, cwd=tmp_path, DATABASE_URL=api_db_url, BETTER_AUTH_SECRET=SECRET
        )
        assert second.returncode == 1, second.stderr
        assert second.stderr.count("\n") == 1, second.stderr
        assert f"port {port}" in second.stderr, "two servers never share a port"
        wait_until(lambda: len(_workers(server)) == 2, "two workers", _WORKERS_SECONDS)
        (killed, survivor) = sorted(_workers(server))
        # The OOM killer ends a worker, which is replaced, before the server, which takes them all.
        preferred = _oom_score_adj(server.pid) + OOM_SCORE_ADJ_ABOVE_THE_SERVER
        assert _oom_score_adj(killed) == _oom_score_adj(survivor) == preferred

        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: _gone(killed), "the worker died", _WORKERS_SECONDS)
        for _ in range(10):  # the other keeps serving, on new connections as on this one
            assert httpx.get(f"{base_url}{alice.tasks_url}", headers=alice.headers).status_code == 200
        wait_until(
            lambda: len(_workers(server) - {survivor}) == 1, "a new worker within seconds", _WORKERS_SECONDS
        )
        (replacement,) = _workers(server) - {survivor}
        wait_until(lambda: _oom_score_adj(replacement) == preferred, "so is the new one", _WORKERS_SECONDS)
        wait_until(
            lambda: f"worker {killed} died" in log.read_text(), "the death is logged", _WORKERS_SECONDS
        )
        time.sleep(1.5)  # the pool gauges are read once a second
        samples = scrape(base_url)
        assert value(samples, "todo_api_worker_restarts_total") == 1
        assert value(samples, "todo_api_db_pool_size") == 6, "the dead worker's connections are not counted"
        assert value(samples, "todo_api_isolation_verified") == 1
        assert log.read_text().count(f"worker {killed} died") == 1, "logged once"

        # A request in flight at SIGTERM: its UPDATE waits on a row lock held here.
        answers: list[int | str] = []
        with psycopg.connect(api_db_url) as locker:
            locker.execute("select 1 from tasks where id = %s for update", [task["id"]])

            def update() -> None:
                try:
                    response = client.put(
                        alice.task_url(task["id"]), json={"title": "after"}, headers=alice.headers, timeout=30
                    )
                    answers.append(response.status_code)
                except httpx.HTTPError as error:
                    answers.append(repr(error))

            in_flight = threading.Thread(target=update)
            in_flight.start()

            wait_until(
                lambda: sessions_waiting_on_a_lock(api_db_url) > 0,
                "the update waits on the lock",
                _WORKERS_SECONDS,
            )
            server.send_signal(signal.SIGTERM)
            time.sleep(1)
            assert server.poll() is None, "requests in flight are waited for"
            try:
                refused = httpx.get(f"{base_url}/healthz", timeout=2).status_code
            except httpx.TransportError:
                refused = 0
            assert refused == 0, "no new connection is accepted while draining"
        in_flight.join(timeout=30)
        assert answers == [200], answers
        server.wait(timeout=30)
        assert server.returncode == 0, log.read_text()
    with psycopg.connect(api_db_url) as check:
        assert check.execute("select title from tasks where id = %s", [task["id"]]).fetchone() == ("after",)


# DB_STATEMENT_TIMEOUT_MS for a write that must wait for its row lock, not its timeout, however
# slow the machine.
_WAITS_FOR_THE_LOCK = "120000"


class _Waiting(NamedTuple):
    server: "subprocess.Popen[str]"
    client: httpx.Client
    alice: ApiUser
    task_id: int
    update: "Future[httpx.Response]"


@contextlib.contextmanager
def _an_update_waiting_on_a_row_lock(
    migrated_db: psycopg.Connection[Any], command: list[str], env: dict[str, str], log: Path
) -> Iterator[_Waiting]:
    """A served API (`command` with `env`), and its update of a task of alice's (titled "before")
    waiting on the row lock `migrated_db` holds until it rolls back."""
    alice = new_user()
    with (
        serve_process(command, cwd=log.parent, env=env, output=log) as (base_url, server),
        httpx.Client(base_url=base_url, timeout=60) as client,
        ThreadPoolExecutor(1) as sender,
    ):
        task = client.post(alice.tasks_url, json={"title": "before"}, headers=alice.headers).json()
        migrated_db.execute("select 1 from tasks where id = %s for update", [task["id"]])
        update = sender.submit(
            client.put, alice.task_url(task["id"]), json={"title": "after"}, headers=alice.headers
        )
        wait_until_it_waits_for(migrated_db, update)
        yield _Waiting(server, client, alice, task["id"], update)


def test_a_write_still_at_the_database_when_its_worker_is_killed_is_answered_and_never_stored(
    migrated_db: psycopg.Connection[Any], migrated_db_url: str, tmp_path: Path
) -> None:
    """Found with SHUTDOWN_GRACE_SECONDS below DB_STATEMENT_TIMEOUT_MS: a write waiting on a row lock
    when the grace ran out was cut off with no answer ("Server disconnected") as its worker was
    killed, and committed once the lock went. Cancelled shortly before the kill, it is a 503 that
    changed nothing."""
    log = tmp_path / "serve.log"
    env = cli_env(
        DATABASE_URL=migrated_db_url,
        BETTER_AUTH_SECRET=SECRET,
        SHUTDOWN_GRACE_SECONDS="3",
        DB_STATEMENT_TIMEOUT_MS=_WAITS_FOR_THE_LOCK,
    )
    with _an_update_waiting_on_a_row_lock(migrated_db, serve_command(env), env, log) as waiting:
        waiting.server.send_signal(signal.SIGTERM)
        answered = waiting.update.result(timeout=60)
        waiting.server.wait(timeout=60)
    migrated_db.rollback()  # the lock goes: a write still waiting for it would go through now
    wait_until(
        lambda: sessions_waiting_on_a_lock(migrated_db_url) == 0,
        "nothing waits on the lock",
        _WORKERS_SECONDS,
    )

    # Cancelled as a statement timeout is (SQLSTATE 57014); its detail names the server stopping.
    body = assert_problem(answered, 503, "statement-timeout")
    assert "the server did as it stopped" in body["detail"], body
    assert waiting.server.returncode == 0, log.read_text()
    assert "their statements are cancelled before the worker is killed" in log.read_text()
    stored = migrated_db.execute("select title from tasks where id = %s", [waiting.task_id]).fetchone()
    assert stored == ("before",)


def test_a_write_waiting_on_a_lock_when_its_worker_is_killed_outright_is_never_stored(
    migrated_db: psycopg.Connection[Any], migrated_db_url: str, tmp_path: Path
) -> None:
    """Found killing a worker as the OOM killer would: its client was reset, a read then showed the
    task unchanged, and the write, still waiting on a row lock in its session, committed once the
    lock went (BEGIN ... COMMIT went out as one message: its session needed nothing more of the
    worker). Postgres now checks, while a statement runs, that the session's client is still there
    (client_connection_check_interval), and ends a session whose client died: nothing commits."""
    env = cli_env(
        DATABASE_URL=migrated_db_url, BETTER_AUTH_SECRET=SECRET, DB_STATEMENT_TIMEOUT_MS=_WAITS_FOR_THE_LOCK
    )
    command = [*CLI, "serve", "--workers", "1"]  # its one worker is the server's child
    with _an_update_waiting_on_a_row_lock(migrated_db, command, env, tmp_path / "serve.log") as waiting:
        (worker,) = _workers(waiting.server)
        os.kill(worker, signal.SIGKILL)

        with contextlib.suppress(httpx.TransportError):
            waiting.update.result(timeout=60)  # the connection reset, whatever else it got
        # The session ends while the lock is still held: nothing of the write is left to commit.
        wait_until(
            lambda: sessions_waiting_on_a_lock(migrated_db_url) == 0, "the killed worker's session ended", 10
        )
        migrated_db.rollback()
        read = waiting.client.get(waiting.alice.task_url(waiting.task_id), headers=waiting.alice.headers)
    assert (read.status_code, read.json()["title"], read.json()["version"]) == (200, "before", 1)
    stored = migrated_db.execute(
        "select title, version from tasks where id = %s", [waiting.task_id]
    ).fetchone()
    assert stored == ("before", 1)


def _end_what_is_left(workers: set[int], pgdata: Path) -> None:
    """Whatever a failed run left behind: workers still serving, and the embedded Postgres."""
    for pid in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    with contextlib.suppress(FileNotFoundError, ValueError, psutil.NoSuchProcess, psutil.TimeoutExpired):
        postmaster = psutil.Process(int((pgdata / "postmaster.pid").read_text().split()[0]))
        postmaster.send_signal(signal.SIGINT)  # Postgres's "fast" shutdown
        postmaster.wait(timeout=10)


def test_a_server_killed_with_sigkill_leaves_its_port_and_data_to_the_next_server(
    tmp_path: Path, made_data_dir: Path
) -> None:
    data_dir, port = made_data_dir, free_port()
    command = [*CLI, "serve", "--workers", "2", "--data-dir", str(data_dir)]
    # The killed server cannot remove its serving folder: it goes to tmp_path rather than /tmp.
    env = cli_env(TMPDIR=str(tmp_path))
    workers: set[int] = set()
    try:
        with serve_process(command, cwd=tmp_path, env=env, output=tmp_path / "killed.log", port=port) as (
            _,
            server,
        ):
            wait_until(lambda: len(_workers(server)) == 2, "two workers", _WORKERS_SECONDS)
            workers = _workers(server)
            server.kill()
            server.wait(timeout=10)

        wait_until(
            lambda: all(_gone(pid) for pid in workers), "the workers stop with their server", _WORKERS_SECONDS
        )
        refuse_a_taken_port("127.0.0.1", port)  # raises while anyone still listens there
        with serve_process(command, cwd=tmp_path, env=env, output=tmp_path / "next.log", port=port) as (
            base_url,
            _,
        ):
            assert httpx.get(f"{base_url}/healthz").status_code == 200
    finally:
        _end_what_is_left(workers, data_dir / "pgdata")


def test_two_servers_started_at_once_on_a_new_data_dir_both_serve(tmp_path: Path) -> None:
    """The first start initialises the database once: the second waits for it, rather than take its
    unfinished folder for an interrupted start and initialise it again under it."""
    command = [*CLI, "serve", "--data-dir", str(tmp_path / "data")]
    servers = [
        serve_process(command, cwd=tmp_path, env=cli_env(), output=tmp_path / f"serve-{n}.log")
        for n in (1, 2)
    ]
    with ThreadPoolExecutor(len(servers)) as starting:
        started = [starting.submit(server.__enter__) for server in servers]
    try:
        for start in started:
            base_url, _ = start.result()
            assert httpx.get(f"{base_url}/readyz").status_code == 200
        for n in (1, 2):
            log = (tmp_path / f"serve-{n}.log").read_text()
            assert "Traceback" not in log, log
            assert "initialising it again" not in log, log
    finally:
        for server, attempt in zip(servers, started, strict=True):
            if attempt.exception() is None:
                server.__exit__(None, None, None)


@pytest.mark.parametrize("out_of", ["room", "inodes"])
def test_workers_that_die_for_a_full_tmpdir_end_serve_in_one_line_saying_so(
    api_db_url: str, tmp_path: Path, out_of: str
) -> None:
    """Each worker writes its metrics to files under TMPDIR through memory maps, and a page written
    where the disk has no room is SIGBUS: a full TMPDIR killed the worker at its next new series, and
    each that replaced it as it started, until granian stopped them all, serve saying only "Worker
    crash loop detected" (the limits probe, /tmp/s79-limits). Out of inodes, a new worker cannot make
    its files at all (the second verification probe, /tmp/s79-verify2)."""
    with tmpfs(
        tmp_path / "small", "4m" if out_of == "room" else "64m", inodes=None if out_of == "room" else 64
    ) as small:
        env = cli_env(DATABASE_URL=api_db_url, BETTER_AUTH_SECRET=SECRET, TMPDIR=str(small))
        log = tmp_path / "serve.log"
        with serve_process([*CLI, "serve"], cwd=tmp_path, env=env, output=log) as (base_url, server):
            with contextlib.suppress(OSError):
                if out_of == "room":
                    with (small / "filler").open("wb") as filler:
                        while True:
                            filler.write(bytes(65536))
                            filler.flush()
                for count in range(1000):
                    (small / f"file-{count}").touch()
            if out_of == "room":
                with contextlib.suppress(httpx.HTTPError):
                    httpx.get(f"{base_url}/openapi.json", timeout=10)  # a series this worker has not counted
            else:
                (worker,) = _workers(server)
                os.kill(worker, signal.SIGKILL)  # the one that replaces it makes files of its own
            server.wait(timeout=60)
    assert server.returncode == 1, log.read_text()
    last = log.read_text().strip().splitlines()[-1]
    assert "the workers died one after another" in last, last
    assert "has no room left" in last, last
    assert "set TMPDIR to a folder with room" in last, last


def test_workers_killed_one_after_another_beside_a_tmpdir_with_room_are_not_blamed_on_it(
    api_db_url: str, tmp_path: Path
) -> None:
    """Only a TMPDIR with no room is named: one with a little (hundreds of KB) was blamed for workers
    that died for another reason (the second verification probe, /tmp/s79-verify2)."""
    with tmpfs(tmp_path / "small", "4m") as small:
        env = cli_env(DATABASE_URL=api_db_url, BETTER_AUTH_SECRET=SECRET, TMPDIR=str(small))
        log = tmp_path / "serve.log"
        with serve_process([*CLI, "serve"], cwd=tmp_path, env=env, output=log) as (_, server):
            (small / "filler").write_bytes(bytes(3 * 1024 * 1024))  # about 500 KB left
            deadline = time.monotonic() + 60
            while server.poll() is None and time.monotonic() < deadline:
                for worker in _workers(server):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker, signal.SIGKILL)
                time.sleep(0.1)
            server.wait(timeout=60)
    output = log.read_text()
    assert server.returncode == 1, output
    assert "Worker crash loop detected" in output, output
    assert "has no room left" not in output, output
