"""What each `todo-api serve` worker process runs: the app, in a process tuned to live long, that
says once, for all workers, when the API is ready.

CPython's garbage-collector defaults cost a serving worker about 5% of its CPU (bench/RESULTS.md,
"Fourth session"; measured with `python -m bench.gc_cost`):

- A young-generation collection runs whenever 700 more container objects exist than before. With
  32 requests in flight, each holding a few dozen, the count crosses 700 on every wave of requests,
  though reference counting frees nearly all of it once they answer.
- A full collection walks every object the imports created, about 130,000, for tens of ms.

So, once the app is built, `gc.freeze()` moves everything that exists out of the collector's sight
(it lives as long as the process anyway), and the young threshold rises to 7,000, which leaves
almost no collections in the same measurement. Cycles still get collected, a little later. Tests
build apps with `create_app` and keep CPython's defaults.
"""

import gc
import logging
import os
from pathlib import Path

from fastapi import FastAPI

from api.app import create_app

_YOUNG_GENERATION_THRESHOLD = 7_000

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
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(_YOUNG_GENERATION_THRESHOLD, middle, old)
    return app
