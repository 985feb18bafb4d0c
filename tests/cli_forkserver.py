"""`python -m api.ops.cli` without paying for its imports on every run: each run is a process forked
from one that imported the CLI once.

A CLI run that fails at once (most of the suite's hundreds) spends almost all of its CPU importing
psycopg, pydantic, yoyo and the rest (`/usr/bin/time python -c "import api.ops.cli"`: about 0.7
CPU-seconds here, against 0.01 for the interpreter alone), and the suite is CPU-bound. So the server
here imports the CLI once; for each run, a client (the bare interpreter, `python -I`) hands it its
standard streams, environment, working folder and arguments, and the server forks a child that takes
them over and runs the CLI as `python -m api.ops.cli` does (its module run as `__main__`). The client
exits with the child's status, or dies of the signal that killed it; SIGTERM, SIGINT and SIGHUP sent
to the client go to the child (so a `serve` stops as it would), and killing the client kills the
child. The caller still sees one process, with its own pipes, exit status, stopping signals and
timeout; not the process itself (its pid, children and process group are the child's, elsewhere).

What a fork cannot give a run is an interpreter started from the run's own environment (the
PYTHON* and locale variables: stdio encodings, import paths, flags), nor the import itself (a signal
or a warning while loading): `tests.support.run_cli` starts the real command for a run whose start-up
variables differ from the server's, and the tests of loading start it themselves.

The server's folder holds its socket and `client.py`, a link to this file, so that a run's command
line has the shape of `python -m api.ops.cli` (three words, then the CLI's arguments): `python -I
FOLDER/client.py ARGUMENTS`. Protocol: one SOCK_SEQPACKET connection per run (a message is never
split), the request as JSON with the three descriptors beside it, then the child's pid and its exit
code (negative: its signal) as the answers.
"""

import contextlib
import gc
import json
import os
import select
import selectors
import signal
import socket
import sys
from typing import Any

# Environment variables that shape the interpreter before any code runs; the server's must be the run's.
_START_UP_PREFIXES = ("PYTHON", "LC_")
_START_UP_NAMES = ("LANG", "LANGUAGE")
_LARGEST_REQUEST = 1 << 20
_SOCKET = "socket"
CLIENT = "client.py"
# What every run imports, and the libraries the commands import once chosen (`policies`, the checks
# `serve` makes before it serves, and the app it serves: a start and stop of `serve` took 1.8 CPU-s as
# the real command, about 0.5 forked with these, by process accounting). Not prometheus_client: it reads
# PROMETHEUS_MULTIPROC_DIR as it is imported, which `serve` sets first (api/ops/cli.py).
_SERVED_APP_LIBRARIES = ("fastapi", "sqlmodel", "granian", "httpx", "jwt", "asgi_correlation_id")
_PRELOADED = ("api.ops.cli", "sqlalchemy", "psycopg_pool", "sqlparse", *_SERVED_APP_LIBRARIES)
# What stops a command, sent to the client by a test or a terminal: the run gets it, as the real
# command would.
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def start_up_variables(env: dict[str, str]) -> dict[str, str]:
    return {
        name: value
        for name, value in env.items()
        if name.startswith(_START_UP_PREFIXES) or name in _START_UP_NAMES
    }


# The client: stdlib only, so that it starts in milliseconds.


def run_client(args: list[str]) -> None:
    socket_path = os.path.join(os.path.dirname(sys.argv[0]), _SOCKET)
    request = json.dumps({"args": args, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as connection:
        connection.connect(socket_path)
        socket.send_fds(connection, [request], [0, 1, 2])
        run = connection.recv(64)
        if run:
            _forward_signals_to(int(run))
        answer = connection.recv(64)
    if not answer:
        sys.exit("the CLI fork server went away")
    code = int(answer)
    if code < 0:  # killed by a signal: die of it too, as the caller would see the command die
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _forward_signals_to(run: int) -> None:
    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):  # it has just ended
            os.kill(run, signum)

    for signum in _FORWARDED:
        signal.signal(signum, forward)


# The server.


def serve(folder: str) -> None:
    import importlib

    for module in _PRELOADED:
        importlib.import_module(module)
    assert "prometheus_client" not in sys.modules, "it reads PROMETHEUS_MULTIPROC_DIR as it is imported"
    # As under `python -m`, where the module runs as __main__ and is not in sys.modules by its name.
    del sys.modules["api.ops.cli"]
    # What Python's docs advise before fork: a child's collections then leave the parent's objects
    # alone rather than touch, and so copy, every page of them (a `--version` run's CPU, by process
    # accounting: 0.35 s without, 0.04 s with).
    gc.freeze()

    socket_path = os.path.join(folder, _SOCKET)
    client_path = os.path.join(folder, CLIENT)
    os.symlink(os.path.abspath(__file__), client_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(socket_path)
    listener.listen(16)
    # Each run's handler is reaped by the kernel; a handler waits for its own child.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    print("ready", flush=True)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)  # the suite's end of the pipe: EOF when it exits
    while True:
        for key, _ in selector.select():
            if key.fileobj is sys.stdin:
                os.unlink(socket_path)
                os.unlink(client_path)
                os.rmdir(folder)
                return
            connection, _ = listener.accept()
            if os.fork() == 0:
                selector.close()
                listener.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _handle(connection)
            connection.close()


def _handle(connection: socket.socket) -> None:
    """In a handler forked for one run: fork the run, answer its exit code, exit. In the run's own
    child, return once it has taken the request over, to run the CLI and exit as the interpreter does."""
    message, fds, _, _ = socket.recv_fds(connection, _LARGEST_REQUEST, 3)
    request = json.loads(message)
    child = os.fork()
    if child == 0:
        connection.close()
        _take_over(request, fds)
        _run_as_main()
        sys.exit(0)  # then the interpreter ends as `python -m` does: atexit handlers, streams flushed
    for fd in fds:
        os.close(fd)
    with contextlib.suppress(OSError):  # the client is gone
        connection.sendall(str(child).encode())  # for the client to forward signals to
    child_fd = os.pidfd_open(child)
    ended, _, _ = select.select([child_fd, connection.fileno()], [], [])
    if child_fd not in ended:  # the client is gone (killed at its timeout): so goes its run
        signal.pidfd_send_signal(child_fd, signal.SIGKILL)
    _, status = os.waitpid(child, 0)
    with contextlib.suppress(OSError):  # the client is gone
        connection.sendall(str(os.waitstatus_to_exitcode(status)).encode())
    os._exit(0)


def _take_over(request: dict[str, Any], fds: list[int]) -> None:
    import tempfile

    from api.ops import entry

    for number, fd in enumerate(fds):
        os.dup2(fd, number)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # read from TMPDIR afresh, as in a new interpreter
    os.chdir(request["cwd"])
    sys.path[0] = request["cwd"]  # where `python -m` starts looking
    # What api/ops/entry.py reads from the command line as it is imported.
    entry.command_is_serve(request["args"][:1] == ["serve"])
    sys.argv = ["-m", *request["args"]]


def _run_as_main() -> None:
    import runpy

    runpy.run_module("api.ops.cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    if os.path.basename(sys.argv[0]) == CLIENT:
        run_client(sys.argv[1:])
    else:
        (folder,) = sys.argv[1:]
        serve(folder)
