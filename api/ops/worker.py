"""What each `todo-api serve` worker process runs: the app, in a process tuned to live long, that
says once, for all workers, when the API is ready.

The collector is tuned as api/ops/collector.py says.
"""

import logging
import os
from pathlib import Path

from fastapi import FastAPI

from api.app import create_app
from api.ops.collector import tune_collector_for_serving

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


def create_served_app() -> FastAPI:
    app = create_app(on_ready=_announce_once)
    tune_collector_for_serving()
    return app
