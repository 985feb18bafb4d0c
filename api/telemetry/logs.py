"""Logs an operator can use: one JSON object per line (or readable text), with the request id.

Everything the server writes goes through the root logger's one handler, on standard error: the
API's own lines, the HTTP server's (granian's, routed here by api/ops/server.py; uvicorn's in the
tests), and every library's. `LOG_FORMAT=json` (the default when stdout is not a terminal) writes one JSON
object per line; `LOG_FORMAT=text` writes lines for people. Every line carries its time in RFC 3339 UTC
with milliseconds (`2026-12-01T22:30:51.043Z`), the pid of the process that wrote it (several workers
share one stream) and its level.

Under `todo-api serve` the workers write one standard error, a pipe to a log collector as often as not,
and a write to a pipe of more than PIPE_BUF bytes (4096 on Linux) is not atomic: while the collector
lags, a record that long (a 500's, with its traceback) was cut by the other workers' lines, and
neither piece was JSON. So each record is written whole under a lock the workers share, a file
`serve` names in LOG_LOCK_VARIABLE (`_WholeRecords`), and through a buffered writer, which writes
the rest of a write a signal or a stop cut short (`_written_whole`).
"""

import fcntl
import io
import logging
import os
import re
import sys
import time
from typing import IO, Any, Literal, TextIO
from uuid import uuid4

from asgi_correlation_id import CorrelationIdFilter
from pythonjsonlogger.core import LogData
from pythonjsonlogger.orjson import OrjsonFormatter

LogFormat = Literal["json", "text"]

_HANDLER_NAME = "todo-api"
# Set by `todo-api serve` for its processes: the file whose lock each holds while it writes a record.
LOG_LOCK_VARIABLE = "TODO_API_LOG_LOCK"

# A client's X-Request-ID is kept when it is 1 to 128 of these characters; anything else is
# replaced by a generated id. It then appears in logs exactly as it is echoed.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

access = logging.getLogger("api.access")


def default_format() -> LogFormat:
    """Text for a person at a terminal, JSON for everything that collects logs."""
    return "text" if sys.stdout is not None and sys.stdout.isatty() else "json"  # None: closed (`>&-`)


# What a line outside any request says its request id is.
NO_REQUEST_ID = "-"


def is_acceptable_request_id(value: str) -> bool:
    # Not NO_REQUEST_ID: a filter of the lines outside requests took that client's in too (the logs
    # probe of stop 86).
    return _REQUEST_ID.fullmatch(value) is not None and value != NO_REQUEST_ID


def new_request_id() -> str:
    return uuid4().hex


# Every control character but the newline, as the escape Python would write: a user id or path
# holding a carriage return or a terminal's escape sequence could otherwise overwrite a line on
# screen, or clear it. So too Unicode's line and paragraph separators, which end a line for many
# readers (str.splitlines), and its bidirectional embeddings, overrides and isolates, which make a
# terminal show what follows them in another order ("Trojan Source", CVE-2021-42574).
_CONTROL_ESCAPES = {
    code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0)) if code != ord("\n")
} | {code: f"\\u{code:04x}" for code in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))}
# An access line has no further lines, and its user id is a token's sub, any text: a newline in it
# ended the line there and began one that read as the server's own.
_ONE_LINE_ESCAPES = _CONTROL_ESCAPES | {ord("\n"): "\\x0a"}
# What JSON lines escape beyond what JSON itself must (orjson writes DEL and the rest of Unicode as they
# are): DEL, the same separators, overrides and C1 controls, each only ever inside a string there, as a
# \u escape.
_JSON_ESCAPES = {code: f"\\u{code:04x}" for code in _CONTROL_ESCAPES if code >= 0x7F}

# A value a `name=value` field of a line may show as it is: one holding whitespace, `=`, a quote or a
# backslash (a token's sub is any text) would end the field there and read as more of them; one
# holding what a line escapes is quoted and escaped too, so that only such a value pays for escaping.
_BARE_VALUE = re.compile(r'[^\s="\\' + "".join(re.escape(chr(code)) for code in _ONE_LINE_ESCAPES) + "]+")


def logfmt_value(text: str) -> str:
    """`text` for a `name=value` field of a line: as it is, or in double quotes with its quotes and
    backslashes escaped, so that `user=alice action=delete task=7` cannot be one user's id, and with
    what a line escapes escaped in the message itself: JSON's own escapes are undone by whatever reads
    the line (`jq -r .message` printed a sub's newline, and its terminal escapes, as they were: the logs
    probe of stop 86)."""
    if _BARE_VALUE.fullmatch(text):
        return text
    return ('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"').translate(_ONE_LINE_ESCAPES)


