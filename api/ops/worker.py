"""What each `todo-api serve` worker process runs: the app, in a process tuned to live long, that
says once, for all workers, when the API is ready, and that accounts for any worker it replaces.

The collector is tuned as api/ops/collector.py says, open event streams end when the worker is told
to stop (`_end_streams_on_shutdown`), the statements its requests still run are cancelled just before
it is killed (`_cancel_statements_before_the_kill`), a worker whose server is gone stops
(`_stop_when_orphaned`), and a connection whose client takes nothing is closed
(`_close_connections_whose_clients_take_nothing`).
"""

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from fastapi import FastAPI

from api.app import create_app
from api.db.database import Database
from api.events.hub import Hub
from api.events.services import live_services
from api.ops.collector import tune_collector_for_serving
from api.telemetry.metrics import dead_workers, forget_an_earlier_death, forget_dead_worker

# Set by `todo-api serve` for its workers: where the first ready worker leaves its mark, what it
# then says, and the pid of the server process that starts and stops them.
READY_MARKER_VARIABLE = "TODO_API_READY_MARKER"
READY_MESSAGE_VARIABLE = "TODO_API_READY_MESSAGE"
SERVER_PID_VARIABLE = "TODO_API_SERVER_PID"
# Set when `serve` serves the embedded development database, which workers log in to as its owner.
EMBEDDED_DATABASE_VARIABLE = "TODO_API_EMBEDDED_DATABASE"
# How often a worker looks for its server: it stops this long, at most, after the server is gone.
_ORPHAN_CHECK_SECONDS = 0.5
# How long before a stopping worker is killed it cancels the statements its requests still run (at
# most half the grace): time for the cancel to reach the server and the 503s to reach their clients.
_CANCEL_BEFORE_THE_KILL_SECONDS = 1.0

# How much more the OOM killer is to prefer a worker than the server's own process, which, killed, takes
# every worker with it and starts none again: at idle it is the largest of them, and under a memory cap
# on the whole service the OOM killer chose it first (5 of 5, the limits probe, /tmp/s79-limits), where
# a worker it ends is replaced within a second.
OOM_SCORE_ADJ_ABOVE_THE_SERVER = 500

logger = logging.getLogger(__name__)


def _announce_once() -> None:
    """Say that the API serves, once however many workers start: the first to create the marker."""
    marker, message = os.environ.get(READY_MARKER_VARIABLE), os.environ.get(READY_MESSAGE_VARIABLE)
    if not marker or not message:
        return
    try:
        Path(marker).touch(exist_ok=False)
    except FileExistsError:
        return
    logger.info(message)


def _account_for_dead_workers() -> None:
    """A worker killed (by the OOM killer, say) is replaced by the server; the replacement says so,
    once, and takes the dead one's figures out of the gauges."""
    forget_an_earlier_death(os.getpid())
    for pid in dead_workers():
        if forget_dead_worker(pid):
            # Not "replaces it": when two die at once, the first new worker to start counts both.
            logger.error(
                "worker %d died without stopping; worker %d, started since, counted it", pid, os.getpid()
            )


def _on_stop_signal(stop: Callable[[], None]) -> None:
    """Call `stop` in the worker's event loop when the signal that stops the worker comes.

    Granian's worker handles SIGINT and SIGTERM with its event loop's signal handlers, which leave
    the signal's Python-level handler to the loop: ours goes in its place, calls `stop`, and calls the
    loop's, so the loop still hears the signal and does what granian asked of it.
    """
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loops = signal.getsignal(signum)

        def stop_then(
            number: int, frame: FrameType | None, loops: Callable[[int, FrameType | None], Any] | Any = loops
        ) -> None:
            loop.call_soon_threadsafe(stop)
            if callable(loops):
                loops(number, frame)

        signal.signal(signum, stop_then)


def _end_streams_on_shutdown(hub: Hub) -> None:
    """Granian waits for every open response before a worker stops, and an event stream never ends
    by itself: on the signal that stops the worker, the streams end too."""
    _on_stop_signal(hub.close)


