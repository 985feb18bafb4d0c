"""The HTTP server `todo-api serve` runs the workers in: granian, with the limits that keep a hostile
client from costing anything before the API sees a request.

- A request head over 32 KiB is answered 431 and the connection closed (hyper's read buffer, checked
  between reads: a head that arrives in large pieces may be read whole up to 64 KiB, never beyond);
- so is a head of more than 100 header fields, however short they are: hyper's count, which
  granian (2.8) has no setting for, so it cannot be raised to match the 32 KiB;
- a head hyper cannot parse (a Content-Length that is not a number, DEL in a field value) is answered
  400 and the connection closed;
- those 431s and 400s are hyper's own, sent before the app runs, with an empty body: no problem
  document, no X-Request-ID, no access line, and no setting in granian (2.8) to change them
  (tests/test_server_limits.py; the README and the document's 400 say so);
- a client that has not sent its whole head after 10 s is disconnected, one that sent nothing at all
  included;
- the Authorization header's own 8 KiB limit is the API's (api/http/caller.py).

granian (2.8) has no write timeout. The API sends a large answer in pieces and gives up on a client
that takes none for SEND_TIMEOUT_SECONDS (api/http/slow_readers.py), as it does on a stream's
(api/events/routes.py); on Linux each worker has the kernel close any connection whose client has
taken nothing of what was sent for ten times as long, whatever the answer's size (TCP_USER_TIMEOUT,
api/ops/worker.py). Elsewhere docs/operations.md asks a load balancer to give up
(nginx `send_timeout`).

A worker that dies (killed by the OOM killer, say) is replaced while the others serve on; SIGTERM
stops accepting and lets the requests in flight finish, for up to the grace period. A server that dies
(kill -9) leaves no worker serving: each stops as on SIGTERM (api/ops/worker.py).

uvicorn has neither limit: it read a 64 MiB header whole.

Each worker accepts at most MAX_STREAMS_PER_WORKER + 4096 connections at once (granian's
backpressure): it counts connections, not requests, from accept to close, so an idle keep-alive
connection and an open event stream each hold one, and a worker that holds them all accepts no one,
/healthz included, until one closes. The API refuses streams past MAX_STREAMS_PER_WORKER (503,
api/events/hub.py), so at least 4096 remain for everything else.

What follows the head is the API's to bound, per request and per user: a body has
BODY_TIMEOUT_SECONDS to arrive (api/http/body_limit.py), and a user has at most
MAX_REQUESTS_IN_FLIGHT_PER_USER requests in flight (api/http/in_flight.py), so one user's slow bodies
hold a few of a worker's connections, not all of them.
"""

import gc
import logging
import os
import resource
import signal
import threading
from functools import partial
from pathlib import Path
from typing import Any

from granian.constants import HTTPModes, Interfaces, Loops
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server import Server

from api.ops import serving_signals
from api.ops.failures import CommandFailed
from api.ops.worker import (
    EMBEDDED_DATABASE_VARIABLE,
    READY_MARKER_VARIABLE,
    READY_MESSAGE_VARIABLE,
    SERVER_PID_VARIABLE,
)

logger = logging.getLogger("api.ops.serve")

MAX_HEAD_BYTES = 32 * 1024
# Connections a worker accepts beside its event streams: four times what granian gave a whole
# one-worker server by default, for about 10 MiB when all are idle (5000 silent connections grew a
# worker by 12 MB, measured; a request being served costs what the API spends on it).
CONNECTIONS_BESIDE_STREAMS = 4096
# File descriptors a worker holds beside its pool and its connections: the LISTEN and readiness
# connections, the listening socket, the log, the metrics files, granian's pipes and event queues and
# Python's own. 40 with the default settings on Linux: a started worker's files,
#   ls /proc/$(pgrep -P SERVE_PID)/fd | wc -l
# (SERVE_PID: todo-api serve's, one worker), less DB_POOL_SIZE; tests/test_server_limits.py holds a
# worker to the reserve. The rest is room for files that come and go: the listener's check of its
# URL, a pooled connection being replaced, metrics files of a kind written later.
_FILES_BESIDE_POOL_AND_CONNECTIONS = 64
# The fewest connections a worker is started with: one user may hold MAX_STREAMS_PER_USER (5) event
# streams and a browser opens up to 6 connections to a host, so 64 serves a few users' streams and
# requests, and a load balancer's health checks, at once. Fewer, and a stream or two would keep
# /healthz out: `serve` refuses to start rather than serve that way.
MIN_CONNECTIONS_PER_WORKER = 64

# Granian's own lines (and its Rust core's) go to the root logger, whose one handler formats them
# like every other line (api/telemetry/logs.py); its access log stays off: ours has the route.
_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {},
    "handlers": {},
    "loggers": {
        "_granian": {"handlers": [], "propagate": True},
        "granian.access": {"handlers": [], "propagate": True},
    },
}


def files_beside_connections(db_pool_size: int) -> int:
    """The file descriptors a worker holds beside its connections: its pool and its own."""
    return db_pool_size + _FILES_BESIDE_POOL_AND_CONNECTIONS