class _TextFormatter(logging.Formatter):
    """Lines for people: a record's further lines (a traceback, the start-up hint) are indented, so
    that every line starts either with a time, a pid and a level, or with the record it continues;
    other control characters are escaped, and an access line is one line whatever it holds."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name == access.name:
            return super().format(record).translate(_ONE_LINE_ESCAPES)
        return super().format(record).translate(_CONTROL_ESCAPES).replace("\n", "\n    ")


def _with_surrogates_escaped(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {key: _with_surrogates_escaped(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_with_surrogates_escaped(item) for item in value]
    return value


class _JsonFormatter(OrjsonFormatter):
    """orjson refuses text holding a lone surrogate, which is how Python reads bytes the locale cannot
    decode (`serve --host $'\\xff'`, a path): logging then printed a traceback in place of the line,
    and the line (a refusal to start, say) was lost. Such a line is written with the surrogate escaped,
    as Python writes it to standard error; every other line pays nothing for it. A line beyond ASCII
    has the characters the text format escapes escaped too (`_JSON_ESCAPES`)."""

    def jsonify_log_record(self, log_data: LogData) -> str:
        try:
            line = super().jsonify_log_record(log_data)
        except TypeError:
            line = super().jsonify_log_record(_with_surrogates_escaped(log_data))
        # As the text format escapes them: a line separator ended the line for str.splitlines, and a
        # bidirectional override reordered the line on a terminal (what `jq -r` decodes of a user id is
        # escaped in the message itself: `logfmt_value`).
        return line if line.isascii() and "\x7f" not in line else line.translate(_JSON_ESCAPES)


class _WholeRecords(logging.StreamHandler[IO[str]]):
    """A stream handler that writes each record while holding the lock file LOG_LOCK_VARIABLE names,
    when it names one: two syscalls a record, so that records of several processes never cut one
    another. Each process opens the file itself, since a lock taken through a descriptor inherited
    across fork is the parent's lock too."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(_written_whole(stream))
        self._lock_file: IO[bytes] | None = None
        self._locked_for = 0  # the pid that opened `_lock_file`

    def emit(self, record: logging.LogRecord) -> None:
        lock = self._process_lock()
        if lock is None:
            super().emit(record)
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            super().emit(record)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    def _process_lock(self) -> IO[bytes] | None:
        if self._lock_file is not None and self._locked_for == os.getpid():
            return self._lock_file
        # Looked for again while there is none: `serve` logs its first lines before it names the file.
        path = os.environ.get(LOG_LOCK_VARIABLE)
        if path is None:
            return None
        if self._lock_file is not None:
            # The server's, which this worker inherited: closed here, it stays open, and locked when
            # it is, in the server. Left to the collector, it was a ResourceWarning in the log under
            # `python -X dev` (the environment probe, /tmp/s79-envs).
            self._lock_file.close()
        try:
            # Kept open for the life of the process: every record takes its lock.
            self._lock_file = open(path, "ab")  # noqa: SIM115
        except OSError:
            return None  # the serving folder is gone: serve is ending
        self._locked_for = os.getpid()
        return self._lock_file


def _written_whole(stream: TextIO) -> TextIO:
    """`stream`, or, when its text layer writes straight to the descriptor (PYTHONUNBUFFERED or `python
    -u`, which container images set), the same descriptor through a buffered writer. A write blocked
    on a full pipe ends short when a signal or a stop (a sampling profiler's, many a second) comes, and
    an unbuffered text layer drops what is left (CPython issue 85393): a record lost all but its first
    4 KiB, and the next record went on its line. A buffered writer writes the rest."""
    if not isinstance(getattr(stream, "buffer", None), io.RawIOBase):
        return stream  # buffered already, or no descriptor of its own (a test's capture)
    return open(  # kept open for the life of the process, as standard error is
        stream.fileno(), "w", buffering=1, encoding=stream.encoding, errors=stream.errors, closefd=False
    )


def _formatter(log_format: LogFormat) -> logging.Formatter:
    formatter: logging.Formatter
    if log_format == "json":
        # orjson rather than the standard library's encoder, which python-json-logger's own encoder
        # class keeps in pure Python, and every request's access line pays for it (bench/RESULTS.md,
        # "Levers").
        formatter = _JsonFormatter(
            "{asctime}{process}{levelname}{name}{message}{correlation_id}",
            style="{",
            rename_fields={
                "correlation_id": "request_id",
                "levelname": "level",
                "asctime": "time",
                "process": "pid",
            },
        )
    else:
        formatter = _TextFormatter(
            "%(asctime)s %(process)d %(levelname)s %(name)s [%(correlation_id)s] %(message)s"
        )
    # RFC 3339 in UTC, to the millisecond: logging's own time format, told to use UTC and a T and a Z.
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Send every logger's records through one handler on standard error. Idempotent: every app factory
    call (tests make several) and the CLI may call it."""
    root = logging.getLogger()
    ours = next((handler for handler in root.handlers if handler.get_name() == _HANDLER_NAME), None)
    if ours is None:
        ours = _WholeRecords(sys.stderr)
        ours.set_name(_HANDLER_NAME)
        ours.addFilter(CorrelationIdFilter(default_value=NO_REQUEST_ID))
        root.addHandler(ours)
    ours.setFormatter(_formatter(log_format))
    # No record here uses its caller's file and line, thread or process name: skipping them is the
    # logging module's own documented optimisation, and makes every line cheaper (bench/RESULTS.md,
    # "Levers"). The pid is kept: every line carries it.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = True
    logging.logMultiprocessing = False
    root.setLevel(logging.WARNING)
    logging.getLogger("api").setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(level.upper())
    # asgi-correlation-id warns about every request id it replaces; replacing one is routine here.
    logging.getLogger("asgi_correlation_id").setLevel(logging.ERROR)
