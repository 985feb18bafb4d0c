"""Structured logs: one JSON object per line, with the request id on every line."""

import logging

from asgi_correlation_id import CorrelationIdFilter
from pythonjsonlogger.json import JsonFormatter

_HANDLER_NAME = "todo-api-json"

changes = logging.getLogger("api.changes")


def configure_logging(level: str) -> None:
    """Idempotent, so that every app factory call (tests create several) may call it."""
    root = logging.getLogger("api")
    root.setLevel(level.upper())
    if any(handler.get_name() == _HANDLER_NAME for handler in root.handlers):
        return
    handler = logging.StreamHandler()
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(CorrelationIdFilter(uuid_length=32, default_value="-"))
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}{correlation_id}",
            style="{",
            rename_fields={"correlation_id": "request_id", "levelname": "level", "asctime": "time"},
        )
    )
    root.addHandler(handler)
    root.propagate = False


def log_change(action: str, *, user_id: str, task_id: int) -> None:
    """One line per create, update and delete. Never log the token or the task's content."""
    changes.info("task %s", action, extra={"action": action, "user_id": user_id, "task_id": task_id})
