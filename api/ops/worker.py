"""What each `todo-api serve` worker process runs: the app, in a process tuned to live long, that
says once, for all workers, when the API is ready, and that accounts for any worker it replaces.

The collector is tuned as api/ops/collector.py says.
"""

import logging
import os
from pathlib import Path

from fastapi import FastAPI

from api.app import create_app
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


def create_served_app() -> FastAPI:
    _account_for_dead_workers()
    app = create_app(on_ready=_announce_once)
    tune_collector_for_serving()
    return app