def _connections_the_file_limit_allows(wanted: int, *, db_pool_size: int, max_streams_per_worker: int) -> int:
    """How many connections each worker accepts at once: `wanted`, with the open-file limit raised
    to fit (the workers inherit it), or as many as its hard limit fits, with a warning. Past the
    limit granian's accept fails and is retried at once, over and over, while nobody new gets in;
    a machine whose hard limit is low still serves, with less room, unless fewer than
    MIN_CONNECTIONS_PER_WORKER fit: then it refuses to start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    own = files_beside_connections(db_pool_size)
    needed = wanted + own
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    if hard == resource.RLIM_INFINITY or hard >= needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        return wanted
    fitted = hard - own
    if fitted < MIN_CONNECTIONS_PER_WORKER:
        least = own + MIN_CONNECTIONS_PER_WORKER
        raise CommandFailed(
            f"the open-file limit (ulimit -Hn) is {hard}, too low: each worker needs {least} open files "
            f"at least ({own} of its own with DB_POOL_SIZE={db_pool_size}, and "
            f"{MIN_CONNECTIONS_PER_WORKER} connections), {needed} for all its connections. Raise it "
            f"(ulimit -n {needed}; systemd: LimitNOFILE=, Docker: --ulimit nofile=) and start again"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    streams = (
        f"; event streams (MAX_STREAMS_PER_WORKER={max_streams_per_worker}) may take all of them"
        if max_streams_per_worker >= fitted
        else ""
    )
    logger.warning(
        "the open-file limit (ulimit -Hn) is %d: each worker accepts %d connections at once, not %d%s. "
        "Raise the limit to %d (systemd: LimitNOFILE=, Docker: --ulimit nofile=) for all of them",
        hard,
        fitted,
        wanted,
        streams,
        needed,
    )
    return fitted


def served_url(host: str, port: int) -> str:
    """The URL a client reaches the server at on `host` (a name or an address) and `port`: an IPv6
    address in brackets, as URLs write it (RFC 3986)."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def serve_with_granian(
    *,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    ready_marker: Path,
    ready_message: str,
    shutdown_grace_seconds: int,
    max_streams_per_worker: int,
    db_pool_size: int,
    keep_alive_timeout_seconds: int,
    metrics_folder: Path,
    embedded_database: bool = False,
) -> None:
    """Serve `create_served_app` until SIGINT, SIGTERM or SIGHUP (api/ops/serving_signals.py; then
    SystemExit 129); the first worker ready says so. Refuses
    (CommandFailed) before granian starts when the open-file limit leaves a worker too few
    connections."""
    connections = _connections_the_file_limit_allows(
        max_streams_per_worker + CONNECTIONS_BESIDE_STREAMS,
        db_pool_size=db_pool_size,
        max_streams_per_worker=max_streams_per_worker,
    )
    os.environ[READY_MARKER_VARIABLE] = str(ready_marker)
    os.environ[READY_MESSAGE_VARIABLE] = ready_message
    os.environ[SERVER_PID_VARIABLE] = str(os.getpid())  # granian's main process: the workers' parent
    if embedded_database:
        os.environ[EMBEDDED_DATABASE_VARIABLE] = "1"
    else:  # never inherited: a deployment's owner login is always warned of
        os.environ.pop(EMBEDDED_DATABASE_VARIABLE, None)
    server = Server(
        "api.ops.worker:create_served_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        respawn_failed_workers=True,
        workers_kill_timeout=shutdown_grace_seconds,
        loop=Loops.uvloop,
        # Not automatic detection (HTTP/1 or HTTP/2): hyper-util waits for a connection's first bytes
        # with no timer, so one that never sends a byte was never closed.
        http=HTTPModes.http1,
        # The API serves no WebSocket: an upgrade request is an ordinary request (RFC 9110, section
        # 7.8), answered and logged by the API, not an empty 403 from granian that no log line shows.
        websockets=False,
        backpressure=connections,
        http1_settings=HTTP1Settings(
            header_read_timeout=keep_alive_timeout_seconds * 1000, max_buffer_size=MAX_HEAD_BYTES
        ),
        log_dictconfig=_LOGGING,
        log_level=LogLevels(log_level.lower()),
        log_access=False,
    )
    hung_up = threading.Event()
    server.on_startup(partial(serving_signals.stop_on_hangup, hung_up))
    # What this process imported (the app's modules included) lives until it exits, and the workers
    # granian forks inherit it: frozen, as Python's gc docs advise before a fork, no collection walks
    # it, this process's last one as it exits included (bench/RESULTS.md, "Collector").
    gc.freeze()
    try:
        server.serve()
    except SystemExit as exited:
        if exited.code and _full(metrics_folder):
            raise _workers_without_room(metrics_folder) from None
        raise
    if hung_up.is_set():
        raise SystemExit(128 + signal.SIGHUP)


# Less room than this where the workers keep their metrics (a few pages), and a worker may find none
# for the next page of a file it writes through a memory map. Not more: workers that die for another
# reason (killed, again and again) beside a TMPDIR merely low on room were blamed on it.
_ROOM_FOR_METRICS_BYTES = 64 * 1024


def _full(folder: Path) -> bool:
    """Whether `folder` has no room for a worker's metrics: too few bytes free, or no inode left
    (a worker could not make its files; a file system that counts no inodes says it has none)."""
    try:
        room = os.statvfs(folder)
    except OSError:
        return False
    no_inode_left = room.f_files > 0 and room.f_favail == 0
    return room.f_bavail * room.f_frsize < _ROOM_FOR_METRICS_BYTES or no_inode_left


def _workers_without_room(folder: Path) -> CommandFailed:
    """Why granian gave up: each worker writes its metrics to files in `folder`, under TMPDIR,
    through memory maps (prometheus_client's multiprocess mode), and a page written where the disk
    has no room left is SIGBUS, not an error: the worker died at its next new series, and each one
    that replaced it as it started, until granian stopped them all; serve said only "Worker crash
    loop detected" (the limits probe, /tmp/s79-limits)."""
    return CommandFailed(
        f"the workers died one after another: {folder} has no room left, and each worker writes its "
        "metrics there (a full disk kills it, SIGBUS). Free space there, or set TMPDIR to a folder "
        "with room, and start again"
    )