def _cancel_statements_before_the_kill(database: Database, grace_seconds: int) -> None:
    """A worker whose requests have not finished `grace_seconds` after it was told to stop is killed
    (SIGKILL, by granian or `_stop_when_orphaned`), and the connections it had lent are closed under
    them, but a statement the server is running goes on: a write waiting on a row lock committed
    after the kill, its client cut off with no answer (found with SHUTDOWN_GRACE_SECONDS below
    DB_STATEMENT_TIMEOUT_MS). So, shortly before the kill, the worker asks the server to cancel
    whatever its lent connections run: each such request is rolled back and answered 503, and a
    statement that ended first is answered as usual."""
    loop = asyncio.get_running_loop()
    margin = min(_CANCEL_BEFORE_THE_KILL_SECONDS, grace_seconds / 2)
    # The timer, once set, and the cancel's task, kept so that it is not collected while it runs.
    scheduled: list[asyncio.TimerHandle | asyncio.Task[None]] = []

    async def cancel() -> None:
        asked = await database.cancel_statements(timeout_seconds=margin)
        if asked:
            logger.warning(
                "worker %d stops: %d requests still at the database %.1f s after it was told to stop; "
                "their statements are cancelled before the worker is killed",
                os.getpid(),
                asked,
                grace_seconds - margin,
            )

    def cancel_before_the_kill() -> None:
        if not scheduled:  # the first signal counts: the kill does not wait for another
            scheduled.append(
                loop.call_later(grace_seconds - margin, lambda: scheduled.append(loop.create_task(cancel())))
            )

    _on_stop_signal(cancel_before_the_kill)


def _stop_when_orphaned(grace_seconds: int) -> None:
    """A server killed with SIGKILL cannot stop its workers: re-parented to init, each would serve on,
    holding the port and the embedded Postgres from the next server, and answer /healthz 200 for ever.
    So each worker stops itself once its parent is no longer the server, as SIGTERM stops it: requests
    in flight get `grace_seconds` to finish, after which the worker is killed, as the server would.

    A thread that compares the parent's pid with the server's, rather than Linux's PR_SET_PDEATHSIG:
    that fires when the parent *thread* that forked the worker exits, which is granian's to choose,
    and exists on Linux only. The server's pid comes from the server, not from os.getppid() here, so
    a server killed while this worker was still starting is noticed too. Started once the worker is
    ready, when granian's loop handles SIGTERM: before, the signal would go to the handler inherited
    from the server's process, and be lost.
    """
    recorded = os.environ.get(SERVER_PID_VARIABLE)
    if not recorded:
        return
    server = int(recorded)

    def watch() -> None:
        while os.getppid() == server:
            time.sleep(_ORPHAN_CHECK_SECONDS)
        logger.warning("the server (pid %d) is gone; worker %d stops", server, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_seconds)  # a daemon thread: the worker's exit ends it first
        logger.error("worker %d killed after %d s: its requests did not finish", os.getpid(), grace_seconds)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


# How often, and for how long at most, a worker looks for the listening socket granian makes for it
# once the app is ready.
_LISTENER_LOOK_SECONDS = 0.02
_LISTENER_WAIT_SECONDS = 30.0
# When the worker looks once more, for connections its listening socket held before it had the setting.
_LATE_ACCEPTS_SECONDS = 1.0
# How much longer than the API the kernel waits for a client to take something. The kernel counts the
# time a client's window stays shut, and a client that reads slowly but steadily reopens it only once
# it has freed a segment's worth (64 KiB over loopback): at SEND_TIMEOUT_SECONDS + 1 s, one reading
# 1 KB/s lost the end of a 133 KB answer its API had handed over whole (the second verification probe
# of stop 85). Ten times as long passes it, and still bounds what one user holds.
_KERNEL_TIMEOUT_FACTOR = 10


