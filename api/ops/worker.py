"""What each `todo-api serve` worker process runs: the app, in a process tuned to live long, that
says once, for all workers, when the API is ready, and that accounts for any worker it replaces.

The collector is tuned as api/ops/collector.py says, and open event streams end when the worker is
told to stop (`_end_streams_on_shutdown`).
"""

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from fastapi import FastAPI

from api.app import create_app
from api.events.hub import Hub
from api.ops.collector import tune_collector_for_serving
from api.telemetry.metrics import dead_workers, forget_dead_worker

# Set by `todo-api serve` for its workers: where the first ready worker leaves its mark, and what
# it then says.
READY_MARKER_VARIABLE = "TODO_API_READY_MARKER"
READY_MESSAGE_VARIABLE = "TODO_API_READY_MESSAGE"

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
    for pid in dead_workers():
        if forget_dead_worker(pid):
            logger.error("worker %d died without stopping; worker %d replaces it", pid, os.getpid())


def _end_streams_on_shutdown(hub: Hub) -> None:
    """Granian waits for every open response before a worker stops, and an event stream never ends
    by itself: on the signal that stops the worker, the streams end too.

    Granian's worker handles SIGINT and SIGTERM with its event loop's signal handlers, which leave
    the signal's Python-level handler to the loop: ours goes in its place, ends the streams, and
    calls the loop's, so the loop still hears the signal and does what granian asked of it.
    """
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loops = signal.getsignal(signum)

        def end_streams_then(
            number: int, frame: FrameType | None, loops: Callable[[int, FrameType | None], Any] | Any = loops
        ) -> None:
            loop.call_soon_threadsafe(hub.close)
            if callable(loops):
                loops(number, frame)

        signal.signal(signum, end_streams_then)


def create_served_app() -> FastAPI:
    _account_for_dead_workers()
    app: FastAPI

    def on_ready() -> None:
        _end_streams_on_shutdown(app.state.events_hub)
        _announce_once()

    app = create_app(on_ready=on_ready)
    tune_collector_for_serving()
    return app
