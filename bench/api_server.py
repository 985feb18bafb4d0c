"""The API under test, as operators run it: `todo-api serve --workers N` in a process of its own.

It runs in its own session (so Ctrl-C in the terminal reaches only the harness, which then stops it
in order) and in a folder of its own (so no `.env` from the checkout leaks in). On the way out it gets
SIGTERM and a grace period; whatever is left of its process group is then killed.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from api.settings import Settings
from bench import postgraphile

_TODO_API = Path(sys.executable).parent / "todo-api"
_CHECKOUT = Path(__file__).resolve().parent.parent
# What `bench.run --server` can start, and what it needs beyond the API's settings: the API as
# operators run it, the stack's floors (bench/floor_server.py: floor, bare, fastapi), imported from
# this checkout, or the peer (bench/postgraphile/).
SERVERS: dict[str, tuple[list[str], dict[str, str]]] = {
    "api": ([str(_TODO_API), "serve"], {}),
    **{
        floor: ([sys.executable, "-m", "bench.floor_server", "--app", floor], {"PYTHONPATH": str(_CHECKOUT)})
        for floor in ("floor", "bare", "fastapi")
    },
    "postgraphile": ([str(postgraphile.NODE), str(postgraphile.SERVER_SCRIPT)], postgraphile.ENVIRONMENT),
}
# Settings the API reads, named from the settings object itself: none of the harness's own
# environment may change them behind its back.
_API_VARIABLES = frozenset(name.upper() for name in Settings.model_fields)
_START_TIMEOUT_SECONDS = 60
_STOP_TIMEOUT_SECONDS = 20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class RunningApi:
    process: subprocess.Popen[bytes]
    base_url: str
    workers: int
    log_path: Path

    def worker_processes(self) -> list[psutil.Process]:
        """The processes that serve requests: the server's worker processes (granian forks one per
        worker, even for one; the process that started them only supervises)."""
        main = psutil.Process(self.process.pid)
        return [child for child in main.children() if child.name() == main.name()]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _environment(database_url: str, secret: str, extra: dict[str, str]) -> dict[str, str]:
    inherited = {key: value for key, value in os.environ.items() if key.upper() not in _API_VARIABLES}
    return {**inherited, "DATABASE_URL": database_url, "BETTER_AUTH_SECRET": secret, **extra}


def _wait_until_ready(api: RunningApi) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if api.process.poll() is not None:
            raise RuntimeError(f"the API exited with {api.process.returncode}:\n{api.log_tail()}")
        try:
            with urllib.request.urlopen(f"{api.base_url}/readyz", timeout=2) as response:  # noqa: S310
                if response.status == 200 and len(api.worker_processes()) >= api.workers:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the API was not ready within {_START_TIMEOUT_SECONDS} s:\n{api.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=_STOP_TIMEOUT_SECONDS)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # workers the server did not take down with it
    process.wait(timeout=_STOP_TIMEOUT_SECONDS)


@contextmanager
def running_api(
    database_url: str,
    secret: str,
    *,
    workers: int,
    run_dir: Path,
    extra_env: dict[str, str],
    server: str = "api",
    port: int | None = None,
) -> Iterator[RunningApi]:
    port = port or free_port()
    log_path = run_dir / f"{server}-{workers}-workers.log"
    program, server_env = SERVERS[server]
    command = [*program, "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=run_dir,
            env=_environment(database_url, secret, {**server_env, **extra_env}),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = RunningApi(process, f"http://127.0.0.1:{port}", workers, log_path)
    try:
        _wait_until_ready(api)
        yield api
    finally:
        _stop(process)


@dataclass
class RssSampler:
    """Peak resident memory of each API worker, sampled in the background while the load runs."""

    api: RunningApi
    interval_seconds: float = 0.25
    _peaks: dict[int, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "RssSampler":
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for process in self.api.worker_processes():
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                with self._lock:
                    self._peaks[process.pid] = max(rss, self._peaks.get(process.pid, 0))
            self._stop.wait(self.interval_seconds)

    def peak_mb(self) -> float:
        """The highest peak of any one worker, in MiB."""
        with self._lock:
            return max(self._peaks.values(), default=0) / (1024 * 1024)