def _close_connections_whose_clients_take_nothing(send_timeout_seconds: float) -> None:
    """granian (2.8) has no write timeout: a connection whose client stopped reading stayed open for as
    long as the client stayed connected, after the API had given up on its answer or stream
    (api/http/slow_readers.py), with the rest of the answer in its buffers, so one user who asked for
    large answers and read none held 32 more of a worker's connections every SEND_TIMEOUT_SECONDS,
    within every per-user limit, until the worker took no one (the slow readers' probe of stop 85).

    The kernel's TCP_USER_TIMEOUT closes a connection whose client has taken nothing of what was sent
    (acknowledged none of it, or kept its window shut) for ten times as long. It is set on the worker's
    listening sockets, which every connection accepted inherits, and on any accepted before, by a
    thread, as granian makes them only once the app is ready."""
    if not hasattr(socket, "TCP_USER_TIMEOUT") or not os.path.isdir("/proc/self/fd"):
        return  # not Linux: the load balancer docs/operations.md asks for gives up on such clients
    milliseconds = round(send_timeout_seconds * _KERNEL_TIMEOUT_FACTOR * 1000)

    def look() -> None:
        deadline = time.monotonic() + _LISTENER_WAIT_SECONDS
        while not _give_up_on_stalled_clients_after(milliseconds):
            if time.monotonic() > deadline:
                logger.warning(
                    "worker %d found no listening socket: a client that reads nothing keeps its "
                    "connection for as long as it stays connected",
                    os.getpid(),
                )
                return
            time.sleep(_LISTENER_LOOK_SECONDS)
        # Once more: a connection made before the listening socket had the setting, and accepted
        # after the first look, has it only from here.
        time.sleep(_LATE_ACCEPTS_SECONDS)
        _give_up_on_stalled_clients_after(milliseconds)

    threading.Thread(target=look, name="stalled-clients", daemon=True).start()


def _give_up_on_stalled_clients_after(milliseconds: int) -> bool:
    """TCP_USER_TIMEOUT set on this process's listening TCP sockets and on the connections accepted on
    their ports; whether there was any listening socket."""
    sockets = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            copy = os.dup(int(name))  # a socket object of its own: closing it leaves granian's open
            try:
                sockets.append(socket.socket(fileno=copy))
            except OSError:  # a family Python does not know
                os.close(copy)
    try:
        tcp = [
            each
            for each in sockets
            if each.family in (socket.AF_INET, socket.AF_INET6) and each.type == socket.SOCK_STREAM
        ]
        ports = {
            each.getsockname()[1] for each in tcp if each.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        }
        for each in tcp:
            if each.getsockname()[1] in ports:
                with contextlib.suppress(OSError):
                    each.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)
        return bool(ports)
    finally:
        for each in sockets:
            each.close()


def _leave_the_servers_process_group() -> None:
    """Put this worker in a session of its own, so that a signal for the terminal's or a supervisor's
    whole process group (Ctrl-C, `kill -- -PGID`, a script's `timeout`) reaches the server alone, and
    the server passes it on to each worker once, as SIGTERM. A worker that got it too got two stops,
    and granian's handler (2.8.9) blocked on the second now and then: the worker was killed at the end
    of SHUTDOWN_GRACE_SECONDS, its requests unanswered, and `serve` took the whole grace to stop
    (tests/test_cli_startup.py, `test_a_serve_a_script_started_in_the_background_stops_on_ctrl_c`).
    Not a loop handler that drops every stop after the first, as before: it was now and then put in
    place before the loop had read the first, and granian never heard of any (py-spy: the worker idle,
    waiting for a stop). A worker whose server is gone stops by itself (`_stop_when_orphaned`)."""
    with contextlib.suppress(OSError):  # already a session's or a group's leader: nothing to leave
        os.setsid()


def _offer_itself_to_the_oom_killer_first() -> None:
    """Raise this worker's oom_score_adj above the server's (which it inherited): raising it needs no
    privilege. Where there is none to raise (not Linux), nothing changes."""
    adjustment = Path("/proc/self/oom_score_adj")
    try:
        inherited = int(adjustment.read_text())
        adjustment.write_text(f"{min(1000, inherited + OOM_SCORE_ADJ_ABOVE_THE_SERVER)}\n")
    except (OSError, ValueError):
        return


def create_served_app() -> FastAPI:
    _leave_the_servers_process_group()
    _offer_itself_to_the_oom_killer_first()
    _account_for_dead_workers()
    app: FastAPI

    def on_ready() -> None:
        shared = live_services(app)
        _end_streams_on_shutdown(shared.events_hub)
        _cancel_statements_before_the_kill(shared.database, shared.settings.shutdown_grace_seconds)
        _stop_when_orphaned(shared.settings.shutdown_grace_seconds)
        _close_connections_whose_clients_take_nothing(shared.settings.send_timeout_seconds)
        _announce_once()

    app = create_app(
        on_ready=on_ready, owner_login_expected=os.environ.get(EMBEDDED_DATABASE_VARIABLE) == "1"
    )
    tune_collector_for_serving()
    return app
